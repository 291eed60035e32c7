-- tower-tenancy: move a gauge by ARGV[1] (a signed integer), saturating at 0.
-- KEYS[1] is the gauge (a plain integer, no expiry). Returns the new level.
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v < 0 then
  redis.call('SET', KEYS[1], '0')
  v = 0
end
return v
