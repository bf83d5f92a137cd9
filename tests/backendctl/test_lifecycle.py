"""``delete``, ``drift`` and ``drift-schedule`` as a user runs them (subprocesses).

``upgrade`` itself is tested against a real node agent in
``tests/node_agent/test_upgrade_workflow.py``, and its input errors in ``test_user_errors.py``.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    WorkflowExecutionStatus,
)

from durable_installs.backendctl.errors import UserError
from durable_installs.backendctl.lifecycle import gallery_url
from durable_installs.contracts.drift import DriftReport
from durable_installs.contracts.names import DRIFT_WORKFLOW
from durable_installs.devstack.sample_backend import Gallery
from durable_installs.protocol.messages import NodeBackendInfo, RunningModelInfo
from tests.backendctl.cli import ROOT
from tests.fake_node import FakeNode
from tests.workflow_helpers import wait_until


def backendctl(temporal_address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_installs.backendctl",
            "--address",
            temporal_address,
            "--no-live",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def outdated_gallery(tmp_path: Path) -> Gallery:
    gallery = Gallery(path=tmp_path / "index.yaml")
    gallery.add({"name": "cpu-echo", "uri": "file:///srv/cpu-echo.tar.gz", "version": "2.0.0"})
    return gallery


async def test_drift_prints_one_row_per_node_and_backend(
    temporal_address: str, task_queue: str, nc: NATS, node_id: str, tmp_path: Path
) -> None:
    gallery = outdated_gallery(tmp_path)
    node = FakeNode(nc, node_id)
    node.backends = [NodeBackendInfo(name="cpu-echo", version="1.0.0")]
    await node.start()

    out = await asyncio.to_thread(
        backendctl,
        temporal_address,
        "drift",
        "--gallery",
        gallery.config.url,
        "--node",
        node_id,
        "--no-registry",
        "--task-queue",
        task_queue,
    )

    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.startswith(node_id)]
    assert row.split()[:5] == [node_id, "cpu-echo", "outdated", "1.0.0", "2.0.0"]
    assert "1 node(s): outdated 1" in out.stdout


async def test_delete_of_a_running_backend_is_one_error_line_naming_the_refusal(
    temporal_address: str, task_queue: str, nc: NATS, node_id: str
) -> None:
    node = FakeNode(nc, node_id)
    node.backends = [NodeBackendInfo(name="cpu-echo")]
    node.running = [RunningModelInfo(model_id="qwen3", backend="cpu-echo")]
    await node.start()

    out = await asyncio.to_thread(
        backendctl,
        temporal_address,
        "delete",
        "--node-id",
        node_id,
        "--backend",
        "cpu-echo",
        "--task-queue",
        task_queue,
    )

    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: DeleteRefused: cpu-echo is serving on")
    assert "qwen3#0" in out.stderr
    assert "delete with --force" in out.stderr, "the refusal names the flag that overrides it"


def test_a_bad_interval_is_one_line_and_exit_code_2(temporal_address: str) -> None:
    out = backendctl(
        temporal_address, "drift-schedule", "--gallery", "file:///g.yaml", "--every", "5x"
    )

    assert out.returncode == 2
    assert out.stderr == "error: --every: '5x' is not a duration like 30m, 6h or 1d\n"


async def test_drift_schedule_creates_a_schedule_whose_runs_check_drift(
    temporal_address: str, client: Client, task_queue: str, nc: NATS, node_id: str, tmp_path: Path
) -> None:
    gallery = outdated_gallery(tmp_path)
    node = FakeNode(nc, node_id)
    node.backends = [NodeBackendInfo(name="cpu-echo", version="1.0.0")]
    await node.start()
    schedule_id = f"drift-test-{uuid.uuid4().hex[:8]}"

    out = await asyncio.to_thread(
        backendctl,
        temporal_address,
        "drift-schedule",
        "--gallery",
        gallery.config.url,
        "--node",
        node_id,
        "--no-registry",
        "--every",
        "6h",
        "--schedule-id",
        schedule_id,
        "--task-queue",
        task_queue,
    )
    assert out.returncode == 0, out.stderr
    schedule = client.get_schedule_handle(schedule_id)
    try:
        description = await schedule.describe()
        action = description.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == DRIFT_WORKFLOW and action.task_queue == task_queue
        assert description.schedule.spec.intervals[0].every.total_seconds() == 6 * 3600

        await schedule.trigger()

        async def ran() -> bool:
            runs = (await schedule.describe()).info.recent_actions
            return bool(runs)

        await wait_until(ran, what="a run of the schedule")
        run = (await schedule.describe()).info.recent_actions[0].action
        assert isinstance(run, ScheduleActionExecutionStartWorkflow)
        handle = client.get_workflow_handle(run.workflow_id, result_type=DriftReport)
        report = await handle.result()
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert report.outdated() == {"cpu-echo": [node_id]}
        again = await asyncio.to_thread(
            backendctl,
            temporal_address,
            "drift-schedule",
            "--gallery",
            gallery.config.url,
            "--schedule-id",
            schedule_id,
        )
        assert again.returncode == 2
        assert again.stderr.startswith(f"error: schedule {schedule_id} exists; delete it first")
    finally:
        await schedule.delete()


async def test_a_forced_delete_prints_its_steps_and_what_it_did(
    temporal_address: str, task_queue: str, nc: NATS, node_id: str
) -> None:
    node = FakeNode(nc, node_id)
    node.backends = [NodeBackendInfo(name="cpu-echo")]
    node.running = [RunningModelInfo(model_id="qwen3", backend="cpu-echo")]
    await node.start()
    await node.obey_stop_and_delete()

    out = await asyncio.to_thread(
        backendctl,
        temporal_address,
        "delete",
        "--node-id",
        node_id,
        "--backend",
        "cpu-echo",
        "--force",
        "--task-queue",
        task_queue,
    )

    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"delete delete/{node_id}/cpu-echo"
    assert lines[-1] == f"deleted cpu-echo from {node_id} after stopping 1 slot(s)"
    assert node.running == [] and node.backends is None


def test_a_relative_gallery_path_is_made_absolute_for_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker reads the gallery (for months, on a schedule), not this command."""
    (tmp_path / "index.yaml").write_text("- name: cpu-echo\n")
    monkeypatch.chdir(tmp_path)

    assert gallery_url("index.yaml") == (tmp_path / "index.yaml").resolve().as_uri()
    assert gallery_url("https://example.invalid/index.yaml").startswith("https://")


def test_a_gallery_path_that_does_not_exist_is_refused_naming_the_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    with pytest.raises(UserError, match=re.escape("--gallery 'missing.yaml': no such file")):
        gallery_url("missing.yaml")
