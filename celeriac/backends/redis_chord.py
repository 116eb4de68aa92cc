"""Chord joins on Redis, in the keys Celery 5.7 uses, so celeriac and Celery workers can finish
each other's chords. Layer: backends (used by ``RedisBackend``).

Under ``celery-taskset-meta-<group_id>``: ``.s`` the size (written by the client), ``.t`` extras
(``add_to_chord``), ``.j`` a sorted set of ``[1, id, state, result]`` entries scored by
``group_index``, ``.d`` the set of ``"<id>:<index>"`` already counted (so a redelivered header
task counts once), ``.c`` the dispatch claim, then ``"done"``. Each step is one Lua script: the
count and the claim can never disagree across workers. Celery 5.3's workers, which only know
``.j``/``.t``/``.s``, count into the same sorted set.
"""

from __future__ import annotations

import math
from typing import Any

from ..utils import redis_wire
from .base import ChordPart, join_member

# KEYS: .j .t .s .d .c   ARGV: member, entry, score, expires (s, 0 = none), claim ttl (s), token
_PART_RETURN = """
if redis.call('GET', KEYS[5]) == 'done' then
  return {-1, false, false, 0}
end
if redis.call('SADD', KEYS[4], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
end
local ready = redis.call('ZCARD', KEYS[1])
local expires = tonumber(ARGV[4])
if expires > 0 then
  for i = 1, 4 do redis.call('EXPIRE', KEYS[i], expires) end
end
local extra = redis.call('GET', KEYS[2])
local size = redis.call('GET', KEYS[3])
local claimed = 0
if size and ready == tonumber(size) + tonumber(extra or 0) then
  -- the same token again (a retried call) still holds the claim it took
  if redis.call('SET', KEYS[5], ARGV[6], 'NX', 'EX', ARGV[5]) then claimed = 1
  elseif redis.call('GET', KEYS[5]) == ARGV[6] then claimed = 1 end
end
return {ready, extra, size, claimed}
"""

# KEYS: .c .j .t .s .d   ARGV: token, done ttl (s)
_CLEANUP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SET', KEYS[1], 'done', 'EX', ARGV[2])
return 1
"""


# A header task's result stored (SET, or SETEX / SET PX with its expiry, then PUBLISH of the same
# bytes on the key's channel, as RedisBackend writes every result) and then counted as above, in
# one step: a refused write raises before anything is counted, as when the two were separate.
# KEYS: .j .t .s .d .c, the result's key   ARGV: as above, then value, seconds (0: none),
# milliseconds (0: none)
_WRITE_AND_PART_RETURN = """
if tonumber(ARGV[8]) > 0 then redis.call('SETEX', KEYS[6], ARGV[8], ARGV[7])
elseif tonumber(ARGV[9]) > 0 then redis.call('SET', KEYS[6], ARGV[7], 'PX', ARGV[9])
else redis.call('SET', KEYS[6], ARGV[7]) end
redis.call('PUBLISH', KEYS[6], ARGV[7])
""" + _PART_RETURN


_PART_RETURN_SHA = redis_wire.script_sha(_PART_RETURN)
_WRITE_AND_PART_RETURN_SHA = redis_wire.script_sha(_WRITE_AND_PART_RETURN)
_CLEANUP_SHA = redis_wire.script_sha(_CLEANUP)


def part_return_command(keys: dict[str, str], task_id: str, group_index: int | None,
                        entry: bytes, *, expires: float, claim_token: str,
                        claim_ttl: float) -> tuple[Any, ...]:
    member, _ = join_member(task_id, group_index)
    score = "+inf" if group_index is None else str(int(group_index))
    return ("EVALSHA", _PART_RETURN_SHA, 5, keys[".j"], keys[".t"], keys[".s"], keys[".d"],
            keys[".c"], member, entry, score, int(expires or 0),
            max(1, int(claim_ttl)), claim_token)


def write_and_part_return_command(keys: dict[str, str], result_key: str, value: bytes,
                                  ttl: float | None, task_id: str, group_index: int | None,
                                  entry: bytes, *, expires: float, claim_token: str,
                                  claim_ttl: float) -> tuple[Any, ...]:
    """``part_return_command`` preceded by the write of the task's own result, in one script.
    ``ttl`` as ``RedisBackend`` takes it: whole seconds go as SETEX (Celery's command), other
    values as milliseconds."""
    count = part_return_command(keys, task_id, group_index, entry, expires=expires,
                                claim_token=claim_token, claim_ttl=claim_ttl)
    seconds = milliseconds = 0
    if ttl and ttl >= 1 and float(ttl).is_integer():
        seconds = int(ttl)
    elif ttl:
        milliseconds = max(1, math.ceil(ttl * 1000))
    return ("EVALSHA", _WRITE_AND_PART_RETURN_SHA, 6, *count[3:8], result_key, *count[8:],
            value, seconds, milliseconds)


def part_from_reply(reply: Any) -> ChordPart:
    if isinstance(reply, Exception):
        raise reply
    ready, extra, size, claimed = reply
    if ready == -1:
        return ChordPart(-1, None, False)
    expected = int(size) + int(extra or 0) if size else None
    return ChordPart(int(ready), expected, bool(claimed))


def cleanup(wire: redis_wire.Wire, keys: dict[str, str], claim_token: str,
            done_ttl: float) -> bool:
    return bool(wire.call_one("EVALSHA", _CLEANUP_SHA, 5, keys[".c"], keys[".j"], keys[".t"],
                              keys[".s"], keys[".d"], claim_token, max(1, int(done_ttl))))
