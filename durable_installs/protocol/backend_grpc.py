"""gRPC calls to a LocalAI backend process: ``Health``, ``Free``, ``LoadModel``, ``Status``.

Here, in the protocol package, because both sides call backends: the node agent checks
``Health`` and calls ``Free`` (docs/protocol.md §5), and the load-model activities call
``LoadModel`` and ``Status`` on the address an install returned (activities may not import
the node agent). As a LocalAI controller does, ``LoadModel`` goes straight to the backend
over gRPC, not through NATS.

Messages are encoded and decoded by hand (:mod:`.protowire`) with the field numbers of
LocalAI's ``backend/backend.proto``; :class:`ModelOptions` carries every scalar and list field
of its ``ModelOptions`` (not the nested ``GrammarTriggers`` and ``Proxy``), each bounded. A
fresh channel per call avoids gRPC's reconnect backoff hiding a backend that has just started
listening; replies are limited to 1 MiB. A failed call raises :class:`BackendCallError` with
gRPC's status code, so a caller can tell a timeout (still loading?) from a refusal or a
process that is gone; a backend's own answer, even ``success: false``, is a :class:`LoadResult`.

``grpc`` ships no type information, so it is imported dynamically and kept inside this module.
"""

from __future__ import annotations

import importlib
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from durable_installs.protocol import protowire
from durable_installs.protocol.protowire import FIXED32, LENGTH, VARINT

grpc: Any = importlib.import_module("grpc")
grpc_aio: Any = importlib.import_module("grpc.aio")

HEALTH = "/backend.Backend/Health"
FREE = "/backend.Backend/Free"
LOAD_MODEL = "/backend.Backend/LoadModel"
STATUS = "/backend.Backend/Status"

MAX_REPLY_BYTES = 1024 * 1024
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_MESSAGE_CHARS = 2048
"""A backend's ``Result.message`` is cut to this (it ends up in workflow history)."""
MAX_DETAILS_CHARS = 512
FLOAT32_MAX = 3.4028234663852886e38

Text = Annotated[StrictStr, Field(max_length=4096)]
"""A path or a short setting."""
Int32 = Annotated[StrictInt, Field(ge=-(2**31), le=2**31 - 1)]
Float32 = Annotated[float, Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX)]
Texts = Annotated[list[Text], Field(max_length=128)]
Floats = Annotated[list[Float32], Field(max_length=128)]


class ModelOptions(BaseModel):
    """What ``LoadModel`` is given. Zero values are not sent (proto3), as LocalAI's are not.

    LocalAI sets ``model`` to the model's name relative to the models directory,
    ``model_file`` to its full path on the node and ``model_path`` to the models directory;
    backends such as llama.cpp open ``model_file``.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Text = ""
    context_size: Int32 = 0
    seed: Int32 = 0
    n_batch: Int32 = 0
    f16_memory: StrictBool = False
    mlock: StrictBool = False
    mmap: StrictBool = False
    vocab_only: StrictBool = False
    low_vram: StrictBool = False
    embeddings: StrictBool = False
    numa: StrictBool = False
    n_gpu_layers: Int32 = 0
    main_gpu: Text = ""
    tensor_split: Text = ""
    threads: Int32 = 0
    rope_freq_base: Float32 = 0.0
    rope_freq_scale: Float32 = 0.0
    rms_norm_eps: Float32 = 0.0
    ngqa: Int32 = 0
    model_file: Text = ""
    pipeline_type: Text = ""
    scheduler_type: Text = ""
    cuda: StrictBool = False
    cfg_scale: Float32 = 0.0
    img2img: StrictBool = False
    clip_model: Text = ""
    clip_subfolder: Text = ""
    clip_skip: Int32 = 0
    control_net: Text = ""
    tokenizer: Text = ""
    lora_base: Text = ""
    lora_adapter: Text = ""
    lora_scale: Float32 = 0.0
    no_mul_mat_q: StrictBool = False
    draft_model: Text = ""
    audio_path: Text = ""
    quantization: Text = ""
    gpu_memory_utilization: Float32 = 0.0
    trust_remote_code: StrictBool = False
    enforce_eager: StrictBool = False
    swap_space: Int32 = 0
    max_model_len: Int32 = 0
    tensor_parallel_size: Int32 = 0
    load_format: Text = ""
    disable_log_status: StrictBool = False
    dtype: Text = ""
    limit_image_per_prompt: Int32 = 0
    limit_video_per_prompt: Int32 = 0
    limit_audio_per_prompt: Int32 = 0
    mmproj: Text = ""
    rope_scaling: Text = ""
    yarn_ext_factor: Float32 = 0.0
    yarn_attn_factor: Float32 = 0.0
    yarn_beta_fast: Float32 = 0.0
    yarn_beta_slow: Float32 = 0.0
    type: Text = ""
    flash_attention: Text = ""
    no_kv_offload: StrictBool = False
    model_path: Text = ""
    lora_adapters: Texts = Field(default_factory=list)
    lora_scales: Floats = Field(default_factory=list)
    options: Texts = Field(default_factory=list)
    cache_type_key: Text = ""
    cache_type_value: Text = ""
    reranking: StrictBool = False
    overrides: Texts = Field(default_factory=list)
    engine_args: Annotated[StrictStr, Field(max_length=64 * 1024)] = ""
    """A JSON object of backend-native engine arguments (vLLM), passed verbatim."""
    enable_score: StrictBool = False


MODEL_OPTIONS_FIELDS: dict[str, tuple[int, str]] = {
    "model": (1, "string"),
    "context_size": (2, "int32"),
    "seed": (3, "int32"),
    "n_batch": (4, "int32"),
    "f16_memory": (5, "bool"),
    "mlock": (6, "bool"),
    "mmap": (7, "bool"),
    "vocab_only": (8, "bool"),
    "low_vram": (9, "bool"),
    "embeddings": (10, "bool"),
    "numa": (11, "bool"),
    "n_gpu_layers": (12, "int32"),
    "main_gpu": (13, "string"),
    "tensor_split": (14, "string"),
    "threads": (15, "int32"),
    "rope_freq_base": (17, "float"),
    "rope_freq_scale": (18, "float"),
    "rms_norm_eps": (19, "float"),
    "ngqa": (20, "int32"),
    "model_file": (21, "string"),
    "pipeline_type": (26, "string"),
    "scheduler_type": (27, "string"),
    "cuda": (28, "bool"),
    "cfg_scale": (29, "float"),
    "img2img": (30, "bool"),
    "clip_model": (31, "string"),
    "clip_subfolder": (32, "string"),
    "clip_skip": (33, "int32"),
    "tokenizer": (34, "string"),
    "lora_base": (35, "string"),
    "lora_adapter": (36, "string"),
    "no_mul_mat_q": (37, "bool"),
    "audio_path": (38, "string"),
    "draft_model": (39, "string"),
    "quantization": (40, "string"),
    "mmproj": (41, "string"),
    "lora_scale": (42, "float"),
    "rope_scaling": (43, "string"),
    "yarn_ext_factor": (44, "float"),
    "yarn_attn_factor": (45, "float"),
    "yarn_beta_fast": (46, "float"),
    "yarn_beta_slow": (47, "float"),
    "control_net": (48, "string"),
    "type": (49, "string"),
    "gpu_memory_utilization": (50, "float"),
    "trust_remote_code": (51, "bool"),
    "enforce_eager": (52, "bool"),
    "swap_space": (53, "int32"),
    "max_model_len": (54, "int32"),
    "tensor_parallel_size": (55, "int32"),
    "flash_attention": (56, "string"),
    "no_kv_offload": (57, "bool"),
    "load_format": (58, "string"),
    "model_path": (59, "string"),
    "lora_adapters": (60, "strings"),
    "lora_scales": (61, "floats"),
    "options": (62, "strings"),
    "cache_type_key": (63, "string"),
    "cache_type_value": (64, "string"),
    "disable_log_status": (66, "bool"),
    "dtype": (67, "string"),
    "limit_image_per_prompt": (68, "int32"),
    "limit_video_per_prompt": (69, "int32"),
    "limit_audio_per_prompt": (70, "int32"),
    "reranking": (71, "bool"),
    "overrides": (72, "strings"),
    "engine_args": (73, "string"),
    "enable_score": (75, "bool"),
}
"""Field → (number in backend.proto's ``ModelOptions``, kind)."""


def encode_model_options(options: ModelOptions) -> bytes:
    """The ``ModelOptions`` message LocalAI's backends decode (fields in number order)."""
    out = bytearray()
    for name, (number, kind) in sorted(MODEL_OPTIONS_FIELDS.items(), key=lambda i: i[1][0]):
        value = getattr(options, name)
        if kind == "string" and value:
            out += protowire.length_delimited(number, value.encode())
        elif kind in ("int32", "bool") and value:
            out += protowire.key(number, VARINT) + protowire.varint(int(value))
        elif kind == "float" and value:
            out += protowire.fixed32_float(number, value)
        elif kind == "strings":
            for item in value:
                out += protowire.length_delimited(number, item.encode())
        elif kind == "floats" and value:
            out += protowire.length_delimited(number, struct.pack(f"<{len(value)}f", *value))
    return bytes(out)


def _float(bits: int) -> float:
    value: float = struct.unpack("<f", bits.to_bytes(4, "little"))[0]
    return value


def decode_model_options(message: bytes) -> ModelOptions:
    """The inverse of :func:`encode_model_options` (unknown fields skipped); for tests and
    tools. ValueError when the message is malformed."""
    names = {number: (name, kind) for name, (number, kind) in MODEL_OPTIONS_FIELDS.items()}
    values: dict[str, Any] = {}
    for number, wire_type, raw in protowire.fields(message):
        if number not in names:
            continue
        name, kind = names[number]
        if kind == "string" and wire_type == LENGTH and isinstance(raw, bytes):
            values[name] = raw.decode()
        elif kind == "int32" and wire_type == VARINT and isinstance(raw, int):
            values[name] = protowire.as_int32(raw)
        elif kind == "bool" and wire_type == VARINT:
            values[name] = raw != 0
        elif kind == "float" and wire_type == FIXED32 and isinstance(raw, int):
            values[name] = _float(raw)
        elif kind == "strings" and wire_type == LENGTH and isinstance(raw, bytes):
            values.setdefault(name, []).append(raw.decode())
        elif kind == "floats" and wire_type == LENGTH and isinstance(raw, bytes):
            if len(raw) % 4:
                raise ValueError(f"packed floats of field {number} are not a multiple of 4")
            values.setdefault(name, []).extend(struct.unpack(f"<{len(raw) // 4}f", raw))
        elif kind == "floats" and wire_type == FIXED32 and isinstance(raw, int):
            values.setdefault(name, []).append(_float(raw))
        else:
            raise ValueError(f"field {number} has wire type {wire_type}")
    return ModelOptions.model_validate(values)


# --- replies ---------------------------------------------------------------------------------


def clean_text(raw: bytes, limit: int) -> str:
    """Text from a backend made safe to log and store: control characters become ``?``, cut
    to ``limit`` characters."""
    text = raw.decode(errors="replace")[:limit]
    return "".join("?" if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 else ch for ch in text)


@dataclass(frozen=True)
class LoadResult:
    """A backend's answer to ``LoadModel``: ``success: false`` with its reason is an answer."""

    success: bool
    message: str


def decode_result(message: bytes) -> LoadResult:
    """``Result{message = 1, success = 2}``; ValueError when malformed."""
    text, success = b"", False
    for number, wire_type, value in protowire.fields(message):
        if number == 1 and wire_type == LENGTH and isinstance(value, bytes):
            text = value
        elif number == 2 and wire_type == VARINT:
            success = value != 0
    return LoadResult(success=success, message=clean_text(text, MAX_MESSAGE_CHARS))


class BackendState(StrEnum):
    """``StatusResponse.State`` of backend.proto (``unknown`` for a value it does not define)."""

    UNINITIALIZED = "uninitialized"
    BUSY = "busy"
    READY = "ready"
    ERROR = "error"
    UNKNOWN = "unknown"


_STATES = {
    0: BackendState.UNINITIALIZED,
    1: BackendState.BUSY,
    2: BackendState.READY,
    -1: BackendState.ERROR,
}


@dataclass(frozen=True)
class BackendStatus:
    """What ``Status`` says: the backend's state and the memory it reports (0: none)."""

    state: BackendState
    memory_bytes: int = 0


def decode_status(message: bytes) -> BackendStatus:
    """``StatusResponse{state = 1, memory = 2 {total = 1}}``; ValueError when malformed."""
    state, memory = BackendState.UNINITIALIZED, 0
    for number, wire_type, value in protowire.fields(message):
        if number == 1 and wire_type == VARINT and isinstance(value, int):
            state = _STATES.get(protowire.as_int32(value), BackendState.UNKNOWN)
        elif number == 2 and wire_type == LENGTH and isinstance(value, bytes):
            for inner, inner_type, total in protowire.fields(value):
                if inner == 1 and inner_type == VARINT and isinstance(total, int):
                    memory = total
    return BackendStatus(state=state, memory_bytes=memory)


# --- calls -----------------------------------------------------------------------------------


class BackendCallError(Exception):
    """A gRPC call that got no answer from the backend: ``code`` is gRPC's status name."""

    def __init__(self, method: str, address: str, code: str, details: str) -> None:
        self.method = method
        self.address = address
        self.code = code
        self.details = details
        name = method.rsplit("/", 1)[-1]
        super().__init__(f"{name} on {address} failed: {code}: {details}")

    @property
    def timed_out(self) -> bool:
        """The deadline passed: the backend may still be working (a slow load)."""
        return self.code == "DEADLINE_EXCEEDED"

    @property
    def unavailable(self) -> bool:
        """Nothing answered at the address (not listening, or gone)."""
        return self.code == "UNAVAILABLE"


def _identity(data: bytes) -> bytes:
    return data


_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
    ("grpc.max_send_message_length", MAX_REQUEST_BYTES),
    ("grpc.enable_retries", 0),
]


async def call(
    address: str, method: str, request: bytes, call_timeout: float, token: str = ""
) -> bytes:
    """One unary call with raw bytes in and out; raises :class:`BackendCallError`."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc_aio.insecure_channel(address, options=_CHANNEL_OPTIONS) as channel:
        stub = channel.unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            reply: bytes = await stub(request, timeout=call_timeout, metadata=metadata)
        except grpc.RpcError as err:
            details = clean_text((err.details() or "").encode(), MAX_DETAILS_CHARS)
            raise BackendCallError(method, address, err.code().name, details) from None
        return reply


async def load_model(
    address: str, options: ModelOptions, token: str = "", call_timeout: float = 600.0
) -> LoadResult:
    """Ask the backend at ``address`` to load a model; its answer, or BackendCallError.

    ``call_timeout`` bounds the whole call (a large model can take minutes); when it passes
    the error's ``timed_out`` is true and the backend may still be loading: :func:`status`
    tells ``busy`` from ``ready`` or ``error`` without disturbing it. A reply that is not a
    ``Result`` raises BackendCallError with code ``INVALID_REPLY``.
    """
    reply = await call(address, LOAD_MODEL, encode_model_options(options), call_timeout, token)
    try:
        return decode_result(reply)
    except ValueError:
        raise BackendCallError(LOAD_MODEL, address, "INVALID_REPLY", "not a Result") from None


async def status(address: str, token: str = "", call_timeout: float = 5.0) -> BackendStatus:
    """The backend's ``Status``: ``uninitialized``, ``busy`` (loading), ``ready``, ``error``.

    It answers while a load runs, so a caller waiting on a long ``LoadModel`` can tell a live
    backend from a wedged or dead one; it reports no progress (backend.proto has none).
    """
    reply = await call(address, STATUS, b"", call_timeout, token)
    try:
        return decode_status(reply)
    except ValueError:
        raise BackendCallError(STATUS, address, "INVALID_REPLY", "not a StatusResponse") from None


async def health(address: str, call_timeout: float = 2.0, token: str = "") -> bool:
    """Whether the backend at ``address`` answers ``Health`` with the message ``OK``."""
    try:
        reply = await call(address, HEALTH, b"", call_timeout, token)
    except BackendCallError:
        return False
    return protowire.read_bytes_field(reply, 1) == b"OK"


async def free(address: str, call_timeout: float = 5.0, token: str = "") -> bool:
    """Ask the backend to release its model before it is stopped; best effort."""
    try:
        await call(address, FREE, b"", call_timeout, token)
    except BackendCallError:
        return False
    return True
