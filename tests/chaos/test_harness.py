"""The chaos suite's own instruments: bytes counted where they leave, processes by /proc."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.chaos.procs import is_zombie, processes_under
from tests.chaos.scenario import CountingFileServer
from tests.workflow_helpers import wait_for


def _get(url: str, range_header: str | None = None) -> bytes:
    request = urllib.request.Request(url, headers={"Range": range_header} if range_header else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        body: bytes = response.read()
        return body


async def test_the_file_server_counts_every_body_byte_per_path_across_resumes(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 3000)
    server = CountingFileServer(tmp_path, rate=1 << 20)
    server.start()
    try:
        assert len(_get(server.url("a.bin"))) == 3000
        assert len(_get(server.url("a.bin"), "bytes=1000-")) == 2000
        # The server counts a write after it returns, which can be after the client has read it.
        await wait_for(lambda: server.bytes_served("/a.bin") >= 5000, what="5000 bytes counted")
        assert server.bytes_served("/a.bin") == 5000
        assert server.bytes_served("/other.bin") == 0
        assert server.ranges == [None, "bytes=1000-"]
        assert server.downloads_from_zero() == 1
    finally:
        server.stop()


def _sleeper(cwd: Path) -> subprocess.Popen[bytes]:
    """A process in ``cwd`` that nobody reaps until the test says so."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], cwd=cwd)


async def test_processes_are_found_by_working_directory_and_zombies_are_not_counted(
    tmp_path: Path,
) -> None:
    sleeper = _sleeper(tmp_path)
    try:
        assert [p.pid for p in processes_under(tmp_path)] == [sleeper.pid]
        sleeper.kill()
        await wait_for(lambda: processes_under(tmp_path) == [], within=10, what="not counted")
        assert is_zombie(sleeper.pid), "not reaped yet: a zombie, which serves nothing"
    finally:
        sleeper.kill()
        sleeper.wait()
