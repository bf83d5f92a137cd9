"""Input validation names the field and the reason; the UI summary reads at a glance."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from durable_installs.contracts.install import (
    InstallBackendInput,
    InstallPhase,
    InstallStatus,
    describe_problems,
)
from durable_installs.protocol.messages import BackendInstallProgressEvent, GalleryConfig
from durable_installs.protocol.subjects import token_problem
from workflows.install_steps import backoff_seconds, derive_op_id
from workflows.summary import describe_progress, details_markdown


def fields_with_problems(**fields: object) -> list[str]:
    input = InstallBackendInput.model_validate({"node_id": "n1", "backend": "b", **fields})
    return [field for field, _ in input.problems()]


def test_a_minimal_input_is_valid_and_uses_the_documented_defaults() -> None:
    input = InstallBackendInput(node_id="n1", backend="llama-cpp")
    assert input.problems() == []
    assert input.slot == "llama-cpp#0"
    assert (input.install_timeout_seconds, input.probe_interval_seconds) == (900, 15)
    assert input.deadline_seconds == 6 * 3600


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"node_id": "a.*"}, "node_id"),
        ({"node_id": ""}, "node_id"),
        ({"op_id": "x y"}, "op_id"),
        ({"backend": " "}, "backend"),
        ({"model_id": "m\x00"}, "model_id"),
        ({"replica_index": -1}, "replica_index"),
        ({"replica_index": 2**31}, "replica_index"),
        ({"install_timeout_seconds": 0}, "install_timeout_seconds"),
        ({"probe_interval_seconds": -1}, "probe_interval_seconds"),
        ({"deadline_seconds": 0}, "deadline_seconds"),
        ({"max_failed_attempts": 0}, "max_failed_attempts"),
        ({"backend_galleries": [GalleryConfig(url="", name="x")]}, "backend_galleries[0].url"),
    ],
)
def test_each_invalid_field_is_named(fields: dict[str, object], field: str) -> None:
    assert fields_with_problems(**fields) == [field]


LONG = "x" * 257
WIDE = "\U0001f680" * 257
"""257 four-byte characters: one over the length limit, over 1 KiB in UTF-8."""


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"deadline_seconds": "NaN"}, "deadline_seconds"),
        ({"deadline_seconds": "Infinity"}, "deadline_seconds"),
        ({"deadline_seconds": "-Infinity"}, "deadline_seconds"),
        ({"deadline_seconds": 1e300}, "deadline_seconds"),
        ({"deadline_seconds": 30 * 86400 + 1}, "deadline_seconds"),
        ({"install_timeout_seconds": 1e300}, "install_timeout_seconds"),
        ({"install_timeout_seconds": 0.01}, "install_timeout_seconds"),
        ({"probe_interval_seconds": "Infinity"}, "probe_interval_seconds"),
        ({"heartbeat_timeout_seconds": 0.5}, "heartbeat_timeout_seconds"),
        ({"heartbeat_timeout_seconds": 1e300}, "heartbeat_timeout_seconds"),
        ({"retry_backoff_seconds": "NaN"}, "retry_backoff_seconds"),
        ({"retry_backoff_max_seconds": 1e300}, "retry_backoff_max_seconds"),
        ({"probe_listen_seconds": 301}, "probe_listen_seconds"),
        ({"progress_report_interval_seconds": "NaN"}, "progress_report_interval_seconds"),
        ({"progress_report_interval_seconds": 1e300}, "progress_report_interval_seconds"),
        ({"progress_report_interval_seconds": 0.001}, "progress_report_interval_seconds"),
        ({"max_failed_attempts": 10**12}, "max_failed_attempts"),
        ({"replica_index": 10**400 // 10**300}, "replica_index"),
        ({"backend": LONG}, "backend"),
        ({"backend": WIDE}, "backend"),
        ({"model_id": LONG}, "model_id"),
        ({"name": LONG}, "name"),
        ({"alias": LONG}, "alias"),
        ({"uri": "u" * 4097}, "uri"),
        ({"op_id": LONG}, "op_id"),
        ({"rollout_id": "r" * 1001}, "rollout_id"),
        ({"rollout_id": "\U0001f680" * 300}, "rollout_id"),
        ({"backend_galleries": [{"url": "u", "name": "g"}] * 17}, "backend_galleries"),
        ({"backend_galleries": [{"url": "u" * 4097, "name": "g"}]}, "backend_galleries[0].url"),
        ({"backend_galleries": [{"url": "u", "name": LONG}]}, "backend_galleries[0].name"),
        (
            {"backend_galleries": [{"url": "u", "name": "g", "mirrors": ["m"] * 17}]},
            "backend_galleries[0].mirrors",
        ),
        (
            {"backend_galleries": [{"url": "u", "name": "g", "mirrors": ["m", ""]}]},
            "backend_galleries[0].mirrors[1]",
        ),
        (
            {
                "backend_galleries": [
                    {"url": "u", "name": f"g{i}", "mirrors": ["m" * 4000] * 2} for i in range(9)
                ]
            },
            "backend_galleries",
        ),
    ],
)
def test_each_out_of_bounds_field_is_named(fields: dict[str, object], field: str) -> None:
    assert fields_with_problems(**fields) == [field]


def test_the_upper_bounds_themselves_are_valid() -> None:
    assert (
        fields_with_problems(
            deadline_seconds=30 * 86400,
            install_timeout_seconds=30 * 86400,
            probe_interval_seconds=86400,
            heartbeat_timeout_seconds=86400,
            retry_backoff_seconds=86400,
            retry_backoff_max_seconds=86400,
            probe_listen_seconds=300,
            progress_report_interval_seconds=86400,
            max_failed_attempts=1000,
            replica_index=2**31 - 1,
            backend="b" * 256,
            model_id="\U0001f680" * 256,
            uri="u" * 4096,
            rollout_id="r" * 1000,
        )
        == []
    )


def test_a_reason_never_repeats_the_value() -> None:
    input = InstallBackendInput(node_id="n1", backend="secret-" * 100)
    [(field, reason)] = input.problems()
    assert field == "backend" and "secret" not in reason and "700" in reason


def carry(**fields: object) -> dict[str, object]:
    now = datetime.now(UTC).isoformat()
    return {
        "op_id": "op-1",
        "started_at": now,
        "deadline_at": now,
        "attempts": 1,
        "probes": 0,
        "failed_attempts": 0,
        "backoff_streak": 0,
        **fields,
    }


@pytest.mark.parametrize(
    ("resume", "field"),
    [
        (carry(op_id="a.*"), "resume.op_id"),
        (carry(deadline_at="2026-01-01T00:00:00"), "resume.deadline_at"),
        (carry(deadline_at="9999-12-31T00:00:00Z"), "resume.deadline_at"),
    ],
)
def test_a_carried_over_state_that_would_break_the_run_is_named(
    resume: dict[str, object], field: str
) -> None:
    assert fields_with_problems(resume=resume) == [field]


def test_the_back_off_never_overflows_however_long_the_node_stays_away() -> None:
    input = InstallBackendInput(node_id="n1", backend="b", retry_backoff_max_seconds=86400)
    assert backoff_seconds(input, 1) == 30
    assert backoff_seconds(input, 2) == 60
    assert backoff_seconds(input, 10**9) == 86400


def test_the_reason_says_why_a_node_id_is_refused() -> None:
    input = InstallBackendInput(node_id="a.*", backend="b")
    [(field, reason)] = input.problems()
    assert field == "node_id" and "different node" in reason


def test_unknown_input_fields_are_refused_rather_than_silently_ignored() -> None:
    with pytest.raises(ValueError, match="node"):
        InstallBackendInput.model_validate({"node_id": "n", "backend": "b", "node": "typo"})


def test_derived_op_ids_are_stable_per_workflow_and_valid_tokens() -> None:
    assert derive_op_id("wf-1") == derive_op_id("wf-1") != derive_op_id("wf-2")
    for workflow_id in ("wf-1", "install/node-1/llama-cpp/qwen3.5/0", "a b.c*>", "x" * 1000):
        assert token_problem(derive_op_id(workflow_id)) is None


def test_details_summarise_phase_progress_and_probe() -> None:
    now = datetime.now(UTC)
    status = InstallStatus(
        node_id="n1",
        backend="llama-cpp",
        model_id="qwen3",
        replica_index=0,
        slot="qwen3#0",
        op_id="op-1",
        phase=InstallPhase.STILL_INSTALLING,
        attempts=1,
        progress_events=12,
        last_progress=BackendInstallProgressEvent(
            op_id="op-1",
            node_id="n1",
            backend="llama-cpp",
            current="412.3 MiB",
            total="1.0 GiB",
            percentage=40.26,
            phase="downloading",
        ),
        started_at=now,
        updated_at=now,
        deadline_at=now,
    )
    text = details_markdown(status)
    assert text.startswith("**still installing** · `llama-cpp` on node `n1` · slot `qwen3#0`")
    assert "downloading 40.3% (412.3 MiB / 1.0 GiB)" in text
    assert describe_progress(None) == ""


def test_a_failure_message_lists_the_first_ten_problems_and_counts_the_rest() -> None:
    problems = [(f"field_{n}", "is wrong") for n in range(25)]
    text = describe_problems(problems)
    assert text.startswith("field_0: is wrong; field_1: is wrong")
    assert "field_9: is wrong" in text and "field_10" not in text
    assert text.endswith("; and 15 more")
