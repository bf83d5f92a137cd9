"""The project as a package: built like a release, installed into a clean virtual environment.

``python -m build`` makes the wheel and sdist; the wheel adds no top-level name but the
product package and the three the project was specified with; ``pip install`` of the wheel
puts every command on PATH, each answering ``--help`` under its own name; a command whose
extra is missing says so in one line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    "backendctl",
    "backend-install-worker",
    "backend-node-agent",
    "backend-devstack",
    "backend-nats-auth",
]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--sdist", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean virtual environment with the wheel and its dependencies; its bin directory."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    [wheel] = dist.glob("*.whl")
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=900,
    )
    yield env_dir / "bin"


def run(bin_dir: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` with the environment's bin first on PATH, from a directory of its own."""
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        list(command), capture_output=True, text=True, env=env, cwd=bin_dir.parent, timeout=120
    )


def test_the_wheel_adds_only_the_product_package_and_the_specified_names(dist: Path) -> None:
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        top = {name.split("/")[0] for name in archive.namelist()}
    top = {name.removesuffix(".py") for name in top if ".dist-info" not in name}

    assert top == {"durable_installs", "workflows", "activities", "worker_main"}


def test_the_sdist_builds_with_the_sources(dist: Path) -> None:
    sdists = [path.name for path in dist.glob("*.tar.gz")]
    assert sdists == ["durable_backend_installs-0.1.0.tar.gz"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_on_path_and_answers_help_under_its_own_name(
    installed: Path, command: str
) -> None:
    out = run(installed, command, "--help")

    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: {command} "), out.stdout[:200]


def test_the_dev_stack_without_its_extra_says_which_extra_in_one_line(installed: Path) -> None:
    out = run(installed, "backend-devstack", "--no-sample")

    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: temporal is not installed: it comes with the devstack extra "
        "(pip install 'durable-backend-installs[devstack]')"
    ]
    assert "starting the stack" not in out.stdout
