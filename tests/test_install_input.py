"""Input validation names the field and the reason; the UI summary reads at a glance."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from contracts.install import InstallBackendInput, InstallPhase, InstallStatus
from protocol.messages import BackendInstallProgressEvent, GalleryConfig
from protocol.subjects import token_problem
from workflows.install_backend import derive_op_id
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
        ({"backend_galleries": [GalleryConfig(url="", name="x")]}, "backend_galleries[0]"),
    ],
)
def test_each_invalid_field_is_named(fields: dict[str, object], field: str) -> None:
    assert fields_with_problems(**fields) == [field]


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
