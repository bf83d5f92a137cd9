"""``backend-devstack``: one command to a working cluster, then a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import Page
from playwright.async_api import TimeoutError as PlaywrightTimeout
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durable_installs.contracts.install import InstallBackendInput, install_workflow_id
from durable_installs.devstack.__main__ import parse_args
from durable_installs.devstack.stack import next_steps
from durable_installs.protocol import nats_auth
from durable_installs.protocol.connection import NatsOptions, NatsStartupError
from durable_installs.servers import registry_binary
from tests.devstack.browser import browser_page, screenshot
from tests.devstack.conftest import ROOT, RunningStack
from tests.registry import SKIP_REASON
from tests.workflow_helpers import wait_until
from workflows.install_backend import InstallBackendWorkflow


async def connect(stack: RunningStack) -> Client:
    return await Client.connect(stack.temporal_address, data_converter=pydantic_data_converter)


async def test_the_sample_install_finishes_with_a_routable_address(stack: RunningStack) -> None:
    client = await connect(stack)
    handle = client.get_workflow_handle_for(InstallBackendWorkflow.run, stack.sample_workflow_id())

    result = await handle.result()

    assert result.address.startswith("127.0.0.1:")
    assert result.progress_events > 0
    assert "/namespaces/default/workflows/" in stack.printed()
    description = await handle.describe()
    assert await description.static_summary() == "install cpu-large on node-1 for demo#0"


async def test_the_printed_start_and_query_commands_work_as_printed(stack: RunningStack) -> None:
    start = await asyncio.to_thread(run_printed, stack.printed_command("start"))
    assert start.returncode == 0, start.stderr
    workflow_id = start_id(stack.printed_command("start"))
    client = await connect(stack)
    handle = client.get_workflow_handle_for(InstallBackendWorkflow.run, workflow_id)
    result = await asyncio.wait_for(handle.result(), timeout=60)

    query = await asyncio.to_thread(run_printed, stack.printed_command("query"))

    assert result.node_id == "node-2" and result.backend == "echo"
    assert query.returncode == 0, query.stderr
    assert "completed" in query.stdout


async def test_the_demo_gallery_installs_an_oci_image_backend_from_the_local_registry(
    stack: RunningStack,
) -> None:
    if registry_binary() is None:
        assert "apt-get install docker-registry" in stack.printed()
        pytest.skip(SKIP_REASON)
    assert "OCI demo backend cpu-echo-oci: 127.0.0.1:" in stack.printed()
    client = await connect(stack)
    input = InstallBackendInput(node_id="node-3", backend="cpu-echo-oci", model_id="oci")

    handle = await client.start_workflow(
        InstallBackendWorkflow.run,
        input,
        id=install_workflow_id("node-3", "cpu-echo-oci", "oci", 0),
        task_queue="backend-install",
    )
    result = await asyncio.wait_for(handle.result(), timeout=120)

    assert result.address.startswith("127.0.0.1:")


def run_printed(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def start_id(command: list[str]) -> str:
    return command[command.index("--workflow-id") + 1]


async def test_the_stack_nats_refuses_anonymous_clients(stack: RunningStack) -> None:
    with pytest.raises(NatsStartupError, match="refused: credentials"):
        await NatsOptions(url=stack.nats_url).connect("anonymous")


def test_no_process_of_the_stack_shows_a_nats_password(stack: RunningStack) -> None:
    nats_dir = stack.state_dir / "nats"
    passwords = [nats_auth.read_env_file(path)["NATS_PASSWORD"] for path in nats_dir.glob("*.env")]
    assert len(passwords) == 4, "the worker and three nodes each have their own credentials"
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in nats_dir.iterdir())
    cmdlines = all_command_lines()
    assert any("node_agent" in c and str(stack.state_dir) in c for c in cmdlines)
    assert not [c for c in cmdlines if any(password in c for password in passwords)]


def all_command_lines() -> list[str]:
    """What ``ps`` shows every user: the command line of every process."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return found


def test_the_printed_extra_worker_command_finds_the_stack_and_its_credentials(
    stack: RunningStack,
) -> None:
    line = next(li.strip() for li in stack.lines if "backend-install-worker" in li)
    proc = subprocess.Popen(
        ["bash", "-c", line],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        output = []
        for out_line in proc.stdout:
            output.append(out_line)
            if "worker polling" in out_line:
                break
        assert "worker polling" in "".join(output), "".join(output)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # graceful: no install of another test is lost
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_no_nats_auth_runs_an_open_bus_and_prints_no_credentials() -> None:
    config = parse_args(["--no-nats-auth"])

    printed = next_steps(config, None)

    assert config.nats_auth is False and parse_args([]).nats_auth is True
    assert "open: no auth" in printed
    assert ".env" not in printed


def test_a_port_in_use_is_named_with_the_flag_that_moves_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "durable_installs.devstack", "--temporal-port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert out.returncode == 2
    assert f"port {port} (Temporal frontend) is already in use" in out.stderr
    assert "--temporal-port" in out.stderr


def backendctl(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_installs.backendctl",
            "--address",
            stack.temporal_address,
            "--no-live",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


async def test_watch_prints_a_finished_install_and_its_address(stack: RunningStack) -> None:
    sample = stack.sample_workflow_id()
    client = await connect(stack)
    result = await client.get_workflow_handle_for(InstallBackendWorkflow.run, sample).result()

    out = await asyncio.to_thread(backendctl, stack, "watch", sample)

    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"demo#0 on node-1 · installed cpu-large at {result.address}")
    assert lines[-1].startswith(f"installed cpu-large for demo#0 on node-1 at {result.address}")


async def test_install_watches_a_slow_install_live_to_its_address(stack: RunningStack) -> None:
    out = await asyncio.to_thread(
        backendctl,
        stack,
        "install",
        "--node-id",
        "node-2",
        "--backend",
        "cpu-large",
        "--model-id",
        "watched",
        "--option",
        "progress_report_interval_seconds=1",
    )

    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "install install/node-2/cpu-large/watched/0"
    downloading = [line for line in lines if "· downloading ·" in line]
    assert len(downloading) >= 2, out.stdout
    assert any("MiB / 24.0 MiB" in line for line in downloading)
    assert lines[-1].startswith("installed cpu-large for watched#0 on node-2 at 127.0.0.1:")


async def test_watch_reports_a_failed_install_with_its_type(stack: RunningStack) -> None:
    out = await asyncio.to_thread(
        backendctl, stack, "install", "--node-id", "node-1", "--backend", "no-such-backend"
    )

    assert out.returncode == 1
    assert out.stdout.splitlines()[-1].startswith("failed: InstallRejected: ")
    assert 'no backend found with name "no-such-backend"' in out.stdout


async def test_the_web_ui_tells_the_story_of_a_running_and_a_finished_install(
    stack: RunningStack,
) -> None:
    client = await connect(stack)
    # node-3 has nothing installed yet, so this install downloads (the others already did).
    # Started the way an operator does, so the UI shows what backendctl gives it.
    started = await asyncio.to_thread(
        backendctl,
        stack,
        "install",
        "--node-id",
        "node-3",
        "--backend",
        "cpu-large",
        "--model-id",
        "ui",
        "--option",
        "progress_report_interval_seconds=1",
        "--no-watch",
    )
    assert started.returncode == 0, started.stderr
    workflow_id = install_workflow_id("node-3", "cpu-large", "ui", 0)
    handle = client.get_workflow_handle_for(InstallBackendWorkflow.run, workflow_id)
    page_url = f"{stack.ui_url}/namespaces/default/workflows/{quote(workflow_id, safe='')}"

    async with browser_page() as page:
        # Running: the static summary and details, and the live phase and percentage in the
        # current details, all in the user metadata tab.
        await page.goto(page_url)
        await wait_for_details(page, "requests sent: 1")
        await wait_for_metadata(page, "install cpu-large on node-3 for ui#0")
        await wait_for_metadata(page, "requested by: backendctl")
        await wait_for_details(page, "installing")
        await wait_for_details(page, re.compile(r"progress: downloading \d+\.\d%"))
        await screenshot(page, "running-current-details")
        # Running: the pending install activity with its latest heartbeat (a progress event).
        await page.get_by_text("Pending Activities").first.click()
        await page.get_by_text("install_backend").first.wait_for()
        await page.get_by_text("event_count").first.wait_for()
        await screenshot(page, "running-pending-activity")

    await handle.result()
    # The history's events carry readable summaries (the UI draws them in its timeline; the
    # screenshot shows them, the text is checked through the API).
    history = await handle.fetch_history()
    summaries = [
        client.data_converter.payload_converter.from_payload(e.user_metadata.summary, str)
        for e in history.events
        if e.user_metadata.HasField("summary")
    ]
    assert "install cpu-large on node-3 for ui#0 (request 1, sent by the fast path)" in summaries

    async with browser_page() as page:
        # Finished: activity summaries tell the story in the timeline of the history.
        await page.goto(page_url)
        await page.get_by_text("Timeline").first.wait_for()
        await screenshot(page, "finished-history")
        await wait_for_details(page, "completed")
        await wait_for_details(page, "installed")
        await screenshot(page, "finished-current-details")
        # The list view filters by the search attributes and, with the columns docs/web-ui.md
        # adds, shows each install's node, backend and phase.
        query = 'NodeId="node-3" AND BackendName="cpu-large" AND InstallPhase="completed"'
        await page.goto(
            f"{stack.ui_url}/namespaces/default/workflows?query={quote(query, safe='')}"
        )
        await page.get_by_text(workflow_id).first.wait_for()
        await page.get_by_label("Configure Columns").click()
        for column in ("NodeId", "BackendName", "InstallPhase"):
            await page.get_by_label(f"Add {column} column").click()
        for column in ("Run ID", "Type"):
            await page.get_by_label(f"Remove {column} column").click()
        await page.reload()  # the UI keeps the columns (in the browser's local storage)
        row = page.get_by_role("row").filter(has_text=workflow_id)
        for column in ("NodeId", "BackendName", "InstallPhase"):
            await page.get_by_role("columnheader", name=column).first.wait_for()
        for value in ("node-3", "cpu-large", "completed"):
            await row.get_by_role("cell", name=value, exact=True).first.wait_for()
        await screenshot(page, "list-filtered")


async def wait_for_metadata(page: Page, text: str) -> None:
    """Wait for ``text`` in the user metadata tab: the static summary and details.

    The UI renders them as Markdown, in the page or in iframes of their own.
    """

    async def shown() -> bool:
        for frame in page.frames:
            with contextlib.suppress(PlaywrightError):
                if await frame.get_by_text(text).count():
                    return True
        return False

    await page.get_by_text("User Metadata").first.click()
    await wait_until(shown, within=20, what=f"{text!r} in the user metadata")


async def wait_for_details(page: Page, text: str | re.Pattern[str], attempts: int = 20) -> None:
    """Wait for ``text`` in the current details, reloading the page between looks.

    The UI renders the Markdown in an iframe of its own and refreshes it only on reload (or
    when a person presses R).
    """
    for _ in range(attempts):
        await page.get_by_text("User Metadata").first.click()
        frame = page.frame_locator('iframe[src*="/render"]').last
        try:
            await frame.get_by_text(text).first.wait_for(timeout=2_000)
            return
        except PlaywrightTimeout:
            await page.reload()
    await screenshot(page, "details-missing")
    raise AssertionError(f"{text!r} never showed in the current details")


async def test_the_stacks_agents_announce_themselves_and_a_drift_check_finds_both(
    stack: RunningStack,
) -> None:
    client = await connect(stack)
    await client.get_workflow_handle(stack.sample_workflow_id()).result()
    gallery = (stack.state_dir / "gallery" / "index.yaml").resolve().as_uri()

    out = await asyncio.to_thread(backendctl, stack, "drift", "--gallery", gallery)

    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert ["node-1", "cpu-large", "up_to_date"] in [row[:3] for row in rows]
    assert "node-2" in [row[0] for row in rows], "node-2 announced itself too"
    assert "unreachable" not in out.stdout


@pytest.mark.parametrize("verb", ["list", "nodes", "backends"])
def test_the_printed_backendctl_commands_work_exactly_as_printed(
    stack: RunningStack, verb: str
) -> None:
    """No env $(cat ...): the commands find the stack's Temporal profile and NATS context."""
    line = next(li.strip() for li in stack.lines if li.strip().endswith(f"backendctl {verb}"))

    out = subprocess.run(
        ["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )

    assert out.returncode == 0, out.stderr
    if verb == "nodes":
        assert all(node in out.stdout for node in ("node-1", "node-2", "node-3"))
    if verb == "backends":
        assert "cpu-large" in out.stdout


def test_sigint_stops_every_process_the_stack_started(stack: RunningStack) -> None:
    assert stack.leftover_processes(), "the stack's processes are visible while it runs"

    stack.proc.send_signal(signal.SIGINT)
    stack.proc.wait(timeout=60)

    assert stack.proc.returncode == 0
    assert stack.leftover_processes() == []
    printed = stack.printed()
    assert "stopping the worker (running activities may finish) and the node agents" in printed
    assert "stopping the servers" in printed
    assert "stopped." in printed
