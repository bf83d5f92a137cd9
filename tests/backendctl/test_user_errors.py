"""Every user mistake is one line on stderr and exit 2; never a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from temporalio.client import Client

from durable_installs.backendctl import cli
from durable_installs.servers import free_port
from tests.backendctl.cli import PROG, ROOT, one_error_line, run_ctl


async def ctl(*args: str, address: str | None = None) -> tuple[int, str, str]:
    out = await asyncio.to_thread(run_ctl, *args, address=address)
    return out.returncode, out.stdout, out.stderr


INSTALL = ("install", "--node-id", "node-1", "--backend", "cpu-large")


async def test_a_number_option_that_is_not_a_number_names_the_field_and_an_example(
    temporal_address: str,
) -> None:
    code, stdout, stderr = await ctl(
        *INSTALL, "--option", "install_timeout_seconds=abc", address=temporal_address
    )

    assert code == 2 and stdout == ""
    assert one_error_line(stderr) == (
        "error: --option install_timeout_seconds=abc: install_timeout_seconds takes a number, "
        "e.g. --option install_timeout_seconds=60"
    )


async def test_an_upgrade_option_is_checked_like_an_install_option(temporal_address: str) -> None:
    code, stdout, stderr = await ctl(
        "upgrade",
        "--node-id",
        "node-1",
        "--backend",
        "cpu-large",
        "--option",
        "upgrade_timeout_seconds=soon",
        address=temporal_address,
    )

    assert code == 2 and stdout == ""
    assert one_error_line(stderr) == (
        "error: --option upgrade_timeout_seconds=soon: upgrade_timeout_seconds takes a number, "
        "e.g. --option upgrade_timeout_seconds=60"
    )


async def test_an_unknown_option_lists_the_known_fields(temporal_address: str) -> None:
    code, _, stderr = await ctl(*INSTALL, "--option", "bogus=1", address=temporal_address)

    assert code == 2
    line = one_error_line(stderr)
    assert line.startswith("error: --option bogus=1: unknown field 'bogus'; known: alias, ")
    assert "install_timeout_seconds" in line


async def test_an_option_that_has_its_own_flag_points_to_the_flag(temporal_address: str) -> None:
    code, _, stderr = await ctl(*INSTALL, "--option", "node_id=x", address=temporal_address)

    assert code == 2
    assert one_error_line(stderr) == "error: --option node_id=x: set node_id with --node-id instead"


async def test_an_out_of_range_option_is_refused_before_anything_starts(
    temporal_address: str,
) -> None:
    code, _, stderr = await ctl(
        *INSTALL, "--option", "install_timeout_seconds=-1", address=temporal_address
    )

    assert code == 2
    assert one_error_line(stderr) == (
        "error: invalid install input: install_timeout_seconds: must be between 0.1 and "
        "2,592,000 seconds"
    )


async def test_a_string_option_needs_no_json_quotes(client: Client, temporal_address: str) -> None:
    code, stdout, stderr = await ctl(
        "install",
        "--node-id",
        "node-quoted",
        "--backend",
        "cpu-large",
        "--option",
        "name=foo",
        "--option",
        'alias="bar"',
        "--task-queue",
        "nobody-polls-this",
        "--no-watch",
        address=temporal_address,
    )
    workflow_id = "install/node-quoted/cpu-large/-/0"
    handle = client.get_workflow_handle(workflow_id)
    try:
        assert (code, stderr) == (0, "")
        assert stdout.splitlines() == [
            f"install {workflow_id}",
            f"watch it: {PROG} watch {workflow_id}",
        ]
        history = await handle.fetch_history()
        start = history.events[0].workflow_execution_started_event_attributes
        sent = client.data_converter.payload_converter.from_payload(start.input.payloads[0], dict)
        assert (sent["name"], sent["alias"]) == ("foo", "bar")
    finally:
        await handle.terminate("test cleanup")


async def test_watching_an_unknown_workflow_says_how_to_find_one(temporal_address: str) -> None:
    code, stdout, stderr = await ctl("watch", "install/nope/x/-/0", address=temporal_address)

    assert code == 2 and stdout == ""
    assert one_error_line(stderr) == (
        "error: no workflow 'install/nope/x/-/0' in namespace default; "
        f"list installs with: {PROG} list"
    )


async def test_temporal_down_is_one_line_that_says_what_to_do() -> None:
    address = f"127.0.0.1:{free_port()}"

    code, _, stderr = await ctl("watch", "install/a/b/-/0", address=address)

    assert code == 2
    assert one_error_line(stderr) == (
        f"error: cannot reach Temporal at {address} (connection refused); "
        "start it (make run) or set --address / TEMPORAL_ADDRESS"
    )


async def test_a_usage_mistake_is_one_line_with_where_to_read_more() -> None:
    code, _, stderr = await ctl("list", "--phase", "nope")

    assert code == 2
    line = one_error_line(stderr)
    assert line.startswith("error: argument --phase: invalid choice: 'nope'")
    assert line.endswith(f"(see {PROG} list --help)")


async def test_an_unreadable_gallery_is_named_before_connecting_anywhere() -> None:
    code, _, stderr = await ctl(
        "backends", "--gallery", "/no/such/index.yaml", address=f"127.0.0.1:{free_port()}"
    )

    assert code == 2
    assert one_error_line(stderr) == "error: --gallery /no/such/index.yaml: cannot be read"


def test_an_unexpected_error_is_one_line_that_offers_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def broken(*_: object) -> int:
        raise KeyError("surprise")

    monkeypatch.setattr(cli, "run", broken)

    code = cli.main(["list"])

    assert code == 1
    assert one_error_line(capsys.readouterr().err) == (
        "error: unexpected KeyError: 'surprise' (run with --debug for the traceback)"
    )


def test_the_help_reads_as_plain_text() -> None:
    out = run_ctl("--help")

    assert out.returncode == 0
    assert "``" not in out.stdout
    for command in ("watch", "install", "list", "nodes", "backends", "cancel", "rollout"):
        assert f"    {command} " in out.stdout


def test_every_flag_of_every_command_has_help_text() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    assert isinstance(commands.choices, dict)

    missing = [
        f"{name} {'/'.join(action.option_strings)}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings and action.dest != "help" and not action.help
    ]

    assert missing == []


def test_the_worker_help_names_all_five_search_attributes() -> None:
    out = subprocess.run(
        [sys.executable, "worker_main.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )

    text = " ".join(out.stdout.split())
    assert "NodeId, BackendName, ModelId, InstallPhase, RolloutId" in text
