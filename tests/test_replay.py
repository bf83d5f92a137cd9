"""Every recorded history replays against today's workflow code.

The histories in ``tests/histories/<WorkflowType>/`` are real executions (recorded by
``python -m tests.histories.record``). An execution that is running in a cluster when a new
worker is deployed is replayed by that worker; a change that no longer replays one of these
fails here first, and must be versioned with ``workflow.patched`` (docs/contributing.md,
"Changing workflow code").
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from durable_installs.orchestrator.registry import WORKFLOW_BEHAVIORS

HISTORIES = Path(__file__).resolve().parent / "histories"
RECORDED = sorted(HISTORIES.glob("*/*.json"))
WORKFLOWS = list(WORKFLOW_BEHAVIORS)
"""What the worker registers: a new workflow type is here without anyone listing it."""


def test_every_workflow_type_the_worker_runs_has_recorded_histories() -> None:
    recorded_types = {path.parent.name for path in RECORDED}
    assert {w.__name__ for w in WORKFLOWS} == recorded_types


def _load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"{path.parent.name}/{path.stem}", path.read_text())


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_history_replays(path: Path) -> None:
    history = _load(path)
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)

    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)

    assert result.replay_failure is None, f"{path.name} no longer replays: {result.replay_failure}"
