"""The process records file: which backend processes this node's agent started.

Backend processes run in their own session, so they outlive an agent that is killed or
crashes; an operator does not want every model to go down because the agent was upgraded or
died. The supervisor therefore writes one record per process (slot key, pid, process start
time, port, backend and its directory) to ``<backends>/.processes.json``, atomically (write a
temporary file, fsync, rename) on every change. The next agent reads the records and adopts
what is still the same, healthy process, and kills the rest (see
:meth:`node_agent.supervisor.Supervisor.recover`).

A pid alone is not an identity: after a process dies the kernel may give its pid to an
unrelated process. Each record carries the process's start time in clock ticks since boot
(field 22 of ``/proc/<pid>/stat``), which a reused pid does not share; nothing is signalled
unless it matches. The file is read as untrusted input: bounded in size, every field checked,
a bad entry skipped with a warning.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from durable_installs.protocol.messages import parse_process_key

log = logging.getLogger(__name__)

RECORDS_FILE = ".processes.json"
MAX_RECORDS_BYTES = 1024 * 1024
MAX_RECORDS = 10_000


@dataclass(frozen=True)
class ProcStat:
    """What ``/proc/<pid>/stat`` says about a live (not zombie) process."""

    pgrp: int
    start_ticks: int


def proc_stat(pid: int) -> ProcStat | None:
    """Process group and start time of ``pid``; None when it is gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # "pid (comm) state ppid pgrp ..." where comm may contain anything, ")" included.
    fields = text[text.rfind(")") + 1 :].split()
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    try:
        return ProcStat(pgrp=int(fields[2]), start_ticks=int(fields[19]))
    except ValueError:
        return None


@dataclass(frozen=True)
class ProcessRecord:
    """One backend process as the agent that started it saw it."""

    key: str
    backend: str
    directory: str
    identity: tuple[int, int] | None
    """``(device, inode)`` of ``directory`` when the process started."""
    port: int
    pid: int
    start_ticks: int
    log: str

    def is_running(self) -> bool:
        """The recorded process itself is alive (not merely some process with its pid)."""
        stat = proc_stat(self.pid)
        return stat is not None and stat.start_ticks == self.start_ticks

    def orphans(self) -> list[int]:
        """Processes ``run.sh`` forked that outlived the recorded one (which is gone).

        Only when nothing holds the recorded pid, and only processes that are in its process
        group, started after it and run inside its backend directory: all three together
        rule out an unrelated group that reused the id.
        """
        if proc_stat(self.pid) is not None:
            return []
        directory = Path(self.directory)
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            stat = proc_stat(int(entry.name))
            if stat is None or stat.pgrp != self.pid or stat.start_ticks < self.start_ticks:
                continue
            try:
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:
                continue
            if cwd == directory or directory in cwd.parents:
                found.append(int(entry.name))
        return found

    @classmethod
    def from_json(cls, raw: Any, root: Path) -> ProcessRecord | None:
        """A checked record, or None when any field is missing, mistyped or out of bounds."""
        if not isinstance(raw, dict):
            return None
        key, backend, directory, log_file = (
            raw.get("key"),
            raw.get("backend"),
            raw.get("directory"),
            raw.get("log"),
        )
        if not all(isinstance(v, str) and 0 < len(v) <= 4096 for v in (key, backend, directory)):
            return None
        assert isinstance(key, str) and isinstance(backend, str) and isinstance(directory, str)
        if parse_process_key(key) is None or Path(directory).parent != root:
            return None
        if not isinstance(log_file, str) or len(log_file) > 4096:
            return None
        numbers = [raw.get("port"), raw.get("pid"), raw.get("start_ticks")]
        if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in numbers):
            return None
        port, pid, ticks = (int(n) for n in numbers)  # type: ignore[arg-type]
        if port > 65535 or pid >= 2**22:
            return None
        identity = raw.get("identity")
        checked: tuple[int, int] | None = None
        if (
            isinstance(identity, list)
            and len(identity) == 2
            and all(isinstance(n, int) and not isinstance(n, bool) for n in identity)
        ):
            checked = (identity[0], identity[1])
        return cls(key, backend, directory, checked, port, pid, ticks, log_file)


class ProcessRecords:
    """Reads and atomically rewrites ``<backends>/.processes.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / RECORDS_FILE

    def load(self) -> list[ProcessRecord]:
        """Every valid record; a missing, oversized or unreadable file means none."""
        try:
            if self.path.stat().st_size > MAX_RECORDS_BYTES:
                log.warning("ignoring %s: larger than %s bytes", self.path, MAX_RECORDS_BYTES)
                return []
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable %s: %s", self.path, err)
            return []
        entries = data.get("processes") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            log.warning("ignoring %s: no list of processes", self.path)
            return []
        records = []
        for index, raw in enumerate(entries[:MAX_RECORDS]):
            record = ProcessRecord.from_json(raw, self.root)
            if record is None:
                log.warning("ignoring malformed entry %s of %s", index, self.path)
            else:
                records.append(record)
        return records

    def save(self, records: list[ProcessRecord]) -> None:
        """Replace the file with ``records`` (a crash leaves the old or the new file)."""
        self.root.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"processes": [asdict(r) for r in records]}, indent=1)
        temporary = self.path.with_name(f"{RECORDS_FILE}.tmp")
        with temporary.open("w") as out:
            out.write(body)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
