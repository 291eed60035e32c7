-- tower-tenancy: atomic, all-or-nothing admission of a batch of checks.
--
-- ARGV[1]  mode: "a" (admit: consume when every check allows) or "p" (peek)
-- ARGV[2]  now in ms since the epoch (a test clock), or "" to take it from
--          TIME; lease expiry always uses TIME
-- ARGV[3]  lease id (members of concurrency sets), may be ""
-- ARGV[4]  number of checks n
-- then 5 arguments per check: kind, limit, cost, param, soft
--   kind "sb" sliding window   param = window ms        keys: string (below)
--   kind "sw" two-counter window param = window ms      keys: hash {s, c, p}
--   kind "gc" GCRA             param = T:C:B (ns, ns, units) keys: hash {m, n}
--   kind "sl" sliding log      param = window ms        keys: zset, sequence (below)
--   kind "cal" calendar        param = h | d | w | m    keys: integer, or
--                              "start:count" under a test clock
--   kind "cc" concurrency      param = lease ttl ms     keys: zset of leases
--                              (one member per unit)
--   kind "g" gauge             param = ignored          keys: integer
--   a kind prefixed with "~" is shadowed: it never blocks the batch; it
--   consumes only when every check allows, the others when every check
--   that is not shadowed allows
--   soft is "" or "P:H": a soft threshold of P percent of the limit, and a
--   mark key (the next KEY after the check's own). When the check consumes
--   and used >= limit * P / 100 (limit: the burst for GCRA) and the mark
--   holds no time later than now, the mark is set to now + H ms (H = 0: to
--   the end of the calendar period) and the check reports crossed = 1:
--   one crossing per window or period for every client of this Redis.
-- then r, the number of lease members to remove first, and the r members;
-- KEYS are consumed in check order (two for "sl", one for the others, plus
-- the mark of a soft check), followed by the r concurrency sets of those
-- members. All share the tenant's hash tag, so the script touches one
-- cluster slot.
--
-- Returns 5 integers per check: allowed (0/1), used, reset ms, retry ms
-- (-1 when there is no retry), crossed (0/1), followed by the admitted flag
-- (0/1: every check that is not shadowed allowed), as one string of
-- little-endian doubles (8 bytes each). A dry
-- run reports what an admission would (used including the cost when every
-- check allows). A check of cost 0 consumes nothing.
--
-- The decisions are those of the in-memory store (src/store/memory/),
-- including its handling of a test clock that steps back: a counter already
-- in a later window or period keeps that state.
--
-- All numbers are integers below 2^53 (the caller clamps), so double
-- arithmetic is exact; divisions go through fdiv, which is exact too.

-- The sub-bucket window ("sb", src/store/memory/window.rs) is one string,
-- shared with window.lua (the lean path for a batch of one such check),
-- whose header describes it: w, head, off, total and the counts of buckets
-- head .. head - 8, little-endian, u16 (37 bytes) or doubles (97 bytes).
-- With the server's clock it expires at (head + 1) * b + w - 1 (PXAT).

local function fdiv(a, b)
  -- floor(a / b) for integers a >= 0, b > 0, exact.
  return (a - math.fmod(a, b)) / b
end

local function cdiv(a, b)
  -- ceil(a / b) for integers a >= 0, b > 0.
  return fdiv(a + b - 1, b)
end

local DAY = 86400000

local function days_from_civil(y, m, d)
  -- Howard Hinnant's days_from_civil (proleptic Gregorian, y >= 0 here).
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp
  if m > 2 then mp = m - 3 else mp = m + 9 end
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function civil_from_days(z)
  z = z + 719468
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
  return y, m
end

local function period_bounds(now, p)
  if p == 'h' then
    local s = now - math.fmod(now, 3600000)
    return s, s + 3600000
  end
  local days = fdiv(now, DAY)
  if p == 'd' then
    return days * DAY, (days + 1) * DAY
  elseif p == 'w' then
    -- 1970-01-01 was a Thursday; ISO weeks start on Monday.
    local monday = days - math.fmod(days + 3, 7)
    if monday < 0 then monday = 0 end -- the first days of 1970, as the memory store
    return monday * DAY, (monday + 7) * DAY
  else
    local y, m = civil_from_days(days)
    local ny, nm = y, m + 1
    if nm > 12 then ny = y + 1; nm = 1 end
    return days_from_civil(y, m, 1) * DAY, days_from_civil(ny, nm, 1) * DAY
  end
end

local function num(x)
  -- An integer as a decimal string (tostring would switch to exponents).
  return string.format('%.0f', x)
end

local function units_of(member)
  return tonumber(string.match(member, ':(%d+)$')) or 1
end

-- The sliding log: a sorted set of entries "n:u" scored by their time in
-- ms, u the units of the entry and n the value of the sequence key after
-- the entry's INCRBY u, so n is the number of units ever written to the
-- log up to and including the entry. Entries are written in the order of
-- their times (a clock that steps back writes at the newest time) and
-- leave in that order, so the units in the window are
--   seq - (n - u) of the window's oldest entry,
-- a few O(log N) reads instead of the whole window. Entries of one ms are
-- ordered by member text, not by n: among them the smallest n - u (the
-- oldest) and the largest n (the newest) are looked up. When the sequence
-- does not fit the entries (lost, or behind the newest entry), the window
-- is summed as the first layout did, and the next write puts the
-- sequence past the newest entry again.

-- The entry of the largest n (newest = true) or the smallest n - u among
-- `pair` (a member and its score) and the other members of its score;
-- returns that n, or n - u.
local function log_edge(key, pair, next_score, newest)
  local members = { pair[1] }
  if next_score == pair[2] then
    members = redis.call('ZRANGEBYSCORE', key, pair[2], pair[2])
  end
  local best = nil
  for _, m in ipairs(members) do
    local nn, u = string.match(m, '^(%d+):(%d+)$')
    local v = tonumber(nn) or -1
    if not newest then v = v - (tonumber(u) or 1) end
    if best == nil or (newest and v > best) or (not newest and v < best) then best = v end
  end
  return best
end

-- Reads a sliding log for a window after `after` (ms): sets c.used (the
-- units in (after, +inf)), c.oldest (the time of its oldest entry, nil
-- when none), c.newest and c.newest_n (the newest entry of the whole log,
-- nil when empty).
local function read_log(c, after)
  local last = redis.call('ZRANGE', c.key, -2, -1, 'WITHSCORES')
  c.used = 0
  if #last == 0 then return end
  local top_pair = { last[#last - 1], last[#last] }
  c.newest = tonumber(last[#last])
  c.newest_n = log_edge(c.key, top_pair, last[#last - 2], true)
  local lo = '(' .. num(after)
  local first = redis.call('ZRANGEBYSCORE', c.key, lo, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
  if #first == 0 then return end
  c.oldest = tonumber(first[2])
  local base = log_edge(c.key, first, first[4], false)
  local top = tonumber(redis.call('GET', c.seq))
  if top ~= nil and top >= c.newest_n and base >= 0 then
    c.used = top - base
    return
  end
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', c.key, lo, '+inf')) do
    c.used = c.used + units_of(m)
  end
end

local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local mode = ARGV[1]
local now
if ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  now = server_now()
end
-- Leases always expire on the server's clock, even with a test clock: their
-- TTL guards against crashed clients in real time.
local lease_now = nil
local function lease_clock()
  if lease_now == nil then
    if ARGV[2] == '' then lease_now = now else lease_now = server_now() end
  end
  return lease_now
end
local lease = ARGV[3]
local n = tonumber(ARGV[4])

-- Releases of leases dropped by this client and not confirmed yet: the
-- last KEYS, with their members after the checks' arguments.
local r = tonumber(ARGV[5 + n * 5]) or 0
for j = 1, r do
  redis.call('ZREM', KEYS[#KEYS - r + j], ARGV[5 + n * 5 + j])
end

-- Pass 1: read every counter and decide; nothing is written.
local checks = {}
local all = true
local enforced = true
local k = 1
for i = 1, n do
  local a = 4 + (i - 1) * 5
  local c = {
    kind = ARGV[a + 1],
    limit = tonumber(ARGV[a + 2]),
    cost = tonumber(ARGV[a + 3]),
    costs = ARGV[a + 3],
    param = ARGV[a + 4],
    soft = ARGV[a + 5],
    key = KEYS[k],
  }
  k = k + 1
  if string.sub(c.kind, 1, 1) == '~' then
    c.shadow = true
    c.kind = string.sub(c.kind, 2)
  end
  local kind = c.kind
  if kind == 'sb' then
    -- Sub-bucket window (src/store/memory/window.rs): k = 8 buckets of
    -- b = ceil(W / 8) ms; bucket j counts [j*b, (j+1)*b); buckets j0..c
    -- count. c.ring[1 + head - j] is the count of bucket j (head - 8 <= j
    -- <= head).
    local w = tonumber(c.param)
    local b = cdiv(w, 8)
    local cur = fdiv(now, b)
    local v = redis.call('GET', c.key)
    local ring, head = { 0, 0, 0, 0, 0, 0, 0, 0, 0 }, cur
    if v then
      -- w, head, off (unused here), total, the nine counts.
      local fmt = '<ddBdddddddddd'
      if #v == 37 then fmt = '<ddBHHHHHHHHHH' end
      local s = { struct.unpack(fmt, v) }
      head = s[2]
      for i = 1, 9 do ring[i] = s[4 + i] end
      if s[1] ~= w then
        -- Another window: what the old one counts now moves into bucket cur.
        local ob = cdiv(s[1], 8)
        local at = math.max(now, head * ob)
        local oj0 = math.max(fdiv(math.max(at + 1 - s[1], 0), ob), head - 8)
        local moved = 0
        for j = oj0, head do moved = moved + ring[1 + head - j] end
        ring, head = { moved, 0, 0, 0, 0, 0, 0, 0, 0 }, cur
        c.rebased = true
      end
    end
    local at = math.max(now, head * b)
    local j0 = math.max(fdiv(math.max(at + 1 - w, 0), b), head - 8)
    local used = 0
    for j = j0, head do used = used + ring[1 + head - j] end
    c.w, c.b, c.j0, c.head, c.cur, c.ring = w, b, j0, head, cur, ring
    c.used = used
  elseif kind == 'gc' then
    -- GCRA (src/store/memory/gcra.rs), in ns: tat = m ms + n ns.
    local t, cap, burst = string.match(c.param, '^(%d+):(%d+):(%d+)$')
    t, cap, burst = tonumber(t), tonumber(cap), tonumber(burst)
    local h = redis.call('HMGET', c.key, 'm', 'n')
    local m = tonumber(h[1])
    local d = 0
    if m ~= nil then
      if m > now then
        d = (m - now) * 1000000 + (tonumber(h[2]) or 0)
      elseif m == now then
        d = tonumber(h[2]) or 0
      end
    end
    c.t, c.cap, c.burst, c.d = t, cap, burst, d
    c.never = c.cost > 0 and (t == 0 or c.cost > burst)
  elseif kind == 'sw' then
    local w = tonumber(c.param)
    local start = now - math.fmod(now, w)
    local h = redis.call('HMGET', c.key, 's', 'c', 'p')
    local s = tonumber(h[1])
    local eff, curr, prev = start, 0, 0
    if s ~= nil and s >= start then
      -- The current window (or, when the clock stepped back, a later
      -- one: its state is kept).
      eff, curr, prev = s, tonumber(h[2]) or 0, tonumber(h[3]) or 0
    elseif s == start - w then
      prev = tonumber(h[2]) or 0
    end
    c.w, c.start, c.eff, c.curr, c.prev = w, start, eff, curr, prev
    c.used = curr + fdiv(prev * (w - (now - start)), w)
  elseif kind == 'sl' then
    c.seq = KEYS[k]
    k = k + 1
    local w = tonumber(c.param)
    c.w = w
    read_log(c, now - w)
  elseif kind == 'cal' then
    local s, e = period_bounds(now, c.param)
    c.start, c.finish = s, e
    c.eff = s
    c.used = 0
    local v = redis.call('GET', c.key)
    if v and ARGV[2] ~= '' then
      -- A test clock: "start:count" of the stored period.
      local vs, vc = string.match(v, '^(%d+):(%d+)$')
      vs = tonumber(vs)
      if vs ~= nil and vs >= s then
        -- This period (or, when the clock stepped back, a later one).
        c.eff, c.used, c.stored = vs, tonumber(vc), true
      end
    elseif v and (now - s >= 1000 or redis.call('PTTL', c.key) >= 1000) then
      -- The server's clock: the count, expiring at the period's last
      -- millisecond, so a live key is this period's. (Only in the first
      -- second of a period may it be the last one's: TIME is read after
      -- the script's time snapshot, which expiries use. Then its PTTL is
      -- below 1 s, this period's far above.)
      local n = tonumber(v)
      if n then c.used, c.stored = n, true end
    end
  elseif kind == 'cc' then
    local leases = redis.call('ZRANGEBYSCORE', c.key, '(' .. num(lease_clock()), '+inf')
    local used = 0
    for j = 1, #leases do
      used = used + units_of(leases[j])
    end
    c.ttl = tonumber(c.param)
    c.used = used
  else
    c.used = tonumber(redis.call('GET', c.key)) or 0
  end
  if c.soft ~= '' then
    c.mark = KEYS[k]
    k = k + 1
  end
  if kind == 'gc' then
    c.allowed = (not c.never) and c.d + c.t * c.cost <= c.cap
  else
    c.allowed = c.used + c.cost <= c.limit
  end
  if not c.allowed then
    all = false
    if not c.shadow then enforced = false end
  end
  checks[i] = c
end

-- A dry run reports the same decisions as an admission would.
local admitted = enforced and mode == 'a'

-- Pass 2: consume (when admitted) and report.
local out = {}
for i = 1, n do
  local c = checks[i]
  local kind = c.kind
  local used = c.used
  local reset, retry = 0, -1
  local denied = not c.allowed and c.cost <= c.limit
  local would = all or (enforced and not c.shadow)
  local write = would and mode == 'a' and c.cost > 0
  if kind == 'gc' then
    denied = not c.allowed and not c.never
  elseif would then
    used = used + c.cost
  end
  if kind == 'sb' then
    local w, b, head, ring = c.w, c.b, c.head, c.ring
    local function expiry(j) return (j + 1) * b + w - 1 end
    local target = math.max(head, c.cur)
    local first = nil
    for j = c.j0, head do
      if ring[1 + head - j] > 0 then first = j break end
    end
    if first ~= nil then
      reset = expiry(first) - now
    elseif would and c.cost > 0 then
      reset = expiry(target) - now
    end
    if write then
      -- The ring moves to bucket target (buckets before target - 8 leave it).
      local d = target - head
      local counts, sum, off = {}, 0, 0
      for i = 1, 9 do
        local n = 0
        if i - d >= 1 then n = ring[i - d] end
        if i == 1 then n = n + c.cost end
        counts[i] = n
        sum = sum + n
        if n > 0 then off = i - 1 end
      end
      local fmt = '<ddBHHHHHHHHHH'
      if sum > 65535 then fmt = '<ddBdddddddddd' end
      local packed = struct.pack(fmt, w, target, off, sum, unpack(counts))
      local e = expiry(target)
      if ARGV[2] == '' then
        -- Absolute, so that window.lua reads the time from its PTTL.
        redis.call('SET', c.key, packed, 'PXAT', num(e))
      else
        -- (At least 1: near 2^53, e - now may round to 0.)
        redis.call('SET', c.key, packed, 'PX', num(math.max(e - now, 1)))
      end
    elseif denied then
      local need = c.used - (c.limit - c.cost)
      local freed = 0
      for j = c.j0, head do
        freed = freed + ring[1 + head - j]
        if freed >= need then
          retry = expiry(j) - now
          break
        end
      end
    end
  elseif kind == 'gc' then
    local t, cap, burst = c.t, c.cap, c.burst
    local d = c.d
    local function remaining(debt)
      if t == 0 or debt >= cap then return 0 end
      return fdiv(cap - debt, t)
    end
    if not c.never and c.d + t * c.cost > cap then
      retry = cdiv(c.d + t * c.cost - cap, 1000000)
    end
    if would then
      d = d + t * c.cost
    end
    used = burst - remaining(d)
    reset = cdiv(d, 1000000)
    if write then
      local whole = fdiv(d, 1000000)
      redis.call('HSET', c.key, 'm', num(now + whole), 'n', num(d - whole * 1000000))
      -- Once full the state equals none; one second of grace (expiry
      -- runs on the server's clock, a test clock may be slower).
      redis.call('PEXPIRE', c.key, reset + 1000)
    end
    if not denied then retry = -1 end
  elseif kind == 'sw' then
    local w, start, curr, prev = c.w, c.start, c.curr, c.prev
    local elapsed = now - start
    reset = start + w - now
    if write then
      redis.call('HSET', c.key, 's', c.eff, 'c', curr + c.cost, 'p', prev)
      -- Until both windows are over (2W at most).
      redis.call('PEXPIRE', c.key, c.eff + 2 * w - now)
    elseif denied then
      if curr + c.cost <= c.limit then
        local e = cdiv((prev - (c.limit - c.cost - curr)) * w, prev)
        retry = e - elapsed
      else
        local e = cdiv((curr - (c.limit - c.cost)) * w, curr)
        retry = start + w - now + e
      end
    end
  elseif kind == 'sl' then
    local w = c.w
    if c.oldest ~= nil then
      reset = c.oldest + w - now
    elseif would and c.cost > 0 then
      reset = w
    end
    if write then
      -- A clock that stepped back adds to the newest entry's time.
      local at = math.max(now, c.newest or now)
      local seq = redis.call('INCRBY', c.seq, c.costs)
      if c.newest_n ~= nil and seq - c.cost < c.newest_n then
        -- The sequence was lost or set back: past the newest entry again.
        seq = c.newest_n + c.cost
        redis.call('SET', c.seq, num(seq))
      end
      redis.call('ZREMRANGEBYSCORE', c.key, '-inf', now - w)
      redis.call('ZADD', c.key, at, num(seq) .. ':' .. c.costs)
      redis.call('PEXPIRE', c.key, at + w - now)
      redis.call('PEXPIRE', c.seq, at + w - now)
    elseif denied then
      -- The oldest entries, a page at a time, until they free enough.
      local need = c.used - (c.limit - c.cost)
      local freed, offset, count = 0, 0, 16
      while retry < 0 do
        local page = redis.call('ZRANGEBYSCORE', c.key, '(' .. num(now - w), '+inf',
          'WITHSCORES', 'LIMIT', offset, count)
        for j = 1, #page, 2 do
          freed = freed + units_of(page[j])
          if freed >= need then
            retry = tonumber(page[j + 1]) + w - now
            break
          end
        end
        if #page < 2 * count then break end
        offset, count = offset + count, count * 2
      end
    end
  elseif kind == 'cal' then
    reset = c.finish - now
    if write then
      if ARGV[2] ~= '' then
        -- Relative expiry, so that a test clock far from the server's
        -- works too; one second of grace.
        local _, finish = period_bounds(c.eff, c.param)
        redis.call('SET', c.key, num(c.eff) .. ':' .. num(c.used + c.cost), 'PX', num(finish - now + 1000))
      elseif c.stored then
        redis.call('INCRBY', c.key, c.costs)
      else
        redis.call('SET', c.key, c.costs, 'PXAT', num(c.finish - 1))
      end
    elseif denied then
      retry = reset
    end
  elseif kind == 'cc' then
    if write then
      redis.call('ZREMRANGEBYSCORE', c.key, '-inf', lease_clock())
      local e = num(lease_clock() + c.ttl)
      redis.call('ZADD', c.key, e, lease .. ':' .. c.costs)
      -- One member per further unit (plan.lua counts members).
      for u = 2, c.cost do
        redis.call('ZADD', c.key, e, lease .. '.' .. num(u) .. ':0')
      end
      if redis.call('PTTL', c.key) < c.ttl then
        redis.call('PEXPIRE', c.key, c.ttl)
      end
    elseif denied then
      retry = 1000
    end
  else
    if write then
      redis.call('INCRBY', c.key, c.costs)
    end
  end
  local crossed = 0
  if c.mark ~= nil and would and mode == 'a' then
    local pct, hold = string.match(c.soft, '^(%d+):(%d+)$')
    pct, hold = tonumber(pct), tonumber(hold)
    local limit = c.limit
    if kind == 'gc' then limit = c.burst end
    if hold == 0 then hold = reset end
    if used * 100 >= limit * pct then
      local marked = tonumber(redis.call('GET', c.mark))
      if marked == nil or marked <= now then
        redis.call('SET', c.mark, num(now + hold), 'PX', num(hold + 1000))
        crossed = 1
      end
    end
  end
  local a = 0
  if c.allowed then a = 1 end
  out[i] = struct.pack('<ddddd', a, used, reset, retry, crossed)
end
if admitted then
  out[n + 1] = struct.pack('<d', 1)
else
  out[n + 1] = struct.pack('<d', 0)
end
return table.concat(out)
