"""Signals: connecting (weakly, deduped, per sender), robust sending, disconnecting."""

from __future__ import annotations

import gc
import logging
from types import SimpleNamespace

import pytest

from celeriac import signals
from celeriac.signals import Signal


def test_bare_decorator_connects_and_send_passes_signal_sender_and_named():
    sig = Signal("s")
    calls = []

    @sig.connect
    def receiver(signal, sender, **named):
        calls.append((signal, sender, named))
        return "ok"

    assert callable(receiver)  # the decorator hands the function back
    responses = sig.send(sender="me", a=1)
    assert calls == [(sig, "me", {"a": 1})]
    assert responses == [(receiver, "ok")]
    assert sig.receivers == [receiver]


def test_decorator_with_sender_filters_by_identity():
    sig = Signal("s")
    wanted, other = object(), object()
    seen = []

    @sig.connect(sender=wanted)
    def receiver(sender, **kw):
        seen.append(sender)

    sig.send(sender=other)
    sig.send(sender=wanted)
    assert seen == [wanted]
    assert sig.has_listeners(wanted) and not sig.has_listeners(other)
    assert sig.has_listeners()


def test_task_name_string_matches_a_sender_with_that_name_or_that_string():
    sig = Signal("s")
    seen = []
    sig.connect(lambda sender, **kw: seen.append(sender), sender="tasks.add", weak=False)
    add, mul = SimpleNamespace(name="tasks.add"), SimpleNamespace(name="tasks.mul")
    sig.send(sender=mul)
    sig.send(sender=add)
    sig.send(sender="tasks.add")
    assert seen == [add, "tasks.add"]


def test_a_proxy_matches_the_task_built_from_the_same_function():
    sig = Signal("s")
    seen = []

    def fun():
        return None

    class TaskClass:  # like a built task: the function is a class attribute (bound when read)
        __wrapped__ = fun

    proxy, task, unrelated = (SimpleNamespace(__wrapped__=fun), TaskClass(),
                              SimpleNamespace(__wrapped__=None))
    sig.connect(lambda sender, **kw: seen.append(sender), sender=proxy, weak=False)
    sig.send(sender=unrelated)
    sig.send(sender=task)
    assert seen == [task]


def test_receivers_are_weak_by_default():
    sig = Signal("s")

    def receiver(**kw):
        return 1

    sig.connect(receiver)
    assert sig.receivers == [receiver]
    del receiver
    gc.collect()
    assert sig.receivers == []
    assert sig.send(sender=None) == []
    assert not sig.has_listeners()


def test_bound_methods_are_held_weakly_and_dedupe():
    sig = Signal("s")

    class Listener:
        def __init__(self):
            self.calls = 0

        def on(self, **kw):
            self.calls += 1

    listener = Listener()
    sig.connect(listener.on)
    sig.connect(listener.on)  # a new bound-method object, same receiver
    sig.send(sender=None)
    assert listener.calls == 1
    del listener
    gc.collect()
    assert sig.receivers == []


def test_weak_false_keeps_a_lambda_alive():
    sig = Signal("s")
    sig.connect(lambda **kw: "kept", weak=False)
    gc.collect()
    assert [resp for _, resp in sig.send(sender=None)] == ["kept"]


def test_unreferenceable_receiver_is_kept_strongly():
    class NoWeakRef:
        __slots__ = ()

        def __call__(self, **kw):
            return "called"

    sig = Signal("s")
    sig.connect(NoWeakRef())
    gc.collect()
    assert [resp for _, resp in sig.send(sender=None)] == ["called"]


def test_dispatch_uid_dedupes_distinct_functions():
    sig = Signal("s")
    calls = []
    first = lambda **kw: calls.append(1)  # noqa: E731
    second = lambda **kw: calls.append(2)  # noqa: E731
    sig.connect(first, dispatch_uid="uid")
    sig.connect(second, dispatch_uid="uid")
    sig.send(sender=None)
    assert calls == [1]


def test_same_receiver_for_two_senders_is_two_connections():
    sig = Signal("s")
    seen = []

    def receiver(sender, **kw):
        seen.append(sender)

    sig.connect(receiver, sender="a")
    sig.connect(receiver, sender="b")
    sig.send(sender="a")
    sig.send(sender="b")
    assert seen == ["a", "b"]
    assert sig.disconnect(receiver, sender="a")
    sig.send(sender="a")
    sig.send(sender="b")
    assert seen == ["a", "b", "b"]


def test_disconnect_by_receiver_and_by_uid():
    sig = Signal("s")

    def one(**kw):
        return 1

    def two(**kw):
        return 2

    sig.connect(one)
    sig.connect(two, dispatch_uid="two")
    assert sig.disconnect(one) is True
    assert sig.disconnect(one) is False
    assert sig.disconnect(dispatch_uid="two") is True
    assert sig.receivers == []
    with pytest.raises(TypeError):
        sig.disconnect()


def test_a_raising_receiver_is_logged_and_the_others_still_run(caplog):
    sig = Signal("boom_signal")
    error = ValueError("bad hook")

    def bad(**kw):
        raise error

    def good(**kw):
        return "fine"

    sig.connect(bad)
    sig.connect(good)
    with caplog.at_level(logging.ERROR, logger="celeriac.signals"):
        responses = sig.send(sender=None)
    assert responses == [(bad, error), (good, "fine")]
    record = next(r for r in caplog.records if r.name == "celeriac.signals")
    assert "boom_signal" in record.getMessage() and "bad hook" in record.getMessage()
    assert record.exc_info is not None and record.exc_info[1] is error


def test_connect_rejects_non_callables():
    with pytest.raises(TypeError):
        Signal("s").connect(42)


def test_module_exposes_celerys_signals():
    expected = {
        "before_task_publish", "after_task_publish", "task_received", "task_prerun",
        "task_postrun", "task_success", "task_retry", "task_failure", "task_internal_error",
        "task_revoked", "task_unknown", "task_rejected", "celeryd_init", "celeryd_after_setup",
        "import_modules", "worker_init", "worker_before_create_process", "worker_process_init",
        "worker_process_shutdown", "worker_ready", "heartbeat_sent", "worker_shutting_down",
        "worker_shutdown", "beat_init", "beat_embedded_init", "setup_logging",
        "after_setup_logger", "after_setup_task_logger",
    }
    assert set(signals.__all__) == expected | {"Signal"}
    for name in expected:
        sig = getattr(signals, name)
        assert isinstance(sig, Signal) and sig.name == name
