"""Failure types of the install and probe activities, and how a node's error text maps to them.

One type per idea, the same names in code, the UI and the docs. The workflow routes on these
types; the retryable flag says whether trying again can help at all.
"""

from __future__ import annotations

from typing import Any

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

WORKER_STILL_INSTALLING = "WorkerStillInstalling"
"""The node did not reply within the install timeout; it is probably still pulling."""

NODE_UNREACHABLE = "NodeUnreachable"
"""No responders: nothing subscribes to the node's install subject (node down or offline)."""

INSTALL_REJECTED = "InstallRejected"
"""The node answered ``success:false`` with a cause no retry can fix (wrong name, integrity)."""

INSTALL_FAILED = "InstallFailed"
"""The node answered ``success:false`` with a cause that may pass (download, port, startup)."""

INSTALL_CANCELLED = "InstallCancelled"
"""The node reports the op was cancelled."""

ROLLOUT_GONE = "RolloutGone"
"""A rollout's batch found the rollout no longer running; it cancelled the installs it started."""

INVALID_INPUT = "InvalidInput"
"""The workflow input is invalid; nothing was sent."""

INSTALL_DEADLINE_EXCEEDED = "InstallDeadlineExceeded"
"""The workflow's overall deadline passed before the slot was running."""

ACTIVITY_ROUTED_TYPES = (
    WORKER_STILL_INSTALLING,
    NODE_UNREACHABLE,
    INSTALL_REJECTED,
    INSTALL_FAILED,
    INSTALL_CANCELLED,
)
"""Types the install activity never retries on its own: the workflow probes and decides."""

# Substrings of the node's error text (docs/protocol.md §11), lower-cased. Permanent causes: a
# retry of the same request cannot succeed until an operator changes something.
_PERMANENT_MARKERS = (
    "invalid request:",
    "decoding backend galleries:",
    "no backend found with name",
    "backend name is empty",
    "no backend found with capabilities",
    "meta backends cannot be installed directly",
    "not a valid backend: run file not found",
    "strict integrity",
    "image verification failed",
    "sha mismatch",
    "specifying a name is required for oci images",
    "specifying a name or alias is not supported",
    "not found after install attempt",
    "starting backend process:",
    "died during startup",
    "not supported by this agent",
    "invalid backend name",
    "unsafe archive",
    "exceeds the configured size limit",
    "not allowed on this node",
    "rejected oci image",
)

# Everything else counts as transient (the catalogue's "failed to download backend", "is
# stopping", "did not become ready within", "was stopped during startup", "no free gRPC port",
# ...): the same request may succeed later, bounded by the workflow's failure budget. Permanent
# markers are checked first because an integrity failure can arrive wrapped in a download error.


def classify_node_error(text: str) -> str:
    """The failure type for a ``success:false`` reply's ``error`` text."""
    lowered = text.strip().lower()
    if lowered.startswith("cancelled"):
        return INSTALL_CANCELLED
    if any(marker in lowered for marker in _PERMANENT_MARKERS):
        return INSTALL_REJECTED
    return INSTALL_FAILED


def node_failure(error_type: str, message: str, *details: Any) -> ApplicationError:
    """An ApplicationError of ``error_type`` whose retryability follows the type."""
    return ApplicationError(
        message,
        *details,
        type=error_type,
        non_retryable=error_type in (INSTALL_REJECTED, INSTALL_CANCELLED),
        category=(
            ApplicationErrorCategory.BENIGN
            if error_type == WORKER_STILL_INSTALLING
            else ApplicationErrorCategory.UNSPECIFIED
        ),
    )


# --- delete and drift (issue 13) -----------------------------------------------------------------

DELETE_REFUSED = "DeleteRefused"
"""Slots run the backend and ``force`` was not set; nothing was stopped or deleted."""

DELETE_FAILED = "DeleteFailed"
"""The node answered ``backend.delete`` with ``success:false`` (other than "not found")."""

DELETE_INCOMPLETE = "DeleteIncomplete"
"""After the delete the node still lists the backend or runs a slot of it."""

NODE_SILENT = "NodeSilent"
"""The node has responders but did not answer within the request timeout (retried)."""

REGISTRY_UNAVAILABLE = "RegistryUnavailable"
"""The node registry bucket cannot be read (no JetStream, permissions); retried."""

# --- the cold path: LoadModelWorkflow -------------------------------------------------------------

NODE_CANNOT_STORE_MODEL = "NodeCannotStoreModel"
"""The node has too little free space for the model's files; nothing was written."""

SOURCE_NOT_TRUSTED = "SourceNotTrusted"
"""A model file's source is not under a prefix the worker was configured to trust."""

STAGING_REFUSED = "StagingRefused"
"""The node refused a file for good: its token, a path outside its directories, a size."""

STAGING_FAILED = "StagingFailed"
"""A file could not be staged: its source or the node stayed unreachable. Retried (each
retry resumes), then fails the load."""

SOURCE_MISMATCH = "SourceMismatch"
"""A model file's source delivered other bytes than the load promised: more or fewer than
``size``, or content whose sha256 is not ``sha256``. Nothing is put in place; not retried."""

NO_FILES_ENDPOINT = "NoFilesEndpoint"
"""Nothing says where the node's file-transfer API listens (a stock worker needs
``files_url`` in the input)."""

LOAD_FAILED = "LoadFailed"
"""The backend answered ``LoadModel`` with ``success: false`` (its message is the text), or
stalled past the load's stall bound."""

LOAD_DEADLINE_EXCEEDED = "LoadDeadlineExceeded"
"""The load did not finish within its deadline."""


def root_application_error(err: BaseException) -> ApplicationError | None:
    """The innermost ``ApplicationError`` of a failure chain (an activity or child workflow
    failure wraps the one that says what happened), if any."""
    found: ApplicationError | None = None
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ApplicationError):
            found = cause
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return found


def root_message(err: BaseException) -> str:
    """The innermost failure's message: the node's words, not the wrappers' (an activity or
    child workflow failure wraps the ``ApplicationError`` that says what happened)."""
    found = root_application_error(err)
    return found.message if found is not None else str(err)
