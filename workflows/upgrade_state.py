"""What an upgrade knows, and every decision it makes that needs no Temporal call.

``UpgradeBackendWorkflow`` is split like the install: this module is the core (the status the
``progress`` query returns, what a failed request or an inspection decides next, the
verification that the new install is there, which slots come back and whether they did, the
result and the failures), and ``workflows/upgrade_backend.py`` is the shell that calls
activities and child workflows, sleeps and upserts. The core takes the time as an argument
and calls nothing of ``temporalio`` but its exception types, so the sandbox passes it through
(imported once per worker) and tests check its decisions without a server
(``tests/workflows/test_upgrade_state.py``).
"""

from datetime import datetime, timedelta
from typing import Any

from temporalio.common import SearchAttributeUpdate
from temporalio.exceptions import ApplicationError, TimeoutError

from durable_installs.contracts.activities import InstallProgress, progress_from_details
from durable_installs.contracts.failures import (
    INSTALL_DEADLINE_EXCEEDED,
    INSTALL_FAILED,
    NODE_UNREACHABLE,
    WORKER_STILL_INSTALLING,
)
from durable_installs.contracts.search_attributes import BACKEND_NAME, NODE_ID, ROLLOUT_ID
from durable_installs.contracts.upgrade import (
    BACKEND_NOT_INSTALLED,
    MAX_UPGRADE_SLOTS,
    SLOTS_NOT_RESTORED,
    UPGRADE_NOT_APPLIED,
    BackendVersion,
    HealthCheckResult,
    InspectBackendResult,
    SlotRef,
    UpgradeActivityInput,
    UpgradeActivityResult,
    UpgradeBackendInput,
    UpgradeBackendResult,
    UpgradePhase,
    UpgradeStatus,
)
from workflows.install_steps import backoff_seconds
from workflows.upgrade_steps import NextStep, upgrade_activity_input, upgrade_op_id, verb

DETAIL_SLOTS = 20
"""Slots listed in the UI's current details; a node's ports bound them far lower anyway."""

MAX_FAILED_SLOTS_NAMED = 5
"""Unhealthy slots a ``SlotsNotRestored`` message names; the count says how many there are."""


def stand_in_input() -> UpgradeBackendInput:
    """What an invalid upgrade runs its status with: no field of the invalid input is used,
    so nothing can overflow or be NaN on the way to the failure."""
    return UpgradeBackendInput(node_id="", backend="")


class UpgradeState:
    """The status of one upgrade and the counters that decide its next step."""

    def __init__(self, input: UpgradeBackendInput, workflow_id: str, now: datetime) -> None:
        self.input = input
        self.op_id = input.op_id or upgrade_op_id(workflow_id)
        self.status = UpgradeStatus(
            node_id=input.node_id, backend=input.backend, rollback=input.rollback
        )
        self.deadline = now + timedelta(seconds=input.deadline_seconds)
        self.backoff_streak = 0
        """Inspections and requests in a row that found the node silent: the back-off doubles
        with each, and starts over once the node answers."""

    def identity(self) -> list[SearchAttributeUpdate[Any]]:
        """The search attributes that say whose upgrade this is."""
        attributes = [
            NODE_ID.value_set(self.input.node_id),
            BACKEND_NAME.value_set(self.input.backend),
        ]
        if self.input.rollout_id:
            attributes.append(ROLLOUT_ID.value_set(self.input.rollout_id))
        return attributes

    # --- progress and time ---------------------------------------------------------------------

    def record_progress(self, report: InstallProgress) -> bool:
        """Keep the newest progress event of this upgrade's op; whether it was kept (another
        op's report, or an older one overtaken by a newer one, is dropped)."""
        current = self.status.progress
        if report.op_id != self.op_id:
            return False
        if current is not None and report.event_count < current.event_count:
            return False
        self.status.progress = report
        return True

    def remaining_seconds(self, now: datetime) -> float:
        """Time left before the deadline (negative once it has passed)."""
        return (self.deadline - now).total_seconds()

    def sleep_seconds(self, seconds: float, now: datetime) -> float:
        """A wait of ``seconds`` that never runs past the deadline (and is never zero)."""
        return max(min(seconds, self.remaining_seconds(now)), 0.001)

    def backoff_seconds(self) -> float:
        """The wait before the next try: doubling with the streak of silent answers, capped."""
        return backoff_seconds(self.input, self.backoff_streak)

    def past_deadline(self, now: datetime) -> bool:
        """Whether the re-pull has run out of time: the next step fails it."""
        return now >= self.deadline

    def deadline_error(self) -> ApplicationError:
        """The failure of an upgrade whose deadline passed, with the last error it met."""
        return ApplicationError(
            f"upgrade of {self.input.backend} on node {self.input.node_id} did not finish "
            f"within {self.input.deadline_seconds:g}s; last error: "
            f"{self.status.error or 'none'}",
            type=INSTALL_DEADLINE_EXCEEDED,
            non_retryable=True,
        )

    def node_silent(self) -> None:
        """Record that an inspection found the node silent (the caller backs off)."""
        self.status.error = f"node {self.input.node_id} does not answer backend.list"

    # --- the re-pull ---------------------------------------------------------------------------

    def inspected_before(self, before: InspectBackendResult) -> None:
        """Record the version before; an upgrade is only sent to a node that lists the backend
        (reference §6), a rollback also to one that lost it."""
        self.status.before = before.version
        if not self.input.rollback and not before.version.listed:
            raise ApplicationError(
                f'backend "{self.input.backend}" is not installed on node {self.input.node_id}; '
                "an upgrade is only sent to nodes that list the backend",
                type=BACKEND_NOT_INSTALLED,
                non_retryable=True,
            )

    def next_request(self, now: datetime) -> UpgradeActivityInput:
        """Count one more request and return what it sends (the same op id every time)."""
        self.status.requests += 1
        return upgrade_activity_input(self.input, self.op_id, self.remaining_seconds(now))

    def replied(self, reply: UpgradeActivityResult) -> None:
        """Record the node's ``success:true``: how it was reached and its last progress."""
        self.status.used_install_fallback = reply.used_install_fallback
        if reply.progress is not None:
            self.status.progress = reply.progress

    def after_failed_send(self, cause: BaseException | None, err: BaseException) -> NextStep:
        """The next step after a failed request, given the failure's cause.

        A timeout means the worker running the activity died through every retry while the
        node may well be upgrading: the phase becomes ``still_upgrading`` (the caller
        publishes it) and the node is inspected before anything is sent again, as it is when
        the node itself says it is still working. A node that did not answer is backed off
        from, then inspected. Anything else the node said is final and fails the upgrade
        with its type.
        """
        if isinstance(cause, TimeoutError):
            self.status.phase = UpgradePhase.STILL_UPGRADING
            return NextStep.PROBE
        if not isinstance(cause, ApplicationError):
            raise ApplicationError(str(cause or err), type=INSTALL_FAILED, non_retryable=True)
        progress = progress_from_details(cause.details)
        if progress is not None:
            self.status.progress = progress
        self.status.error = cause.message
        if cause.type == WORKER_STILL_INSTALLING:
            return NextStep.PROBE
        if cause.type == NODE_UNREACHABLE:
            self.backoff_streak += 1
            return NextStep.BACK_OFF
        raise ApplicationError(
            cause.message, type=cause.type or INSTALL_FAILED, non_retryable=True
        ) from err

    def after_probe(self, probe: InspectBackendResult, before: BackendVersion) -> NextStep:
        """The inspection decision table: what the node has decides what is sent next.

        Silent: back off. Still working on the op: wait. The new install listed: verify it
        (its reply was lost). Otherwise the upgrade did not happen: send it again.
        """
        if not probe.reachable:
            self.backoff_streak += 1
            return NextStep.BACK_OFF
        self.backoff_streak = 0
        if probe.upgrade_in_flight:
            return NextStep.WAIT
        if self.applied(before, probe.version):
            return NextStep.VERIFY
        return NextStep.SEND

    def applied(self, before: BackendVersion, after: BackendVersion) -> bool:
        """Whether ``after`` is the install the upgrade (or rollback) was meant to produce:
        the expected version/uri/digest when given, else anything but the install before."""
        if not after.listed:
            return False
        expected = self.input.expected()
        if expected:
            return all(getattr(after, field) == value for field, value in expected.items())
        return not after.same_install(before)

    def verify(self, before: BackendVersion, after: BackendVersion) -> None:
        """Record the version after; a node that said success but lists anything else fails
        the upgrade with ``UpgradeNotApplied``: success is checked, never assumed."""
        self.status.after = after
        if self.applied(before, after):
            return
        input = self.input
        wanted = ", ".join(f"{k} {v}" for k, v in input.expected().items()) or "a new install"
        raise ApplicationError(
            f"node {input.node_id} replied success to the {verb(input)} of {input.backend}, "
            f"but backend.list shows {after.describe()} (before: {before.describe()}; expected "
            f"{wanted}): the {verb(input)} did not take effect",
            type=UPGRADE_NOT_APPLIED,
            non_retryable=True,
        )

    # --- the slots -----------------------------------------------------------------------------

    def slots_to_restore(
        self,
        before: InspectBackendResult,
        after: InspectBackendResult,
        reply: UpgradeActivityResult | None,
    ) -> list[SlotRef]:
        """Slots that ran the backend before: inspected, the keys the node says it stopped,
        and those the caller names (a rollback names the slots that ran before the upgrade).

        A stock worker does not say which backend a slot runs: then the slots running before
        and gone after are the ones this upgrade stopped.
        """
        backend = self.input.backend
        extra = list(self.input.restore_slots)
        if not before.slots_known:
            extra += [
                SlotRef.from_process_key(f"{s.model_id}#{s.replica_index}", backend) or s
                for s in before.running
                if s not in after.running
            ]
        slots = dict.fromkeys([*before.slots, *extra])
        for key in reply.stopped_process_keys if reply else []:
            slot = SlotRef.from_process_key(key, backend)
            if slot is not None:
                slots.setdefault(slot)
        return list(slots)[:MAX_UPGRADE_SLOTS]

    def record_health(self, health: HealthCheckResult) -> None:
        """Mark each slot brought back healthy or not by its gRPC ``Health`` answer."""
        for outcome in self.status.slots:
            outcome.healthy = health.healthy.get(outcome.address, False)
            if outcome.address and not outcome.healthy:
                outcome.error = f"{outcome.address} does not answer gRPC Health with OK"

    def unhealthy_error(self) -> ApplicationError | None:
        """``SlotsNotRestored`` naming the slots that did not come back healthy, or None."""
        outcomes = self.status.slots
        failed = [o for o in outcomes if not o.healthy]
        if not failed:
            return None
        listed = "; ".join(
            f"{o.model_id or '-'}#{o.replica_index}: {o.error}"
            for o in failed[:MAX_FAILED_SLOTS_NAMED]
        )
        return ApplicationError(
            f"{len(failed)} of {len(outcomes)} slot(s) of {self.input.backend} on node "
            f"{self.input.node_id} did not come back healthy: {listed}",
            type=SLOTS_NOT_RESTORED,
            non_retryable=True,
        )

    # --- outcomes ------------------------------------------------------------------------------

    @property
    def drops_previous(self) -> bool:
        """Whether the node forgets the replaced version at the end: not when a rollout
        keeps it for a rollback, and not after a rollback itself."""
        return not self.input.keep_previous and not self.input.rollback

    def result(
        self,
        before: InspectBackendResult,
        after: InspectBackendResult,
        reply: UpgradeActivityResult | None,
    ) -> UpgradeBackendResult:
        """What the workflow returns once the new install is verified and its slots are back."""
        return UpgradeBackendResult(
            node_id=self.input.node_id,
            backend=self.input.backend,
            op_id=self.op_id,
            rollback=self.input.rollback,
            before=before.version,
            after=after.version,
            stopped_process_keys=reply.stopped_process_keys if reply else [],
            slots=self.status.slots,
            requests=self.status.requests,
            probes=self.status.probes,
            used_install_fallback=self.status.used_install_fallback,
        )

    def failed(self, err: ApplicationError) -> ApplicationError:
        """Record the failure; the failure to end with carries the status as its details, so
        a rollout's table shows the version before and what the node said without querying a
        closed workflow."""
        self.status.error = err.message
        self.status.phase = UpgradePhase.FAILED
        return ApplicationError(err.message, self.status, type=err.type, non_retryable=True)


def details_markdown(status: UpgradeStatus) -> str:
    """The workflow's current details: phase and counters, versions, progress, every slot."""
    verb = "Rollback" if status.rollback else "Upgrade"
    lines = [
        f"**{verb} of `{status.backend}` on `{status.node_id}`** · {status.phase.value} · "
        f"requests {status.requests} · probes {status.probes}",
        "",
        f"before: {status.before.describe()}",
        f"after: {status.after.describe() if status.after.listed else '-'}",
    ]
    if status.progress is not None and status.progress.last_event is not None:
        event = status.progress.last_event
        lines.append(f"progress: {event.file_name} {event.percentage:.1f}%")
    if status.error:
        lines.append(f"last error: {status.error[:300]}")
    for slot in status.slots[:DETAIL_SLOTS]:
        state = "healthy" if slot.healthy else (slot.error[:120] or "pending")
        lines.append(f"- {slot.model_id or '-'}#{slot.replica_index}: {slot.address} {state}")
    return "\n".join(lines)
