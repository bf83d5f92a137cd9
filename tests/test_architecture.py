"""Imports run one way: contracts → protocol; workflows, activities → contracts, not each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> set[str]:
    """Top-level project packages imported anywhere in ``package``."""
    found: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("contracts", {"activities", "workflows", "node_agent", "backendctl", "devstack"}),
        ("protocol", {"contracts", "activities", "workflows", "node_agent", "backendctl"}),
        ("activities", {"workflows", "node_agent", "backendctl", "devstack"}),
        ("workflows", {"activities", "node_agent", "backendctl", "devstack", "telemetry"}),
        ("node_agent", {"contracts", "activities", "workflows", "backendctl", "devstack"}),
    ],
)
def test_package_does_not_import(package: str, forbidden: set[str]) -> None:
    assert imported_packages(package) & forbidden == set()


def test_the_worker_library_has_no_command_line() -> None:
    """create_worker, connect_temporal and friends import without argparse or worker_main."""
    assert imported_packages("orchestrator") & {"argparse", "worker_main"} == set()
