-- Shared by both scripts. KEYS[1] is the bucket, ARGV[1] its interval T in µs (a decimal,
-- maybe fractional). Times are µs held in doubles: exact integers up to 2^53, and the
-- server's clock (~1.7e15 µs) leaves steps of 0.25 µs for fractions.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
-- A microsecond of slack in every comparison absorbs that rounding of sums of TATs.
local SLACK = 1

-- The bucket's theoretical arrival time (TAT), or nil when it has no key (it is full).
local function stored_tat()
  local value = redis.call('GET', KEYS[1])
  if not value then
    return nil
  end
  return tonumber(value) or error('not a bucket: ' .. KEYS[1])
end

-- Stores a TAT later than now, expiring (1 ms late) when the bucket would be full again.
-- Formatted by hand: Lua's own number-to-string keeps 14 digits, far too few.
local function store(tat)
  local ttl = math.ceil((tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', ttl)
end

-- Whole units that fit in `free` µs, never negative.
local function units(free)
  return math.max(0, math.floor((free + SLACK) / interval))
end
