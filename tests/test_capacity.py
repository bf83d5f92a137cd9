"""The worker knows when it is at capacity: one line a minute, gauges, a slower budget."""

from __future__ import annotations

import logging

import pytest

from activities.budget import ForwardBudget
from durable_installs.orchestrator.capacity import LATE_LIMIT, CapacityMonitor
from durable_installs.telemetry.temporal import CORE_LOGGER, core_logging

LOGGER = "durable_installs.orchestrator.capacity"


def monitor(slots: int = 10, running: int = 0) -> CapacityMonitor:
    watched = CapacityMonitor(ForwardBudget(), activity_slots=slots)
    watched.activities.running = running
    return watched


def test_every_slot_taken_is_at_capacity_and_says_what_to_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    watched = monitor(slots=10, running=10)

    watched.measure(late=0.0)

    assert watched.at_capacity
    [line] = caplog.messages
    assert line.startswith("worker at capacity: 10 of 10 activity slots in use")
    assert "add a worker to the task queue" in line


def test_a_late_event_loop_is_at_capacity_and_spaces_the_forwarding_out() -> None:
    watched = monitor(slots=10, running=1)
    relaxed = ForwardBudget()
    watched.budget.in_flight = relaxed.in_flight = 1000

    watched.measure(late=LATE_LIMIT * 2)

    assert watched.at_capacity
    assert watched.budget.heartbeat_interval(100) > relaxed.heartbeat_interval(100)
    assert watched.budget.report_interval(5, 0) > relaxed.report_interval(5, 0)


def test_at_capacity_is_said_once_a_minute_not_at_every_measurement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    watched = monitor(slots=10, running=10)

    for _ in range(5):
        watched.measure(late=0.0)

    assert len(caplog.messages) == 1


def test_below_capacity_again_is_said_and_the_budget_relaxes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    watched = monitor(slots=10, running=10)
    watched.measure(late=LATE_LIMIT * 2)
    watched.activities.running = 3

    watched.measure(late=0.0)

    assert not watched.at_capacity
    assert caplog.messages[-1].startswith("worker below capacity again: 3 of 10")
    assert watched.budget.pressure == 1.0


def test_the_sdk_cores_log_lines_go_through_python_logging() -> None:
    """Written to stdout by the core itself, they blocked a worker whose stdout nobody read."""
    config = core_logging()

    assert config.forwarding is not None
    assert config.forwarding.logger.name == CORE_LOGGER
