-- tower-tenancy: renews the concurrency leases of one live request.
--
-- KEYS[i]  a concurrency set (sorted set: member = lease-id:units, score =
--          expiry in ms on the server's clock)
-- ARGV[2i - 1], ARGV[2i]  the member held in KEYS[i] and its lease TTL in ms
--
-- A member still alive (score in the future) gets the expiry now + TTL
-- (ZADD XX: never added); one that has expired or was released is not
-- brought back, since its slot may have been given to someone else. The
-- set's own expiry is extended to at least the TTL. All keys share the
-- tenant's hash tag (one cluster slot). Returns the number of members
-- renewed.

if redis.replicate_commands then
  pcall(redis.replicate_commands)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local renewed = 0
for i = 1, #KEYS do
  local member = ARGV[2 * i - 1]
  local ttl = tonumber(ARGV[2 * i])
  local score = tonumber(redis.call('ZSCORE', KEYS[i], member))
  if score ~= nil and score > now then
    redis.call('ZADD', KEYS[i], 'XX', string.format('%.0f', now + ttl), member)
    if redis.call('PTTL', KEYS[i]) < ttl then
      redis.call('PEXPIRE', KEYS[i], ttl)
    end
    renewed = renewed + 1
  end
end
return renewed
