"""Remote control's wire format (celeriac/control/mailbox.py) against the messages a real Celery
5.7 worker and client exchanged (shared/vectors/celery/redis/worker/remote_control.json): the
broadcast body, headers and properties, the reply, addressing and expiry. Pure logic."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from celeriac.config import Settings
from celeriac.control.mailbox import (
    decode_request,
    encode_reply,
    encode_request,
    exchange_name,
    expired,
    mailbox_queue,
    matches,
    reply_exchange_name,
    reply_queue,
)
from celeriac.transport.redis.envelope import decode
from tests.vectors import CELERY_VECTORS

VECTORS = json.loads((CELERY_VECTORS / "redis" / "worker" / "remote_control.json").read_text())
ACCEPT = frozenset({"application/json"})


def _broadcasts() -> list[dict[str, Any]]:
    return VECTORS["broadcasts"]


def _captured_message(raw: dict[str, Any]) -> Any:
    return decode(raw["data"]["text"])[0]


@pytest.mark.parametrize("captured", _broadcasts(), ids=lambda b: b["decoded"]["decoded_body"]
                         ["method"])
def test_a_broadcast_is_byte_for_byte_what_celery_sends(captured: dict[str, Any]) -> None:
    body = captured["decoded"]["decoded_body"]
    headers = captured["decoded"]["envelope"]["headers"]
    message = encode_request(body["method"], body["arguments"], destination=body["destination"],
                             pattern=body["pattern"], matcher=body["matcher"],
                             ticket=body.get("ticket"), reply_to=body.get("reply_to"),
                             clock=headers["clock"], timeout=1.0)
    assert message.body.decode() == captured["decoded"]["body_bytes"]["text"]
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert set(message.headers) == {"clock", "expires"}
    assert message.headers["clock"] == headers["clock"]
    assert message.headers["expires"] == pytest.approx(time.time() + 1.0, abs=5)
    properties = captured["decoded"]["envelope"]["properties"]
    assert message.properties["delivery_mode"] == properties["delivery_mode"] == 2
    assert message.properties["priority"] == properties["priority"] == 0


def test_a_command_without_reply_has_no_ticket_and_expires_zero_without_timeout() -> None:
    revoke = next(b for b in _broadcasts() if b["decoded"]["decoded_body"]["method"] == "revoke")
    body = revoke["decoded"]["decoded_body"]
    message = encode_request("revoke", body["arguments"])
    assert message.body.decode() == revoke["decoded"]["body_bytes"]["text"]
    assert "ticket" not in json.loads(message.body) and message.headers["expires"] == 0


@pytest.mark.parametrize("captured", VECTORS["replies"], ids=lambda r: r["redis_command"][1][:8])
def test_a_reply_is_byte_for_byte_what_a_celery_worker_sends(captured: dict[str, Any]) -> None:
    [(node, value)] = captured["decoded_body"].items()
    headers = captured["envelope"]["headers"]
    message = encode_reply(node, value, ticket=headers["ticket"], clock=headers["clock"])
    expected = decode(captured["raw"]["text"])[0]
    assert message.body == expected.body
    assert message.headers == {"ticket": headers["ticket"], "clock": headers["clock"]}
    assert message.properties["delivery_mode"] == captured["envelope"]["properties"][
        "delivery_mode"] == 1


@pytest.mark.parametrize("captured", _broadcasts(), ids=lambda b: b["decoded"]["decoded_body"]
                         ["method"])
def test_celerys_broadcasts_are_read(captured: dict[str, Any]) -> None:
    message = _captured_message(captured)
    request = decode_request(message, ACCEPT)
    body = captured["decoded"]["decoded_body"]
    assert request.method == body["method"] and request.arguments == body["arguments"]
    assert request.ticket == body.get("ticket")
    assert request.reply_to == body.get("reply_to")
    assert request.addressed_to("w1@capture") and request.addressed_to("anyone@else")
    # the captured expires header is long past: a worker ignores such a command now
    assert expired(message.headers)


def test_addressing_by_destination_and_by_pattern() -> None:
    def request(**fields: Any) -> Any:
        return decode_request(encode_request("ping", **fields), ACCEPT)

    assert request(destination=["a@h", "b@h"]).addressed_to("b@h")
    assert not request(destination=["a@h"]).addressed_to("b@h")
    assert request(pattern="w*@h", matcher="glob").addressed_to("w1@h")
    assert not request(pattern="w*@h", matcher="glob").addressed_to("x1@h")
    assert request(pattern=r"w\d@", matcher="pcre").addressed_to("w1@h")
    assert not request(pattern=r"\d", matcher="pcre").addressed_to("w1@h")  # matched at start
    with pytest.raises(ValueError, match="unknown matcher 'regex'"):
        matches("w1@h", "w", "regex")


def test_expiry_header() -> None:
    assert not expired({"expires": 0}) and not expired({})
    assert expired({"expires": time.time() - 1})
    assert not expired({"expires": time.time() + 10})
    assert not expired({"expires": "garbage"})


@pytest.mark.parametrize("body, problem", [
    (b'{"arguments": {}}', "no method"), (b'[1, 2]', "no method"),
    (b'{"method": "ping", "arguments": [1]}', "arguments must be a map"),
])
def test_a_message_that_is_not_a_command_is_refused_with_a_reason(body: bytes,
                                                                 problem: str) -> None:
    from celeriac.protocol.message import Message

    with pytest.raises(ValueError, match=problem):
        decode_request(Message(body), ACCEPT)


def test_names_and_flags_follow_celery_and_control_settings() -> None:
    conf = Settings()
    assert exchange_name(conf) == "celery.pidbox"
    assert reply_exchange_name(conf) == "reply.celery.pidbox"
    mailbox = mailbox_queue(conf, "w1@host")
    assert mailbox.name == "w1@host.celery.pidbox"
    assert (mailbox.exchange.name, mailbox.exchange.type, mailbox.exchange.durable) == (
        "celery.pidbox", "fanout", False)
    assert (mailbox.durable, mailbox.auto_delete, mailbox.exclusive) == (False, True, True)
    assert mailbox.options == {"expires": 10.0, "message_ttl": 300.0}
    replies = reply_queue(conf, "oid-1")
    assert replies.name == "oid-1.reply.celery.pidbox" and replies.routing_key == "oid-1"
    assert (replies.exchange.name, replies.exchange.type) == ("reply.celery.pidbox", "direct")
    custom = Settings(control_exchange="ops", control_queue_expires=3, control_queue_ttl=7)
    assert mailbox_queue(custom, "n").name == "n.ops.pidbox"
    assert mailbox_queue(custom, "n").options == {"expires": 3.0, "message_ttl": 7.0}
    assert reply_exchange_name(custom) == "reply.ops.pidbox"
