"""Whatever arrives over NATS, the agent answers with a model or a clear error and stays up.

Property tests (hypothesis) of every decode path a subject handler takes: the request models,
the ``nodes.<node>.stop`` body rule, the ``backend_galleries`` string and the trust checks of a
request's sources; then the same kind of input sent to a real agent over real NATS.
"""

from __future__ import annotations

import asyncio
import json
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable_installs.node_agent.agent import decode, node_stop_body_ok
from durable_installs.node_agent.config import AgentConfig
from durable_installs.node_agent.errors import AgentError, InstallError
from durable_installs.node_agent.service import NodeService
from durable_installs.node_agent.trust import Trust
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import (
    BackendDeleteRequest,
    BackendInstallRequest,
    BackendStopRequest,
    BackendUpgradeRequest,
    GalleryConfig,
    InstallStatusRequest,
)
from durable_installs.protocol.wire import WireModel
from tests.node_agent.conftest import AgentFactory

REQUEST_MODELS: list[type[WireModel]] = [
    BackendInstallRequest,
    BackendUpgradeRequest,
    BackendDeleteRequest,
    BackendStopRequest,
    InstallStatusRequest,
]
FIELDS = sorted({name for model in REQUEST_MODELS for name in model.model_fields})
GO_TYPES = {"force": bool, "replica_index": int}
"""Non-string request fields; every other field of a request model is a Go string."""
UNIT = settings(max_examples=150, deadline=None, database=None)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
request_objects = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), json_values)
lax_values = st.sampled_from(["yes", "no", "true", "on", "1", "0", 1, 0, 1.0, 0.0])
"""What pydantic's lax mode would coerce to a bool or an int, and Go refuses."""
nearly_valid = st.fixed_dictionaries(
    {"backend": st.text(max_size=12)},
    optional={
        name: lax_values | json_values if name in GO_TYPES else st.text(max_size=12)
        for name in FIELDS
        if name != "backend"
    },
)
"""Well-typed string fields; the bool and int fields get any JSON value (Go's strictness)."""
bodies = (
    st.binary(max_size=256)
    | json_values.map(lambda v: json.dumps(v).encode())
    | request_objects.map(lambda v: json.dumps(v).encode())
    | nearly_valid.map(lambda v: json.dumps(v).encode())
)
gallery_texts = (
    st.text(max_size=64)
    | json_values.map(json.dumps)
    | st.lists(
        st.fixed_dictionaries(
            {"url": st.text(max_size=40), "name": st.text(max_size=8)},
            optional={"mirrors": json_values, "verification": json_values},
        ),
        max_size=3,
    ).map(json.dumps)
)
sources = st.text(max_size=64) | st.from_regex(
    r"\A(https?|file|oci|ftp)://[a-z0-9.@:\[\]%-]{0,20}(/[a-z0-9.%\\-]{0,8}){0,4}\Z"
)


def _invalid_request(model: type[WireModel], message: str) -> bool:
    match = re.fullmatch(r"invalid request: ([\w.]+): (.+)", message, flags=re.DOTALL)
    return match is not None and match.group(1) in ("body", *model.model_fields)


@pytest.mark.parametrize("model", REQUEST_MODELS, ids=lambda m: m.__name__)
@UNIT
@given(body=bodies)
def test_any_body_decodes_to_a_model_or_names_the_field_it_refuses(
    model: type[WireModel], body: bytes
) -> None:
    try:
        decoded = decode(model, body)
    except AgentError as err:
        assert _invalid_request(model, err.message), err.message
    else:
        assert isinstance(decoded, model)
        _assert_go_would_accept(model, json.loads(body or b"{}"))


def _assert_go_would_accept(model: type[WireModel], sent: Any) -> None:
    """Every field present was sent with the JSON type Go requires: no lax coercion."""
    assert isinstance(sent, dict)
    for name, value in sent.items():
        if name in model.model_fields:
            expected = GO_TYPES.get(name, str)
            assert type(value) is expected, f"{name}: {value!r} accepted for {expected.__name__}"


@UNIT
@given(body=bodies)
def test_any_node_stop_body_is_either_a_stop_or_ignored(body: bytes) -> None:
    assert node_stop_body_ok(body) in (True, False)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeService]:
    """A node service that trusts one http prefix (nothing is started or fetched)."""

    async def publish(subject: str, body: bytes) -> None:
        pass

    root = tmp_path_factory.mktemp("fuzz")
    config = AgentConfig(
        node_id="fuzz",
        backends_dir=root / "backends",
        galleries=(GalleryConfig(name="own", url=(root / "index.yaml").as_uri()),),
        allow_request_galleries=("https://good.example/",),
    )
    service = NodeService(config, publish)
    yield service
    service._executor.shutdown(wait=False)


@UNIT
@given(text=gallery_texts)
def test_any_backend_galleries_string_is_a_gallery_list_or_a_clear_refusal(
    service: NodeService, text: str
) -> None:
    try:
        galleries = service.planner.galleries(text)
    except InstallError as err:
        assert "request galleries are not allowed on this node: " in err.message
    except AgentError as err:
        assert err.message.startswith("decoding backend galleries: "), err.message
    else:
        assert all(isinstance(g, GalleryConfig) for g in galleries)


@UNIT
@given(source=sources)
def test_any_request_uri_is_admitted_or_refused_with_the_flag_to_set(source: str) -> None:
    trust = Trust.build((), (), ("https://good.example/",))
    try:
        trust.check_uri(source)
    except InstallError as err:
        assert "request uri is not allowed on this node: " in err.message
        assert "never allowed" in err.message or "--allow-request-uri" in err.message
    else:
        assert source.startswith("https://good.example/")


# --- through a real agent over real NATS ---------------------------------------------------

REPLYING = ["install", "upgrade", "delete", "status", "list", "running", "cancel"]
PUBLISH_ONLY = ["backend-stop", "node-stop"]
op_tokens = st.text(alphabet=string.ascii_letters + string.digits + "-_", min_size=1, max_size=16)


def _subject(node_id: str, operation: str, op_token: str) -> str:
    return {
        "install": subjects.install(node_id),
        "upgrade": subjects.upgrade(node_id),
        "delete": subjects.backend_delete(node_id),
        "status": subjects.install_status(node_id),
        "list": subjects.backend_list(node_id),
        "running": subjects.models_running(node_id),
        "cancel": subjects.cancel(node_id, op_token),
        "backend-stop": subjects.backend_stop(node_id),
        "node-stop": subjects.node_stop(node_id),
    }[operation]


async def test_random_requests_over_nats_all_get_a_reply_and_the_agent_stays_up(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    node = await start_agent()
    loop = asyncio.get_running_loop()

    async def exchange(operation: str, op_token: str, body: bytes) -> Any:
        subject = _subject(node.node_id, operation, op_token)
        if operation in PUBLISH_ONLY:
            await node.nc.publish(subject, body)
            subject, body = subjects.models_running(node.node_id), b"{}"
        msg = await node.nc.request(subject, body, timeout=30)
        return json.loads(msg.data)

    @settings(
        max_examples=50,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(
        operation=st.sampled_from(REPLYING + PUBLISH_ONLY),
        op_token=op_tokens,
        body=bodies,
    )
    def one_message(operation: str, op_token: str, body: bytes) -> None:
        future = asyncio.run_coroutine_threadsafe(exchange(operation, op_token, body), loop)
        reply = future.result(timeout=60)
        assert isinstance(reply, dict), reply
        if reply.get("success") is False:
            assert isinstance(reply.get("error"), str) and reply["error"], reply

    await asyncio.to_thread(one_message)

    running = await node.running()
    assert running.models == []
    assert not node.agent._stopping
