"""Failure types of the install and probe activities, and how a node's error text maps to them.

One type per idea, the same names in code, the UI and the docs. The workflow routes on these
types; the retryable flag says whether trying again can help at all. :data:`FAILURE_TYPES` is
the catalogue of every type with its meaning; the documentation site's failure reference is
generated from it.
"""

from __future__ import annotations

from dataclasses import dataclass
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


# --- upgrades and node-level rollouts (issue 13) ----------------------------------------------

BACKEND_NOT_INSTALLED = "BackendNotInstalled"
"""The node does not list the backend: an upgrade is never sent to it (docs/protocol.md §6)."""

UPGRADE_NOT_APPLIED = "UpgradeNotApplied"
"""The node said success, but ``backend.list`` still shows the old version."""

SLOTS_NOT_RESTORED = "SlotsNotRestored"
"""A slot that ran before the upgrade did not come back healthy (the health gate)."""

ROLLBACK_UNAVAILABLE = "RollbackUnavailable"
"""Neither a kept previous version on the node nor a recorded previous uri."""

ROLLOUT_NODES_FAILED = "RolloutNodesFailed"
"""A node-level rollout (upgrade/delete) ended with failed nodes."""


@dataclass(frozen=True)
class FailureType:
    """One failure type: the ``type`` of the ``ApplicationError`` and what it means."""

    name: str
    """The string in the failure (``ApplicationError.type``), the UI and the logs."""
    meaning: str
    """What happened, in a sentence or two."""
    raised_by: str
    """Which workflows or activities raise it."""
    retried: str
    """Whether and by whom it is retried, or what happens next."""


FAILURE_TYPES: dict[str, FailureType] = {
    failure.name: failure
    for failure in (
        FailureType(
            INVALID_INPUT,
            "The workflow input is invalid (a bound, a token, a missing input); the message "
            "names each field and bound, never echoing the value. Nothing was written or sent.",
            "every workflow",
            "never: fix the input and start again",
        ),
        FailureType(
            WORKER_STILL_INSTALLING,
            "The node did not reply within the install timeout; it is probably still pulling. "
            "Benign: not a failure of the install.",
            "the install activity",
            "the workflow probes the node before anything is sent again",
        ),
        FailureType(
            NODE_UNREACHABLE,
            "No responders: nothing subscribes to the node's subject (the node is down, "
            "offline or does not exist).",
            "the install and upgrade activities, and the delete's node requests",
            "backs off 30 s doubling to 15 min, and probes before any re-send",
        ),
        FailureType(
            INSTALL_REJECTED,
            "The node answered `success:false` with a cause no retry can fix: an unknown "
            "backend, an integrity failure, a missing `run.sh`, a source the node does not "
            "trust. The message is the node's text.",
            "the install and upgrade activities",
            "never: the workflow fails at once",
        ),
        FailureType(
            INSTALL_FAILED,
            "The node answered `success:false` with a cause that may pass: a download failed, "
            "no free port, the backend was not ready in time.",
            "the install and upgrade activities, `await_install`",
            "after a probe, at most `max_failed_attempts` times (timeouts never count)",
        ),
        FailureType(
            INSTALL_CANCELLED,
            "The node reports that the op was cancelled, or the awaited install was cancelled.",
            "the install activity, `await_install`",
            "never",
        ),
        FailureType(
            INSTALL_DEADLINE_EXCEEDED,
            "The overall deadline (`deadline_seconds`) passed before the slot was running, or "
            "before an upgrade's re-pull finished; the failure carries the last progress.",
            "`InstallBackendWorkflow`, `UpgradeBackendWorkflow`",
            "never",
        ),
        FailureType(
            ROLLOUT_GONE,
            "A rollout's batch activity found the rollout no longer running (terminated); it "
            "cancelled the installs it had started.",
            "the `install_slots` activity",
            "never",
        ),
        FailureType(
            DELETE_REFUSED,
            "Slots run the backend and `force` was not set; the message names the slots. "
            "Nothing was stopped or deleted.",
            "`DeleteBackendWorkflow`",
            "never: stop the slots, or delete with `force`",
        ),
        FailureType(
            DELETE_FAILED,
            'The node answered `backend.delete` with `success:false` other than "not found" '
            "(which counts as already gone); the message is the node's text.",
            "the delete activity",
            "never",
        ),
        FailureType(
            DELETE_INCOMPLETE,
            "After the delete the node still lists the backend or runs a slot of it.",
            "`DeleteBackendWorkflow`",
            "never",
        ),
        FailureType(
            NODE_SILENT,
            "The node has responders but did not answer within the request timeout.",
            "the delete's node requests (inventory, stop, delete activities)",
            "retried by the activity's retry policy, then the workflow fails naming the node",
        ),
        FailureType(
            REGISTRY_UNAVAILABLE,
            "The node registry bucket (`backend-nodes`) cannot be read: the server has no "
            "JetStream, or the user may not read it.",
            "the `list_nodes` activity",
            "retried by the activity's retry policy",
        ),
        FailureType(
            BACKEND_NOT_INSTALLED,
            "The node does not list the backend, so an upgrade is never sent to it; in a "
            "rollout the node is `not_installed`, which is not a failure.",
            "`UpgradeBackendWorkflow`",
            "never",
        ),
        FailureType(
            UPGRADE_NOT_APPLIED,
            "The node replied success to the upgrade, but `backend.list` still shows the old "
            "install (or not the expected version, uri or digest).",
            "`UpgradeBackendWorkflow`",
            "never; in a rollout the node is failed and not rolled back (nothing changed)",
        ),
        FailureType(
            SLOTS_NOT_RESTORED,
            "A slot that ran before the upgrade did not come back healthy within "
            "`health_gate_seconds` (the health gate); the message names each slot.",
            "`UpgradeBackendWorkflow`",
            "never; in a rollout the gate fails: stop, and roll back when asked",
        ),
        FailureType(
            ROLLBACK_UNAVAILABLE,
            "Neither a previous version kept on the node nor a recorded previous uri: nothing "
            "to roll back to.",
            "the upgrade activity, for `UpgradeBackendWorkflow` with `rollback`",
            "never; shown in the rollout's rollback column",
        ),
        FailureType(
            ROLLOUT_NODES_FAILED,
            "A node-level rollout (upgrade or delete) ended with failed nodes; the message "
            "lists every failed node with its error and how many were rolled back.",
            "`RolloutBackendWorkflow` with `action` `upgrade` or `delete`",
            "never; `failure_policy: continue` reports the failures without failing",
        ),
        FailureType(
            NODE_CANNOT_STORE_MODEL,
            "The node's `files.space` answer leaves too little room for the model (its size "
            "plus 5 %, at least 1 GiB, beyond the node's reserve), a file is larger than the "
            "node takes, or the node ran out of room mid-upload (HTTP 507). Nothing was put "
            "in place.",
            "`LoadModelWorkflow` (before staging) and the staging activity",
            "never: free space on the node or load elsewhere",
        ),
        FailureType(
            SOURCE_NOT_TRUSTED,
            "A model file's `uri` is not under a prefix the worker trusts "
            "(`--allow-model-source`; none by default).",
            "the staging activity",
            "never: trust the prefix on the worker, or name another source",
        ),
        FailureType(
            SOURCE_MISMATCH,
            "A model file's source delivered other bytes than the load promised: more or "
            "fewer than `size`, or content whose sha256 is not `sha256`, or it answered "
            "404/403 or a redirect. Nothing was put in place.",
            "the staging activity",
            "never: fix the load's `files` or the source",
        ),
        FailureType(
            STAGING_REFUSED,
            "The node refused a file for good: the worker's files token (HTTP 401/403), a "
            "path outside its directories (400), a file too large (413), no file-transfer "
            "API at the address.",
            "the staging activity",
            "never: configure the token (`NODE_FILES_TOKEN`) or fix the path",
        ),
        FailureType(
            STAGING_FAILED,
            "A transfer broke (connection reset, a stall, the node busy) or the source was "
            "unreachable, and kept breaking.",
            "the staging activity",
            "up to 10 attempts, each resuming from what the node has committed",
        ),
        FailureType(
            NO_FILES_ENDPOINT,
            "Nothing says where the node takes files: it did not answer `files.space` with "
            "an address (a stock LocalAI worker, or an agent without `--files-token`).",
            "`LoadModelWorkflow`",
            "never: give the load `files_url`, or start the agent with a files token",
        ),
        FailureType(
            LOAD_FAILED,
            "The backend answered `LoadModel` with `success: false` (the message carries its "
            "reason), gave no answer, or stopped answering `Status` for `load_stall_seconds`.",
            "the load-model activity",
            "never: the load fails with the backend's words",
        ),
        FailureType(
            LOAD_DEADLINE_EXCEEDED,
            "The load did not finish within `deadline_seconds`; the message names the phase.",
            "`LoadModelWorkflow`",
            "never",
        ),
    )
}
"""Every failure type this project raises, by name: the generated failure reference."""


def root_message(err: BaseException) -> str:
    """The innermost failure's message: the node's words, not the wrappers' (an activity or
    child workflow failure wraps the ``ApplicationError`` that says what happened)."""
    found = root_application_error(err)
    return found.message if found is not None else str(err)
