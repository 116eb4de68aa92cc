"""bench/features_overhead.py's pair logic: every variant run sits between two base runs, and
its change against base is its figure over the mean of those two neighbours, so a machine whose
speed drifts during the run weighs on a variant and its own baseline alike.

The benchmark itself never runs under pytest (it needs Redis and minutes).
"""

from __future__ import annotations

import pytest

from bench import features_overhead as bench


def test_each_variant_run_is_between_two_base_runs_and_the_order_rotates():
    sequence = bench.bracketed_sequence(["events", "rate", "idle"], 3)
    assert sequence[0::2] == ["base"] * 10, "base first, last and between any two variants"
    assert sequence[1::2] == ["events", "rate", "idle", "rate", "idle", "events",
                              "idle", "events", "rate"]


def test_a_pair_ratio_is_the_run_over_the_mean_of_its_neighbouring_base_runs():
    sequence = bench.bracketed_sequence(["events", "rate"], 2)
    # the machine doubles its speed halfway: base 100 -> 200; each variant 10% slower than
    # the base around it
    figures = [100, 90, 100, 180, 200, 180, 200, 180, 200]
    ratios = bench.pair_ratios(sequence, figures)
    assert ratios["events"] == [pytest.approx(0.9), pytest.approx(0.9)]
    assert ratios["rate"] == [pytest.approx(180 / 150), pytest.approx(0.9)]
    # base: each base run over the previous one (the drift between neighbours)
    assert ratios["base"] == [1.0, 2.0, 1.0, 1.0]


def test_changes_are_the_median_and_range_of_the_pair_ratios():
    assert bench.change([0.9, 1.2, 0.95]) == "-5% (-10% to +20%)"
    assert bench.spread([3.0, 1.0, 2.0], ".0f") == "2 (1-3)"
