"""Run ``worker_main.py`` as a real process, the way operators run it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "worker_main.py"), *args]


@contextmanager
def worker_process(
    temporal_address: str, nats_url: str, task_queue: str, ready_timeout: float = 30.0
) -> Iterator[subprocess.Popen[str]]:
    """Start the worker and wait until it polls; kill it (and wait) on exit."""
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_TASK_QUEUE": task_queue,
        "NATS_URL": nats_url,
        "PYTHONUNBUFFERED": "1",
    }
    # Output to a file, not a pipe read only until "polling": an unread pipe fills and
    # blocks every writer in the worker (docs/operating/scale.md, "At capacity").
    log = Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen(
            worker_command("--graceful-shutdown-seconds", "1"),
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        deadline = time.monotonic() + ready_timeout
        while "worker polling" not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early with code {proc.returncode}; see {log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker did not start polling; see {log}")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
