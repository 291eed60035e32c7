-- tower-tenancy: the lean admission of a batch of ONE enforced sliding
-- window check ("sb" in admit.lua) without a soft threshold nor lease
-- releases: the common request. The same decisions and the same key as
-- admit.lua, in fewer steps: GET, PTTL (TIME when the key is new) and at
-- most one write.
--
-- KEYS[1]  the window's key
-- ARGV[1]  limit, cost, window ms, and the time in ms of a test clock when
--          given (without: the server's time), packed as three or four
--          little-endian doubles: one argument and one struct.unpack cost
--          Redis a third of three numeric arguments
--
-- Returns what admit.lua returns for one check: allowed, used, reset ms,
-- retry ms (-1: none), crossed (0), admitted, as six little-endian doubles;
-- or, when the check is allowed (retry -1, crossed 0, admitted 1) and
-- used < 2^26 and reset < 2^27, the integer used * 2^27 + reset, cheaper
-- to send.
--
-- The key (layout in src/store/redis.rs and admit.lua) is one string:
--   w (double), head (double), off (byte), total, then the counts of
--   buckets head, head - 1, ..., head - 8
-- total and the counts are u16 (37 bytes) while total <= 65535, else
-- doubles (97 bytes): the length tells. total is the sum of the nine
-- counts; head - off is the oldest bucket with a count (off = 9: none).
-- With the server's clock the key expires at E = (head + 1) * b + w - 1
-- (PXAT), when its newest bucket stops counting, so a live key's PTTL gives
-- the time: now = E - PTTL, the millisecond TIME would give.
--
-- Numbers are integers below 2^53, so the arithmetic is exact: for such
-- x >= 0 and b > 0, x / b is rounded to the nearest double, which never
-- crosses an integer, so x - x % b is exact. (No math.* calls: a C call
-- costs more than the arithmetic.)

local key = KEYS[1]
local a = ARGV[1]
local clock = #a == 32
local limit, cost, w, now
if clock then
  limit, cost, w, now = struct.unpack('<dddd', a)
else
  limit, cost, w = struct.unpack('<ddd', a)
end
local b = (w + 7 - (w + 7) % 8) / 8
local v = redis.call('GET', key)
local ttl = -1
if v and not clock then ttl = redis.call('PTTL', key) end
-- The fast path: the same window, now in the newest bucket, the oldest
-- bucket with a count still counted, allowed. With
-- E = (head + 1) * b + w - 1, the key's expiry, and t = E - now (its PTTL
-- on the server's clock): now < (head + 1) * b is t >= w; now >= head * b
-- is t <= b + w - 1; head - off >= j0 (the oldest counted bucket) is
-- off * b < t (and head >= off), so used = total and reset =
-- (head - off + 1) * b + w - 1 - now = t - off * b. Total and the newest
-- count (16-bit counts while the sum stays <= 65535, else doubles) change
-- in place (with a test clock the expiry is set again, as the general
-- path's SET PX would). Anything else: the general path below.
local n = v and #v
if n == 37 or n == 97 then
  local hf, nf, cap = '<ddBHH', '<HH', 65535
  if n == 97 then hf, nf, cap = '<ddBdd', '<dd', limit end
  local w0, head, off, total, newest = struct.unpack(hf, v)
  if w0 == w and off <= 8 and head >= off then
    local t = ttl
    if clock then t = (head + 1) * b + w - 1 - now end
    local sum = total + cost
    if t >= w and t <= b + w - 1 and off * b < t and sum <= limit and sum <= cap then
      if cost > 0 then
        redis.call('SETRANGE', key, '17', struct.pack(nf, sum, newest + cost))
        if clock then redis.call('PEXPIRE', key, string.format('%d', t)) end
      end
      local reset = t - off * b
      if sum < 67108864 and reset < 134217728 then
        return sum * 134217728 + reset
      end
      return struct.pack('<dddddd', 1, sum, reset, -1, 0, 1)
    end
  end
end
-- sz: bytes per count, cf: its format; the count of bucket j (head - 8 <=
-- j <= head) is at the 1-based position p0 + sz * (head - j).
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
if not clock then
  if ttl >= 0 then
    now = (head + 1) * ((w0 + 7 - (w0 + 7) % 8) / 8) + w0 - 1 - ttl
  else
    local t = redis.call('TIME')
    now = t[1] * 1000 + (t[2] - t[2] % 1000) / 1000
  end
end
local cur = (now - now % b) / b
-- moved: the state was kept under another window. What that window counts
-- now moves into bucket cur (towards refusing), as in admit.lua; then, as
-- for a new key, the only count is total, in bucket head.
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
-- The counted buckets: j0..head (a clock behind the newest bucket reads the
-- state at its start). Buckets before head - off are empty, so used is
-- total less the counts of head - off .. j0 - 1; first is the oldest
-- counted bucket with a count.
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
local allowed = used + cost <= limit
local reset = 0
if first ~= nil then
  reset = (first + 1) * b + w - 1 - now
elseif allowed and cost > 0 then
  reset = (target + 1) * b + w - 1 - now
end
if allowed then
  used = used + cost
  if cost > 0 then
    local sum = total + cost
    if not moved and target == head and not clock and (sz == 8 or sum <= 65535) then
      -- The same bucket: total and the newest count change in place (and
      -- off when the ring was empty); the expiry stays E.
      if off > 8 then off = 0 end
      local fmt = '<Bdd'
      if sz == 2 then fmt = '<BHH' end
      redis.call('SETRANGE', key, '16', struct.pack(fmt, off, sum, newest + cost))
    else
      -- The ring moves to bucket target: buckets before target - 8 leave.
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
        -- (At least 1: near 2^53, e - now may round to 0.)
        local px = e - now
        if px < 1 then px = 1 end
        redis.call('SET', key, packed, 'PX', string.format('%d', px))
      else
        redis.call('SET', key, packed, 'PXAT', string.format('%d', e))
      end
    end
  end
  if used < 67108864 and reset >= 0 and reset < 134217728 then
    return used * 134217728 + reset
  end
  return struct.pack('<dddddd', 1, used, reset, -1, 0, 1)
end
local retry = -1
if cost <= limit then
  -- Buckets expire oldest first: the first whose expiry frees need units.
  local need = used - (limit - cost)
  local freed = 0
  for j = first or head + 1, head do
    if moved then
      if j == head then freed = freed + total end
    else
      freed = freed + struct.unpack(cf, v, p0 + sz * (head - j))
    end
    if freed >= need then
      retry = (j + 1) * b + w - 1 - now
      break
    end
  end
end
return struct.pack('<dddddd', 0, used, reset, retry, 0, 0)
