"""Fuzzing the workflow inputs through the decode path the worker uses.

Generated JSON objects (the input's field names with values of any type, unknown fields, huge,
negative and non-finite numbers, long and non-ASCII strings) go through
``pydantic_data_converter`` into the input model, then ``problems()``. Every one must end in
exactly one of: a ``ValidationError`` whose every error names a field, problems that each name a
field, or a valid input. A valid input must turn into the activity inputs and every timer and
timeout the workflow computes, down to the protobuf durations the SDK sends, without raising.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import pydantic_data_converter

from durable_installs.contracts.activities import InstallActivityInput, ProbeInput
from durable_installs.contracts.install import InstallBackendInput
from durable_installs.contracts.rollout import RolloutInput, expand_slots
from workflows.install_steps import (
    ACTIVITY_MARGIN,
    backoff_seconds,
    install_activity_input,
    install_deadline,
    probe_activity_input,
    probe_timeout,
)

FUZZ = settings(
    max_examples=500,
    deadline=None,  # a shared, noisy machine; the pytest timeout bounds the whole run
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

M = TypeVar("M", bound=BaseModel)

INSTALL_FIELDS = sorted(InstallBackendInput.model_fields)
ROLLOUT_FIELDS = sorted(RolloutInput.model_fields)
DURATION_FIELDS = [field for field in INSTALL_FIELDS if field.endswith("_seconds")]

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**300), max_value=10**300),
    st.sampled_from([0, 0.1, 0.099, 1, 256, 257, 1000, 1001, 86400, 2592000, 2592001, 2**31]),
    st.floats(min_value=0.1, max_value=86400),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e300", "9" * 5000]),
)
strings = st.one_of(
    st.text(max_size=40),
    st.text(min_size=250, max_size=300),
    st.builds(lambda ch, n: ch * n, st.characters(), st.integers(0, 5000)),
    st.sampled_from(["", " ", "node-1", "llama-cpp", "a.*", "2026-01-01T00:00:00Z"]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
galleries = st.lists(
    st.fixed_dictionaries(
        {
            "url": st.one_of(st.just("file:///g.yaml"), strings),
            "name": st.one_of(st.just("g"), strings),
        },
        optional={
            "mirrors": st.lists(strings, max_size=20),
            "verification": st.dictionaries(st.sampled_from(["issuer", "identity"]), strings),
        },
    ),
    max_size=20,
)
times = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    st.datetimes().map(datetime.isoformat),
)
carried_over = st.fixed_dictionaries(
    {"op_id": st.one_of(st.just("op-1"), strings), "started_at": times, "deadline_at": times},
    optional={
        "attempts": numbers,
        "probes": numbers,
        "failed_attempts": numbers,
        "backoff_streak": numbers,
        "last_error": strings,
    },
)
wild_targets = st.lists(
    st.fixed_dictionaries(
        {"node_id": strings}, optional={"model_id": strings, "replica_indexes": st.lists(numbers)}
    ),
    max_size=5,
)
tame_galleries = st.lists(
    st.fixed_dictionaries(
        {"url": st.just("file:///g.yaml"), "name": st.sampled_from(["g", "h"])},
        optional={"mirrors": st.lists(st.just("https://mirror/g.yaml"), max_size=3)},
    ),
    max_size=3,
)
tame_carried_over = st.builds(
    lambda start, span, streak: {
        "op_id": "op-1",
        "started_at": start.isoformat(),
        "deadline_at": (start + timedelta(seconds=span)).isoformat(),
        "attempts": 1,
        "probes": 0,
        "failed_attempts": 0,
        "backoff_streak": streak,
    },
    st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.floats(min_value=0, max_value=30 * 86400),
    st.integers(min_value=0, max_value=10**6),
)
targets = st.lists(
    st.fixed_dictionaries(
        {"node_id": st.one_of(st.just("node-1"), strings)},
        optional={
            "model_id": st.one_of(st.just("qwen3"), strings),
            "replica_indexes": st.lists(st.integers(0, 3), max_size=5),
        },
    ),
    max_size=5,
)


def sometimes_wild(tame: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
    """Mostly values of the right type and range, else anything of any type."""
    return st.one_of(tame, tame, tame, wild)


Field = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]
"""A field's tame values (right type, mostly in range) and its wild ones."""

names: Field = (
    st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=20),
    strings,
)
seconds: Field = (st.floats(min_value=0.1, max_value=86400), numbers)
counts: Field = (st.integers(min_value=0, max_value=1000), numbers)


def inputs(
    fields: list[str], required: dict[str, Field], optional: dict[str, Field]
) -> st.SearchStrategy[Any]:
    """Tame objects, tame but for one wild field, mixed ones, any fields with any values.

    Tame objects reach the valid region often enough that what the workflow computes from a
    valid input is exercised on every run; one wild field at a time is what finds a check
    that lets an absurd value through.
    """

    def objects(pick: Any) -> st.SearchStrategy[Any]:
        return st.fixed_dictionaries(
            {k: pick(*v) for k, v in required.items()},
            optional={k: pick(*v) for k, v in optional.items()},
        )

    tame = objects(lambda tame, wild: tame)
    one_wild = st.one_of(
        [
            st.builds(lambda obj, value, key=key: {**obj, key: value}, tame, wild)
            for key, (_, wild) in {**required, **optional}.items()
        ]
    )
    mixed = objects(sometimes_wild)
    known = st.dictionaries(st.sampled_from(fields), json_values, max_size=6)
    unknown = st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=1)
    anything = st.builds(lambda a, b, c: {**c, **a, **b}, known, mixed, unknown)
    return st.one_of(tame, one_wild, one_wild, mixed, anything)


install_inputs = inputs(
    INSTALL_FIELDS,
    {"node_id": names, "backend": names},
    {
        "model_id": names,
        "name": names,
        "alias": names,
        "uri": (st.just("oci://example/b:1"), strings),
        "op_id": names,
        "rollout_id": names,
        "replica_index": counts,
        "backend_galleries": (st.one_of(tame_galleries, galleries), json_values),
        "resume": (st.one_of(tame_carried_over, carried_over), json_values),
        **{field: seconds for field in DURATION_FIELDS},
        "progress_report_interval_seconds": (st.one_of(seconds[0], st.just(0)), numbers),
        "max_failed_attempts": counts,
    },
)
rollout_inputs = inputs(
    ROLLOUT_FIELDS,
    {"backend": names, "targets": (targets, st.one_of(wild_targets, json_values))},
    {
        "max_in_flight": counts,
        "max_failures": counts,
        "failure_policy": (st.sampled_from(["continue", "stop"]), json_values),
        "install_options": (
            st.dictionaries(st.sampled_from(DURATION_FIELDS), seconds[0], max_size=3),
            json_values,
        ),
        "backend_galleries": (st.one_of(tame_galleries, galleries), json_values),
        "uri": (st.just("oci://example/b:1"), strings),
    },
)


def decode(data: dict[str, Any], model: type[M]) -> M | None:
    """Decode as the worker does; None for a ``ValidationError``, checked to name fields."""
    payload = Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(data).encode())
    try:
        [value] = pydantic_data_converter.payload_converter.from_payloads([payload], [model])
    except ValidationError as err:
        event("ValidationError")
        for error in err.errors():
            if error["type"] == "json_invalid":
                # Not a JSON document at all (e.g. a lone surrogate escape, which json.dumps
                # writes and strict parsers refuse): the error names the line and column.
                assert "line" in error["msg"] and "column" in error["msg"]
                continue
            assert error["loc"], f"an error naming no field: {error['msg']}"
            assert error["loc"][0] in model.model_fields or error["loc"][0] in data
        return None
    assert isinstance(value, model)
    return value


def as_duration(delta: timedelta) -> Duration:
    """What the SDK does with every timeout and timer: a protobuf ``Duration``."""
    duration = Duration()
    duration.FromTimedelta(delta)
    return duration


def assert_fields_named(problems: list[tuple[str, str]], fields: list[str]) -> None:
    for field, reason in problems:
        assert field.split("[")[0].split(".")[0] in {*fields, "workflow id"}, field
        assert reason


def exercise(input: InstallBackendInput) -> None:
    """Everything the workflow computes from a valid input, for the whole deadline."""
    now = datetime.now(UTC)
    deadline = install_deadline(input, now)
    for remaining in (deadline - now, timedelta(seconds=0.5), timedelta(0)):
        activity = install_activity_input(input, "op-1", remaining)
        InstallActivityInput.model_validate_json(activity.model_dump_json())
        as_duration(timedelta(seconds=activity.install_timeout_seconds) + ACTIVITY_MARGIN)
        as_duration(remaining + ACTIVITY_MARGIN)
    as_duration(timedelta(seconds=input.heartbeat_timeout_seconds))
    probe = probe_activity_input(input, "op-1")
    ProbeInput.model_validate_json(probe.model_dump_json())
    as_duration(probe_timeout(probe))
    for streak in (1, 2, 64, 10**6):
        wait = min(backoff_seconds(input, streak), (deadline - now).total_seconds())
        as_duration(timedelta(seconds=max(wait, 0.001)))
    as_duration(timedelta(seconds=input.probe_interval_seconds))


@FUZZ
@given(install_inputs)
def test_every_install_input_is_refused_naming_a_field_or_runs_without_overflow(
    data: dict[str, Any],
) -> None:
    input = decode(data, InstallBackendInput)
    if input is None:
        return
    problems = input.problems()
    assert_fields_named(problems, INSTALL_FIELDS)
    event("valid" if not problems else f"refused {problems[0][0].split('[')[0]}")
    if not problems:
        exercise(input)


@FUZZ
@given(rollout_inputs)
@example({"backend": "b", "targets": [{"node_id": "\ud800"}]})  # not JSON once encoded
def test_every_rollout_input_is_refused_naming_a_field_or_gives_valid_installs(
    data: dict[str, Any],
) -> None:
    input = decode(data, RolloutInput)
    if input is None:
        return
    problems = input.problems()
    assert_fields_named(problems, ROLLOUT_FIELDS)
    event("valid" if not problems else f"refused {problems[0][0].split('[')[0]}")
    if problems:
        return
    for slot in expand_slots(input.targets, input.backend):
        install = input.install_input(slot.node_id, slot.model_id, slot.replica_index, "r-1")
        assert install.problems() == []
        exercise(install)
