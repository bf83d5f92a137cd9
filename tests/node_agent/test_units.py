"""Port allocation and progress debounce, with a controlled clock."""

from __future__ import annotations

import asyncio

import pytest

from durable_installs.node_agent.errors import AgentError
from durable_installs.node_agent.ports import PortAllocator
from durable_installs.node_agent.progress import ProgressPublisher, Tick
from durable_installs.protocol.messages import ProgressPhase


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _allocator(clock: Clock, low: int = 100, high: int = 102) -> PortAllocator:
    return PortAllocator(
        low, high, quarantine=15, affinity=300, clock=clock, is_free=lambda p: True
    )


def test_ports_come_from_the_range_in_order() -> None:
    ports = _allocator(Clock())

    assert [ports.allocate(k) for k in ("a#0", "b#0", "c#0")] == [100, 101, 102]


def test_a_slot_gets_its_released_port_back_at_once() -> None:
    clock = Clock()
    ports = _allocator(clock)
    port = ports.allocate("a#0")
    ports.allocate("b#0")

    ports.release(port, "a#0")

    assert ports.allocate("a#0") == port


def test_a_released_port_is_quarantined_and_withheld_from_other_slots() -> None:
    clock = Clock()
    ports = _allocator(clock, high=101)
    ports.allocate("a#0")
    ports.allocate("b#0")
    ports.release(100, "a#0")
    with pytest.raises(AgentError):
        ports.allocate("c#0")  # quarantine: nothing free for another slot

    clock.now += 16  # out of quarantine, still within a#0's affinity: taken only as last resort
    assert ports.allocate("c#0") == 100


def test_after_the_affinity_window_a_released_port_is_free_for_anyone() -> None:
    clock = Clock()
    ports = _allocator(clock)
    ports.allocate("a#0")
    ports.release(100, "a#0")
    clock.now += 301

    assert ports.allocate("z#0") == 100


def test_an_exhausted_range_gives_the_catalogue_error() -> None:
    ports = _allocator(Clock(), high=100)
    ports.allocate("a#0")

    with pytest.raises(AgentError) as caught:
        ports.allocate("b#0")

    assert str(caught.value).startswith(
        "allocating gRPC port for backend b#0: no free gRPC port in range: 100-100 is fully "
        "consumed by 1 running backend(s) and 0 port(s) still in quarantine"
    )


def test_ports_something_else_listens_on_are_skipped() -> None:
    ports = PortAllocator(100, 102, clock=Clock(), is_free=lambda p: p != 100)

    assert ports.allocate("a#0") == 101


def _tick(phase: ProgressPhase, percentage: float) -> Tick:
    return Tick(phase, "file", int(percentage), 100, percentage)


async def _collect(ticks: list[Tick], window: float = 3600.0) -> list[Tick]:
    sent: list[Tick] = []

    async def send(tick: Tick) -> None:
        sent.append(tick)

    publisher = ProgressPublisher(send, window=window)
    for tick in ticks:
        publisher.tick(tick)
    await publisher.flush()
    return sent


async def test_first_tick_goes_out_at_once_and_a_burst_collapses_to_the_freshest() -> None:
    burst = [_tick(ProgressPhase.DOWNLOADING, p) for p in (10, 20, 30)]

    sent = await _collect(burst)

    assert [t.percentage for t in sent] == [10, 30]


async def test_a_phase_change_is_never_swallowed_by_the_debounce() -> None:
    ticks = [
        _tick(ProgressPhase.RESOLVING, 0),
        _tick(ProgressPhase.DOWNLOADING, 50),
        _tick(ProgressPhase.DOWNLOADING, 100),
        _tick(ProgressPhase.EXTRACTING, 100),
        _tick(ProgressPhase.STARTING, 100),
    ]

    sent = await _collect(ticks)

    assert [t.phase.value for t in sent] == [
        "resolving",
        "downloading",
        "downloading",
        "extracting",
        "starting",
    ]


async def test_the_trailing_timer_publishes_the_pending_tick() -> None:
    sent: list[Tick] = []
    second = asyncio.Event()

    async def send(tick: Tick) -> None:
        sent.append(tick)
        if len(sent) == 2:
            second.set()

    publisher = ProgressPublisher(send, window=0.01)
    publisher.tick(_tick(ProgressPhase.DOWNLOADING, 1))
    publisher.tick(_tick(ProgressPhase.DOWNLOADING, 2))
    await second.wait()  # sent by the trailing timer, not by flush()
    await publisher.flush()

    assert [t.percentage for t in sent] == [1, 2]


def test_sizes_in_events_use_the_reference_format() -> None:
    event = Tick(ProgressPhase.DOWNLOADING, "f", 432_328_704, 2_254_857_830, 19.17).event(
        "op", "node", "b"
    )

    assert (event.current, event.total) == ("412.3 MiB", "2.1 GiB")
