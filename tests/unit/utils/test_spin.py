"""``utils.spin``: the option check, the look loop, and when an ``AdaptiveSpin`` lets a wait look
(pure logic, on a fake clock)."""

from __future__ import annotations

import math

import pytest

from celeriac.utils import spin
from celeriac.utils.spin import AdaptiveSpin, look_until, spin_seconds


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _Clock:
    fake = _Clock()
    monkeypatch.setattr(spin, "_clock", fake)
    monkeypatch.setattr(spin, "_pause", lambda: setattr(fake, "now", fake.now + 0.001))
    return fake


@pytest.mark.parametrize("value, seconds", [(0, 0.0), ("0.002", 0.002), (1, 1.0)])
def test_spin_seconds_takes_numbers_and_numeric_text(value: object, seconds: float) -> None:
    assert spin_seconds(value, "wait_spin") == seconds


@pytest.mark.parametrize("value", [-0.001, 1.5, "soon", None, True, math.nan, math.inf])
def test_spin_seconds_refuses_anything_else_naming_the_option(value: object) -> None:
    with pytest.raises(ValueError, match="wait_spin must be a number of seconds from 0 to 1"):
        spin_seconds(value, "wait_spin")


def test_look_until_returns_what_it_found_or_none_at_the_time(clock: _Clock) -> None:
    looks: list[float] = []

    def ready() -> str | None:
        looks.append(clock.now)
        return "news" if len(looks) == 3 else None

    assert look_until(ready, clock.now + 1.0) == "news"
    assert len(looks) == 3
    assert look_until(lambda: None, clock.now + 0.0045) is None
    assert look_until(lambda: "never asked", clock.now) is None  # the time has passed


def test_a_wait_looks_while_the_last_one_was_short(clock: _Clock) -> None:
    waits = AdaptiveSpin(0.002)
    until, began = waits.begin()
    assert until == began + 0.002  # the first wait looks
    clock.now += 0.0015
    waits.end(began)  # over within the spin
    until, began = waits.begin()
    assert until == began + 0.002
    clock.now += 0.5
    waits.end(began)  # a long wait: the next one sleeps at once
    until, began = waits.begin()
    assert until == 0.0
    clock.now += 0.001
    waits.end(began)  # short again: the next one looks
    assert waits.begin()[0] > 0


def test_within_lets_waits_somewhat_longer_than_the_look_keep_it(clock: _Clock) -> None:
    waits = AdaptiveSpin(0.0005, within=0.002)
    until, began = waits.begin()
    clock.now += 0.0015  # longer than the look, within 2 ms
    waits.end(began)
    until, began = waits.begin()
    assert until == began + 0.0005
    clock.now += 0.0025
    waits.end(began)
    assert waits.begin()[0] == 0.0


def test_no_spin_never_looks(clock: _Clock) -> None:
    waits = AdaptiveSpin(0.0)
    until, began = waits.begin()
    assert until == 0.0
    waits.end(began)
    assert waits.begin()[0] == 0.0
