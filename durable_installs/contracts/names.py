"""Every name that crosses a process boundary: workflow, activity, signal, query and update names.

Clients, workers and other teams' workflows refer to these by string (the Temporal CLI, the web
UI, ``start_workflow("InstallBackendWorkflow", ...)``), so they are the public contract and never
change once deployed. Code refers to them through these constants only.
"""

from __future__ import annotations

DEFAULT_TASK_QUEUE = "backend-install"
"""The task queue the worker polls unless told otherwise."""

# --- workflow types ------------------------------------------------------------------------------

INSTALL_WORKFLOW = "InstallBackendWorkflow"
"""One slot on one node, installed durably; returns the address of the running process."""

ROLLOUT_WORKFLOW = "RolloutBackendWorkflow"
"""One backend across many slots, with bounded parallelism and a failure policy."""

# --- activity types ------------------------------------------------------------------------------

INSTALL_ACTIVITY = "install_backend"
"""Sends one ``backend.install`` and forwards its progress as heartbeats."""

FAST_INSTALL_ACTIVITY = "install_backend_fast"
"""The warm path, run as a local activity in the install's first workflow task: one
``backend.install`` with a short bound; anything but an immediate reply falls through to
:data:`INSTALL_ACTIVITY` with the same op id."""

CANCEL_OP_ACTIVITY = "cancel_op"
"""Tells a node to stop an op (the node agent's ``.cancel`` extension), run by an install
workflow as a local activity the moment it is cancelled."""

PROBE_ACTIVITY = "probe_slot"
"""Asks a node what it knows about one slot (the idempotency probe)."""

ATTACH_ACTIVITY = "await_install"
"""Waits for an install workflow that someone else started."""

INSTALL_SLOTS_ACTIVITY = "install_slots"
"""Starts one batch of a rollout's installs and waits for them."""

# --- signals, queries, updates -------------------------------------------------------------------

PROGRESS_SIGNAL = "report_progress"
"""Install workflow: :class:`contracts.activities.InstallProgress` from the install activity."""

PROGRESS_QUERY = "progress"
"""Install workflow: :class:`contracts.install.InstallStatus`, the install as a person sees it."""

SLOT_STATE_SIGNAL = "slot_state_changed"
"""Rollout: a list of :class:`contracts.rollout.SlotReport`, from installs (installing ↔ still
installing) and from the ``install_slots`` activity as slots finish."""

SLOTS_STARTED_SIGNAL = "slots_started"
"""Rollout: :class:`contracts.rollout.SlotsStarted`, which slots of a batch the rollout owns."""

ROLLOUT_STATUS_QUERY = "status"
"""Rollout: :class:`contracts.rollout.RolloutStatus`, every slot's state."""

ADD_TARGETS_UPDATE = "add_targets"
"""Rollout: add targets to a running rollout; returns what was added."""

CANCEL_ROLLOUT_SIGNAL = "cancel_rollout"
"""Rollout: start no new slot, cancel the installs in flight, report the rest."""

# --- issue 13, upgrade (Helper B) ---------------------------------------------------------------

UPGRADE_WORKFLOW = "UpgradeBackendWorkflow"
"""One backend on one node: re-pulled, verified by ``backend.list``, its slots running again."""

UPGRADE_ACTIVITY = "upgrade_backend"
"""Sends one ``backend.upgrade`` (or ``backend.rollback``) and forwards its progress."""

INSPECT_BACKEND_ACTIVITY = "inspect_backend"
"""Asks a node for its ``backend.list`` row of a backend and the slots running it."""

CHECK_HEALTH_ACTIVITY = "check_slot_health"
"""gRPC ``Health`` of backend processes at their routable addresses."""

DROP_PREVIOUS_ACTIVITY = "drop_previous_version"
"""Tells a node agent to forget the version it kept for a rollback (the rollout is over)."""

UPGRADE_STATUS_QUERY = "progress"
"""Upgrade workflow: :class:`contracts.upgrade.UpgradeStatus`."""

# --- issue 13, fleet: node registry, delete, drift ------------------------------------------------

LIST_NODES_ACTIVITY = "list_nodes"
"""Reads the node registry bucket; returns a :class:`contracts.nodes.FleetView`."""

DELETE_WORKFLOW = "DeleteBackendWorkflow"
"""Removes one backend from one node, refusing while slots run it unless forced."""

DELETE_PROGRESS_QUERY = "progress"
"""Delete workflow: its :class:`contracts.lifecycle.DeletePhase`, as a string."""

DRIFT_WORKFLOW = "DriftCheckWorkflow"
"""Compares the fleet's installed backends with the gallery; optionally starts upgrades."""

DRIFT_REPORT_QUERY = "report"
"""Drift workflow: its :class:`contracts.drift.DriftReport` once the check has run, else null."""

CHECK_DRIFT_ACTIVITY = "check_drift"
"""One node's ``backend.list`` compared with the gallery's current entries."""

DELETE_ACTIVITY = "delete_backend"
"""Sends ``backend.delete`` to one node."""

STOP_BACKEND_ACTIVITY = "stop_backend"
"""Publishes ``backend.stop`` for one backend's processes on one node."""

NODE_INVENTORY_ACTIVITY = "node_inventory"
"""One node's ``backend.list`` and ``models.running``, as a :class:`NodeInventory`."""

# --- the cold path: LoadModelWorkflow -------------------------------------------------------------

LOAD_WORKFLOW = "LoadModelWorkflow"
"""One slot's model: backend installed (or joined), files staged to the node, model loaded."""

LOAD_STATUS_QUERY = "progress"
"""Load workflow: :class:`contracts.load.LoadStatus`, per phase and per file."""

NODE_FILES_ACTIVITY = "node_files"
"""The node's ``files.space`` answer: free space for model files and where its file-transfer
API listens (:class:`contracts.load.NodeFiles`)."""

STAGE_FILE_ACTIVITY = "stage_model_file"
"""Puts one model file on a node over its file-transfer API, resuming, heartbeating."""

LOAD_MODEL_ACTIVITY = "load_model"
"""``LoadModel`` on the slot's backend process, its deadline scaled by the model's size."""
