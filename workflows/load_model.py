"""``LoadModelWorkflow``: one slot's model, from "backend installed" to "loaded and answering".

LocalAI's cold load (install the backend, stage the model's files to the node, ``LoadModel``
over gRPC) is where its users hurt: its releases since v4.5 fix staging detached from the
request, staging progress across replicas, cancels that survive restarts, stalled and stale
partial uploads, a load deadline that scales with the checkpoint, and finally a home-made
durable job table with heartbeats and orphan windows in PostgreSQL. Here each of those is
what a Temporal workflow gives by construction:

1. **installing**: the slot's ``InstallBackendWorkflow`` (same workflow id as every other
   requester's, started as a child or joined when it runs: never a second install);
2. **staging**: the node's free space is checked first (nothing written to a node that cannot
   hold the model), then each file goes over LocalAI's file-transfer API, skipped when the
   node has it with the right hash, resumed from the node's committed size after any crash;
3. **loading**: ``LoadModel`` on the slot's backend with the staged paths, its deadline
   scaled by the model's size and a stall caught by the backend reporting no progress;
4. **ready**: the address, each file's node-local path and hash, the bytes sent, the time
   per phase.

This module is the shell (children, activities, upserts); the core is
``workflows/load_state.py``, the steps ``workflows/load_steps.py``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    WorkflowAlreadyStartedError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    import pydantic

    from durable_installs.contracts.failures import (
        LOAD_FAILED,
        root_application_error,
    )
    from durable_installs.contracts.install import (
        InstallBackendResult,
        install_workflow_id,
    )
    from durable_installs.contracts.load import (
        MINIMAL_LOAD_INPUT,
        LoadModelActivityResult,
        LoadModelInput,
        LoadModelResult,
        LoadPhase,
        LoadStatus,
        NodeFiles,
        NodeFilesInput,
        StageFileResult,
    )
    from durable_installs.contracts.names import (
        ATTACH_ACTIVITY,
        INSTALL_WORKFLOW,
        LOAD_MODEL_ACTIVITY,
        LOAD_STATUS_QUERY,
        LOAD_WORKFLOW,
        NODE_FILES_ACTIVITY,
        STAGE_FILE_ACTIVITY,
    )
    from durable_installs.contracts.search_attributes import (
        BACKEND_NAME,
        LOAD_PHASE,
        MODEL_ID,
        NODE_ID,
        ROLLOUT_ID,
    )
    from workflows.inputs import check_input
    from workflows.load_state import LoadState
    from workflows.load_steps import (
        ACTIVITY_MARGIN,
        LOAD_RETRY,
        SHORT_RETRY,
        SHORT_TIMEOUT,
        STAGE_RETRY,
        load_input,
        stage_input,
    )


@workflow.defn(name=LOAD_WORKFLOW, failure_exception_types=[pydantic.ValidationError])
class LoadModelWorkflow:
    """Load a model into one slot on one node, durably; the result says where it answers.

    Runs PINNED on a versioned worker, like the install: a multi-GB staging finishes on the
    worker version that started it.
    """

    @workflow.init
    def __init__(self, input: LoadModelInput | None = None) -> None:
        """Validate first: nothing below may see a value out of bounds."""
        self._checked = check_input(input, MINIMAL_LOAD_INPUT)
        input = self._checked.input or LoadModelInput(node_id="", backend="", model_id="")
        self._input = input
        self._state = LoadState(input, workflow.now())

    @workflow.run
    async def run(self, input: LoadModelInput | None = None) -> LoadModelResult:
        """Install (or join), stage, load; every step bounded by the deadline."""
        if self._checked.invalid:
            self._state.status.last_error = self._checked.invalid
            self._state.status.phase = LoadPhase.FAILED
            raise self._checked.failure()
        input = self._input
        attributes = [
            NODE_ID.value_set(input.node_id),
            BACKEND_NAME.value_set(input.backend),
            MODEL_ID.value_set(input.model_id),
        ]
        if input.rollout_id:
            attributes.append(ROLLOUT_ID.value_set(input.rollout_id))
        workflow.upsert_search_attributes(attributes)
        try:
            self._phase(LoadPhase.INSTALLING)
            self._state.installed(await self._install())
            self._phase(LoadPhase.STAGING)
            files_url = await self._node_files()
            for position in range(len(input.files)):
                await self._stage(position, files_url)
            self._phase(LoadPhase.LOADING)
            loaded = await self._load()
            result = self._state.result(workflow.now(), loaded)
            self._upsert_phase(LoadPhase.READY)
            self._publish()
            return result
        except (ActivityError, ChildWorkflowError) as err:
            self._ended(err)
            if is_cancelled_exception(err):
                raise
            raise self._failure(err) from err
        except BaseException as err:
            self._ended(err)
            raise

    @workflow.query(name=LOAD_STATUS_QUERY)
    def progress(self) -> LoadStatus:
        """Phase, each file's state, the address, the time per phase, the last error."""
        return self._state.status

    # --- the steps -----------------------------------------------------------------------------

    async def _install(self) -> str:
        """The slot's install: started as a child, or joined when another requester's runs."""
        input = self._input
        install = input.install_input()
        workflow_id = install_workflow_id(
            input.node_id, input.backend, input.model_id, input.replica_index
        )
        self._state.status.install_workflow_id = workflow_id
        self._publish()
        try:
            result: InstallBackendResult = await workflow.execute_child_workflow(
                INSTALL_WORKFLOW,
                install,
                id=workflow_id,
                result_type=InstallBackendResult,
                parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                static_summary=f"install {input.backend} for {input.slot} (load of "
                f"{input.model_id})",
            )
        except WorkflowAlreadyStartedError:
            result = await workflow.execute_activity(
                ATTACH_ACTIVITY,
                workflow_id,
                result_type=InstallBackendResult,
                start_to_close_timeout=self._state.remaining(workflow.now()) + ACTIVITY_MARGIN,
                heartbeat_timeout=timedelta(seconds=30),
                summary=f"wait for the running install of {input.slot}",
            )
        return result.address

    async def _node_files(self) -> str:
        """The node's free space (nothing written to a node that cannot hold the model) and
        where it takes files."""
        node = await workflow.execute_activity(
            NODE_FILES_ACTIVITY,
            NodeFilesInput(node_id=self._input.node_id),
            result_type=NodeFiles,
            start_to_close_timeout=SHORT_TIMEOUT,
            retry_policy=SHORT_RETRY,
            summary=f"can {self._input.node_id} store {self._input.model_id}",
        )
        problem = self._state.space_problem(node)
        if problem is not None:
            raise problem
        return self._state.files_url(node)

    async def _stage(self, position: int, files_url: str) -> None:
        input = self._input
        file = input.files[position]
        self._state.sending(position)
        self._publish()
        result: StageFileResult = await workflow.execute_activity(
            STAGE_FILE_ACTIVITY,
            stage_input(input, position, files_url),
            result_type=StageFileResult,
            start_to_close_timeout=self._state.remaining(workflow.now()) + ACTIVITY_MARGIN,
            heartbeat_timeout=timedelta(seconds=input.heartbeat_timeout_seconds),
            retry_policy=STAGE_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"stage {file.path} to {input.node_id}",
        )
        self._state.staged(position, result)
        self._publish()

    async def _load(self) -> LoadModelActivityResult:
        input = self._input
        state = self._state
        activity_input = load_input(
            input,
            state.status.address,
            state.model_path(),
            state.total_bytes(),
            all_present=state.all_present(),
        )
        loaded: LoadModelActivityResult = await workflow.execute_activity(
            LOAD_MODEL_ACTIVITY,
            activity_input,
            result_type=LoadModelActivityResult,
            start_to_close_timeout=timedelta(seconds=activity_input.timeout_seconds)
            + ACTIVITY_MARGIN,
            heartbeat_timeout=timedelta(seconds=input.heartbeat_timeout_seconds),
            retry_policy=LOAD_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"LoadModel {state.model_path()} on {state.status.address}",
        )
        return loaded

    def _failure(self, err: BaseException) -> ApplicationError:
        """The load's own failure for a step's: the step's type and words (``LoadFailed``,
        ``NodeCannotStoreModel``, ``StagingFailed``, ...), or the deadline's."""
        if workflow.now() >= self._state.deadline:
            return self._state.deadline_error()
        cause = root_application_error(err)
        if cause is None:
            return ApplicationError(str(err), type=LOAD_FAILED, non_retryable=True)
        return ApplicationError(cause.message, type=cause.type or LOAD_FAILED, non_retryable=True)

    # --- effects of the state ------------------------------------------------------------------

    def _ended(self, err: BaseException) -> None:
        """The phase of a load that ends with ``err``: cancelled or failed."""
        if isinstance(err, asyncio.CancelledError) or (
            isinstance(err, (ActivityError, ChildWorkflowError)) and is_cancelled_exception(err)
        ):
            self._state.status.last_error = "cancelled"
            self._phase(LoadPhase.CANCELLED)
            return
        cause = root_application_error(err)
        self._state.status.last_error = cause.message if cause else str(err)
        self._phase(LoadPhase.FAILED)

    def _phase(self, phase: LoadPhase) -> None:
        self._state.enter(phase, workflow.now())
        self._upsert_phase(phase)
        self._publish()

    def _upsert_phase(self, phase: LoadPhase) -> None:
        workflow.upsert_search_attributes([LOAD_PHASE.value_set(phase.value)])

    def _publish(self) -> None:
        workflow.set_current_details(self._state.details(workflow.info().workflow_id))
