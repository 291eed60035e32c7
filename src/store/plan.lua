-- tower-tenancy: the lean admission of the three-rule plan, a batch of one
-- sliding window ("sb"), one calendar quota ("cal") and one concurrency
-- limit ("cc"), all enforced, without soft thresholds: the same decisions,
-- keys and stored state as admit.lua for that batch, all-or-nothing, in
-- fewer steps: no per-check tables nor closures; the window's fast path and
-- its time from the key's PTTL, as in window.lua; the quota an integer
-- counted up with INCR/INCRBY (on the server's clock), whose answer is the
-- count (no GET; taken back when it crossed the quota); the live leases
-- counted with ZCOUNT (one member per unit) instead of read; the set's
-- expiry and the removal of expired leases once per bucket of lease
-- expiries (a marker member added with the lease tells, instead of the
-- set's PTTL); integers formatted with %d (cheaper than %.0f), and a short
-- answer when every check allowed. The common admission on the server's
-- clock (the window on its fast path and allowing, a quota of a known
-- period, one lease unit) is decided first, in a straight line; the
-- general code takes over, reusing what was read, for everything else.
--
-- KEYS     the window's key, the quota's key, the concurrency set, then
--          the sets of the r lease members to remove first
-- ARGV[1]  9 little-endian doubles: window limit, cost, window ms; quota
--          limit, cost, period (1 hour, 2 day, 3 week, 4 month);
--          concurrency limit, cost, lease ttl ms; then the lease member
--          ("id:units"; a lease of k > 1 units also holds the members
--          "id.2:0" .. "id.k:0"; its id new per admission) and a zero byte;
--          then, for a month, the start and end ms of the month the client's
--          clock is in (2 doubles; used only when the store's time falls in
--          it, else the script finds its month); then, with a test clock
--          only, its time in ms (a double; absent: the server's time). One
--          argument, since each argument costs Redis more than unpacking it.
-- ARGV[2..1+r]  the lease members to remove first
--
-- Returns what admit.lua returns for the three checks in this order:
-- allowed, used, reset ms, retry ms (-1: none), crossed (0) for each, then
-- admitted, as 16 little-endian doubles; when every check allowed, only
-- the five numbers not implied (window used, reset, quota used, reset,
-- concurrency used), as 5 doubles. Layouts: src/store/redis.rs (the
-- window's string is described in window.lua).

-- (Locals: cheaper than looking up redis.call and string.format each time.)
local call, format = redis.call, string.format
local a = ARGV[1]
local limit, cost, w, qlimit, qcost, period, climit, ccost, cttl, member, pos = struct.unpack('<ddddddddds', a)
local mqs, mqe, now = 0, 0, -1
if period == 4 then mqs, mqe, pos = struct.unpack('<dd', a, pos) end
if pos <= #a then now = struct.unpack('<d', a, pos) end
local clock = now >= 0
local skey, qkey, ckey = KEYS[1], KEYS[2], KEYS[3]
for j = 2, #ARGV do
  call('ZREM', KEYS[j + 2], ARGV[j])
end

-- The common admission first, in as few steps as possible: on the
-- server's clock, a window on its fast path (below) that allows, a quota
-- of cost >= 1 whose period is known, one unit of concurrency. It decides
-- as the general code below, which takes over, reusing what was read, when
-- any of that does not hold (it has written nothing then).
local v, ttl, got, tgot = false, -1, false, false
if not clock and cost > 0 and qcost > 0 and ccost == 1 then
  v, got = call('GET', skey), true
  if v then
    local n, w0, head, off, total, newest = #v, nil, 0, 9, 0, 0
    if n == 37 then
      w0, head, off, total, newest = struct.unpack('<ddBHH', v)
    elseif n == 97 then
      w0, head, off, total, newest = struct.unpack('<ddBdd', v)
    end
    if w0 == w and off <= 8 and head >= off and total + cost <= limit and (n == 97 or total + cost <= 65535) then
      local t = call('PTTL', skey)
      ttl, tgot = t, true
      local b = (w + 7 - (w + 7) % 8) / 8
      local DAY = 86400000
      local now, qs, qe = (head + 1) * b + w - 1 - t, nil, nil
      if period == 1 then
        qs = now - now % 3600000
        qe = qs + 3600000
      elseif period == 2 then
        qs = now - now % DAY
        qe = qs + DAY
      elseif period == 3 then
        local days = (now - now % DAY) / DAY
        local monday = days - (days + 3) % 7
        if monday < 0 then monday = 0 end
        qs, qe = monday * DAY, (monday + 7) * DAY
      elseif now >= mqs and now < mqe then
        qs, qe = mqs, mqe
      end
      if qs and t >= w and t <= b + w - 1 and off * b < t then
        local sv = format('(%d', now)
        local cused = call('ZCOUNT', ckey, sv, '+inf')
        local sreset, qreset = t - off * b, qe - now
        if cused >= climit then
          -- Refused by the concurrency limit: the quota read, nothing
          -- written.
          local qused, qv = 0, call('GET', qkey)
          if qv then qused = tonumber(qv) or 0 end
          local q1, qretry = 1, -1
          if qused + qcost > qlimit then
            q1 = 0
            if qcost <= qlimit then qretry = qreset end
          end
          local cretry = -1
          if ccost <= climit then cretry = 1000 end
          return struct.pack('<dddddddddddddddd', 1, total, sreset, -1, 0,
            q1, qused, qreset, qretry, 0, 0, cused, 0, cretry, 0, 0)
        end
        local r
        if qcost == 1 then
          r = call('INCR', qkey)
        else
          r = call('INCRBY', qkey, format('%d', qcost))
        end
        if r > qlimit then
          -- Refused by the quota: its count taken back.
          if r == qcost then
            call('DEL', qkey)
          else
            call('DECRBY', qkey, format('%d', qcost))
          end
          local qretry = -1
          if qcost <= qlimit then qretry = qreset end
          return struct.pack('<dddddddddddddddd', 1, total, sreset, -1, 0,
            0, r - qcost, qreset, qretry, 0, 1, cused, 0, -1, 0, 0)
        end
        if r == qcost then call('PEXPIREAT', qkey, format('%d', qe - 1)) end
        if n == 37 then
          call('SETRANGE', skey, '17', struct.pack('<HH', total + cost, newest + cost))
        else
          call('SETRANGE', skey, '17', struct.pack('<dd', total + cost, newest + cost))
        end
        -- The lease and its bucket's marker, as below.
        local e = format('%d', now + cttl)
        local k = 0
        if cttl >= 1000000 then k = 6
        elseif cttl >= 100000 then k = 5
        elseif cttl >= 10000 then k = 4
        elseif cttl >= 1000 then k = 3
        elseif cttl >= 100 then k = 2
        elseif cttl >= 10 then k = 1 end
        local m = string.sub(e, 1, -1 - k)
        if call('ZADD', ckey, e, member, '0', m) > 1 then
          call('ZREMRANGEBYSCORE', ckey, '-inf', sv)
          call('ZADD', ckey, '0', m)
          local u = 10 ^ k
          local x = now + cttl
          local fin = x - x % u + u
          if now + call('PTTL', ckey) < fin then
            call('PEXPIREAT', ckey, format('%d', fin))
          end
        end
        return struct.pack('<ddddd', total + cost, sreset, r, qreset, cused + 1)
      end
    end
  end
end

-- The window, as window.lua: its fast path (this window, now in the newest
-- bucket, the oldest bucket with a count still counted, allowed; 16-bit
-- counts, or on the server's clock 64-bit ones too; see window.lua), else
-- its general path.
local b = (w + 7 - (w + 7) % 8) / 8
if not got then v = call('GET', skey) end
if v and not clock and not tgot then ttl = call('PTTL', skey) end
local fast = false
local used, first, target, sreset, newest, t = 0, nil, 0, 0, 0, 0
local sz, cf, p0, head, off, total, moved = 2, '<H', 20, 0, 9, 0, false
if v then
  local w0, n = nil, #v
  if n == 37 then
    w0, head, off, total, newest = struct.unpack('<ddBHH', v)
  elseif n == 97 and not clock then
    -- (Wide counts: on the server's clock the general path, too, rewrites
    -- them in place.)
    sz, cf, p0 = 8, '<d', 26
    w0, head, off, total, newest = struct.unpack('<ddBdd', v)
  end
  if w0 == w and off <= 8 and head >= off then
    t = ttl
    if clock then t = (head + 1) * b + w - 1 - now end
    if t >= w and t <= b + w - 1 and off * b < t and total + cost <= limit and (sz == 8 or total + cost <= 65535) then
      fast = true
      if not clock then now = (head + 1) * b + w - 1 - t end
      used, sreset = total, t - off * b
    end
  end
end
local server, timed = nil, false
if not fast then
  sz, cf, p0 = 8, '<d', 26
  local w0
  w0, head, off, total, newest = w, 0, 9, 0, 0
  if v then
    if #v == 37 then
      sz, cf, p0 = 2, '<H', 20
      w0, head, off, total, newest = struct.unpack('<ddBHH', v)
    else
      w0, head, off, total, newest = struct.unpack('<ddBdd', v)
    end
  end
  if not clock then
    if ttl >= 0 then
      now = (head + 1) * ((w0 + 7 - (w0 + 7) % 8) / 8) + w0 - 1 - ttl
    else
      local tm = call('TIME')
      now = tm[1] * 1000 + (tm[2] - tm[2] % 1000) / 1000
      -- (Not the script's time snapshot, which expiries use: see the
      -- quota.)
      timed = true
    end
  end
  local cur = (now - now % b) / b
  moved = not v
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
  used, first = total, nil
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
  target = head
  if cur > target then target = cur end
end
local s_ok = fast or used + cost <= limit
if not clock and server == nil then server = now end

-- The quota's period [qs, qe) (UTC), as admit.lua's period_bounds.
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
  elseif now >= mqs and now < mqe then
    -- The month the client found (its clock agrees with the store's).
    qs, qe = mqs, mqe
  else
    -- Month: Howard Hinnant's civil_from_days, then the month's first day
    -- and length, in exact integer arithmetic without C calls (for x >= 0
    -- and n > 0, (x - x % n) / n is floor(x / n)).
    local z = days + 719468
    local era = (z - z % 146097) / 146097
    local doe = z - era * 146097
    local n = doe - (doe - doe % 1460) / 1460 + (doe - doe % 36524) / 36524
      - (doe - doe % 146096) / 146096
    local yoe = (n - n % 365) / 365
    local doy = doe - (365 * yoe + (yoe - yoe % 4) / 4 - (yoe - yoe % 100) / 100)
    local t5 = 5 * doy + 2
    -- mp: the month from March (0) to February (11); f: the day of the
    -- (March-based) year its first day is.
    local mp = (t5 - t5 % 153) / 153
    local s5 = 153 * mp + 2
    local f = (s5 - s5 % 5) / 5
    local len
    if mp < 11 then
      len = (s5 + 153 - (s5 + 153) % 5) / 5 - f
    else
      -- February of the civil year yoe + era * 400 + 1.
      local y = yoe + era * 400 + 1
      len = 28
      if y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then len = 29 end
    end
    qs, qe = (days - doy + f) * DAY, (days - doy + f + len) * DAY
  end
end

-- The concurrency set: one member per unit held, scored with its expiry;
-- the live ones count. Leases always expire on the server's clock.
if server == nil then
  local tm = call('TIME')
  server = tm[1] * 1000 + (tm[2] - tm[2] % 1000) / 1000
end
local sv = format('(%d', server)
local cused = call('ZCOUNT', ckey, sv, '+inf')
local c_ok = cused + ccost <= climit

-- The quota's count (the key's name holds the period kind). On the
-- server's clock an integer that expires at the period's last millisecond
-- (PXAT qe - 1): a live key is this period's count. (A time from TIME is
-- taken after the script's time snapshot, which expiries use: in the first
-- second of a period, a live key may still be the last one's; its PTTL
-- tells, below 1 s for the last period's, above for this one's.)
-- With a test clock the string "start:count" of the period, as admit.lua.
-- On the server's clock with the time from the window's key (a live key is
-- this period's), once the window and the concurrency limit allowed, the
-- count is read by counting up at once (INCR's answer is the count: one
-- call instead of GET and INCRBY) and taken back when that crossed the
-- quota (DECRBY; DEL when the key was new), so a refusal by the quota
-- leaves the count as it was (and writes twice). A new key (the answer is
-- the cost) gets its period's expiry. Otherwise (a test clock, a time from
-- TIME, a refusal by another check) the count is read with GET. (A test
-- clock's "start:count" left in the key under the server's clock, which
-- stores sharing keys must not mix, makes INCR fail: the call errors.)
local qused, qeff, qstored, q_ok, counted = 0, qs, false, true, false
if not clock and not timed and qcost > 0 and s_ok and c_ok then
  local r
  if qcost == 1 then
    r = call('INCR', qkey)
  else
    r = call('INCRBY', qkey, format('%d', qcost))
  end
  qused, counted = r - qcost, true
  if r > qlimit then
    q_ok = false
    if r == qcost then
      call('DEL', qkey)
    else
      call('DECRBY', qkey, format('%d', qcost))
    end
  elseif r == qcost then
    call('PEXPIREAT', qkey, format('%d', qe - 1))
  end
else
  local qv = call('GET', qkey)
  if qv then
    if clock then
      local vs, vc = string.match(qv, '^(%d+):(%d+)$')
      vs = tonumber(vs)
      if vs ~= nil and vs >= qs then
        qeff, qused, qstored = vs, tonumber(vc), true
      end
    elseif not timed or now - qs >= 1000 or call('PTTL', qkey) >= 1000 then
      -- (Not a number: a test clock's value, overwritten.)
      local n = tonumber(qv)
      if n then qused, qstored = n, true end
    end
  end
  q_ok = qused + qcost <= qlimit
end
local all = s_ok and q_ok and c_ok
local sretry = -1
if not fast then
  if first ~= nil then
    sreset = (first + 1) * b + w - 1 - now
  elseif all and cost > 0 then
    sreset = (target + 1) * b + w - 1 - now
  end
end
local qreset, qretry = qe - now, -1
local cretry = -1
if all then
  -- Consume: every check's write, as admit.lua's.
  if cost > 0 then
    if fast then
      if sz == 2 then
        call('SETRANGE', skey, '17', struct.pack('<HH', total + cost, newest + cost))
      else
        call('SETRANGE', skey, '17', struct.pack('<dd', total + cost, newest + cost))
      end
      if clock then call('PEXPIRE', skey, format('%d', t)) end
    else
      local sum = total + cost
      if not moved and target == head and not clock and (sz == 8 or sum <= 65535) then
        if off > 8 then off = 0 end
        local fmt = '<Bdd'
        if sz == 2 then fmt = '<BHH' end
        call('SETRANGE', skey, '16', struct.pack(fmt, off, sum, newest + cost))
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
          call('SET', skey, packed, 'PX', format('%d', px))
        else
          call('SET', skey, packed, 'PXAT', format('%d', e))
        end
      end
    end
  end
  if qcost > 0 then
    local n = '1'
    if qcost ~= 1 then n = format('%d', qcost) end
    if clock then
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
      call('SET', qkey, format('%d:%d', qeff, qused + qcost), 'PX', format('%d', fin - now + 1000))
    elseif counted then
      -- (Counted above.)
    elseif qstored then
      call('INCRBY', qkey, n)
    else
      call('SET', qkey, n, 'PXAT', format('%d', qe - 1))
    end
  end
  if ccost > 0 then
    local e = format('%d', server + cttl)
    -- The set lives at least as long as its longest lease, and its expired
    -- leases (of crashed or cut-off instances) leave within about a lease
    -- TTL: lease expiries fall in buckets of u = 10^k ms, the largest power
    -- of ten up to the lease TTL (at most 10^6), and the set holds a marker
    -- member for each bucket whose end its expiry reaches: the expiry's
    -- decimal digits without the last k (no ':', so never a lease), scored
    -- 0 (never counted). The marker goes in with the lease; ZADD answers
    -- how many members were new: the lease is (its id is new per
    -- admission), so 2 means the marker was too. Then, once per bucket:
    -- the expired leases and the older markers are removed, and the
    -- set's expiry is raised to the bucket's end when below it. Markers
    -- leave the set only there, with the set, or through the general
    -- script's removal of expired members (scores up to now), which only
    -- makes the next call take this path again; no script lowers the set's
    -- expiry. So an empty set stays, one marker, until at most one bucket
    -- after its last lease's expiry.
    local k = 0
    if cttl >= 1000000 then k = 6
    elseif cttl >= 100000 then k = 5
    elseif cttl >= 10000 then k = 4
    elseif cttl >= 1000 then k = 3
    elseif cttl >= 100 then k = 2
    elseif cttl >= 10 then k = 1 end
    local m = string.sub(e, 1, -1 - k)
    if call('ZADD', ckey, e, member, '0', m) > 1 then
      -- (Expired before now, and the markers: the others are not counted.)
      call('ZREMRANGEBYSCORE', ckey, '-inf', sv)
      call('ZADD', ckey, '0', m)
      local u = 10 ^ k
      local x = server + cttl
      local fin = x - x % u + u
      -- (PTTL: -1 when the set was new.)
      if server + call('PTTL', ckey) < fin then
        call('PEXPIREAT', ckey, format('%d', fin))
      end
    end
    if ccost > 1 then
      -- One member per further unit.
      local id = string.match(member, '^(.*):')
      for i = 2, ccost do
        call('ZADD', ckey, e, id .. '.' .. format('%d', i) .. ':0')
      end
    end
    -- The set lives at least as long as its longest lease: when its TTL is
    -- below this lease's, it is extended to twice that, and the expired
    -- leases (of crashed or cut-off instances) are removed then, so they
    -- leave within a lease TTL or so.
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
