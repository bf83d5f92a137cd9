"""What a person reads about an install: whole words, the next try, where it runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from durable_installs.backendctl.render import PROG, load_line, status_line, success_line
from durable_installs.contracts.install import InstallBackendResult, InstallPhase, InstallStatus
from durable_installs.contracts.load import (
    FileState,
    FileStatus,
    LoadPhase,
    LoadStatus,
    StageProgress,
)
from durable_installs.contracts.summaries import install_summary, shorten
from durable_installs.protocol.messages import BackendInstallProgressEvent
from workflows.summary import details_markdown

NOW = datetime(2026, 1, 2, 10, 0, 0, tzinfo=UTC)
NODE_DOWN = (
    "node node-9 did not answer backend.install: no responders (node down, unknown or not "
    "yet connected to NATS)"
)


def status(phase: InstallPhase, **fields: object) -> InstallStatus:
    values: dict[str, object] = {
        "node_id": "node-9",
        "backend": "cpu-large",
        "model_id": "demo",
        "replica_index": 0,
        "slot": "demo#0",
        "op_id": "op",
        "phase": phase,
        "started_at": NOW,
        "updated_at": NOW,
        "deadline_at": NOW + timedelta(hours=6),
        **fields,
    }
    return InstallStatus.model_validate(values)


def test_a_long_text_is_cut_at_a_word_with_an_ellipsis() -> None:
    cut = shorten(NODE_DOWN, 80)

    assert len(cut) <= 80
    assert cut.endswith("…")
    assert NODE_DOWN.startswith(cut[:-1])
    assert NODE_DOWN[len(cut) - 1] == " ", "the cut falls between words"


def test_a_text_that_fits_is_left_whole() -> None:
    assert shorten("no responders", 80) == "no responders"


def test_a_backing_off_install_says_when_it_tries_again_and_how_to_stop_it() -> None:
    backing_off = status(
        InstallPhase.BACKING_OFF,
        attempts=3,
        last_error=NODE_DOWN,
        next_attempt_at=NOW + timedelta(seconds=120),
    )

    line = status_line(backing_off, "install/node-9/cpu-large/demo/0", now=NOW)

    assert "next try 10:02:00 UTC (in 2m)" in line
    assert f"stop it: {PROG} cancel install/node-9/cpu-large/demo/0" in line
    error = line.split(" · ")[-2]
    assert error.endswith("…") and NODE_DOWN.startswith(error[:-1])
    assert NODE_DOWN[len(error) - 1] == " "


def test_a_finished_install_says_installed_at_its_address_not_its_last_event() -> None:
    done = status(
        InstallPhase.COMPLETED,
        attempts=1,
        address="127.0.0.1:50120",
        last_progress=BackendInstallProgressEvent(
            op_id="op", node_id="node-9", backend="cpu-large", percentage=100, phase="starting"
        ),
    )

    line = status_line(done, now=NOW)

    assert line == (
        "demo#0 on node-9 · installed cpu-large at 127.0.0.1:50120 · requests 1 · probes 0"
    )


def test_the_last_line_of_a_successful_install_names_the_address() -> None:
    result = InstallBackendResult(
        node_id="node-1",
        backend="cpu-large",
        model_id="demo",
        replica_index=0,
        slot="demo#0",
        op_id="op",
        address="127.0.0.1:50120",
        attempts=1,
        probes=0,
        started_at=NOW,
        completed_at=NOW,
        duration_seconds=31.5,
    )

    assert success_line(result) == (
        "installed cpu-large for demo#0 on node-1 at 127.0.0.1:50120 "
        "(1 request(s), 0 probe(s), 31.5s)"
    )


def test_the_ui_details_of_a_backing_off_install_name_the_next_try_and_the_cancel_command() -> None:
    backing_off = status(
        InstallPhase.BACKING_OFF, last_error=NODE_DOWN, next_attempt_at=NOW + timedelta(minutes=4)
    )

    text = details_markdown(backing_off, "install/node-9/cpu-large/demo/0")

    assert "- next try: 2026-01-02 10:04:00 UTC" in text
    assert "backendctl cancel install/node-9/cpu-large/demo/0" in text


def test_the_ui_details_of_a_finished_install_lead_with_its_address() -> None:
    done = status(
        InstallPhase.COMPLETED,
        address="127.0.0.1:50120",
        last_progress=BackendInstallProgressEvent(
            op_id="op", node_id="node-9", backend="cpu-large", percentage=100, phase="starting"
        ),
    )

    text = details_markdown(done)

    assert "- installed `cpu-large` at `127.0.0.1:50120`" in text
    assert "starting 100" not in text


def test_an_install_summary_reads_as_a_sentence() -> None:
    summary = install_summary("cpu-large", "node-1", "demo", 0)
    assert summary == "install cpu-large on node-1 for demo#0"
    assert install_summary("echo", "node-2", "", 1, "rollout-1") == (
        "install echo on node-2 for echo#1 (rollout rollout-1)"
    )


def test_a_load_being_staged_says_which_file_and_how_far_the_node_has_it() -> None:
    load = LoadStatus(
        node_id="gpu-1",
        backend="llama-cpp",
        model_id="qwen3",
        replica_index=0,
        slot="qwen3#0",
        phase=LoadPhase.STAGING,
        files=[
            FileStatus(path="q/a.gguf", sha256="a" * 64, size=10, state=FileState.STAGED),
            FileStatus(path="q/b.gguf", sha256="b" * 64, size=4 * 2**30, state=FileState.SENDING),
        ],
    )
    sending = StageProgress(path="q/b.gguf", committed=2**30, size=4 * 2**30)

    line = load_line(load, sending, "load/gpu-1/llama-cpp/qwen3/0")

    assert line == (
        "load load/gpu-1/llama-cpp/qwen3/0: staging · files 1/2 · q/b.gguf 1.0 GiB of 4.0 GiB (25%)"
    )
