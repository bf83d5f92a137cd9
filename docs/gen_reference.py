"""The reference pages of the documentation site, generated from the code at build time.

``mkdocs build`` runs this file through the ``mkdocs-gen-files`` plugin (``mkdocs.yml``); the
pages exist only in the built site, never in git, so they cannot drift from the code:

- ``reference/workflows/<name>.md``: each workflow registered by the worker, with its input,
  result, queries, signals and updates, every field's type, default, bounds and description
  from the pydantic models' JSON Schema;
- ``reference/activities.md`` and ``reference/messages.md``: the activities' inputs and results,
  and the NATS wire messages, the same way;
- ``reference/failures.md``: every failure type of ``contracts.failures.FAILURE_TYPES``;
- ``reference/cli/<command>.md``: every console script's options, from its argparse parser.

``python docs/gen_reference.py OUT_DIR`` writes the same pages into a directory, to read them
without building the site.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from durable_installs.protocol.wire import OMIT_EMPTY

# --- what the reference covers ------------------------------------------------------------------

MODEL_MODULES = (
    "durable_installs.contracts.activities",
    "durable_installs.contracts.drift",
    "durable_installs.contracts.install",
    "durable_installs.contracts.lifecycle",
    "durable_installs.contracts.nodes",
    "durable_installs.contracts.rollout",
    "durable_installs.contracts.upgrade",
    "durable_installs.protocol.announce",
    "durable_installs.protocol.messages",
)
"""Every pydantic model that crosses a process boundary is defined in one of these."""

WIRE_MODULES = ("durable_installs.protocol.messages", "durable_installs.protocol.announce")

WORKFLOW_PAGES = {
    "InstallBackendWorkflow": "install",
    "RolloutBackendWorkflow": "rollout",
    "UpgradeBackendWorkflow": "upgrade",
    "DeleteBackendWorkflow": "delete",
    "DriftCheckWorkflow": "drift",
    "LoadModelWorkflow": "load",
}
"""Page of each workflow type under ``reference/workflows/`` (mkdocs.yml's nav names them)."""


@dataclass(frozen=True)
class Command:
    """A console script of ``pyproject.toml`` and where its parser is built."""

    name: str
    module: str
    function: str
    summary: str


COMMANDS = (
    Command("backendctl", "durable_installs.backendctl.cli", "build_parser", "the operator's tool"),
    Command("backend-install-worker", "worker_main", "build_parser", "the Temporal worker"),
    Command(
        "backend-node-agent", "durable_installs.node_agent.cli", "build_parser", "the node agent"
    ),
    Command(
        "backend-devstack",
        "durable_installs.devstack.__main__",
        "build_parser",
        "the embedded dev stack (`make run`)",
    ),
    Command(
        "backend-nats-auth",
        "durable_installs.protocol.nats_auth",
        "build_parser",
        "NATS users and permissions",
    ),
)

# --- models --------------------------------------------------------------------------------------


def defined_models(module_name: str) -> list[type[BaseModel]]:
    """The pydantic models defined in a module (not imported into it), in source order."""
    module = importlib.import_module(module_name)
    found = [
        value
        for value in vars(module).values()
        if inspect.isclass(value)
        and issubclass(value, BaseModel)
        and value.__module__ == module_name
        and value.model_fields
    ]
    return sorted(found, key=lambda cls: inspect.getsourcelines(cls)[1])


def all_models() -> list[type[BaseModel]]:
    """Every model the reference documents: what a field description is required on."""
    return [model for name in MODEL_MODULES for model in defined_models(name)]


def referenced_types(annotation: Any) -> Iterator[type]:
    """Models and enums an annotation mentions, at any depth (lists, unions, dicts)."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel | enum.Enum):
        yield annotation
        return
    for argument in typing.get_args(annotation):
        yield from referenced_types(argument)


def closure(roots: list[type]) -> list[type]:
    """The roots, then every model or enum their fields reach, each once, depth first."""
    seen: list[type] = []

    def visit(cls: type) -> None:
        if cls in seen:
            return
        seen.append(cls)
        if issubclass(cls, BaseModel):
            for info in cls.model_fields.values():
                for reached in referenced_types(info.annotation):
                    visit(reached)

    for root in roots:
        visit(root)
    return seen


def anchor(cls: type) -> str:
    return cls.__name__.lower()


def text(value: str) -> str:
    """Docstring text as Markdown on one line: reST roles and double backticks made plain."""
    value = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", value)
    value = value.replace("``", "`")
    return " ".join(value.split())


def cell(value: str) -> str:
    return text(value).replace("|", "\\|") or " "


def doc(obj: Any) -> str:
    return text(inspect.getdoc(obj) or "")


def number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def describe_type(schema: dict[str, Any], links: dict[str, str]) -> str:
    """A JSON Schema type as words: ``list of GalleryConfig or null``, with links to sections."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{links[name]})" if name in links else f"`{name}`"
    if "anyOf" in schema:
        parts = [describe_type(part, links) for part in schema["anyOf"] if "const" not in part]
        return " or ".join(dict.fromkeys(part for part in parts if part))
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        return f"list of {describe_type(items, links)}" if items else "list"
    if kind == "object":
        values = schema.get("additionalProperties")
        if isinstance(values, dict) and values:
            return f"object of {describe_type(values, links)}"
        return "object"
    if kind == "string" and "format" in schema:
        return f"string ({schema['format']})"
    return str(kind) if kind else "any"


def describe_bounds(schema: dict[str, Any]) -> str:
    """The JSON Schema keywords that bound a value, as words (``0.1 to 86,400``, ``≤ 256``)."""
    parts: list[str] = []
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None and high is not None:
        parts.append(f"{number(low)} to {number(high)}")
    elif low is not None:
        parts.append(f"≥ {number(low)}")
    elif high is not None:
        parts.append(f"≤ {number(high)}")
    for keyword, unit in (("minLength", "character"), ("minItems", "item")):
        if schema.get(keyword, 0) > 0:
            plural = "" if schema[keyword] == 1 else "s"
            parts.append(f"at least {number(schema[keyword])} {unit}{plural}")
    for keyword, unit in (("maxLength", "characters"), ("maxItems", "items")):
        if keyword in schema:
            parts.append(f"≤ {number(schema[keyword])} {unit}")
    if "x-max-bytes" in schema:
        parts.append(f"≤ {number(schema['x-max-bytes'])} bytes")
    for choice in schema.get("oneOf", []) + schema.get("anyOf", []):
        if "const" in choice:
            parts.insert(0, f"`{json.dumps(choice['const'])}` (off), or")
        elif choice.get("type") != "null":
            inner = describe_bounds(choice)
            if inner:
                parts.append(inner)
    if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        inner = describe_bounds(schema["items"])
        if inner:
            parts.append(f"each {inner}")
    return " ".join(parts) if parts and parts[0].endswith("or") else "; ".join(parts)


def default_of(model: type[BaseModel], name: str) -> str:
    info = model.model_fields[name]
    if info.is_required():
        return "required"
    value = to_jsonable_python(info.get_default(call_default_factory=True))
    shown = json.dumps(value, ensure_ascii=False)
    return f"`{shown}`" if len(shown) <= 60 else "(see description)"


def model_section(model: type[BaseModel], links: dict[str, str], level: int = 3) -> str:
    """A model's heading, docstring and one table row per field."""
    schema = model.model_json_schema()
    properties: dict[str, dict[str, Any]] = schema.get("properties", {})
    lines = [
        f"{'#' * level} `{model.__name__}` {{#{anchor(model)}}}",
        "",
        doc(model),
        "",
        "| field | type | default | bounds | description |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, info in model.model_fields.items():
        key = info.alias or name
        prop = properties.get(key, {})
        description = info.description or ""
        if OMIT_EMPTY in info.metadata:
            description += " *Left out of the JSON when zero (Go's `omitempty`).*"
        lines.append(
            f"| `{key}` | {describe_type(prop, links)} | {default_of(model, name)} "
            f"| {cell(describe_bounds(prop))} | {cell(description)} |"
        )
    return "\n".join(lines) + "\n"


def enum_section(cls: type[enum.Enum], level: int = 3) -> str:
    values = ", ".join(f"`{member.value}`" for member in cls)
    return f"{'#' * level} `{cls.__name__}` {{#{anchor(cls)}}}\n\n{doc(cls)}\n\nValues: {values}.\n"


def type_sections(classes: list[type], links: dict[str, str], level: int = 3) -> str:
    return "\n".join(
        model_section(cls, links, level) if issubclass(cls, BaseModel) else enum_section(cls, level)
        for cls in classes
        if issubclass(cls, BaseModel | enum.Enum)
    )


def link_of(annotation: Any, links: dict[str, str]) -> str:
    """An annotation as words, linking the models and enums documented on the page."""
    if annotation is None or annotation is type(None):
        return "nothing"
    if inspect.isclass(annotation) and annotation.__name__ in links:
        return f"[`{annotation.__name__}`](#{links[annotation.__name__]})"
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(link_of(argument, links) for argument in arguments)
    if origin is list:
        return f"list of {link_of(arguments[0], links)}"
    if inspect.isclass(annotation):
        return f"`{annotation.__name__}`"
    return f"`{annotation}`"


def without_none(annotation: Any) -> Any:
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(arguments) == 1:
        return arguments[0]
    return annotation


# --- workflows and activities ------------------------------------------------------------


@dataclass
class Handler:
    kind: str
    name: str
    arguments: list[Any]
    result: Any
    summary: str


@dataclass
class WorkflowDoc:
    name: str
    cls: type
    input: Any
    result: Any
    handlers: list[Handler] = field(default_factory=list)


def hints(fn: Callable[..., Any]) -> tuple[list[Any], Any]:
    found = typing.get_type_hints(fn)
    result = found.pop("return", None)
    return list(found.values()), result


def summary(fn: Any) -> str:
    """A docstring's first paragraph, on one line."""
    return text((inspect.getdoc(fn) or "").split("\n\n")[0])


def workflows() -> list[WorkflowDoc]:
    """Every workflow type the worker registers, from its Temporal definition."""
    from temporalio import workflow

    from durable_installs.orchestrator.registry import WORKFLOW_BEHAVIORS

    found: list[WorkflowDoc] = []
    for cls in WORKFLOW_BEHAVIORS:
        definition = workflow._Definition.from_class(cls)
        assert definition is not None and definition.name is not None
        arguments, result = hints(definition.run_fn)
        entry = WorkflowDoc(definition.name, cls, without_none(arguments[0]), result)
        tables: list[tuple[str, dict[Any, Any]]] = [
            ("query", dict(definition.queries)),
            ("signal", dict(definition.signals)),
            ("update", dict(definition.updates)),
        ]
        for kind, table in tables:
            for name, handler in sorted(table.items(), key=lambda item: str(item[0])):
                handler_arguments, handler_result = hints(handler.fn)
                entry.handlers.append(
                    Handler(kind, str(name), handler_arguments, handler_result, summary(handler.fn))
                )
        found.append(entry)
    return found


@dataclass
class ActivityDoc:
    name: str
    module: str
    arguments: list[Any]
    result: Any
    summary: str


def activities() -> list[ActivityDoc]:
    """Every ``@activity.defn`` in the ``activities`` package: functions and class methods."""
    import activities as package

    found: list[ActivityDoc] = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"activities.{info.name}")
        candidates: list[Any] = []
        for value in vars(module).values():
            if getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isclass(value):
                members = inspect.getmembers(value, inspect.isfunction)
                candidates += [  # defined in this class, not inherited
                    member
                    for _, member in members
                    if member.__qualname__.split(".")[0] == value.__name__
                ]
            elif inspect.isfunction(value):
                candidates.append(value)
        for fn in candidates:
            definition = getattr(fn, "__temporal_activity_definition", None)
            if definition is None:
                continue
            arguments, result = hints(fn)
            found.append(
                ActivityDoc(definition.name, module.__name__, arguments, result, summary(fn))
            )
    return sorted(found, key=lambda activity: activity.name)


def annotation_types(annotations: list[Any]) -> list[type]:
    return [cls for annotation in annotations for cls in referenced_types(annotation)]


GENERATED = (
    "<!-- Generated by docs/gen_reference.py from the code at build time: edit the code, "
    "not this page. -->\n\n"
)


def workflow_page(entry: WorkflowDoc) -> str:
    roots = annotation_types(
        [entry.input, entry.result]
        + [a for handler in entry.handlers for a in [*handler.arguments, handler.result]]
    )
    classes = closure(roots)
    links = {cls.__name__: anchor(cls) for cls in classes}
    lines = [
        GENERATED + f"# `{entry.name}`",
        "",
        doc(entry.cls),
        "",
        f"- **Input**: {link_of(entry.input, links)}",
        f"- **Result**: {link_of(entry.result, links)}",
    ]
    for handler in entry.handlers:
        arguments = ", ".join(link_of(a, links) for a in handler.arguments) or "nothing"
        lines.append(
            f"- **{handler.kind}** `{handler.name}`: takes {arguments}, returns "
            f"{link_of(handler.result, links)}. {handler.summary}"
        )
    lines += ["", "## Types", "", type_sections(classes, links)]
    return "\n".join(lines)


def activities_page(found: list[ActivityDoc]) -> str:
    classes = closure(annotation_types([a for act in found for a in [*act.arguments, act.result]]))
    links = {cls.__name__: anchor(cls) for cls in classes}
    lines = [
        GENERATED + "# Activities",
        "",
        "Every activity the worker registers, on the `backend-install` task queue (workflows "
        "call them by name). Other SDKs may call `await_install` (see "
        "[fleet rollouts](../operating/rollouts.md#installing-a-slot-from-another-workflow)); "
        "the rest are the workflows' own.",
        "",
        "| activity | module | takes | returns | what it does |",
        "| --- | --- | --- | --- | --- |",
    ]
    for act in found:
        takes = ", ".join(link_of(a, links) for a in act.arguments) or "nothing"
        lines.append(
            f"| `{act.name}` | `{act.module}` | {takes} | {link_of(act.result, links)} "
            f"| {cell(act.summary)} |"
        )
    lines += ["", "## Types", "", type_sections(classes, links)]
    return "\n".join(lines)


def messages_page() -> str:
    roots: list[type] = []
    for name in WIRE_MODULES:
        module = importlib.import_module(name)
        roots += defined_models(name)
        roots += [
            value
            for value in vars(module).values()
            if inspect.isclass(value) and issubclass(value, enum.Enum) and value.__module__ == name
        ]
    classes = closure(roots)
    links = {cls.__name__: anchor(cls) for cls in classes}
    return (
        GENERATED
        + "# Wire messages\n\n"
        + "The JSON bodies on the NATS subjects of the [node protocol](../protocol.md) "
        + "(`durable_installs/protocol/messages.py`), and the node registry's entries "
        + "(`durable_installs/protocol/announce.py`).\n\n"
        + type_sections(classes, links, level=2)
    )


def failures_page() -> str:
    from durable_installs.contracts.failures import FAILURE_TYPES

    lines = [
        GENERATED + "# Failure types",
        "",
        "The `type` of every `ApplicationError` this project raises: what the web UI, "
        "`temporal workflow describe`, `backendctl` and the logs show, and what a caller "
        "matches on. From `durable_installs/contracts/failures.py` (`FAILURE_TYPES`).",
        "",
        "| type | meaning | raised by | retried |",
        "| --- | --- | --- | --- |",
    ]
    for failure in FAILURE_TYPES.values():
        lines.append(
            f"| `{failure.name}` {{#{failure.name.lower()}}} | {cell(failure.meaning)} "
            f"| {cell(failure.raised_by)} | {cell(failure.retried)} |"
        )
    return "\n".join(lines) + "\n"


# --- command lines -------------------------------------------------------------------------

KEPT_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV")


@contextmanager
def plain_environment() -> Iterator[None]:
    """Build parsers as on a machine with nothing configured: defaults read from the
    environment (``WORKER_*``, ``NODE_AGENT_*``, ...) show their built-in values."""
    saved = dict(os.environ)
    try:
        for key in list(os.environ):
            if key not in KEPT_VARIABLES:
                del os.environ[key]
        os.environ["COLUMNS"] = "100"  # usage lines wrap the same on every machine
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def option_names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{name}`" for name in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices is not None and not action.metavar:
        return f"{names} {{{', '.join(str(choice) for choice in action.choices)}}}"
    metavar = action.metavar or action.dest.upper()
    return f"{names} `{metavar}`"


def option_default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.required:
        return "required" if action.required else " "
    if action.default is None or action.default == argparse.SUPPRESS or action.default == []:
        return " "
    return f"`{action.default}`"


def options_table(parser: argparse.ArgumentParser, prog: str, invoked: str) -> list[str]:
    formatter = parser._get_formatter()
    lines: list[str] = []
    for group in parser._action_groups:
        actions = [
            action
            for action in group._group_actions
            if action.help != argparse.SUPPRESS
            and not isinstance(action, argparse._SubParsersAction)
        ]
        if not actions:
            continue
        title = "arguments" if group.title == "positional arguments" else group.title or "options"
        lines += ["", f"**{title}**", ""]
        if group.description:
            lines += [cell(group.description.replace(invoked, prog)), ""]
        lines += ["| option | default | meaning |", "| --- | --- | --- |"]
        for action in actions:
            meaning = formatter._expand_help(action) if action.help else ""
            lines.append(
                f"| {option_names(action)} | {option_default(action)} "
                f"| {cell(meaning.replace(invoked, prog))} |"
            )
    return lines


def usage(parser: argparse.ArgumentParser, prog: str, invoked: str) -> list[str]:
    text = parser.format_usage().replace(invoked, prog).strip()
    return ["```text", text, "```"]


def rename(parser: argparse.ArgumentParser, invoked: str, prog: str) -> None:
    """Name the tool as its console script, not as this process was started."""
    parser.prog = parser.prog.replace(invoked, prog)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                rename(sub, invoked, prog)


def cli_page(command: Command) -> str:
    with plain_environment():
        return _cli_page(command)


def _cli_page(command: Command) -> str:
    module = importlib.import_module(command.module)
    parser: argparse.ArgumentParser = getattr(module, command.function)()
    invoked = parser.prog
    prog = command.name
    rename(parser, invoked, prog)
    lines = [
        GENERATED + f"# `{prog}`",
        "",
        f"{command.summary.capitalize()}: `{command.module}.{command.function}()`. "
        f"`{prog} --help` prints the same.",
        "",
        *usage(parser, prog, invoked),
        "",
        text((parser.description or "").replace(invoked, prog)),
    ]
    lines += options_table(parser, prog, invoked)
    if parser.epilog:
        lines += ["", "```text", parser.epilog.replace(invoked, prog).rstrip(), "```"]
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        lines += ["", "## Commands", "", "| command | what it does |", "| --- | --- |"]
        lines += [
            f"| [`{name}`](#{prog}-{name}) | {cell(helps.get(name, ''))} |"
            for name in action.choices
        ]
        for name, sub in action.choices.items():
            lines += ["", f"## `{prog} {name}` {{#{prog}-{name}}}", "", cell(helps.get(name, ""))]
            lines += ["", *usage(sub, prog, invoked)]
            if sub.description:
                lines += ["", text(sub.description.replace(invoked, prog))]
            lines += options_table(sub, prog, invoked)
    return "\n".join(lines) + "\n"


def cli_index() -> str:
    lines = [
        GENERATED + "# Command-line tools",
        "",
        "The console scripts `pip install durable-backend-installs` puts on `PATH` (in a "
        "checkout: `.venv/bin/`). Defaults shown are those with nothing set in the "
        "environment; most options also read an environment variable, named in their meaning.",
        "",
        "| command | what it is |",
        "| --- | --- |",
    ]
    lines += [f"| [`{c.name}`]({c.name}.md) | {c.summary} |" for c in COMMANDS]
    return "\n".join(lines) + "\n"


def reference_index(found: list[WorkflowDoc]) -> str:
    lines = [
        GENERATED + "# Reference",
        "",
        "Generated from the code on every build of this site: the pydantic models' JSON "
        "Schema, the failure catalogue and the argparse parsers. A field without a "
        "description fails `tests/test_docs.py`.",
        "",
        "**Workflows** (task queue `backend-install`):",
        "",
    ]
    lines += [
        f"- [`{w.name}`](workflows/{WORKFLOW_PAGES[w.name]}.md): {summary(w.cls)}" for w in found
    ]
    lines += [
        "",
        "**Also**: [activities](activities.md), [wire messages](messages.md), "
        "[failure types](failures.md), [command-line tools](cli/index.md).",
    ]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """Every generated page, by its path under ``docs/``."""
    found = workflows()
    generated = {"reference/index.md": reference_index(found)}
    for entry in found:
        generated[f"reference/workflows/{WORKFLOW_PAGES[entry.name]}.md"] = workflow_page(entry)
    generated["reference/activities.md"] = activities_page(activities())
    generated["reference/messages.md"] = messages_page()
    generated["reference/failures.md"] = failures_page()
    generated["reference/cli/index.md"] = cli_index()
    for command in COMMANDS:
        generated[f"reference/cli/{command.name}.md"] = cli_page(command)
    return generated


def write_with_gen_files() -> None:
    import mkdocs_gen_files

    for path, content in pages().items():
        with mkdocs_gen_files.open(path, "w") as out:
            out.write(content)
        mkdocs_gen_files.set_edit_path(path, "gen_reference.py")


if __name__ == "<run_path>":  # run by mkdocs-gen-files during mkdocs build
    write_with_gen_files()
elif __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "site-reference")
    for path, content in pages().items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_text(content)
    print(f"wrote {len(pages())} pages under {target}")
