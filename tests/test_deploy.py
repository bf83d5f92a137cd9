"""The systemd units and environment files in ``deploy/systemd`` are real and true.

``systemd-analyze verify`` (Debian's ``systemd`` package; CI installs it) checks the units'
syntax and that the commands they start exist: the units are copied with the install prefix
pointed at this virtual environment's console scripts. The example environment files may
only set variables the commands read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "systemd"
BIN = Path(sys.executable).parent
UNITS = ["backend-install-worker.service", "backend-node-agent.service"]
TEMPORAL_ENV_CONFIG = {
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
}
"""Read by the SDK's env config, not by our argument parser."""


def env_keys(name: str) -> set[str]:
    keys = set()
    for line in (DEPLOY / name).read_text().splitlines():
        line = line.strip().lstrip("# ").strip()
        if "=" in line and line.split("=", 1)[0].isupper():
            keys.add(line.split("=", 1)[0])
    return keys


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
@pytest.mark.parametrize("unit", UNITS)
def test_the_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    for env_file in DEPLOY.glob("*.env"):
        shutil.copy(env_file, etc / env_file.name)
    text = (DEPLOY / unit).read_text()
    text = text.replace("/opt/durable-backend-installs/bin/", f"{BIN}/")
    text = text.replace("/etc/durable-backend-installs/", f"{etc}/")
    (tmp_path / unit).write_text(text)

    out = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr


@pytest.mark.parametrize(
    ("env_file", "command"),
    [("worker.env", "backend-install-worker"), ("node-agent.env", "backend-node-agent")],
)
def test_the_environment_file_sets_only_variables_the_command_reads(
    env_file: str, command: str
) -> None:
    help_text = subprocess.run(
        [str(BIN / command), "--help"], capture_output=True, text=True, check=True
    ).stdout
    unknown = {key for key in env_keys(env_file) - TEMPORAL_ENV_CONFIG if key not in help_text}
    assert unknown == set()
