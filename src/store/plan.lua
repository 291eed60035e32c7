-- tower-tenancy: the lean admission of the three-rule plan, a batch of one
-- sliding window ("sb"), one calendar quota ("cal") and one concurrency
-- limit ("cc"), all enforced, without soft thresholds: the same decisions,
-- keys and stored state as admit.lua for that batch, all-or-nothing, in
-- fewer steps: no per-check tables nor closures, the time from the window
-- key's PTTL as in window.lua, a quota in its stored period only counted
-- up (HINCRBY; its absolute expiry stays), expired leases removed only when
-- there are some, the set's expiry set once (PEXPIRE to its longest lease),
-- integers formatted with %d (cheaper than %.0f), and a short answer when
-- every check allowed.
--
-- KEYS     the window's key, the quota's key, the concurrency set, then
--          the sets of the r lease members to remove first
-- ARGV[1]  little-endian doubles: window limit, cost, window ms; quota
--          limit, cost, period (1 hour, 2 day, 3 week, 4 month);
--          concurrency limit, cost, lease ttl ms; and the time in ms of a
--          test clock when given (10 doubles; without: the server's time)
-- ARGV[2]  the lease member ("id:units")
-- ARGV[3..2+r]  the lease members to remove first
--
-- Returns what admit.lua returns for the three checks in this order:
-- allowed, used, reset ms, retry ms (-1: none), crossed (0) for each, then
-- admitted, as 16 little-endian doubles; when every check allowed, only
-- the five numbers not implied (window used, reset, quota used, reset,
-- concurrency used), as 5 doubles. Layouts: src/store/redis.rs (the
-- window's string is described in window.lua).

local a = ARGV[1]
local clock = #a == 80
local limit, cost, w, qlimit, qcost, period, climit, ccost, cttl, now
if clock then
  limit, cost, w, qlimit, qcost, period, climit, ccost, cttl, now = struct.unpack('<dddddddddd', a)
else
  limit, cost, w, qlimit, qcost, period, climit, ccost, cttl = struct.unpack('<ddddddddd', a)
end
local skey, qkey, ckey = KEYS[1], KEYS[2], KEYS[3]
for j = 3, #ARGV do
  redis.call('ZREM', KEYS[j + 1], ARGV[j])
end

-- The window, read as in window.lua (its general path).
local b = (w + 7 - (w + 7) % 8) / 8
local v = redis.call('GET', skey)
local sz, cf, p0 = 8, '<d', 26
local w0, head, off, total, newest = w, 0, 9, 0, 0
if v then
  if #v == 37 then
    sz, cf, p0 = 2, '<H', 20
    w0, head, off, total, newest = struct.unpack('<ddBHH', v)
  else
    w0, head, off, total, newest = struct.unpack('<ddBdd', v)
  end
end
local server = nil
if not clock then
  local ttl = -1
  if v then ttl = redis.call('PTTL', skey) end
  if ttl >= 0 then
    now = (head + 1) * ((w0 + 7 - (w0 + 7) % 8) / 8) + w0 - 1 - ttl
  else
    local t = redis.call('TIME')
    now = t[1] * 1000 + (t[2] - t[2] % 1000) / 1000
  end
  server = now
end
local cur = (now - now % b) / b
local moved = not v
if not v then
  head = cur
elseif w0 ~= w then
  local ob = (w0 + 7 - (w0 + 7) % 8) / 8
  local at = head * ob
  if now > at then at = now end
  local x = at + 1 - w0
  if x < 0 then x = 0 end
  local j = (x - x % ob) / ob
  if j < head - off then j = head - off end
  local sum = 0
  while j <= head and off <= 8 do
    sum = sum + struct.unpack(cf, v, p0 + sz * (head - j))
    j = j + 1
  end
  head, total, moved = cur, sum, true
  off = 9
  if sum > 0 then off = 0 end
end
local at = head * b
if now > at then at = now end
local x = at + 1 - w
if x < 0 then x = 0 end
local j0 = (x - x % b) / b
local used, first = total, nil
if off <= 8 then
  first = head - off
  if first < j0 then
    first = nil
    for j = head - off, head do
      local n = 0
      if not moved then
        n = struct.unpack(cf, v, p0 + sz * (head - j))
      elseif j == head then
        n = total
      end
      if j < j0 then
        used = used - n
      elseif n > 0 then
        first = j
        break
      end
    end
  end
end
local target = head
if cur > target then target = cur end
local s_ok = used + cost <= limit

-- The quota: a hash {s: period start, c: count, k: period}, as admit.lua.
local qs, qe
local DAY = 86400000
if period == 1 then
  qs = now - now % 3600000
  qe = qs + 3600000
else
  local days = (now - now % DAY) / DAY
  if period == 2 then
    qs, qe = days * DAY, (days + 1) * DAY
  elseif period == 3 then
    local monday = days - (days + 3) % 7
    if monday < 0 then monday = 0 end
    qs, qe = monday * DAY, (monday + 7) * DAY
  else
    -- Month: Howard Hinnant's civil_from_days / days_from_civil, as
    -- admit.lua.
    local function from_civil(y, m)
      if m <= 2 then y = y - 1 end
      local era = math.floor(y / 400)
      local yoe = y - era * 400
      local mp
      if m > 2 then mp = m - 3 else mp = m + 9 end
      local doy = math.floor((153 * mp + 2) / 5)
      local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
      return era * 146097 + doe - 719468
    end
    local z = days + 719468
    local era = math.floor(z / 146097)
    local doe = z - era * 146097
    local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
      - math.floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
    local mp = math.floor((5 * doy + 2) / 153)
    local m
    if mp < 10 then m = mp + 3 else m = mp - 9 end
    if m <= 2 then y = y + 1 end
    local ny, nm = y, m + 1
    if nm > 12 then ny = y + 1; nm = 1 end
    qs, qe = from_civil(y, m) * DAY, from_civil(ny, nm) * DAY
  end
end
local pk = 'm'
if period == 1 then pk = 'h' elseif period == 2 then pk = 'd' elseif period == 3 then pk = 'w' end
local h = redis.call('HMGET', qkey, 's', 'c', 'k')
local qeff, qused = qs, 0
local stored = tonumber(h[1])
if h[3] == pk and stored ~= nil and stored >= qs then
  qeff = stored
  qused = tonumber(h[2]) or 0
end
local q_ok = qused + qcost <= qlimit

-- The concurrency set: every member with its expiry; live ones count.
-- Leases always expire on the server's clock.
if server == nil then
  local t = redis.call('TIME')
  server = t[1] * 1000 + (t[2] - t[2] % 1000) / 1000
end
local leases = redis.call('ZRANGE', ckey, 0, -1, 'WITHSCORES')
local cused, stale, last = 0, false, 0
for j = 1, #leases, 2 do
  local e = leases[j + 1] + 0
  if e > last then last = e end
  if e > server then
    local m = leases[j]
    if string.byte(m, -2) == 58 and string.byte(m, -1) == 49 then
      -- ":1", the usual member.
      cused = cused + 1
    else
      cused = cused + (tonumber(string.match(m, ':(%d+)$')) or 1)
    end
  else
    stale = true
  end
end
local c_ok = cused + ccost <= climit

local all = s_ok and q_ok and c_ok
local sreset, sretry = 0, -1
if first ~= nil then
  sreset = (first + 1) * b + w - 1 - now
elseif all and cost > 0 then
  sreset = (target + 1) * b + w - 1 - now
end
local qreset, qretry = qe - now, -1
local cretry = -1
if all then
  -- Consume: every check's write, as admit.lua's.
  if cost > 0 then
    local sum = total + cost
    if not moved and target == head and not clock and (sz == 8 or sum <= 65535) then
      if off > 8 then off = 0 end
      local fmt = '<Bdd'
      if sz == 2 then fmt = '<BHH' end
      redis.call('SETRANGE', skey, '16', struct.pack(fmt, off, sum, newest + cost))
    else
      local c = { 0, 0, 0, 0, 0, 0, 0, 0, 0 }
      if moved then
        if target - head < 9 then c[1 + target - head] = total end
      else
        for i = 1 + target - head, 9 do
          c[i] = struct.unpack(cf, v, p0 + sz * (i - 1 - target + head))
        end
      end
      c[1] = c[1] + cost
      sum, off = 0, 0
      for i = 1, 9 do
        sum = sum + c[i]
        if c[i] > 0 then off = i - 1 end
      end
      local fmt = '<ddBHHHHHHHHHH'
      if sum > 65535 then fmt = '<ddBdddddddddd' end
      local packed = struct.pack(fmt, w, target, off, sum, c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9])
      local e = (target + 1) * b + w - 1
      if clock then
        local px = e - now
        if px < 1 then px = 1 end
        redis.call('SET', skey, packed, 'PX', string.format('%d', px))
      else
        redis.call('SET', skey, packed, 'PXAT', string.format('%d', e))
      end
    end
  end
  if qcost > 0 then
    if stored ~= nil and qeff == stored and not clock then
      -- The period already stored: only the count changes (its absolute
      -- expiry, the period's end + 1 s on the server's clock, stays).
      if qcost == 1 and qused < 1e13 then
        redis.call('HINCRBY', qkey, 'c', '1')
      else
        redis.call('HSET', qkey, 'c', string.format('%d', qused + qcost))
      end
    else
      redis.call('HSET', qkey, 's', string.format('%d', qeff), 'c', string.format('%d', qused + qcost), 'k', pk)
      -- The end of the stored period (a later one when the clock stepped
      -- back) and one second of grace, relative.
      local fin = qe
      if qeff ~= qs then
        if period == 1 then
          fin = qeff + 3600000
        elseif period == 2 then
          fin = qeff + DAY
        elseif period == 3 then
          fin = qeff + 7 * DAY
        else
          -- A later month (28 to 31 days): the longest.
          fin = qeff + 31 * DAY
        end
      end
      redis.call('PEXPIRE', qkey, string.format('%d', fin - now + 1000))
    end
  end
  if ccost > 0 then
    if stale then
      redis.call('ZREMRANGEBYSCORE', ckey, '-inf', string.format('%d', server))
    end
    local e = server + cttl
    redis.call('ZADD', ckey, string.format('%d', e), ARGV[2])
    -- The set lives as long as its longest lease.
    if last > e then e = last end
    redis.call('PEXPIRE', ckey, string.format('%d', e - server))
  end
  used, qused, cused = used + cost, qused + qcost, cused + ccost
else
  if not s_ok and cost <= limit then
    local need = used - (limit - cost)
    local freed = 0
    for j = first or head + 1, head do
      if moved then
        if j == head then freed = freed + total end
      else
        freed = freed + struct.unpack(cf, v, p0 + sz * (head - j))
      end
      if freed >= need then
        sretry = (j + 1) * b + w - 1 - now
        break
      end
    end
  end
  if not q_ok and qcost <= qlimit then qretry = qreset end
  if not c_ok and ccost <= climit then cretry = 1000 end
end
if all then
  -- Every check allowed, retries -1, crossed 0, the concurrency's reset 0:
  -- the five other numbers.
  return struct.pack('<ddddd', used, sreset, qused, qreset, cused)
end
local s1, q1, c1, a1 = 0, 0, 0, 0
if s_ok then s1 = 1 end
if q_ok then q1 = 1 end
if c_ok then c1 = 1 end
if all then a1 = 1 end
return struct.pack('<dddddddddddddddd',
  s1, used, sreset, sretry, 0,
  q1, qused, qreset, qretry, 0,
  c1, cused, 0, cretry, 0,
  a1)
