-- tower-tenancy: move a gauge by ARGV[1] (a signed 64-bit integer),
-- saturating at 0 and at the largest integer Redis holds (2^63 - 1).
-- KEYS[1] is the gauge (a plain integer, no expiry). Returns the new level
-- as a string (exact beyond 2^53).
local ok, v = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[1])
if not ok then
  local msg = v
  if type(v) == 'table' then msg = v.err end
  if not string.find(tostring(msg), 'overflow') then
    return redis.error_reply(tostring(msg))
  end
  redis.call('SET', KEYS[1], '9223372036854775807')
elseif v < 0 then
  redis.call('SET', KEYS[1], '0')
end
return redis.call('GET', KEYS[1])
