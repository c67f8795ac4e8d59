
-- GCRA reservation. ARGV[2] burst, ARGV[3] n. Returns
-- {allowed 0|1, n clamped to burst, remaining, reset µs, retry_after µs}, integers only
-- (Redis truncates floats in replies), µs rounded up so nobody retries early.
local burst = tonumber(ARGV[2])
local n = math.min(tonumber(ARGV[3]), burst)
local span = burst * interval
local tat = math.max(stored_tat() or now, now)
local new = tat + n * interval
if new - now > span + SLACK then
  return {0, n, units(span - (tat - now)), math.ceil(tat - now), math.ceil(new - now - span)}
end
store(new)
return {1, n, units(span - (new - now)), math.ceil(new - now), 0}
