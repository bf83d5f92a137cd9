"""The worker byte-compiles its workflow modules, which the sandbox imports for every run."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable_installs.orchestrator.worker import compile_workflow_modules


@pytest.fixture
def workflow_class(tmp_path: Path) -> Iterator[type]:
    """A class defined in a module file that has never been compiled."""
    source = tmp_path / "some_workflow_module.py"
    source.write_text("class SomeWorkflow:\n    pass\n")
    module = types.ModuleType("some_workflow_module")
    module.__file__ = str(source)
    cls = type("SomeWorkflow", (), {"__module__": module.__name__})
    sys.modules[module.__name__] = module
    try:
        yield cls
    finally:
        del sys.modules[module.__name__]


def test_a_workflow_module_gets_its_bytecode_where_the_import_system_reads_it(
    workflow_class: type,
) -> None:
    source = sys.modules[workflow_class.__module__].__file__
    assert source is not None
    cached = Path(importlib.util.cache_from_source(source))
    assert not cached.exists()

    written = compile_workflow_modules([workflow_class])

    assert written == [str(cached)]
    assert cached.read_bytes()[:4] == importlib.util.MAGIC_NUMBER


def test_a_module_whose_bytecode_cannot_be_written_is_left_alone(
    workflow_class: type, tmp_path: Path
) -> None:
    (tmp_path / "__pycache__").write_text("a file where the cache directory would go")

    assert compile_workflow_modules([workflow_class]) == []
