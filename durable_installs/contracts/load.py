"""Input, result and status of ``LoadModelWorkflow``: a slot's model staged and loaded.

A backend process serves nothing until the model's files are on its node and the backend has
loaded them. ``LoadModelWorkflow`` takes a slot from "backend installed" to "model loaded
and answering": it starts or joins the slot's ``InstallBackendWorkflow``, stages each model
file to the node over LocalAI's file-transfer API (skipping files already there with the
right hash, resuming partial ones), then calls the backend's ``LoadModel``. Field names are a
public contract, checked by :meth:`LoadModelInput.problems` like the install's.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field

from durable_installs.contracts.install import (
    MAX_REPLICA_INDEX,
    MINIMAL_INSTALL_INPUT,
    InstallBackendInput,
    describe_problems,
    slot_problems,
    slot_workflow_id,
)
from durable_installs.contracts.limits import (
    MAX_DEADLINE_SECONDS,
    MAX_INTERVAL_SECONDS,
    MAX_NAME_LENGTH,
    MAX_SEARCH_ATTRIBUTE_BYTES,
    MAX_URI_LENGTH,
    MAX_WORKFLOW_ID_LENGTH,
    MIN_DURATION_SECONDS,
    Keywords,
    between,
    items_bounds,
    number_problem,
    text_bounds,
    text_problem,
    utf8_problem,
    with_bounds,
)
from durable_installs.contracts.model import ContractModel
from durable_installs.protocol.messages import process_key
from durable_installs.protocol.subjects import MAX_TOKEN_LENGTH

MAX_MODEL_FILES = 64
"""Files of one model (a checkpoint split in shards, a tokenizer, a config...)."""

MAX_FILE_BYTES = 2**40
"""One file: 1 TiB. Larger files exist nowhere a node could hold them."""

MAX_PATH_LENGTH = 1_024
"""Characters of a file's path under the node's models directory."""

MAX_CONTEXT_SIZE = 2**24
MAX_THREADS = 4_096
MAX_GPU_LAYERS = 100_000
MAX_OPTION_TEXT = 4_096

SHA256 = re.compile(r"^[0-9a-f]{64}$")

MINIMAL_LOAD_INPUT = {
    **MINIMAL_INSTALL_INPUT,
    "model_id": "qwen3",
    "files": [
        {"uri": "https://models.example/qwen3.gguf", "sha256": "<64 hex>", "path": "qwen3.gguf"}
    ],
}
"""The smallest valid input's shape, shown to whoever starts a load without one."""


def load_workflow_id(node_id: str, backend: str, model_id: str, replica_index: int) -> str:
    """The one workflow id for a slot's load: ``load/<node>/<backend>/<model>/<replica>``,
    percent-encoded like the install's, so a slot is loaded by one workflow at a time."""
    return slot_workflow_id("load", node_id, backend, model_id, replica_index)


class LoadPhase(StrEnum):
    """Where a load stands; also the ``InstallPhase`` search attribute's value while it runs."""

    PENDING = "pending"
    INSTALLING = "installing"
    STAGING = "staging"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ModelFile(ContractModel):
    """One file of the model: where it comes from and where it must be on the node."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str
    """``https://``/``http://`` URL or ``file://`` path the worker reads; it must lie under a
    prefix the worker trusts (``--allow-model-source``), closed by default."""
    sha256: str
    """The file's SHA-256 (64 lowercase hex digits): what the node verifies before the file
    is put in place, and how a file already there is recognised and skipped."""
    size: int | None = None
    """Bytes, when known: a source that delivers more or fewer is refused; it also sizes the
    free-space check and the load's deadline."""
    path: str
    """Where the file goes, relative to the node's models directory (``qwen3/model.gguf``);
    never absolute, never ``..``."""

    def problems(self, prefix: str) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if problem := text_problem(self.uri, MAX_URI_LENGTH, required=True):
            found.append((f"{prefix}.uri", problem))
        elif urllib.parse.urlsplit(self.uri).scheme not in ("http", "https", "file"):
            found.append((f"{prefix}.uri", "must be an http(s):// URL or a file:// path"))
        if not SHA256.match(self.sha256):
            found.append((f"{prefix}.sha256", "must be 64 lowercase hexadecimal digits"))
        if self.size is not None and (problem := number_problem(self.size, 0, MAX_FILE_BYTES)):
            found.append((f"{prefix}.size", problem))
        if problem := path_problem(self.path):
            found.append((f"{prefix}.path", problem))
        return found


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a file's place under a node's models directory, or None."""
    if problem := text_problem(path, MAX_PATH_LENGTH, required=True):
        return problem
    if path.startswith("/") or "\\" in path or "\x00" in path:
        return "must be a relative path with / separators"
    normal = posixpath.normpath(path)
    if normal != path.rstrip("/") or normal.startswith("..") or normal in (".", ""):
        return "must stay inside the models directory (no '..', no '.' parts)"
    return None


class LoadOptions(ContractModel):
    """The ``ModelOptions`` LocalAI sends with ``LoadModel``, passed through with bounds.

    ``model`` defaults to the first file's path; paths are resolved on the node against its
    models directory, as LocalAI does.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = ""
    """The model file the backend loads (LocalAI ``Model``); default: the first file."""
    context_size: int = 0
    """Tokens of context (LocalAI ``ContextSize``); 0 leaves the backend's default."""
    threads: int = 0
    """CPU threads (LocalAI ``Threads``); 0: the backend's default."""
    gpu_layers: int = 0
    """Layers offloaded to the GPU (LocalAI ``NGPULayers``)."""
    f16_memory: bool = False
    """Half-precision KV cache (LocalAI ``F16Memory``)."""
    mmap: bool = True
    """Memory-map the model file (LocalAI ``MMap``)."""
    embeddings: bool = False
    """Load for embeddings (LocalAI ``Embeddings``)."""
    extra: dict[str, str] = Field(default_factory=dict)
    """Backend-specific ``Options`` as ``key: value`` (LocalAI ``Options``, ``key:value``)."""

    def problems(self) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if self.model and (problem := path_problem(self.model)):
            found.append(("load_options.model", problem))
        for field, high in (
            ("context_size", MAX_CONTEXT_SIZE),
            ("threads", MAX_THREADS),
            ("gpu_layers", MAX_GPU_LAYERS),
        ):
            if problem := number_problem(getattr(self, field), 0, high):
                found.append((f"load_options.{field}", problem))
        if len(self.extra) > 64:
            found.append(("load_options.extra", "has more than 64 options"))
        for key, value in list(self.extra.items())[:64]:
            if text_problem(key, MAX_NAME_LENGTH, required=True) or text_problem(
                value, MAX_OPTION_TEXT
            ):
                found.append(("load_options.extra", "keys and values must be short and printable"))
                break
        return found


LOAD_DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "deadline_seconds": (1.0, MAX_DEADLINE_SECONDS),
    "stage_stall_seconds": (1.0, MAX_INTERVAL_SECONDS),
    "load_base_seconds": (MIN_DURATION_SECONDS, MAX_INTERVAL_SECONDS),
    "load_seconds_per_gib": (0.0, MAX_INTERVAL_SECONDS),
    "load_stall_seconds": (1.0, MAX_INTERVAL_SECONDS),
    "heartbeat_timeout_seconds": (1.0, MAX_INTERVAL_SECONDS),
}


LOAD_INPUT_BOUNDS: dict[str, Keywords] = {
    "node_id": text_bounds(MAX_TOKEN_LENGTH, required=True),
    "backend": text_bounds(MAX_NAME_LENGTH, required=True),
    "model_id": text_bounds(MAX_NAME_LENGTH, required=True),
    "replica_index": between(0, MAX_REPLICA_INDEX),
    "files": items_bounds(MAX_MODEL_FILES) | {"minItems": 1},
    **{field: between(low, high) for field, (low, high) in LOAD_DURATION_BOUNDS.items()},
    "rollout_id": text_bounds(MAX_WORKFLOW_ID_LENGTH, max_bytes=MAX_SEARCH_ATTRIBUTE_BYTES),
}
"""The bounds ``problems()`` checks, as JSON Schema keywords (the generated reference)."""


class LoadModelInput(ContractModel):
    """Load ``files`` on node ``node_id`` into the slot's ``backend`` process.

    The slot is ``(model_id, replica_index)``; the backend is installed (or joined) through
    the slot's ``InstallBackendWorkflow``. Durations are seconds.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra=with_bounds(lambda: LOAD_INPUT_BOUNDS)
    )

    node_id: str
    """The node to load on (its NATS subjects ``nodes.<node_id>.*``)."""
    backend: str
    """The backend the slot runs (installed, or joined, through the slot's install)."""
    model_id: str
    """The slot's model: one backend process per ``(model_id, replica_index)``."""
    replica_index: int = 0
    """The slot's replica."""
    files: list[ModelFile] = Field(default_factory=list)
    """The model's files, staged in this order; the first is the model unless
    ``load_options.model`` names another."""
    load_options: LoadOptions = Field(default_factory=LoadOptions)
    """The ``ModelOptions`` ``LoadModel`` is given (context size, threads, GPU layers...)."""
    install_options: dict[str, Any] = Field(default_factory=dict)
    """Any ``InstallBackendWorkflow`` input field for the slot's install (galleries, timeouts)."""
    files_url: str = ""
    """The node's file-transfer base URL (``http://gpu-1:50050``); empty: what the node
    agent announces in the node registry (a stock LocalAI worker must be given it)."""
    deadline_seconds: float = 6 * 3600.0
    """Overall bound; the workflow fails with ``LoadDeadlineExceeded`` after this."""
    stage_stall_seconds: float = 120.0
    """A file transfer that moves no byte for this long is cut and resumed."""
    load_base_seconds: float = 120.0
    """``LoadModel``'s deadline: this, plus ``load_seconds_per_gib`` per GiB of model."""
    load_seconds_per_gib: float = 60.0
    """Seconds of ``LoadModel`` deadline per GiB of model."""
    load_stall_seconds: float = 300.0
    """A load whose backend stops answering ``Status`` for this long is a stalled load."""
    heartbeat_timeout_seconds: float = 30.0
    """The staging and loading activities' heartbeat timeout: how soon a worker that died
    mid-transfer is noticed and the transfer resumed elsewhere."""
    reload: bool = False
    """Send ``LoadModel`` even when every file is there and the backend reports a model
    loaded (to apply other ``load_options`` to the same files)."""
    rollout_id: str = ""
    """The rollout this load belongs to (set by the rollout; a search attribute)."""

    @property
    def slot(self) -> str:
        return process_key(self.backend, self.model_id, self.replica_index)

    @property
    def total_bytes(self) -> int:
        """The model's size, as far as the files say (unknown sizes count 0)."""
        return sum(f.size or 0 for f in self.files)

    def install_input(self) -> InstallBackendInput:
        """The slot's install, with this load's options for it."""
        return InstallBackendInput.model_validate(
            {
                **self.install_options,
                "node_id": self.node_id,
                "backend": self.backend,
                "model_id": self.model_id,
                "replica_index": self.replica_index,
                "rollout_id": self.rollout_id,
            }
        )

    def problems(self) -> list[tuple[str, str]]:
        """Every invalid field with the reason; empty when valid."""
        found = slot_problems(self.node_id, self.model_id, self.replica_index)
        if problem := text_problem(self.backend, MAX_NAME_LENGTH, required=True):
            found.append(("backend", problem))
        if problem := text_problem(self.model_id, MAX_NAME_LENGTH, required=True):
            found.append(("model_id", problem))
        if not self.files:
            found.append(("files", "a model needs at least one file"))
        elif len(self.files) > MAX_MODEL_FILES:
            found.append(("files", f"has {len(self.files)} files; the limit is {MAX_MODEL_FILES}"))
        else:
            for position, spec in enumerate(self.files):
                found += spec.problems(f"files[{position}]")
            paths = [spec.path for spec in self.files]
            if len(set(paths)) != len(paths):
                found.append(("files", "two files have the same path"))
        found += self.load_options.problems()
        if self.files_url:
            scheme = urllib.parse.urlsplit(self.files_url).scheme
            if text_problem(self.files_url, MAX_URI_LENGTH) or scheme not in ("http", "https"):
                found.append(("files_url", "must be an http(s):// URL"))
        for field, (low, high) in LOAD_DURATION_BOUNDS.items():
            if problem := number_problem(getattr(self, field), low, high, "seconds"):
                found.append((field, problem))
        forbidden = {"node_id", "backend", "model_id", "replica_index", "rollout_id", "resume"}
        if bad := sorted(forbidden & set(self.install_options)):
            found.append(("install_options", f"may not set {', '.join(bad)} (the load's own)"))
        else:
            try:
                install = self.install_input()
            except ValueError as err:
                found.append(("install_options", str(err).splitlines()[0][:200]))
            else:
                found += [(f"install_options.{f}", r) for f, r in install.problems()]
        rollout = text_problem(self.rollout_id, MAX_WORKFLOW_ID_LENGTH) or utf8_problem(
            self.rollout_id, MAX_SEARCH_ATTRIBUTE_BYTES
        )
        if rollout:
            found.append(("rollout_id", rollout))
        return found

    def describe_problems(self) -> str:
        return describe_problems(self.problems())


class FileState(StrEnum):
    """One file's transfer."""

    WAITING = "waiting"
    PRESENT = "present"
    """Already on the node with the right hash: skipped."""
    SENDING = "sending"
    STAGED = "staged"


class FileStatus(ContractModel):
    """One file on its way to the node."""

    path: str
    """Where the file goes, relative to the node's models directory."""
    sha256: str
    """The file's SHA-256."""
    size: int | None = None
    """Bytes, once known."""
    state: FileState = FileState.WAITING
    """Waiting, sending, staged, or present (already there)."""
    committed: int = 0
    """Bytes the node has of it."""
    bytes_sent: int = 0
    """Bytes this load sent for it (resent bytes counted again)."""
    local_path: str = ""
    """Where the node keeps it (what ``LoadModel`` is given)."""


class LoadStatus(ContractModel):
    """The load as a person sees it: the ``progress`` query."""

    node_id: str
    """The node."""
    backend: str
    """The backend."""
    model_id: str
    """The slot's model."""
    replica_index: int
    """The slot's replica."""
    slot: str
    """The slot's process key (``backend:model#replica``)."""
    phase: LoadPhase = LoadPhase.PENDING
    """Where the load stands."""
    install_workflow_id: str = ""
    """The slot's install this load started or joined."""
    address: str = ""
    """The backend process's address, once installed."""
    files: list[FileStatus] = Field(default_factory=list)
    """Each file's state."""
    load_message: str = ""
    """What the backend said when it loaded the model."""
    last_error: str = ""
    """The last failure, when there is one."""
    started_at: datetime | None = None
    """When the load started."""
    updated_at: datetime | None = None
    """The last change."""
    phase_seconds: dict[str, float] = Field(default_factory=dict)
    """Seconds spent in each phase so far."""

    @property
    def bytes_sent(self) -> int:
        return sum(f.bytes_sent for f in self.files)


class LoadModelResult(ContractModel):
    """A loaded model: where it answers, what is on the node, what it took."""

    node_id: str
    """The node."""
    backend: str
    """The backend."""
    model_id: str
    """The slot's model."""
    replica_index: int
    """The slot's replica."""
    slot: str
    """The slot's process key."""
    address: str
    """The backend process's routable address (from the slot's install)."""
    files: list[FileStatus]
    """Each file's node-local path and sha256, and the bytes sent for it."""
    bytes_sent: int
    """Bytes sent to the node for this load, resent bytes counted again."""
    phase_seconds: dict[str, float]
    """Seconds spent installing, staging and loading."""
    load_message: str = ""
    """What the backend said when it loaded the model."""
    already_loaded: bool = False
    """Every file was present and the backend had the model loaded: nothing was sent."""


# --- the activities' inputs and results -----------------------------------------------------------


class NodeFilesInput(ContractModel):
    """Ask node ``node_id`` where it takes files and how much it can store."""

    node_id: str
    """The node asked."""


class NodeFiles(ContractModel):
    """The node's answer to ``files.space``; ``known`` is False from a node without that
    extension (a stock LocalAI worker), which is staged to as LocalAI does: without a check,
    at the ``files_url`` the load names."""

    known: bool
    """The node answered ``files.space``."""
    available_disk: int = 0
    """Free bytes on the filesystem of the node's models directory."""
    total_disk: int = 0
    """0: the node could not tell (never ruled out, as on LocalAI)."""
    reserved_disk: int = 0
    """What the node keeps free whatever happens: it refuses an upload that would leave less."""
    max_file_size: int = 0
    """The largest single file the node accepts (0: no stated limit)."""
    files_url: str = ""
    """``http://<address>`` of its file-transfer API, empty when that is off."""


class StageFileInput(ContractModel):
    """One file to put on one node."""

    node_id: str
    """The node."""
    files_url: str
    """The node's file-transfer base URL."""
    file: ModelFile
    """The file, its source and its place."""
    stall_seconds: float = 120.0
    """A transfer that moves no byte for this long is cut and resumed."""


class StageFileResult(ContractModel):
    """The file is on the node with the right hash."""

    path: str
    """The file's place under the models directory."""
    sha256: str
    """Its SHA-256, verified by the node."""
    size: int
    """Its bytes."""
    local_path: str
    """Where the node keeps it (what ``LoadModel`` is given)."""
    present: bool = False
    """It was there already: nothing was sent."""
    bytes_sent: int = 0
    """Bytes this activity sent, resends after a cut connection included."""


class StageProgress(ContractModel):
    """The staging activity's heartbeat: how far the node has the file."""

    path: str
    """The file being sent."""
    committed: int = 0
    """Bytes of it the node has (as far as the worker knows)."""
    size: int | None = None
    """Its size, when known."""
    bytes_sent: int = 0
    """Bytes sent for it by every attempt so far."""


class LoadModelActivityInput(ContractModel):
    """``LoadModel`` on the slot's backend process."""

    address: str
    """The slot's backend process (``host:port``)."""
    options: LoadOptions
    """The load's ``ModelOptions``."""
    model_path: str
    """The node-local path of the model file (the staged file's ``local_path``)."""
    model_relative: str
    """The same file relative to the node's models directory (LocalAI's ``Model``)."""
    timeout_seconds: float
    """``LoadModel``'s deadline, scaled to the model's size."""
    stall_seconds: float
    """A backend silent for this long is a stalled load."""
    reuse_loaded: bool = False
    """Every file was already on the node: a backend that reports ``ready`` has this model
    loaded, and is not asked again."""


class LoadModelActivityResult(ContractModel):
    """The backend loaded the model; what it said."""

    message: str = ""
    """The backend's message."""
    seconds: float = 0.0
    """How long the load took."""
    already_loaded: bool = False
    """The backend had the model loaded: no ``LoadModel`` was sent."""
