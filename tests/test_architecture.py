"""Imports run one way: contracts → protocol; workflows, activities → contracts, not each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


PRODUCT = "durable_installs"
TOP_LEVEL = {"activities", "workflows", "worker_main", "bench", "tests"}


def part_of(module: str) -> str:
    """The project part a module belongs to: ``durable_installs.contracts.x`` → ``contracts``,
    ``activities.install`` → ``activities``; anything else by its top-level name."""
    names = module.split(".")
    return names[1] if names[0] == PRODUCT and len(names) > 1 else names[0]


def source_of(part: str) -> Path:
    return ROOT / part if part in TOP_LEVEL else ROOT / PRODUCT / part


def imported_packages(package: str) -> set[str]:
    """Project parts (and other top-level packages) imported anywhere in ``package``."""
    found: set[str] = set()
    for path in source_of(package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(part_of(node.module))
            elif isinstance(node, ast.Import):
                found.update(part_of(alias.name) for alias in node.names)
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


PASSED_THROUGH_CORE = [
    "delete_state.py",
    "drift_state.py",
    "inputs.py",
    "install_state.py",
    "install_steps.py",
    "load_state.py",
    "load_steps.py",
    "rollout_state.py",
    "rollout_steps.py",
    "summary.py",
    "upgrade_state.py",
    "upgrade_steps.py",
]
"""Workflow code the sandbox passes through (imported once per worker, not per run): it gets
none of the sandbox's checks, so it must be deterministic by construction."""

CORE_MAY_IMPORT = {
    "__future__",
    "collections.abc",
    "durable_installs.contracts",
    "durable_installs.protocol",
    "workflows",
    "dataclasses",
    "datetime",
    "enum",
    "typing",
    "uuid",
    "temporalio.common",
    "temporalio.exceptions",
    "collections",
    "urllib.parse",
}

NONDETERMINISTIC_NAMES = {
    "now",
    "utcnow",
    "today",
    "time",
    "monotonic",
    "perf_counter",
    "random",
    "uuid1",
    "uuid4",
    "environ",
    "getenv",
    "open",
    "sleep",
}


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", PASSED_THROUGH_CORE)
def test_passed_through_workflow_code_imports_no_workflow_api_and_no_io(module: str) -> None:
    tree = ast.parse((ROOT / "workflows" / module).read_text())
    outside = {
        name
        for name in _imports(tree)
        if name not in CORE_MAY_IMPORT
        and not any(name.startswith(f"{allowed}.") for allowed in CORE_MAY_IMPORT)
    }
    assert outside == set()


@pytest.mark.parametrize("module", PASSED_THROUGH_CORE)
def test_passed_through_workflow_code_reads_no_clock_randomness_or_environment(
    module: str,
) -> None:
    tree = ast.parse((ROOT / "workflows" / module).read_text())
    used = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    used |= {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert used & NONDETERMINISTIC_NAMES == set()


def test_every_workflow_core_is_passed_through_the_sandbox() -> None:
    """Imported inside ``imports_passed_through``, so the sandbox does not re-import them."""
    passed: set[str] = set()
    for shell in (ROOT / "workflows").glob("*.py"):
        for node in ast.walk(ast.parse(shell.read_text())):
            if isinstance(node, ast.With) and "imports_passed_through" in ast.unparse(
                node.items[0]
            ):
                passed |= _imports(ast.Module(body=node.body, type_ignores=[]))
    assert {f"workflows.{m.removesuffix('.py')}" for m in PASSED_THROUGH_CORE} <= passed


def _passed_through(workflow_module: str) -> set[str]:
    """The modules ``workflow_module`` imports inside ``imports_passed_through``."""
    tree = ast.parse((ROOT / "workflows" / workflow_module).read_text())
    passed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and "imports_passed_through" in ast.unparse(node.items[0]):
            passed |= _imports(ast.Module(body=node.body, type_ignores=[]))
    return passed


def test_the_install_workflow_passes_its_core_through_the_sandbox() -> None:
    """Imported inside ``imports_passed_through``, so the sandbox does not re-import them."""
    install_core = {"install_state.py", "install_steps.py", "summary.py"}
    passed = _passed_through("install_backend.py")
    assert {f"workflows.{m.removesuffix('.py')}" for m in install_core} <= passed


WORKFLOW_CORES = {
    "upgrade_backend.py": ["inputs.py", "upgrade_state.py", "upgrade_steps.py"],
    "delete_backend.py": ["inputs.py", "delete_state.py"],
    "drift.py": ["inputs.py", "drift_state.py"],
    "rollout.py": ["inputs.py", "rollout_state.py", "rollout_steps.py"],
    "load_model.py": ["inputs.py", "load_state.py", "load_steps.py"],
}
"""Each workflow module (the shell) and the pure core modules it passes through."""


@pytest.mark.parametrize(("shell", "core"), WORKFLOW_CORES.items())
def test_each_workflow_passes_its_core_through_the_sandbox(shell: str, core: list[str]) -> None:
    """Its core is imported inside ``imports_passed_through`` and is checked as core code."""
    assert set(core) <= set(PASSED_THROUGH_CORE)
    assert {f"workflows.{m.removesuffix('.py')}" for m in core} <= _passed_through(shell)


@pytest.mark.parametrize("part", ["durable_installs", "activities", "workflows", "bench"])
def test_nothing_outside_the_tests_imports_them(part: str) -> None:
    """The servers, fake nodes and helpers the product needs live in the product package."""
    importers = {
        str(path.relative_to(ROOT))
        for path in (ROOT / part).rglob("*.py")
        if "tests" in _top_level_imports(ast.parse(path.read_text()))
    }
    assert importers == set()


def test_the_worker_imports_no_tests() -> None:
    assert "tests" not in _top_level_imports(ast.parse((ROOT / "worker_main.py").read_text()))


def _top_level_imports(tree: ast.AST) -> set[str]:
    return {name.split(".")[0] for name in _imports(tree)}


def test_a_worker_replaces_only_an_activity_it_has() -> None:
    """A test swaps one activity by name; a misspelt name must not add a second one."""
    from durable_installs.orchestrator.worker import create_worker

    with pytest.raises(ValueError, match="no activity named 'list_node'"):
        create_worker(object(), object(), "q", replace={"list_node": lambda: None})  # type: ignore[arg-type]


def test_no_activity_class_inherits_another() -> None:
    """Activities share helpers by composition (``activities/following.py``), not by base class."""
    for path in (ROOT / "activities").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Activities"):
                bases = {ast.unparse(base) for base in node.bases}
                assert not any(base.endswith("Activities") for base in bases), path.name
