"""A worker's forwarding budget: its installs' heartbeats and reports stay within two rates."""

from __future__ import annotations

from activities.budget import (
    HEARTBEATS_PER_SECOND,
    MIN_HEARTBEAT_INTERVAL,
    REPORTS_PER_SECOND,
    ForwardBudget,
)


def following(count: int) -> ForwardBudget:
    budget = ForwardBudget()
    budget.in_flight = count
    return budget


def test_a_few_installs_heartbeat_every_second_so_a_cancel_arrives_within_one() -> None:
    assert following(1).heartbeat_interval(longest=10) == MIN_HEARTBEAT_INTERVAL
    assert following(100).heartbeat_interval(longest=10) == MIN_HEARTBEAT_INTERVAL


def test_many_installs_share_the_heartbeat_rate_up_to_what_the_timeout_allows() -> None:
    budget = following(1000)
    assert budget.heartbeat_interval(longest=10) == 1000 / HEARTBEATS_PER_SECOND
    assert following(5000).heartbeat_interval(longest=10) == 10, "never past a third of it"


def test_the_total_report_rate_is_bounded_whatever_the_installs_ask_for() -> None:
    for count in (100, 1000, 10_000):
        interval = following(count).report_interval(requested=1.0, elapsed=0.0)
        assert count / interval <= REPORTS_PER_SECOND


def test_an_install_reports_as_often_as_it_asks_while_the_worker_is_quiet() -> None:
    assert following(2).report_interval(requested=5.0, elapsed=10.0) == 5.0


def test_reports_slow_down_as_an_install_ages() -> None:
    assert following(2).report_interval(requested=5.0, elapsed=3600.0) == 120.0


def test_following_counts_an_install_for_as_long_as_it_follows() -> None:
    budget = ForwardBudget()
    with budget.following(), budget.following():
        assert budget.in_flight == 2
    assert budget.in_flight == 0
