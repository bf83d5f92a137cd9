"""Every workflow type and activity a worker runs, in one place.

``create_worker`` registers what is listed here, the replay test replays a history of every
workflow type listed here (and fails for one without), and a test that needs one activity
to behave differently replaces it by name (``create_worker(..., replace={NAME: fn})``)
instead of copying the list. The activities are built from the worker's shared parts: one
NATS connection, the op reply subscriptions the fast path hands to the install activity, and
the forwarding budget every follow of a node's progress shares.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from temporalio.common import VersioningBehavior

from activities.attach import await_install
from activities.budget import ForwardBudget
from activities.cancel import CancelActivities
from activities.fast_path import FastPathActivities
from activities.fleet import FleetActivities
from activities.following import Followers
from activities.install import InstallActivities
from activities.install_slots import install_slots
from activities.lifecycle import LifecycleActivities
from activities.loading import load_model
from activities.probe import ProbeActivities
from activities.replies import OpReplies
from activities.staging import StagingActivities, StagingConfig
from activities.upgrade import UpgradeActivities, check_slot_health
from durable_installs.contracts import names
from durable_installs.telemetry import InstallMetrics, Telemetry
from workflows.delete_backend import DeleteBackendWorkflow
from workflows.drift import DriftCheckWorkflow
from workflows.install_backend import InstallBackendWorkflow
from workflows.load_model import LoadModelWorkflow
from workflows.rollout import RolloutBackendWorkflow
from workflows.upgrade_backend import UpgradeBackendWorkflow

WORKFLOW_BEHAVIORS: dict[type[Any], VersioningBehavior] = {
    InstallBackendWorkflow: VersioningBehavior.PINNED,
    RolloutBackendWorkflow: VersioningBehavior.PINNED,
    UpgradeBackendWorkflow: VersioningBehavior.PINNED,
    DeleteBackendWorkflow: VersioningBehavior.PINNED,
    DriftCheckWorkflow: VersioningBehavior.PINNED,
    LoadModelWorkflow: VersioningBehavior.PINNED,
}
"""Every workflow type the worker runs, with its behavior on a versioned worker.

PINNED: an execution stays on the version that started it until it finishes (continue-as-new
included), so hours-long installs and rollouts never move to code they did not start on; see
the classes' docstrings. Declared here, not with ``@workflow.defn(versioning_behavior=...)``:
temporalio 1.35 sends a declared behavior with every workflow task, and the server refuses it
from an unversioned worker ("versioning behavior cannot be specified without deployment
options being set with versioned mode"), which would hang every workflow under
``--no-versioning`` and on the tests' unversioned workers. A versioned worker applies the
behavior as its default, one per worker, so every type listed here must share it.
"""

Activity = Callable[..., Any]


def activities(
    nc: NATS,
    telemetry: Telemetry,
    budget: ForwardBudget,
    staging: StagingConfig | None = None,
) -> dict[str, Activity]:
    """Every activity by its registered name, built on the worker's shared parts.

    ``staging`` says which model sources the worker trusts and the nodes' file-transfer
    token; without it every source is refused (closed by default).
    """
    replies = OpReplies(nc)  # the fast path hands each op's reply over to the install activity
    followers = Followers(nc, budget, InstallMetrics(telemetry.meter()))
    install = InstallActivities(nc, telemetry, replies, followers)
    fast = FastPathActivities(nc, telemetry, replies)
    cancel = CancelActivities(nc, replies)
    probe = ProbeActivities(nc, telemetry)
    upgrade = UpgradeActivities(nc, followers)
    lifecycle = LifecycleActivities(nc, telemetry)
    fleet = FleetActivities(nc, telemetry)
    files = StagingActivities(nc, staging or StagingConfig())
    return {
        names.INSTALL_ACTIVITY: install.install_backend,
        names.FAST_INSTALL_ACTIVITY: fast.install_backend_fast,
        names.CANCEL_OP_ACTIVITY: cancel.cancel_op,
        names.PROBE_ACTIVITY: probe.probe_slot,
        names.ATTACH_ACTIVITY: await_install,
        names.INSTALL_SLOTS_ACTIVITY: install_slots,
        names.UPGRADE_ACTIVITY: upgrade.upgrade_backend,
        names.INSPECT_BACKEND_ACTIVITY: upgrade.inspect_backend,
        names.DROP_PREVIOUS_ACTIVITY: upgrade.drop_previous_version,
        names.CHECK_HEALTH_ACTIVITY: check_slot_health,
        names.NODE_INVENTORY_ACTIVITY: lifecycle.node_inventory,
        names.STOP_BACKEND_ACTIVITY: lifecycle.stop_backend,
        names.DELETE_ACTIVITY: lifecycle.delete_backend,
        names.LIST_NODES_ACTIVITY: fleet.list_nodes,
        names.CHECK_DRIFT_ACTIVITY: fleet.check_drift,
        names.NODE_FILES_ACTIVITY: files.node_files,
        names.STAGE_FILE_ACTIVITY: files.stage_model_file,
        names.LOAD_MODEL_ACTIVITY: load_model,
    }
