"""The Lua scripts that make every Redis state change one atomic server-side step; layer: transport.

Each script starts with ``PRELUDE``: the common arguments (``ARGV[1..]`` = key prefix, priority
separator, step count, steps ascending) and the lease bookkeeping; those that read envelopes add
``ENVELOPES``: helpers that find kombu's delivery tag, pick a priority list and splice kombu's
``redelivered`` flags into envelope text without re-encoding it (cjson would rewrite numbers and
empty arrays). The fixed keys come in ``KEYS``: unacked hash, unacked_index zset, delivery counts.
Per-queue keys are built from the prefix, exactly as kombu builds them.
"""

from __future__ import annotations

#: what every script starts with: the common arguments, and lease bookkeeping
PRELUDE = r"""
local unacked, index, deliveries = KEYS[1], KEYS[2], KEYS[3]
local prefix, sep = ARGV[1], ARGV[2]
local nsteps = tonumber(ARGV[3])
local steps = {}
for i = 1, nsteps do steps[i] = tonumber(ARGV[3 + i]) end
local A = 4 + nsteps -- first script-specific argument

local function lease_key(queue) return prefix .. 'celeriac.leases.' .. queue end

-- the lease ``token`` still holds ``tag`` of ``queue`` (a Celery peer's restore also ends it)
local function holds(tag, token, queue)
  return redis.call('HGET', lease_key(queue), tag) == token and redis.call('HEXISTS', unacked, tag) == 1
end

local function forget(tag, queue)
  redis.call('HDEL', unacked, tag)
  redis.call('ZREM', index, tag)
  redis.call('HDEL', lease_key(queue), tag)
end
"""  # noqa: E501 (a Lua line: wrapping it would change the script and its SHA)

#: the envelope helpers, for scripts that read or rewrite envelopes (their definitions cost
#: each call some microseconds of the server's time, so the others go without)
ENVELOPES = r"""
-- index just past the JSON value starting at i
local function skip(s, i)
  local c = string.sub(s, i, i)
  if c == '"' then
    local j = i + 1
    while true do
      local k = string.find(s, '["\\]', j)
      if string.sub(s, k, k) == '"' then return k + 1 end
      j = k + 2
    end
  elseif c == '{' or c == '[' then
    local depth, j = 0, i
    while true do
      local k = string.find(s, '[][{}"]', j)
      local d = string.sub(s, k, k)
      if d == '"' then
        j = skip(s, k)
      else
        if d == '{' or d == '[' then depth = depth + 1 else depth = depth - 1 end
        j = k + 1
        if depth == 0 then return j end
      end
    end
  end
  return string.find(s, '[,}%]]', i)
end

-- where the value of ``key`` starts in the object opening at i, or nil
local function member(s, i, key)
  local j = i + 1
  while true do
    j = string.find(s, '[^%s,]', j)
    if not j or string.sub(s, j, j) ~= '"' then return nil end
    local kend = skip(s, j)
    local v = string.find(s, '[^%s:]', kend)
    if string.sub(s, j + 1, kend - 2) == key then return v end
    j = skip(s, v)
  end
end

-- the envelope with kombu's restore marks: headers.redelivered, properties.delivery_info.redelivered
local function flag(env)
  local ok, spots = pcall(function()
    local found = {}
    local h = member(env, 1, 'headers')
    if h and string.sub(env, h, h) == '{' and not member(env, h, 'redelivered') then
      found[#found + 1] = h
    end
    local p = member(env, 1, 'properties')
    if p and string.sub(env, p, p) == '{' then
      local d = member(env, p, 'delivery_info')
      if d and string.sub(env, d, d) == '{' and not member(env, d, 'redelivered') then
        found[#found + 1] = d
      end
    end
    return found
  end)
  if not ok or string.sub(env, 1, 1) ~= '{' then return env end
  table.sort(spots, function(a, b) return a > b end)
  for _, at in ipairs(spots) do
    local rest = string.sub(env, at + 1)
    local comma = string.match(rest, '^%s*}') and '' or ', '
    env = string.sub(env, 1, at) .. '"redelivered": true' .. comma .. rest
  end
  return env
end

-- kombu's delivery_tag without decoding the whole envelope: the envelope is a JSON object whose
-- last member is "properties", and the tag is the last "delivery_tag" in it (a header of that
-- name would come earlier, in "headers"). Anything else: nil, and the caller decodes.
local function envelope_tag(env)
  local props = string.find(env, '"properties": {', 1, true)
  if not props then return nil end
  local tag
  for t in string.gmatch(string.sub(env, props), '"delivery_tag": "([%w%-%.]+)"') do tag = t end
  if tag and string.sub(env, -1) == '}' then return tag end
  return nil
end

local function decoded(env)
  local ok, value = pcall(cjson.decode, env)
  if ok and type(value) == 'table' and type(value.properties) == 'table' then return value end
  return nil
end

local function list_for(queue, env)
  local doc = decoded(env)
  local p = tonumber(doc and doc.properties.priority) or 0
  p = math.max(0, math.min(9, p))
  local step = 0
  for _, s in ipairs(steps) do if s <= p then step = s end end
  if step == 0 then return prefix .. queue end
  return prefix .. queue .. sep .. step
end


-- the envelope inside an unacked value '[<envelope>, "<exchange>", "<routing key>"]'
local function unacked_envelope(value)
  local ok, rec = pcall(cjson.decode, value)
  if not ok or type(rec) ~= 'table' then return nil end
  if type(rec[1]) == 'string' then return rec[1], rec end -- an undecodable item kept as a string
  local start = string.find(value, '{', 2, true)
  if not start then return nil end
  return string.sub(value, start, skip(value, start) - 1), rec
end
"""  # noqa: E501 (a Lua comment: wrapping it would change the script and its SHA)


#: ARGV[A..]: order ('low'|'high'), now, visibility timeout, max_n, token, restore limit, n queues,
#: queues. Returns {hint, (queue number, envelope, delivery count, tag)...}; hint is the next time
#: something may become due when nothing was fetched, else ''.
FETCH = PRELUDE + ENVELOPES + r"""
local high_first = ARGV[A] == 'high'
local now_s = ARGV[A + 1]
local now, vt, max_n = tonumber(now_s), tonumber(ARGV[A + 2]), tonumber(ARGV[A + 3])
local token, limit, nq = ARGV[A + 4], tonumber(ARGV[A + 5]), tonumber(ARGV[A + 6])
local queues = {}
for i = 1, nq do queues[i] = ARGV[A + 6 + i] end

-- 1. delayed messages that came due join their lists (a restore limit of 0: no sweeps this time)
for _, q in ipairs(limit > 0 and queues or {}) do
  local dkey = prefix .. 'celeriac.delayed.' .. q
  for _, env in ipairs(redis.call('ZRANGEBYSCORE', dkey, '-inf', now_s, 'LIMIT', 0, limit)) do
    redis.call('ZREM', dkey, env)
    redis.call('LPUSH', list_for(q, env), env)
  end
end

-- kombu's topic match on Redis: '*' one or more non-dot characters, '#' anything, words literal
local function topic_match(key, routing_key)
  local parts = {}
  for word in string.gmatch(key .. '.', '([^.]*)%.') do
    if word == '*' then parts[#parts + 1] = '[^%.]+'
    elseif word == '#' then parts[#parts + 1] = '.-'
    else parts[#parts + 1] = (string.gsub(word, '%W', '%%%0')) end
  end
  return string.find(routing_key, '^' .. table.concat(parts, '%.') .. '$') ~= nil
end

-- 2. expired leases (anyone's, as kombu's restore does) go back to the consuming end
local expired = limit > 0 and redis.call('ZRANGEBYSCORE', index, '-inf', now - vt,
                                         'LIMIT', 0, limit) or {}
for _, tag in ipairs(expired) do
  local value = redis.call('HGET', unacked, tag)
  redis.call('ZREM', index, tag)
  if value then
    redis.call('HDEL', unacked, tag)
    local env, rec = unacked_envelope(value)
    if env then
      local targets = {}
      local exchange, routing_key = rec[2], rec[3]
      if type(exchange) == 'string' and exchange ~= '' then
        for _, m in ipairs(redis.call('SMEMBERS', prefix .. '_kombu.binding.' .. exchange)) do
          local a = string.find(m, sep, 1, true)
          local b = a and string.find(m, sep, a + #sep, true)
          local key, topic = b and string.sub(m, 1, a - 1), b and b > a + #sep
          if b and (key == routing_key or (topic and type(routing_key) == 'string'
                                            and topic_match(key, routing_key))) then
            targets[#targets + 1] = string.sub(m, b + #sep)
          end
        end
      end
      if #targets == 0 and type(routing_key) == 'string' then targets[1] = routing_key end
      for _, q in ipairs(targets) do
        redis.call('HDEL', lease_key(q), tag)
        if type(rec[1]) == 'string' then
          redis.call('RPUSH', prefix .. q, env)
        else
          redis.call('RPUSH', list_for(q, env), flag(env))
        end
      end
    end
  end
end

-- 3. take up to max_n: queues in turn, each queue's priority lists best first
local lists, at = {}, {}
for qi, q in ipairs(queues) do
  lists[qi], at[qi] = {}, 1
  for i = 1, nsteps do
    local s = high_first and steps[nsteps + 1 - i] or steps[i]
    lists[qi][i] = (s == 0) and (prefix .. q) or (prefix .. q .. sep .. s)
  end
end
local out = {''}
local got, busy = 0, true
while got < max_n and busy do
  busy = false
  for qi, q in ipairs(queues) do
    if got >= max_n then break end
    while at[qi] <= nsteps do
      local env = redis.call('RPOP', lists[qi][at[qi]])
      if env then
        got = got + 1
        busy = true
        local tag, stored = envelope_tag(env), env
        if not tag then
          -- not the kombu layout we know: decode it properly (or keep it as a string)
          local doc = decoded(env)
          tag = doc and doc.properties.delivery_tag
          if type(tag) ~= 'string' then tag = token .. '.' .. got end
          if not doc then stored = cjson.encode(env) end
        end
        redis.call('ZADD', index, now_s, tag)
        redis.call('HSET', unacked, tag, '[' .. stored .. ', "", ' .. cjson.encode(q) .. ']')
        redis.call('HSET', lease_key(q), tag, token)
        local count = redis.call('HINCRBY', deliveries, tag, 1)
        out[#out + 1] = qi
        out[#out + 1] = env
        out[#out + 1] = count
        out[#out + 1] = tag
        break
      end
      at[qi] = at[qi] + 1
    end
  end
end
if got == 0 then
  local hint = nil
  for _, q in ipairs(queues) do
    local first = redis.call('ZRANGE', prefix .. 'celeriac.delayed.' .. q, 0, 0, 'WITHSCORES')
    if first[2] then hint = math.min(hint or math.huge, tonumber(first[2])) end
  end
  local oldest = redis.call('ZRANGE', index, 0, 0, 'WITHSCORES')
  if oldest[2] then hint = math.min(hint or math.huge, tonumber(oldest[2]) + vt) end
  if hint then out[1] = string.format('%.6f', hint) end
end
return out
"""

#: ARGV[A..]: n, then (tag, token, queue) per delivery. Returns 1/0 per delivery.
ACK = PRELUDE + r"""
local out = {}
for i = 1, tonumber(ARGV[A]) do
  local tag, token, q = ARGV[A + 3 * i - 2], ARGV[A + 3 * i - 1], ARGV[A + 3 * i]
  if holds(tag, token, q) then
    forget(tag, q)
    redis.call('HDEL', deliveries, tag)
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

#: ARGV[A..]: tag, token, queue, requeue ('1'|'0'), wake channel. Requeue goes to the consuming end.
REJECT = PRELUDE + ENVELOPES + r"""
local tag, token, q = ARGV[A], ARGV[A + 1], ARGV[A + 2]
if not holds(tag, token, q) then return 0 end
local env, rec = unacked_envelope(redis.call('HGET', unacked, tag))
forget(tag, q)
if ARGV[A + 3] == '1' and env then
  if type(rec[1]) == 'string' then
    redis.call('RPUSH', prefix .. q, env)
  else
    redis.call('RPUSH', list_for(q, env), flag(env))
  end
  redis.call('PUBLISH', ARGV[A + 4], '')
else
  redis.call('HDEL', deliveries, tag)
end
return 1
"""

#: ARGV[A..]: tag, token, queue, not_before, now, wake channel. A deferral is not a failed
#: delivery, so it takes back the count the fetch added.
DEFER = PRELUDE + ENVELOPES + r"""
local tag, token, q = ARGV[A], ARGV[A + 1], ARGV[A + 2]
if not holds(tag, token, q) then return 0 end
local env = unacked_envelope(redis.call('HGET', unacked, tag))
forget(tag, q)
if redis.call('HINCRBY', deliveries, tag, -1) <= 0 then redis.call('HDEL', deliveries, tag) end
if not env then return 1 end
if tonumber(ARGV[A + 3]) <= tonumber(ARGV[A + 4]) then
  redis.call('LPUSH', list_for(q, env), env)
  redis.call('PUBLISH', ARGV[A + 5], '')
else
  redis.call('ZADD', prefix .. 'celeriac.delayed.' .. q, ARGV[A + 3], env)
end
return 1
"""

#: ARGV[A..]: n, score offset from now (lease end - visibility timeout), then (tag, token, queue).
EXTEND = PRELUDE + r"""
local score = ARGV[A + 1]
for i = 1, tonumber(ARGV[A]) do
  local tag, token, q = ARGV[A + 3 * i - 1], ARGV[A + 3 * i], ARGV[A + 3 * i + 1]
  if holds(tag, token, q) then redis.call('ZADD', index, 'XX', score, tag) end
end
return 0
"""

#: ARGV[A..]: record, then optionally tag, token, queue of the delivery it settles. Returns the id
#: or '' when that lease was lost.
DEAD_LETTER = PRELUDE + r"""
local tag, token, q = ARGV[A + 1], ARGV[A + 2], ARGV[A + 3]
if tag then
  if not holds(tag, token, q) then return '' end
  forget(tag, q)
  redis.call('HDEL', deliveries, tag)
end
local id = tostring(redis.call('INCR', prefix .. 'celeriac.dead_letter.seq'))
redis.call('HSET', prefix .. 'celeriac.dead_letter', id, ARGV[A])
redis.call('ZADD', prefix .. 'celeriac.dead_letter.order', id, id)
return id
"""

#: ARGV[A..]: queue, purge ('1'|'0'). Counts (and with purge drops) the ready and delayed
#: messages; qsize adds the leases still held, forgetting leases a Celery peer's restore ended.
SIZE = PRELUDE + r"""
local q, purge = ARGV[A], ARGV[A + 1] == '1'
local n = 0
for _, s in ipairs(steps) do
  local key = (s == 0) and (prefix .. q) or (prefix .. q .. sep .. s)
  n = n + redis.call('LLEN', key)
  if purge then redis.call('DEL', key) end
end
local dkey = prefix .. 'celeriac.delayed.' .. q
n = n + redis.call('ZCARD', dkey)
if purge then
  redis.call('DEL', dkey)
  return n
end
for _, tag in ipairs(redis.call('HKEYS', lease_key(q))) do
  if redis.call('HEXISTS', unacked, tag) == 1 then
    n = n + 1
  else
    redis.call('HDEL', lease_key(q), tag)
  end
end
return n
"""
