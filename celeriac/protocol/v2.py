"""Celery task protocol v2: build and parse task messages; layer: protocol (pure, no I/O).

``encode_task`` writes headers, properties and body exactly as Celery 5 (``as_task_v2`` plus
kombu's ``Producer.publish``) does, key order included, so a Celery worker cannot tell the
difference. ``decode_task`` is the worker's single entry point for incoming task messages: it
runs once per task, so it does the minimum of work and validates only what execution relies on.
"""

from __future__ import annotations

import binascii
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from numbers import Number
from typing import Any, Iterator, Mapping, Sequence

from ..exceptions import InvalidTaskError
from . import serialization
from .message import Message

#: Celery's ``app.amqp.argsrepr_maxsize`` / ``kwargsrepr_maxsize``.
REPR_MAXSIZE = 1024
_EMPTY_EMBED: dict[str, Any] = {}


@dataclass(slots=True)
class TaskBody:
    """A decoded task message: everything a worker needs to run it and to send follow-ups."""

    id: str
    name: str
    args: list[Any] | tuple[Any, ...]
    kwargs: dict[str, Any]
    callbacks: list[Any] | None
    errbacks: list[Any] | None
    chain: list[Any] | None
    chord: dict[str, Any] | None
    root_id: str | None
    parent_id: str | None
    group_id: str | None
    group_index: int | None
    eta: datetime | None
    expires: datetime | None
    retries: int
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool | None  # None: the sender did not say (Celery's send_task)
    origin: str | None
    shadow: str | None
    reply_to: str | None
    headers: dict[str, Any]
    argsrepr: str | None
    kwargsrepr: str | None


# ---- encoding -----------------------------------------------------------------------------------


def anon_nodename() -> str:
    """The ``origin`` Celery gives a process that is not a named worker: ``gen<pid>@<host>``."""
    return f"gen{os.getpid()}@{socket.gethostname()}"


_urandom = os.urandom
#: the hex digit holding the RFC 4122 variant bits (``10xx``) for each random one
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def uuid4_text() -> str:
    """``str(uuid.uuid4())`` (the same 122 random bits from ``os.urandom``, version and variant
    set), in a third of the time: every task id and Redis delivery tag is one.

    Ids are drawn ``_POOLED_IDS`` at a time (one system call, laid out at once) and handed out
    one by one; a forked child (any new pid, at-fork hooks or not) never takes its parent's."""
    pool = _this_pool()
    while True:
        try:
            return pool.pop()  # one step under the GIL: two threads never get the same id
        except IndexError:
            pool.extend(uuid4_texts(_POOLED_IDS))


def uuid4_pair() -> tuple[str, str]:
    """Two of ``uuid4_text()`` for the price of one (a ``delay()``'s task id and delivery tag)."""
    pool = _this_pool()
    while True:
        try:
            return pool.pop(), pool.pop()
        except IndexError:  # (a first one popped is dropped: ids are never handed out twice)
            pool.extend(uuid4_texts(_POOLED_IDS))


def _this_pool() -> list[str]:
    """The ids this process drew ahead and has not handed out yet."""
    global _pool, _pool_pid
    pid = _getpid()
    if pid != _pool_pid:  # a forked child: the parent's ids stay the parent's
        _pool, _pool_pid = [], pid
    return _pool


_getpid = os.getpid
#: how many ids ``uuid4_text`` draws at once, and those not handed out yet, of process _pool_pid
_POOLED_IDS = 64
_pool: list[str] = []
_pool_pid = 0


def uuid4_texts(count: int) -> list[str]:
    """``count`` of ``uuid4_text()``, from one read of random bytes (a batch's ids and delivery
    tags). Many are laid out at once: each of the 32 digit places of the text is filled for all
    of them by one slice assignment, and one split cuts them apart."""
    if count < _BULK_IDS:
        h = _urandom(16 * count).hex()
        return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{_VARIANT[h[i + 16]]}"
                f"{h[i + 17:i + 20]}-{h[i + 20:i + 32]}" for i in range(0, 32 * count, 32)]
    digits = _hexlify(_urandom(16 * count))
    out = bytearray(_ID_LAYOUT * count)
    for index, place in _ID_PLACES:
        out[place::_ID_STEP] = digits[index::32]
    out[_ID_VARIANT_PLACE::_ID_STEP] = digits[16::32].translate(_VARIANT_DIGITS)
    return out.decode("ascii").split()


#: from this many ids on, ``uuid4_texts`` lays them out all at once
_BULK_IDS = 24
_hexlify = binascii.hexlify
#: one id's text and a space (``split`` cuts there); the version digit stays 4
_ID_LAYOUT = b"00000000-0000-4000-8000-000000000000 "
_ID_STEP = len(_ID_LAYOUT)
#: (hex digit of the random bytes, place in the text) for all but the version's and variant's
_ID_PLACES = [(index, place) for index, place in enumerate(
    p for p, c in enumerate(_ID_LAYOUT[:36]) if c != ord("-")) if index not in (12, 16)]
_ID_VARIANT_PLACE = 19
#: a random hex digit to the variant digit (``10xx``): what ``_VARIANT`` maps, byte for byte
_VARIANT_DIGITS = bytes.maketrans(b"0123456789abcdef", b"89ab89ab89ab89ab")


# ---- the headers' JSON text, from a template per task ------------------------------------------
#
# A transport that stores kombu JSON (Redis) would encode the ~20 headers of every message again,
# though for one task sent with the same options only the id, root id, parent id, group index and
# the two reprs change from call to call. ``encode_task(json_headers=True)`` keeps, per set of
# constant values, the JSON text cut at those six places, and fills them in: the same bytes as
# ``serialization.json_dumps(headers)``, at a fraction of the cost.

#: stand-ins encoded in place of the per-call values when a template is made (``json_template``
#: refuses one that the constant values happen to contain too)
_SLOTS = ("id", "group_index", "root_id", "parent_id", "argsrepr", "kwargsrepr")  # headers' order
_MARKS = tuple(f"\x00celeriac:{key}\x00" for key in _SLOTS)
_TEMPLATES: dict[tuple[Any, ...], tuple[str, ...] | None] = {}
#: templates kept at most (the cache starts over beyond it: a template costs one encode)
TEMPLATE_LIMIT = 1024
_json_str = serialization.json_string
_json_text = serialization.json_dumps


def _template(table: dict[str, Any]) -> tuple[str, ...] | None:
    """The JSON text of ``table`` split around the per-call values (``_SLOTS``, in order)."""
    return serialization.json_template({**table, **dict(zip(_SLOTS, _MARKS))}, _MARKS)


def _headers_json(table: dict[str, Any], key: tuple[Any, ...]) -> str | None:
    """``json_dumps(table)`` through the template for ``key`` (None: no template fits)."""
    try:
        pieces = _TEMPLATES[key]
    except KeyError:
        if len(_TEMPLATES) >= TEMPLATE_LIMIT:
            _TEMPLATES.clear()
        pieces = _TEMPLATES[key] = _template(table)
    if pieces is None:
        return None
    parent = table["parent_id"]
    index = table["group_index"]
    if index is not None and type(index) is not int:  # a bool is an int, but not in JSON
        return None
    # a per-call value of another type than the template's raises TypeError here
    return (f"{pieces[0]}{_json_str(table['id'])}"
            f"{pieces[1]}{'null' if index is None else int.__repr__(index)}"
            f"{pieces[2]}{_json_str(table['root_id'])}"
            f"{pieces[3]}{'null' if parent is None else _json_str(parent)}"
            f"{pieces[4]}{_json_str(table['argsrepr'])}"
            f"{pieces[5]}{_json_str(table['kwargsrepr'])}{pieces[6]}")


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def encode_task(*, name: str, task_id: str, args: list[Any] | tuple[Any, ...] = (),
                kwargs: Mapping[str, Any] | None = None,
                serializer: str = "json", compression: str | None = None,
                root_id: str | None = None, parent_id: str | None = None,
                group_id: str | None = None, group_index: int | None = None,
                shadow: str | None = None, eta: datetime | None = None,
                expires: datetime | None = None, retries: int = 0,
                time_limit: float | None = None, soft_time_limit: float | None = None,
                callbacks: list[Any] | None = None, errbacks: list[Any] | None = None,
                chain: list[Any] | None = None, chord: dict[str, Any] | None = None,
                origin: str | None = None,
                ignore_result: bool | None = False, reply_to: str = "",
                priority: int | None = 0, argsrepr: str | None = None,
                kwargsrepr: str | None = None, headers: dict[str, Any] | None = None,
                stamped_headers: list[str] | None = None, stamps: dict[str, Any] | None = None,
                replaced_task_nesting: int = 0, now: datetime | None = None,
                json_headers: bool = False) -> Message:
    """Build one protocol-2 task message, ready for any transport.

    ``eta``/``expires`` without a timezone are taken as UTC. ``now`` is only used for the AMQP
    ``expiration`` property (milliseconds left until ``expires``); pass the time the caller
    derived ``expires`` from so the two agree.

    ``priority`` is sent as given, not clamped: each transport clamps as kombu's does (RabbitMQ
    carries 0..255 and the queue's ``x-max-priority`` caps it; Redis keeps the number and picks
    the sub-list of its value clamped to 0..9). None leaves the property out, as Celery's
    ``apply_async(queue=...)`` without a priority does (the Redis envelope then says 0).

    ``json_headers`` (for a transport that stores JSON) also sets the message's
    ``headers_json`` when a template fits (see ``_headers_json``).
    """
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"task args must be a list or tuple, not {type(args).__name__}")
    if kwargs is None:
        kwargs = {}
    elif not isinstance(kwargs, dict):
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"task kwargs must be a mapping, not {type(kwargs).__name__}")
        kwargs = dict(kwargs)  # serializers only know real dicts
    if eta is not None:
        eta = _aware(eta)
    properties: dict[str, Any] = {"correlation_id": task_id, "reply_to": reply_to or "",
                                  "delivery_mode": 2}
    if expires is not None:
        expires = _aware(expires)
        left = (expires - _aware(now or datetime.now(timezone.utc))).total_seconds()
        # Celery sends 0 (not a negative TTL) for an expiry already in the past.
        properties["expiration"] = str(int(max(left, 0) * 1000))
    if priority is not None:
        properties["priority"] = int(priority)

    table = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": shadow,
        "eta": eta.isoformat() if eta is not None else None,
        "expires": expires.isoformat() if expires is not None else None,
        "group": group_id,
        "group_index": group_index,
        "retries": retries,
        "timelimit": [time_limit, soft_time_limit],
        "root_id": root_id or task_id,
        "parent_id": parent_id,
        "argsrepr": (argsrepr if argsrepr is not None
                     else safe_repr(tuple(args), REPR_MAXSIZE) if args else "()"),
        "kwargsrepr": (kwargsrepr if kwargsrepr is not None
                       else safe_repr(kwargs, REPR_MAXSIZE) if kwargs else "{}"),
        "origin": origin or anon_nodename(),
        "ignore_result": ignore_result,
        "replaced_task_nesting": replaced_task_nesting,
        "stamped_headers": stamped_headers,
        "stamps": {} if stamps is None else stamps,
    }
    if headers:
        table.update(headers)  # as Celery: user headers may override the standard ones
    if callbacks is None and errbacks is None and chain is None and chord is None:
        embed = _NO_EMBED  # the usual call: nothing to carry, the same map every time
    else:
        embed = {"callbacks": callbacks, "errbacks": errbacks, "chain": chain, "chord": chord}
    content_type, content_encoding, body = _dump_body(args, kwargs, embed, serializer)
    if compression:
        table["compression"], body = serialization.compress(body, compression)
    text = None
    if (json_headers and not headers and eta is None and expires is None
            and stamped_headers is None and stamps is None):
        text = _templated(table)
    return Message(body=body, content_type=content_type, content_encoding=content_encoding,
                   headers=table, properties=properties, headers_json=text)


def _templated(table: dict[str, Any]) -> str | None:
    """``json_dumps(table)`` through the template of its constant values (None: none fits)."""
    get = table.get
    retries, ignore, nesting = get("retries"), get("ignore_result"), get("replaced_task_nesting")
    hard, soft = table["timelimit"]
    # the types too: 1, 1.0 and True are equal keys but different JSON
    key = (get("task"), get("shadow"), get("group"), retries, type(retries), hard, type(hard),
           soft, type(soft), get("origin"), ignore, type(ignore), nesting, type(nesting),
           get("compression"))
    try:
        return _headers_json(table, key)
    except TypeError:  # an unhashable constant, or a per-call value of another type
        return None


class Likes:
    """Many calls like the one ``model`` was made for (by ``encode_task``, in JSON, uncompressed,
    with headers text, no eta or expires): the same task, options and embed (callbacks,
    errbacks, chord), another id, group index, arguments and (when the model's was its own id)
    root id. It keeps what differs as text: each one's headers JSON and body, spliced from the
    model's (``parts``), the same bytes as ``encode_task`` writes; ``messages()`` makes full
    ``Message`` objects of them for whoever needs them (signals, other transports).

    Made by ``likes_of``; ``add`` takes a call, ``parts`` then lays them all out at once."""

    __slots__ = ("model", "calls", "ids", "_pieces", "_embed", "_derived_root", "_parts",
                 "_single")

    def __init__(self, model: Message, pieces: tuple[str, ...], embed: str,
                 derived_root: bool) -> None:
        self.model = model
        #: ``(id or None, args, kwargs, group index)`` of each call (None: an id is drawn)
        self.calls: list[tuple[str | None, Any, Any, int | None]] = []
        #: each call's id, once ``parts`` has drawn those not given
        self.ids: list[str] = []
        self._pieces = pieces
        self._embed = embed
        self._derived_root = derived_root
        self._parts: list[tuple[str, str, bytes]] | None = None
        #: ``one``'s constant text, made at its first call
        self._single: tuple[str, str, str, str, str, str, str, bytes] | None = None

    def __len__(self) -> int:
        return len(self.calls)

    def add(self, task_id: Any, args: Any, kwargs: Any, group_index: Any) -> bool:
        """Take one more call; False (nothing taken) when its id or group index is of a kind
        the model's template does not write (the caller builds that one in full)."""
        if not (task_id is None or task_id.__class__ is str) or not (
                group_index is None or group_index.__class__ is int):  # a bool: not in JSON
            return False
        if args.__class__ is not tuple:
            args = tuple(args) if args is not None else ()
        if kwargs.__class__ is not dict:
            kwargs = dict(kwargs) if kwargs is not None else {}
        self.calls.append((task_id or None, args, kwargs, group_index))
        self._parts = None
        return True

    def extend(self, calls: Sequence[tuple[Any, Any, Any, Any]], start: int = 0,
               formed: bool = False) -> int:
        """``add`` each of ``calls[start:]`` (``(id, args, kwargs, group index)``), in order,
        up to the first it does not take; returns where it stopped (``len(calls)``: all taken).
        A call already in the form ``add`` keeps (a str id, a tuple, a dict, an int or no
        index: a group's members) is kept as it is, without a call per call; with ``formed``
        the caller vouches that all are (and a non-empty id each), so none is looked at."""
        self._parts = None
        if formed:
            self.calls.extend(calls[start:] if start else calls)
            return len(calls)
        keep = self.calls.append
        add = self.add
        for at in range(start, len(calls)):
            call = calls[at]
            task_id, args, kwargs, index = call
            if (task_id.__class__ is str and task_id and args.__class__ is tuple
                    and kwargs.__class__ is dict and (index is None or index.__class__ is int)):
                keep(call)
            elif not add(task_id, args, kwargs, index):
                return at
        return len(calls)

    def parts(self) -> list[tuple[str, str, bytes]]:
        """``(id as JSON text, headers JSON text, body)`` of each call, in call order; ids not
        given are drawn here (``ids`` then holds every call's)."""
        if self._parts is not None:
            return self._parts
        calls = self.calls
        if len(self.ids) != len(calls):  # draw each missing id once, whatever is added later
            new: list[Any] = [call[0] for call in calls[len(self.ids):]]
            missing = new.count(None)
            if missing:
                drawn = iter(uuid4_texts(missing))
                new = [task_id or next(drawn) for task_id in new]
            self.ids.extend(new)
        p0, p1, p2, p3, p4, p5, p6 = self._pieces
        parent = self.model.headers["parent_id"]
        p34 = f"{p3}{'null' if parent is None else _json_str(parent)}{p4}"
        derived = self._derived_root
        root = None if derived else _json_str(self.model.headers["root_id"])
        embed = self._embed
        empty_body = f"[[], {{}}, {embed}]".encode("utf-8")
        dump = serialization.json_dumper()
        # what follows the root of a call without arguments
        empty_tail = f'{p34}"()"{p5}"{{}}"{p6}'
        # ids drawn here are uuids, quoted as they are; those given too when all are plain
        as_is = _quote_as_is(self.ids)
        out: list[tuple[str, str, bytes]] = []
        append = out.append
        for task_id, (given, args, kwargs, index) in zip(self.ids, calls):
            quoted = f'"{task_id}"' if as_is or given is None else _json_str(task_id)
            # (an index is an int, never a bool or a subclass: ``add``): its text is its repr
            if not args and not kwargs:
                append((quoted, f"{p0}{quoted}{p1}{'null' if index is None else index}{p2}"
                                f"{quoted if derived else root}{empty_tail}", empty_body))
                continue
            body = _like_body(args, kwargs, embed, dump)
            argsrepr = _json_str(safe_repr(args, REPR_MAXSIZE)) if args else '"()"'
            kwargsrepr = _json_str(safe_repr(kwargs, REPR_MAXSIZE)) if kwargs else '"{}"'
            append((quoted, f"{p0}{quoted}{p1}{'null' if index is None else index}"
                            f"{p2}{quoted if derived else root}{p34}{argsrepr}{p5}{kwargsrepr}"
                            f"{p6}", body))
        self._parts = out
        return out

    def one(self, args: tuple[Any, ...], kwargs: dict[str, Any],
            task_id: str | None = None) -> tuple[str, str, bytes]:
        """``(id, headers JSON text, body)`` of one call like the model's with id ``task_id``
        (a uuid; None: a fresh one) and no group index, without adding it to ``calls``: what
        ``parts`` lays out for it, for a producer that sends the same task alone again and
        again (``delay()`` in a loop)."""
        single = self._single
        if single is None:
            p0, p1, p2, p3, p4, p5, p6 = self._pieces
            parent = self.model.headers["parent_id"]
            parent_text = "null" if parent is None else _json_str(parent)
            root = "" if self._derived_root else _json_str(self.model.headers["root_id"])
            single = self._single = (
                p0, f"{p1}null{p2}", root, f"{p3}{parent_text}{p4}", p5, p6,
                f'"()"{p5}"{{}}"{p6}', f"[[], {{}}, {self._embed}]".encode("utf-8"))
        head, index, root, parent, p5, p6, empty_tail, empty_body = single
        if task_id is None:
            task_id = uuid4_text()
        quoted = f'"{task_id}"'  # a uuid: as is
        if not args and not kwargs:
            return (task_id, f"{head}{quoted}{index}{root or quoted}{parent}{empty_tail}",
                    empty_body)
        body = _like_body(args, kwargs, self._embed, _json_text)
        argsrepr = _json_str(safe_repr(args, REPR_MAXSIZE)) if args else '"()"'
        kwargsrepr = _json_str(safe_repr(kwargs, REPR_MAXSIZE)) if kwargs else '"{}"'
        return (task_id, f"{head}{quoted}{index}{root or quoted}{parent}{argsrepr}{p5}"
                         f"{kwargsrepr}{p6}", body)

    def messages(self) -> list[Message]:
        """Each call's full ``Message`` (what ``encode_task`` makes for it)."""
        model = self.model
        derived, root = self._derived_root, model.headers["root_id"]
        out = []
        for (_, text, body), task_id, (_, args, kwargs, index) in zip(
                self.parts(), self.ids, self.calls):
            table = model.headers.copy()
            table["id"], table["group_index"] = task_id, index
            table["root_id"] = task_id if derived else root
            table["argsrepr"] = safe_repr(args, REPR_MAXSIZE) if args else "()"
            table["kwargsrepr"] = safe_repr(kwargs, REPR_MAXSIZE) if kwargs else "{}"
            properties = model.properties.copy()
            properties["correlation_id"] = task_id
            out.append(Message(body, model.content_type, model.content_encoding, table,
                               properties, text))
        return out


def _quote_as_is(ids: list[str]) -> bool:
    """Whether the JSON text of each of ``ids`` is that id in quotes: all are made of ASCII
    letters, digits and dashes (uuids), told for all at once rather than encoding each."""
    text = "".join(ids)
    return text.isascii() and not text.encode("ascii").translate(None, _PLAIN_ID_BYTES)


#: what an id may be made of to be written in JSON as it is, in quotes
_PLAIN_ID_BYTES = b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def likes_of(model: Message, args: Any, kwargs: Any, derived_root: bool) -> Likes | None:
    """A ``Likes`` for calls like the one ``model`` was made for with ``args`` and ``kwargs``
    (``derived_root``: its root id was its own id, so each call's is its own too); None when the
    model is not such a message (not JSON, no headers text, eta, expires, compression, headers
    other than the standard ones) or its template does not fit."""
    headers = model.headers
    if (model.headers_json is None or model.content_type != _JSON[0]
            or model.content_encoding != _JSON[1] or headers.get("eta") is not None
            or headers.get("expires") is not None or "compression" in headers
            or tuple(model.properties) != ("correlation_id", "reply_to", "delivery_mode",
                                           "priority")
            or (derived_root and headers["root_id"] != headers["id"])):
        return None
    get = headers.get
    retries, ignore, nesting = get("retries"), get("ignore_result"), get("replaced_task_nesting")
    hard, soft = headers["timelimit"]
    key = (get("task"), get("shadow"), get("group"), retries, type(retries), hard, type(hard),
           soft, type(soft), get("origin"), ignore, type(ignore), nesting, type(nesting),
           get("compression"))
    try:
        pieces = _TEMPLATES[key]
    except TypeError:  # an unhashable constant
        return None
    except KeyError:  # the cache started over since the model was made
        pieces = _TEMPLATES[key] = _template(headers)
    if pieces is None:
        return None
    # the embed's text is what follows the arguments in the model's body
    try:
        text = model.body.decode("utf-8")
        head = (f"[{_json_text(args) if args else '[]'}, "
                f"{_json_text(kwargs) if kwargs else '{}'}, ")
    except (UnicodeError, TypeError, ValueError, OverflowError, RecursionError):
        return None
    if not (text.startswith(head) and text.endswith("]")):
        return None
    return Likes(model, pieces, text[len(head):-1], derived_root)


def _like_body(args: tuple[Any, ...], kwargs: dict[str, Any], embed: str, dump: Any) -> bytes:
    """The body of a call like the model (its ``embed`` text), ``dump`` its JSON encoder."""
    try:
        text = f"[{dump(args) if args else '[]'}, {dump(kwargs) if kwargs else '{}'}, {embed}]"
    except (TypeError, ValueError, OverflowError, RecursionError):
        # raise the EncodeError the full encoder raises for this value, in its words
        serialization.dumps((args, kwargs), "json")
        raise
    return text.encode("utf-8")


#: the embed of a message with no callbacks, errbacks, chain or chord (only ever serialized)
_NO_EMBED: dict[str, Any] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
#: its JSON text (a test holds it to ``json_dumps(_NO_EMBED)``)
_NO_EMBED_JSON = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'
_JSON = serialization.SERIALIZERS["json"]


def _dump_body(args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any], embed: dict[str, Any],
               serializer: str) -> tuple[str, str, bytes]:
    """``serialization.dumps((args, kwargs, embed), serializer)``; in JSON without an embed,
    the embed's text is known and empty arguments need no encoder (the same bytes)."""
    if serializer != "json" or embed is not _NO_EMBED:
        return serialization.dumps((args, kwargs, embed), serializer)
    try:
        text = (f"[{_json_text(args) if args else '[]'}, {_json_text(kwargs) if kwargs else '{}'}"
                f", {_NO_EMBED_JSON}]")
    except (TypeError, ValueError, OverflowError, RecursionError):
        # let dumps raise the EncodeError it raises for this value, in its words
        return serialization.dumps((args, kwargs, embed), serializer)
    return _JSON[0], _JSON[1], text.encode("utf-8")


# ---- decoding -----------------------------------------------------------------------------------


def _when(headers: dict[str, Any], key: str) -> datetime | None:
    value = headers.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, datetime):  # pickle/yaml peers may send real datetimes
        return _aware(value)
    try:
        text = value[:-1] + "+00:00" if value.endswith("Z") else value  # 3.10's parser lacks Z
        return _aware(datetime.fromisoformat(text))
    except (TypeError, ValueError, AttributeError):
        raise InvalidTaskError(f"header {key!r} is not an ISO 8601 time: {value!r}") from None


def _timelimit(value: Any) -> tuple[Any, Any]:
    if value is None:
        return None, None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    raise InvalidTaskError(f"header 'timelimit' must be [hard, soft], got {value!r}")


def decode_task(message: Message, accept: frozenset[str] | None) -> TaskBody:
    """Parse a protocol-2 task message; raises ContentDisallowed, DecodeError, InvalidTaskError."""
    headers = message.headers
    content_type = message.content_type
    serialization.check_accepted(content_type, accept)  # before anything else is looked at
    name = headers.get("task")
    if not name:
        raise InvalidTaskError(
            "message has no 'task' header (protocol 1 messages are not supported)")
    task_id = headers.get("id")
    if not task_id:
        raise InvalidTaskError(f"message for task {name!r} has no 'id' header")
    if not isinstance(name, str) or not isinstance(task_id, str):
        raise InvalidTaskError(f"headers 'task' and 'id' must be strings: {name!r}, {task_id!r}")

    data = message.body
    compression = headers.get("compression")
    if compression:
        data = serialization.decompress(data, compression)
    payload = serialization.loads(data, content_type, message.content_encoding, accept)

    if not isinstance(payload, (list, tuple)) or not 2 <= len(payload) <= 3:
        raise InvalidTaskError(
            f"task {task_id}: body must be [args, kwargs, embed], got {_kind(payload)}")
    args, kwargs = payload[0], payload[1]
    embed = payload[2] if len(payload) == 3 else None
    if embed is None:
        embed = _EMPTY_EMBED
    if not isinstance(args, (list, tuple)):
        raise InvalidTaskError(f"task {task_id}: args must be a list, got {_kind(args)}")
    if not isinstance(kwargs, dict):
        raise InvalidTaskError(f"task {task_id}: kwargs must be a map, got {_kind(kwargs)}")
    for key in kwargs:
        if not isinstance(key, str):
            raise InvalidTaskError(f"task {task_id}: kwargs key {key!r} is not a string")
    if not isinstance(embed, dict):
        raise InvalidTaskError(f"task {task_id}: embed must be a map, got {_kind(embed)}")

    get = headers.get
    retries = get("retries") or 0
    if not isinstance(retries, int):
        raise InvalidTaskError(f"task {task_id}: header 'retries' is not an int: {retries!r}")
    time_limit, soft_time_limit = _timelimit(get("timelimit"))
    return TaskBody(
        id=task_id, name=name, args=args, kwargs=kwargs,
        callbacks=embed.get("callbacks"), errbacks=embed.get("errbacks"),
        chain=embed.get("chain"), chord=embed.get("chord"),
        root_id=get("root_id"), parent_id=get("parent_id"),
        group_id=get("group"), group_index=get("group_index"),
        eta=_when(headers, "eta"), expires=_when(headers, "expires"), retries=retries,
        time_limit=time_limit, soft_time_limit=soft_time_limit,
        ignore_result=_optional_bool(get("ignore_result")), origin=get("origin"),
        shadow=get("shadow"),
        reply_to=message.properties.get("reply_to"), headers=dict(headers),
        argsrepr=get("argsrepr"), kwargsrepr=get("kwargsrepr"),
    )


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {len(value)}-element {type(value).__name__}"
    return type(value).__name__


# ---- argsrepr / kwargsrepr ----------------------------------------------------------------------
#
# Celery fills argsrepr/kwargsrepr with ``celery.utils.saferepr`` (5.7 behaviour): a streaming repr
# that stops once ``maxlen`` characters are out (writing ", ..." and closing the brackets that are
# open) and elides containers nested ``maxlevels`` deep. Monitors show these strings, so we render
# them the same way.

_OPEN, _CLOSE, _SEP, _KEY, _STR, _TEXT, _ELIDED = range(7)


def _truncate(text: str, maxlen: int | None) -> str:
    # celery.utils.text.truncate: cut at the last space before maxlen, then add "...".
    if maxlen and len(text) >= maxlen:
        return text[:maxlen].rsplit(" ", 1)[0] + "..."
    return text


def _plain_repr(obj: Any) -> str:
    try:
        return repr(obj)
    except Exception as exc:  # a user object's broken __repr__ must not stop the send
        return f"<Unrepresentable {type(obj)!r}{id(obj):#x}: {exc!r}>"


def _tokens(obj: Any, level: int, maxlevels: int, path: set[int]) -> Iterator[tuple[int, Any]]:
    """Yield ``(kind, value)`` tokens for ``obj``; containers recurse."""
    if isinstance(obj, Decimal):
        yield _TEXT, repr(obj)
        return
    if isinstance(obj, Number):
        yield _TEXT, str(obj)
        return
    if isinstance(obj, (str, bytes)):
        yield _STR, obj
        return
    if isinstance(obj, (set, frozenset)):
        if not obj:
            yield _TEXT, f"{type(obj).__name__}()"
            return
        opener, closer = ("{", "}") if type(obj) is set else (f"{type(obj).__name__}({{", "})")
        items: Any = obj
    elif isinstance(obj, tuple):
        opener, closer, items = "(", ",)" if len(obj) == 1 else ")", obj
    elif isinstance(obj, dict):
        opener, closer, items = "{", "}", obj.items()
    elif isinstance(obj, list):
        opener, closer, items = "[", "]", obj
    else:
        yield _TEXT, _plain_repr(obj)
        return
    if maxlevels and level >= maxlevels:
        yield _ELIDED, f"{opener}...{closer}"
        return
    if id(obj) in path:
        yield _TEXT, f"<Recursion on {type(obj).__name__} with id={id(obj)}>"
        return
    path.add(id(obj))
    yield _OPEN, (opener, closer)
    is_map = isinstance(obj, dict)
    for index, item in enumerate(items):
        if index:
            yield _SEP, ", "
        if is_map:
            yield _KEY, item[0]
            yield _SEP, ": "
            item = item[1]
        yield from _tokens(item, level + 1, maxlevels, path)
    yield _CLOSE, closer
    path.discard(id(obj))


def _quote(value: str | bytes, maxlen: int | None) -> str:
    if isinstance(value, bytes):
        cut = maxlen is not None and len(value) > maxlen
        chunk = value[:maxlen] if cut else value
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            text = chunk.hex()
        return f"b'{text}...'" if cut else f"b'{text}'"
    return "'" + _truncate(value, maxlen).replace("'", "\\'") + "'"


_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def _plain(value: Any) -> bool:
    """True when the builtin repr of ``value`` is exactly what saferepr would write."""
    kind = type(value)
    return kind in _PLAIN_TYPES or (
        kind is str and "'" not in value and "\\" not in value and value.isprintable())


def safe_repr(obj: Any, maxlen: int | None = REPR_MAXSIZE, maxlevels: int = 3) -> str:
    """A bounded repr for logs and monitors, rendered as Celery's ``saferepr`` renders it."""
    obj_type = type(obj)
    # Fast path for the usual flat args/kwargs: the builtin repr is identical when it is short.
    if obj_type is tuple or obj_type is list:
        kinds = set(map(type, obj))
        if kinds <= _PLAIN_TYPES:  # numbers, bools, None: no call per item
            flat = True
        else:
            flat = all(map(_plain, obj))
    elif obj_type is dict:
        flat = all(_plain(key) and _plain(value) for key, value in obj.items())
    else:
        flat = False
    if flat:
        text = repr(obj)
        if maxlen is None or len(text) < maxlen:
            return text
    out: list[str] = []
    closers: list[str] = []
    for kind, value in _tokens(obj, 0, maxlevels, set()):
        if maxlen is not None and maxlen <= 0:
            if kind == _CLOSE:  # nothing of this container is left out: just close it
                out.append(closers.pop())
                continue
            out.append(", ...")
            out.extend(reversed(closers))
            break
        if kind == _OPEN:
            text, closer = value
            closers.append(closer)
        elif kind == _CLOSE:
            text = closers.pop()
        elif kind == _KEY:
            text = safe_repr(value, maxlen, maxlevels)
        elif kind == _STR:
            text = _quote(value, maxlen)
        elif kind == _TEXT:
            text = _truncate(value, maxlen)
        else:  # _SEP, _ELIDED: never cut
            text = value
        out.append(text)
        if maxlen is not None:
            maxlen -= len(text)
    return "".join(out)


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)
