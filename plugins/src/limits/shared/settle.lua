
-- Moves the TAT by ARGV[2] × T: a refund when negative, a debt when positive. A missing key
-- is a full bucket: a debt starts from now, a refund changes nothing. A TAT back at or before
-- now is a full bucket again, so the key goes.
local delta = tonumber(ARGV[2])
local stored = stored_tat()
if not stored and delta <= 0 then
  return 0
end
local moved = math.max(stored or now, now) + delta * interval
if moved <= now then
  redis.call('DEL', KEYS[1])
else
  store(moved)
end
return 1
