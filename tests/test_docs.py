"""The documentation site: it builds strictly, and the reference it generates says the truth.

The reference pages are generated from the code (``docs/gen_reference.py``), so they cannot
drift; what can go missing is what they are generated from: a field's description, a failure
type's meaning, a bound documented but not enforced (or the other way round).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from durable_installs.contracts import failures
from durable_installs.contracts.drift import MINIMAL_DRIFT_INPUT, DriftCheckInput
from durable_installs.contracts.install import MINIMAL_INSTALL_INPUT, InstallBackendInput
from durable_installs.contracts.lifecycle import MINIMAL_DELETE_INPUT, DeleteBackendInput
from durable_installs.contracts.load import MINIMAL_LOAD_INPUT, LoadModelInput
from durable_installs.contracts.rollout import MINIMAL_ROLLOUT_INPUT, RolloutInput
from durable_installs.contracts.upgrade import MINIMAL_UPGRADE_INPUT, UpgradeBackendInput

ROOT = Path(__file__).resolve().parent.parent
LOAD_FILE = {"uri": "https://models.example/q.gguf", "sha256": "a" * 64, "path": "q.gguf"}
README_MAX_LINES = 200


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs/gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_reference"] = module
    spec.loader.exec_module(module)
    return module


gen = load_generator()


def documented_models() -> list[type[BaseModel]]:
    """Every contract and wire model, and every model a workflow's interface reaches."""
    roots: list[type] = list(gen.all_models())
    for entry in gen.workflows():
        roots += gen.annotation_types([entry.input, entry.result])
        for handler in entry.handlers:
            roots += gen.annotation_types([*handler.arguments, handler.result])
    for activity in gen.activities():
        roots += gen.annotation_types([*activity.arguments, activity.result])
    return [cls for cls in gen.closure(roots) if issubclass(cls, BaseModel)]


def test_every_model_field_has_a_description() -> None:
    """The docstring under a field is its description in the reference: none may be missing."""
    missing = [
        f"{model.__module__}.{model.__name__}.{name}"
        for model in documented_models()
        for name, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing, "fields without a description (a docstring under the field):\n" + (
        "\n".join(missing)
    )


def test_every_workflow_and_activity_is_documented() -> None:
    from durable_installs.orchestrator.registry import WORKFLOW_BEHAVIORS

    found = {entry.name for entry in gen.workflows()}
    assert set(gen.WORKFLOW_PAGES) == found
    assert len(found) == len(WORKFLOW_BEHAVIORS)
    names = [activity.name for activity in gen.activities()]
    assert len(names) == len(set(names)), names
    assert set(names) >= {
        "install_backend",
        "install_backend_fast",
        "probe_slot",
        "await_install",
        "install_slots",
        "upgrade_backend",
        "delete_backend",
        "list_nodes",
        "check_drift",
    }


def test_every_failure_type_has_a_meaning() -> None:
    constants = {
        value
        for name, value in vars(failures).items()
        if name.isupper() and isinstance(value, str) and re.fullmatch(r"[A-Z][A-Za-z]+", value)
    }
    assert constants == set(failures.FAILURE_TYPES)
    for name, failure in failures.FAILURE_TYPES.items():
        assert failure.name == name
        assert failure.meaning and failure.raised_by and failure.retried, name


def test_every_console_script_is_documented() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {command.name for command in gen.COMMANDS} == set(scripts)
    for command in gen.COMMANDS:
        page = gen.cli_page(command)
        assert f"# `{command.name}`" in page
        assert "--help" in page


# --- the documented bounds are the enforced ones ----------------------------------------------

INPUTS: list[tuple[type[BaseModel], dict[str, Any], list[dict[str, Any]]]] = [
    (InstallBackendInput, MINIMAL_INSTALL_INPUT, [{}]),
    (RolloutInput, MINIMAL_ROLLOUT_INPUT, [{}, {"action": "upgrade"}]),
    (UpgradeBackendInput, MINIMAL_UPGRADE_INPUT, [{}]),
    (DeleteBackendInput, MINIMAL_DELETE_INPUT, [{}]),
    (DriftCheckInput, MINIMAL_DRIFT_INPUT, [{}]),
    (LoadModelInput, {**MINIMAL_LOAD_INPUT, "files": [LOAD_FILE]}, [{}]),
]


def item(field: str, index: int) -> Any:
    """A valid list item of ``field`` (to fill a list to its bound)."""
    if field == "backend_galleries":
        return {"name": f"g{index}", "url": f"https://example.org/{index}/index.yaml"}
    if field == "restore_slots":
        return {"model_id": f"m{index}", "replica_index": 0}
    if field == "files":
        return {**LOAD_FILE, "path": f"f{index}.gguf"}
    if field == "carried_slots":
        return {"node_id": "n", "model_id": "", "replica_index": index, "workflow_id": f"w{index}"}
    return f"x{index}"


def values(field: str, prop: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Values inside and outside the bounds a property documents."""
    inside: list[Any] = []
    outside: list[Any] = []
    integer = prop.get("type") == "integer"
    ranges = [prop] + [choice for choice in prop.get("oneOf", []) if "minimum" in choice]
    for bounds in ranges:
        if "minimum" in bounds:
            low, high = bounds["minimum"], bounds["maximum"]
            step = 1 if integer or low == 0 else low / 2
            inside += [low, high]
            outside += [low - step, high + 1]
    if any(choice.get("const") == 0 for choice in prop.get("oneOf", [])):
        inside.append(0)
    if prop.get("type") == "string":
        if "maxLength" in prop:
            inside.append("a" * prop["maxLength"])
            outside.append("a" * (prop["maxLength"] + 1))
        if prop.get("minLength") == 1:
            outside.append("")
        if "x-max-bytes" in prop:
            outside.append("é" * (prop["x-max-bytes"] // 2 + 1))
    if "maxItems" in prop:
        inside.append([item(field, i) for i in range(prop["maxItems"])])
        outside.append([item(field, i) for i in range(prop["maxItems"] + 1)])
    if prop.get("minItems") == 1:
        outside.append([])
    return inside, outside


def names(model: type[BaseModel], data: dict[str, Any], field: str) -> bool:
    """Whether the input fails naming ``field`` (its check, or its decoding)."""
    try:
        instance = model.model_validate(data)
    except ValidationError as err:
        return any(error["loc"][:1] == (field,) for error in err.errors())
    problems: list[tuple[str, str]] = instance.problems()  # type: ignore[attr-defined]
    return any(re.match(rf"{field}($|[.\[])", name) for name, _ in problems)


@pytest.mark.parametrize(("model", "minimal", "contexts"), INPUTS, ids=lambda v: str(v)[:40])
def test_documented_bounds_are_enforced(
    model: type[BaseModel], minimal: dict[str, Any], contexts: list[dict[str, Any]]
) -> None:
    properties: dict[str, dict[str, Any]] = model.model_json_schema()["properties"]
    checked = 0
    for field, prop in properties.items():
        if prop.get("type") in ("number", "integer"):
            assert "minimum" in prop or "oneOf" in prop, f"{field} documents no bounds"
        inside, outside = values(field, prop)
        for value in inside:
            for context in contexts:
                data = {**minimal, **context, field: value}
                assert not names(model, data, field), f"{field}={str(value)[:40]} is refused"
        for value in outside:
            assert any(
                names(model, {**minimal, **context, field: value}, field) for context in contexts
            ), f"{field}={str(value)[:40]} is outside the documented bounds but accepted"
            checked += 1
    assert checked >= 3


# --- the site and the README --------------------------------------------------------------------


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """A broken link or anchor, a missing page, a page left out of the nav: the build fails."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    assert mkdocs.exists(), "mkdocs is missing: install the dev (or docs) extra"
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    install = (site / "reference/workflows/install/index.html").read_text()
    assert "install_timeout_seconds" in install and "2,592,000" in install
    assert "--node-id" in (site / "reference/cli/backendctl/index.html").read_text()
    assert "DeleteRefused" in (site / "reference/failures/index.html").read_text()
    assert (site / "ui-current-details.png").exists()


def test_the_readme_fits_on_a_few_screens_and_links_into_the_site() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    links = re.findall(r"\]\(((?:docs|bench)/[^)#]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).exists(), link


def test_the_code_points_at_the_site_not_at_readme_sections() -> None:
    """Prose moved from the README into docs/: references say which page holds it now."""
    stale = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("durable_installs", "activities", "workflows", "tests", "scripts")
        for path in (ROOT / folder).rglob("*")
        if path.suffix in (".py", ".sh") and path.is_file() and path.name != "test_docs.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\(README\b|README, |See README", line)
    ]
    stale += [
        f"worker_main.py:{n}"
        for n, line in enumerate((ROOT / "worker_main.py").read_text().splitlines(), 1)
        if "README" in line
    ]
    assert not stale, stale
