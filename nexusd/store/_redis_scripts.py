"""The Lua scripts of `RedisStore`: each mutation of a session is one script,
so Redis runs it whole, alone, in one round trip, and checks the fence (the
session's `owner` is the writer's epoch) in the same step as it writes.

A script changes nothing before its checks have passed: Redis does not roll a
script back when a command in it fails, so every refusal is decided first
and returned as a status, ``{"missing"}``, ``{"fenced", owner}``, ...

Every key a script touches is named in KEYS but the meta hashes that `due`
and `list_sessions` read by id, and the live key `acquire` checks: those are
found from a prefix in ARGV. That is fine on one Redis (the engine does not
support Redis Cluster, whose slots would need every key declared).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ACQUIRE",
    "APPEND",
    "CREATE",
    "DELETE",
    "DUE",
    "LIST",
    "LOAD",
    "META_FIELDS",
    "NEXT_DEADLINE",
    "RELEASE",
    "SAVE_SNAPSHOT",
]

#: The metadata fields of a session hash, in the order the scripts take and
#: return them.
META_FIELDS: Final = ("created_at", "ttl", "expires_at", "idle_timeout", "idle_expires_at",
                      "idle_lag", "tokens")

_LIB: Final = """
local function set_meta(h, a, i)
  redis.call('HSET', h, 'created_at', a[i], 'ttl', a[i + 1], 'expires_at', a[i + 2],
             'idle_timeout', a[i + 3], 'idle_expires_at', a[i + 4], 'idle_lag', a[i + 5],
             'tokens', a[i + 6])
end

-- nil if `epoch` may write to the session of hash h, else the refusal.
local function fence(h, epoch)
  local owner = redis.call('HGET', h, 'owner')
  if not owner then return {'missing'} end
  if owner ~= epoch then return {'fenced', owner} end
  return nil
end

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)-'))
end

-- Drops the events at or before seq `upto` (the snapshot's) that are older
-- than `cutoff`, oldest first (stopping at the first one young enough).
local function trim_by_age(log, upto, cutoff)
  local last, from = nil, '-'
  while true do
    local batch = redis.call('XRANGE', log, from, upto, 'COUNT', 100)
    for _, e in ipairs(batch) do
      if tonumber(e[2][2]) >= cutoff then batch = nil; break end
      last = e[1]
    end
    if batch == nil or #batch < 100 then break end
    from = '(' .. last
  end
  if last then redis.call('XTRIM', log, 'MINID', '=', seq_of(last) .. '-1') end
end

-- Keeps the newest `keep` events at or before seq `upto`: the history is
-- the stream less the events after `upto`, which a snapshot leaves few of.
local function trim_by_count(log, upto, keep)
  local excess = redis.call('XLEN', log) - keep
  if excess <= 0 then return end
  excess = excess - #redis.call('XRANGE', log, '(' .. upto, '+')
  if excess <= 0 then return end
  local oldest = redis.call('XRANGE', log, '-', upto, 'COUNT', excess)
  redis.call('XTRIM', log, 'MINID', '=', seq_of(oldest[#oldest][1]) .. '-1')
end
"""

#: KEYS: hash, log, deadlines, ids, tombstone.
#: ARGV: sid, epoch, deadline, key_id, wrapped key, sealed snapshot, META_FIELDS.
CREATE: Final = _LIB + """
local h = KEYS[1]
if redis.call('EXISTS', h) == 1 then return {'exists'} end
redis.call('DEL', KEYS[2], KEYS[5])
redis.call('HSET', h, 'owner', ARGV[2], 'key_id', ARGV[4], 'wrapped', ARGV[5],
           'snapshot', ARGV[6], 'snapshot_seq', 0, 'seq', 0)
set_meta(h, ARGV, 7)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], 0, ARGV[1])
return {'ok'}
"""

#: KEYS: hash, log, deadlines.
#: ARGV: sid, epoch, deadline, history cutoff time, META_FIELDS, then
#: (seq, ts, sealed payload) per event.
APPEND: Final = _LIB + """
local h, log = KEYS[1], KEYS[2]
local refused = fence(h, ARGV[2])
if refused then return refused end
local last = tonumber(redis.call('HGET', h, 'seq'))
local first = 12
for i = first, #ARGV, 3 do
  local seq = tonumber(ARGV[i])
  if seq <= last then return {'seq', redis.call('HGET', h, 'seq')} end
  last = seq
end
for i = first, #ARGV, 3 do
  redis.call('XADD', log, ARGV[i] .. '-0', 'ts', ARGV[i + 1], 'p', ARGV[i + 2])
end
redis.call('HSET', h, 'seq', last)
set_meta(h, ARGV, 5)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
trim_by_age(log, redis.call('HGET', h, 'snapshot_seq'), tonumber(ARGV[4]))
return {'ok'}
"""

#: KEYS: hash, log, deadlines.
#: ARGV: sid, epoch, deadline, history cutoff time, events kept, seq, sealed
#: snapshot, META_FIELDS.
SAVE_SNAPSHOT: Final = _LIB + """
local h, log = KEYS[1], KEYS[2]
local refused = fence(h, ARGV[2])
if refused then return refused end
local stored = redis.call('HGET', h, 'snapshot_seq')
if tonumber(ARGV[6]) < tonumber(stored) then return {'stale', stored} end
redis.call('HSET', h, 'snapshot', ARGV[7], 'snapshot_seq', ARGV[6])
set_meta(h, ARGV, 8)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
trim_by_count(log, ARGV[6], tonumber(ARGV[5]))
trim_by_age(log, ARGV[6], tonumber(ARGV[4]))
return {'ok'}
"""

#: KEYS: hash, log, deadlines, ids, tombstone.
#: ARGV: sid, epoch, reason ("" for none), tombstone lifetime (s).
DELETE: Final = _LIB + """
local h = KEYS[1]
local refused = fence(h, ARGV[2])
if refused then
  if refused[1] == 'missing' then return {'ok'} end
  return refused
end
redis.call('DEL', h, KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
if ARGV[3] ~= '' then redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[4]) end
return {'ok'}
"""

#: KEYS: hash. ARGV: epoch, prefix of the live keys.
#: Returns -1 for no such session, else the owner's epoch after the call.
ACQUIRE: Final = """
local owner = redis.call('HGET', KEYS[1], 'owner')
if not owner then return -1 end
if owner == '' or owner == ARGV[1] or redis.call('EXISTS', ARGV[2] .. owner) == 0 then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1])
  return tonumber(ARGV[1])
end
return tonumber(owner)
"""

#: KEYS: hash. ARGV: epoch.
RELEASE: Final = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'owner', '')
end
return 0
"""

#: KEYS: hash, log. Returns nil, or {hash fields and values, log entries}.
LOAD: Final = """
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return nil end
return {fields, redis.call('XRANGE', KEYS[2], '-', '+')}
"""

_METAS: Final = """
local out = {}
for _, sid in ipairs(ids) do
  out[#out + 1] = sid
  out[#out + 1] = redis.call('HMGET', ARGV[1] .. sid .. '}', 'created_at', 'ttl',
                             'expires_at', 'idle_timeout', 'idle_expires_at', 'idle_lag',
                             'tokens')
end
return out
"""

#: KEYS: deadlines. ARGV: hash prefix, now, limit. Returns sid, META_FIELDS values, ...
DUE: Final = """
local ids = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[2], 'BYSCORE', 'LIMIT', 0, ARGV[3])
""" + _METAS

#: KEYS: ids. ARGV: hash prefix, start (ZRANGE BYLEX), limit.
LIST: Final = """
local ids = redis.call('ZRANGE', KEYS[1], ARGV[2], '+', 'BYLEX', 'LIMIT', 0, ARGV[3])
""" + _METAS

#: KEYS: deadlines. Returns the lowest score, or nil.
NEXT_DEADLINE: Final = """
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return first[2]
"""
