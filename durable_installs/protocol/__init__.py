"""The NATS install protocol shared by the orchestrator's activities and the node agent.

Depends on nothing else in this project. ``protocol.subjects`` builds subjects and validates
their tokens, ``protocol.messages`` holds the wire messages, ``protocol.gallery`` the gallery
index format, ``protocol.connection`` how both sides connect, ``protocol.nats_auth`` who may use
which subject (the nats-server users and permissions per role).
"""

from durable_installs.protocol import subjects
from durable_installs.protocol.gallery import (
    GalleryEntry,
    GalleryIndexError,
    candidate_concrete_names,
)
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
    NodeSlotState,
    ProgressPhase,
    RunningModelInfo,
    decode_galleries,
    encode_galleries,
    format_size,
    parse_process_key,
    parse_size,
    process_key,
)
from durable_installs.protocol.subjects import InvalidSubjectToken, check_token, token_problem
from durable_installs.protocol.wire import OmitEmpty, WireModel

__all__ = [
    "BackendDeleteReply",
    "BackendDeleteRequest",
    "BackendInstallProgressEvent",
    "BackendInstallReply",
    "BackendInstallRequest",
    "BackendListReply",
    "BackendStopRequest",
    "BackendUpgradeReply",
    "BackendUpgradeRequest",
    "GalleryConfig",
    "GalleryEntry",
    "GalleryIndexError",
    "GalleryVerification",
    "InstallStatusReply",
    "InstallStatusRequest",
    "InvalidSubjectToken",
    "ModelsRunningReply",
    "NodeBackendInfo",
    "NodeSlotState",
    "OmitEmpty",
    "ProgressPhase",
    "RunningModelInfo",
    "WireModel",
    "candidate_concrete_names",
    "check_token",
    "decode_galleries",
    "encode_galleries",
    "format_size",
    "parse_process_key",
    "parse_size",
    "process_key",
    "subjects",
    "token_problem",
]
