"""bench/paired_latency.py's pure logic: the order of the round trips and the summary line."""

from __future__ import annotations

from bench.paired_latency import summary, turns


def test_round_trips_alternate_in_blocks_this_tree_first() -> None:
    assert turns(6, block=2) == [0, 0, 1, 1, 0, 0]
    assert turns(40).count(0) == turns(40).count(1) == 20


def test_the_summary_gives_medians_the_difference_and_the_slower_rounds() -> None:
    line = summary([(1.0, 1.2), (1.1, 1.0), (0.9, 1.3)])
    assert "median p50 1.000 ms here, 1.200 ms in the other tree" in line
    assert "median over rounds +0.200 ms (-0.100 to +0.400)" in line
    assert "the other slower in 2 of 3 rounds" in line
