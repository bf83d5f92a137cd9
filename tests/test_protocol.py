"""The wire protocol: exact field names, omit-when-zero rules, subjects and token checks."""

from __future__ import annotations

import json

import pytest

from durable_installs.protocol import subjects
from durable_installs.protocol.gallery import candidate_concrete_names, parse_index
from durable_installs.protocol.messages import (
    BackendDeleteReply,
    BackendDeleteRequest,
    BackendInstallProgressEvent,
    BackendInstallReply,
    BackendInstallRequest,
    BackendListReply,
    BackendStopRequest,
    BackendUpgradeReply,
    BackendUpgradeRequest,
    GalleryConfig,
    GalleryVerification,
    InstallStatusReply,
    InstallStatusRequest,
    ModelsRunningReply,
    NodeBackendInfo,
    RunningModelInfo,
    decode_galleries,
    encode_galleries,
    format_size,
    parse_process_key,
    parse_size,
    process_key,
)
from durable_installs.protocol.wire import WireModel

NODE = "6c9751fe-e02f-40fc-a381-4869b11ac0c6"
OP = "1f5e0b8a-8f3d-11f0-9c1a-0242ac120002"
GALLERIES = '[{"url":"https://index.localai.io/backends","name":"localai"}]'

# Reference §13: each body decodes into its message and re-encodes to the same JSON object,
# with the same fields present and the same fields absent.
REFERENCE_EXAMPLES: list[tuple[type[WireModel], str]] = [
    (
        BackendInstallRequest,
        json.dumps(
            {
                "backend": "llama-cpp",
                "model_id": "qwen3-0.6b",
                "backend_galleries": GALLERIES,
                "replica_index": 1,
            }
        ),
    ),
    (BackendInstallReply, '{"success":true,"address":"gpu-node-3.lan:50053"}'),
    (
        BackendInstallRequest,
        json.dumps({"backend": "cuda12-vllm", "backend_galleries": GALLERIES, "op_id": OP}),
    ),
    (
        BackendInstallProgressEvent,
        json.dumps(
            {
                "op_id": OP,
                "node_id": NODE,
                "backend": "cuda12-vllm",
                "file_name": "Downloading 1/2 quay.io/go-skynet/local-ai-backends:latest-gpu-"
                "nvidia-cuda-12-vllm",
                "current": "1.2 GiB",
                "total": "6.8 GiB",
                "percentage": 17.65,
                "phase": "downloading",
            }
        ),
    ),
    (
        BackendInstallReply,
        '{"success":false,"error":"installing backend from gallery: no backend found with '
        'name \\"cuda12-vllm\\""}',
    ),
    (
        BackendUpgradeRequest,
        json.dumps(
            {
                "backend": "cpu-llama-cpp",
                "backend_galleries": GALLERIES,
                "op_id": "7a0c2e44-8f3e-11f0-9c1a-0242ac120002",
            }
        ),
    ),
    (
        BackendUpgradeReply,
        '{"success":true,"stopped_process_keys":["qwen3-0.6b#0","qwen3-0.6b#1",'
        '"cpu-llama-cpp#0"],"reports_stopped_processes":true}',
    ),
    (
        BackendListReply,
        '{"backends":[{"name":"cpu-llama-cpp","is_system":false,"is_meta":false,'
        '"installed_at":"2026-08-20T09:12:44Z","gallery_url":"https://index.localai.io/backends",'
        '"version":"v4.9.0","uri":"quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp",'
        '"digest":"sha256:3b1f"}]}',
    ),
    (
        ModelsRunningReply,
        '{"models":[{"model_id":"qwen3-0.6b","replica_index":0,"address":"127.0.0.1:50052"},'
        '{"model_id":"cpu-llama-cpp","replica_index":0,"address":"127.0.0.1:50051"}]}',
    ),
    (BackendListReply, '{"backends":null}'),
    (ModelsRunningReply, '{"models":[]}'),
    (BackendStopRequest, '{"backend":"qwen3-0.6b#1","force":true}'),
    (BackendStopRequest, '{"backend":"qwen3-0.6b"}'),
]


@pytest.mark.parametrize(("model", "body"), REFERENCE_EXAMPLES)
def test_reference_examples_decode_and_reencode_with_the_same_fields(
    model: type[WireModel], body: str
) -> None:
    decoded = model.model_validate_json(body)
    assert json.loads(decoded.to_wire()) == json.loads(body)


ROUND_TRIPS: list[WireModel] = [
    BackendInstallRequest(
        backend="b",
        model_id="m",
        backend_galleries=GALLERIES,
        uri="oci://x",
        name="n",
        alias="a",
        replica_index=3,
        force=True,
        op_id="op",
    ),
    BackendInstallRequest(backend="b"),
    BackendInstallReply(success=True, address="h:1"),
    BackendInstallReply(success=False, error="boom"),
    BackendUpgradeRequest(backend="b", replica_index=2, op_id="op"),
    BackendUpgradeReply(success=False, error="e", stopped_process_keys=["m#0"]),
    BackendInstallProgressEvent(op_id="o", node_id="n", backend="b"),
    BackendListReply(backends=[NodeBackendInfo(name="b", is_meta=True)]),
    ModelsRunningReply(models=[RunningModelInfo(model_id="m", replica_index=0)]),
    BackendDeleteRequest(backend="b"),
    BackendDeleteReply(success=True, reports_stopped_processes=True),
    BackendStopRequest(),
    InstallStatusRequest(backend="b", model_id="m", replica_index=1, op_id="o"),
    InstallStatusReply(
        state="in_flight",
        progress=BackendInstallProgressEvent(op_id="o", node_id="n", backend="b", percentage=5),
    ),
    GalleryConfig(
        url="file:///g.yaml",
        name="local",
        mirrors=["file:///m.yaml"],
        verification=GalleryVerification(issuer="i"),
    ),
]


@pytest.mark.parametrize("message", ROUND_TRIPS, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: WireModel) -> None:
    assert type(message).model_validate_json(message.to_wire()) == message


def test_zero_values_are_absent_and_required_fields_always_present() -> None:
    assert json.loads(BackendInstallRequest(backend="b").to_wire()) == {"backend": "b"}
    assert json.loads(BackendInstallReply().to_wire()) == {"success": False}
    event = json.loads(BackendInstallProgressEvent(op_id="", node_id="n", backend="b").to_wire())
    assert event == {"op_id": "", "node_id": "n", "backend": "b", "percentage": 0.0}
    running = RunningModelInfo(model_id="m", replica_index=0)
    assert json.loads(running.to_wire()) == {"model_id": "m", "replica_index": 0}


def test_missing_fields_decode_as_zero_values_and_unknown_fields_are_ignored() -> None:
    reply = BackendInstallReply.model_validate_json('{"success":true,"extra":1}')
    assert reply == BackendInstallReply(success=True)
    assert ModelsRunningReply.model_validate_json('{"models":null}').models is None


def test_backend_galleries_travel_as_a_json_string() -> None:
    galleries = [GalleryConfig(url="https://index.localai.io/backends", name="localai")]
    text = encode_galleries(galleries)
    assert text == GALLERIES
    assert decode_galleries(text) == galleries
    assert encode_galleries([]) == "", "never 'null': LocalAI then finds no galleries at all"


def test_subjects_match_the_reference_strings() -> None:
    assert subjects.install("node-abc") == "nodes.node-abc.backend.install"
    assert subjects.backend_stop("node-abc") == "nodes.node-abc.backend.stop"
    assert subjects.node_stop("node-abc") == "nodes.node-abc.stop"
    assert (
        subjects.progress("node-abc", "op-123") == "nodes.node-abc.backend.install.op-123.progress"
    )
    assert subjects.upgrade("abc") == "nodes.abc.backend.upgrade"
    assert subjects.backend_list("n") == "nodes.n.backend.list"
    assert subjects.models_running("n") == "nodes.n.models.running"
    assert subjects.install_status("n") == "nodes.n.backend.install.status"
    assert subjects.cancel("n", "o") == "nodes.n.backend.install.o.cancel"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a.b", "'.'"),
        ("a*", "'*'"),
        ("a>", "'>'"),
        ("a b", "' '"),
        ("a\tb", "'\\t'"),
        ("a\nb", "'\\n'"),
        ("a\rb", "control or whitespace"),
        ("", "empty"),
        ("x" * 257, "257 characters"),
    ],
)
def test_tokens_that_localai_would_rewrite_or_nats_cannot_carry_are_rejected(
    value: str, reason: str
) -> None:
    with pytest.raises(subjects.InvalidSubjectToken) as err:
        subjects.install(value)
    assert err.value.field == "node_id"
    assert reason in str(err.value)


def test_op_id_is_checked_separately_and_named() -> None:
    with pytest.raises(subjects.InvalidSubjectToken) as err:
        subjects.progress("node", "a.b")
    assert err.value.field == "op_id"


def test_uuids_and_256_character_tokens_are_accepted() -> None:
    assert subjects.token_problem(NODE) is None
    assert subjects.token_problem("x" * 256) is None


def test_sizes_format_like_localais_downloader() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(int(412.3 * 1024**2)) == "412.3 MiB"
    assert format_size(int(2.1 * 1024**3)) == "2.1 GiB"
    assert parse_size("412.3 MiB") == int(412.3 * 1024**2)
    assert parse_size("412 MB") is None


def test_process_keys_split_at_the_last_hash() -> None:
    assert process_key("llama-cpp") == "llama-cpp#0"
    assert process_key("llama-cpp", "Qwen3-35B", 1) == "Qwen3-35B#1"
    assert parse_process_key("model#with#hash#2") == ("model#with#hash", 2)
    assert parse_process_key("#1") is None
    assert parse_process_key("m#x") is None
    assert parse_process_key("m") is None


def test_meta_and_alias_names_map_to_their_concrete_builds() -> None:
    entries = parse_index(
        """
- name: llama-cpp
  alias: llama-cpp
  capabilities: {default: cpu-llama-cpp, nvidia: cuda12-llama-cpp}
- name: cpu-llama-cpp
  alias: llama-cpp
  uri: quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp
- name: metal-llama-cpp
  alias: llama-cpp
  uri: quay.io/go-skynet/local-ai-backends:latest-metal-llama-cpp
"""
    )
    assert candidate_concrete_names(entries, "llama-cpp") == {
        "llama-cpp",
        "cpu-llama-cpp",
        "cuda12-llama-cpp",
        "metal-llama-cpp",
    }
    assert candidate_concrete_names(entries, "localai@cpu-llama-cpp") == {"cpu-llama-cpp"}
