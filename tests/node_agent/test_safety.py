"""Bad input gets a clear error and changes nothing; the previous version keeps running."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from durable_installs.devstack.sample_backend import SampleBackend, build_archive
from durable_installs.node_agent import backend_rpc
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallReply
from tests.node_agent.helpers import NodeClient, eventually

GALLERY = "installing backend from gallery: "


def _escaped(root: Path) -> list[Path]:
    """Files a tar-slip member could have written outside the staging directory."""
    found = [*root.rglob("escaped.txt"), *root.rglob("outside")]
    return found + [p for p in [Path("/tmp/absolute-escape.txt")] if p.exists()]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


async def _install_v1(node: NodeClient, archives: Path) -> BackendInstallReply:
    node.gallery.add_backend(SampleBackend("cpu-echo", version="1.0.0"), archives)
    reply = await node.install("cpu-echo", model_id="m")
    assert reply.success, reply.error
    return reply


async def _assert_v1_still_serves(node: NodeClient, v1: BackendInstallReply) -> None:
    assert node.installed_version("cpu-echo") == "1.0.0"
    assert node.staging_leftovers() == []
    again = await node.install("cpu-echo", model_id="m")
    assert again == v1 and await backend_rpc.health(again.address)


async def test_sha256_mismatch_is_reported_and_the_previous_version_still_runs(
    node: NodeClient, archives: Path
) -> None:
    v1 = await _install_v1(node, archives)
    node.gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0"), archives, sha256="0" * 64)

    reply = await node.upgrade("cpu-echo")

    assert not reply.success
    assert reply.error.startswith('upgrading backend from gallery: failed to download backend "')
    assert "SHA mismatch for file" in reply.error and "0" * 64 in reply.error
    assert reply.stopped_process_keys is None and reply.reports_stopped_processes
    assert node.partial_files() == []
    await _assert_v1_still_serves(node, v1)


async def test_sha256_mismatch_on_a_fresh_install_uses_the_install_prefix(
    node: NodeClient, archives: Path
) -> None:
    built = node.gallery.add_backend(SampleBackend("cpu-echo"), archives, sha256="ab" * 32)

    reply = await node.install("cpu-echo")

    assert reply.error.startswith(f'{GALLERY}failed to download backend "{built.uri}": ')
    assert "SHA mismatch for file" in reply.error
    assert not (node.backends_dir / "cpu-echo").exists()


@pytest.mark.parametrize(
    "backend",
    ["../evil", "a/b", "..", "x\x00y", "bad\nname", "\\evil", ".hidden", "x.install-tmp"],
)
async def test_path_traversal_and_control_names_are_rejected_without_touching_disk(
    node: NodeClient, tmp_path: Path, backend: str
) -> None:
    before = _tree(tmp_path)

    reply = await node.install(backend)

    assert not reply.success
    assert reply.error.startswith('invalid request: invalid backend name "')
    assert _tree(tmp_path) == before


async def test_an_empty_backend_name_is_the_catalogue_error(node: NodeClient) -> None:
    reply = await node.install("")

    assert reply.error == f"{GALLERY}backend name is empty"


async def test_a_gallery_entry_whose_name_escapes_is_refused(
    node: NodeClient, archives: Path, tmp_path: Path
) -> None:
    built = build_archive(archives / "evil.tar.gz", SampleBackend("evil"))
    node.gallery.add({"name": "meta", "capabilities": {"default": "../../evil"}})
    node.gallery.add({"name": "../../evil", "uri": built.uri, "sha256": built.sha256})
    before = _tree(tmp_path)

    reply = await node.install("meta")

    assert reply.error.startswith(f'{GALLERY}invalid backend name "../../evil"')
    assert _tree(tmp_path) == before


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, link: str = ""
) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    content = b"pwned\n" if kind == tarfile.REGTYPE else b""
    info.size = len(content)
    return info, content


@pytest.mark.parametrize(
    "member",
    [
        _member("../escaped.txt"),
        _member("lib/../../escaped.txt"),
        _member("/tmp/absolute-escape.txt"),
        _member("lib/link", tarfile.SYMTYPE, "/etc/passwd"),
        _member("lib/link", tarfile.SYMTYPE, "../../outside"),
        _member("hard", tarfile.LNKTYPE, "../outside"),
        _member("dev", tarfile.CHRTYPE),
        _member("fifo", tarfile.FIFOTYPE),
    ],
    ids=[
        "dotdot",
        "nested-dotdot",
        "absolute",
        "abs-symlink",
        "rel-symlink",
        "hardlink",
        "device",
        "fifo",
    ],
)
async def test_tar_slip_archives_are_refused_and_nothing_escapes(
    node: NodeClient, archives: Path, tmp_path: Path, member: tuple[tarfile.TarInfo, bytes]
) -> None:
    built = build_archive(archives / "slip.tar.gz", SampleBackend("cpu-slip"), extra=[member])
    node.gallery.add({"name": "cpu-slip", "uri": built.uri, "sha256": built.sha256})

    reply = await node.install("cpu-slip")

    assert reply.error.startswith(f'{GALLERY}unsafe archive "{built.uri}": ')
    assert _escaped(tmp_path) == []
    assert node.staging_leftovers() == [] and not (node.backends_dir / "cpu-slip").exists()


async def test_an_archive_without_run_sh_is_not_a_valid_backend(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-norun", with_run_file=False), archives)

    reply = await node.install("cpu-norun")

    staging = node.backends_dir / "cpu-norun.install-tmp" / "run.sh"
    assert reply.error == f'{GALLERY}not a valid backend: run file not found "{staging}"'
    assert node.staging_leftovers() == [] and not (node.backends_dir / "cpu-norun").exists()


async def test_a_missing_run_sh_in_a_new_version_keeps_the_previous_one(
    node: NodeClient, archives: Path
) -> None:
    v1 = await _install_v1(node, archives)
    spec = SampleBackend("cpu-echo", version="2.0.0", with_run_file=False)
    node.gallery.add_backend(spec, archives)

    reply = await node.upgrade("cpu-echo")

    assert "not a valid backend: run file not found" in reply.error
    await _assert_v1_still_serves(node, v1)


async def test_a_backend_that_dies_at_startup_reports_its_stderr_and_frees_the_port(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-crash", crash=True), archives)

    reply = await node.install("cpu-crash", model_id="m")

    assert reply.error.startswith("backend process m#0 died during startup. Last stderr:\n")
    assert "libcuda.so.1: cannot open shared object file" in reply.error
    assert node.agent.service.supervisor.all() == []
    assert node.agent.service.ports.in_use() == {}


async def test_a_forced_reinstall_that_dies_at_startup_restores_the_previous_version(
    node: NodeClient, archives: Path
) -> None:
    await _install_v1(node, archives)
    node.gallery.add_backend(SampleBackend("cpu-echo", version="2.0.0", crash=True), archives)

    reply = await node.install("cpu-echo", model_id="m", force=True)

    assert "died during startup" in reply.error
    assert node.installed_version("cpu-echo") == "1.0.0"
    assert node.staging_leftovers() == []
    again = await node.install("cpu-echo", model_id="m")
    assert again.success and await backend_rpc.health(again.address)


async def test_unknown_backend_gets_no_backend_found(node: NodeClient) -> None:
    reply = await node.install("nope")

    assert reply.error == f'{GALLERY}no backend found with name "nope"'


async def test_downloads_over_the_size_limit_are_refused(start_agent, archives: Path) -> None:
    node = await start_agent(max_download_bytes=100)
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)

    reply = await node.install("cpu-echo")

    assert "exceeds the configured size limit of 100 B" in reply.error
    assert node.partial_files() == [] and node.staging_leftovers() == []


@pytest.mark.parametrize(
    "subject",
    [subjects.install, subjects.upgrade, subjects.backend_delete, subjects.install_status],
)
async def test_malformed_json_gets_invalid_request_and_the_agent_keeps_working(
    node: NodeClient, archives: Path, subject
) -> None:
    reply = await node.raw(subject(node.node_id), b"{not json")

    assert reply["success"] is False and reply["error"].startswith("invalid request: ")
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    assert (await node.install("cpu-echo")).success


async def test_malformed_backend_stop_is_ignored_not_treated_as_stop_all(
    node: NodeClient, archives: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _install_v1(node, archives)

    await node.nc.publish(subjects.backend_stop(node.node_id), b"{oops")
    await eventually(lambda: "ignoring malformed backend.stop" in caplog.text, "stop handled")

    assert await node.running_keys() == ["m#0"]
