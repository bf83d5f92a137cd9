"""What a load knows, and every decision it makes that needs no Temporal call.

``LoadModelWorkflow`` follows the install's pattern: ``workflows/load_model.py`` is the
shell (the install child, the activities, the upserts), this module the core (the status
the ``progress`` query returns, the time per phase, the space decision, which staged file
the backend loads, the result), ``workflows/load_steps.py`` the steps' inputs and timeouts.
The time comes in as an argument; nothing here reads a clock, randomness or the
environment (``tests/test_architecture.py`` checks), so the sandbox passes it through and
tests check it without a server.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import (
    LOAD_DEADLINE_EXCEEDED,
    NO_FILES_ENDPOINT,
    NODE_CANNOT_STORE_MODEL,
)
from durable_installs.contracts.load import (
    FileState,
    FileStatus,
    LoadModelActivityResult,
    LoadModelInput,
    LoadModelResult,
    LoadPhase,
    LoadStatus,
    NodeFiles,
    StageFileResult,
)
from durable_installs.protocol.headroom import disk_requirement_for

TIMED_PHASES = (LoadPhase.INSTALLING, LoadPhase.STAGING, LoadPhase.LOADING)


def _gib(size: int) -> str:
    return f"{size / 2**30:.2f} GiB"


class LoadState:
    """The status of one load and the time it has spent in each phase."""

    def __init__(self, input: LoadModelInput, now: datetime) -> None:
        self.input = input
        self.deadline = now + timedelta(seconds=input.deadline_seconds)
        self._phase_since = now
        self.status = LoadStatus(
            node_id=input.node_id,
            backend=input.backend,
            model_id=input.model_id,
            replica_index=input.replica_index,
            slot=input.slot,
            files=[FileStatus(path=f.path, sha256=f.sha256, size=f.size) for f in input.files],
            started_at=now,
            updated_at=now,
        )

    def enter(self, phase: LoadPhase, now: datetime) -> None:
        """Record ``phase``; the time since the last phase change goes to the one it ends."""
        ending = self.status.phase
        if ending in TIMED_PHASES:
            seconds = (now - self._phase_since).total_seconds()
            self.status.phase_seconds[ending.value] = (
                self.status.phase_seconds.get(ending.value, 0.0) + seconds
            )
        self._phase_since = now
        self.status.phase = phase
        self.status.updated_at = now

    def remaining(self, now: datetime) -> timedelta:
        return self.deadline - now

    def installed(self, address: str) -> None:
        self.status.address = address

    # --- staging -------------------------------------------------------------------------------

    def needed_bytes(self) -> int:
        """Free bytes the node must have: LocalAI's rule (the model's size plus 5 %, at least
        1 GiB; 2 GiB when no size is known). A file already present takes none, but that is
        known only after asking; the check errs on the side of room, as LocalAI's does."""
        return disk_requirement_for(self.input.total_bytes)

    def space_problem(self, node: NodeFiles) -> ApplicationError | None:
        """A node that cannot store the model is refused before anything is written.

        A node that does not answer the extension (a stock LocalAI worker), or cannot tell
        its disk, is staged to without a check, as LocalAI itself does.
        """
        needed = self.needed_bytes()
        usable = max(node.available_disk - node.reserved_disk, 0)
        if not node.known or node.total_disk == 0 or usable >= needed:
            largest = max((f.size or 0 for f in self.input.files), default=0)
            if node.known and node.max_file_size and largest > node.max_file_size:
                return ApplicationError(
                    f"node {self.input.node_id} takes files of at most "
                    f"{_gib(node.max_file_size)}; the model of {self.input.slot} has one of "
                    f"{_gib(largest)}; nothing was written",
                    type=NODE_CANNOT_STORE_MODEL,
                    non_retryable=True,
                )
            return None
        return ApplicationError(
            f"node {self.input.node_id} cannot store the model of {self.input.slot}: it needs "
            f"{_gib(needed)} free, the node has {_gib(usable)} beyond its reserve of "
            f"{_gib(node.reserved_disk)}; nothing was written",
            type=NODE_CANNOT_STORE_MODEL,
            non_retryable=True,
        )

    def files_url(self, node: NodeFiles) -> str:
        """Where to send files: the load's ``files_url``, else what the node answered."""
        url = self.input.files_url or node.files_url
        if url:
            return url
        raise ApplicationError(
            f"nothing says where node {self.input.node_id} takes files: it did not answer "
            "files.space with an address (a stock LocalAI worker, or a node agent without "
            "--files-token); give the load files_url",
            type=NO_FILES_ENDPOINT,
            non_retryable=True,
        )

    def sending(self, position: int) -> None:
        self.status.files[position].state = FileState.SENDING

    def staged(self, position: int, result: StageFileResult) -> None:
        """One file is on the node with the right hash."""
        file = self.status.files[position]
        file.state = FileState.PRESENT if result.present else FileState.STAGED
        file.size = result.size
        file.committed = result.size
        file.bytes_sent += result.bytes_sent
        file.local_path = result.local_path

    def model_path(self) -> str:
        """The node-local path the backend loads: ``load_options.model``'s file, else the
        first file's."""
        wanted = self.input.load_options.model or self.input.files[0].path
        for file in self.status.files:
            if file.path == wanted:
                return file.local_path
        return wanted  # a path the load names that is not one of its files: the node's own

    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.status.files)

    def all_present(self) -> bool:
        """Every file was on the node already: nothing was sent."""
        return all(f.state is FileState.PRESENT for f in self.status.files)

    # --- outcomes ------------------------------------------------------------------------------

    def result(self, now: datetime, loaded: LoadModelActivityResult) -> LoadModelResult:
        message = loaded.message
        self.status.load_message = message
        self.enter(LoadPhase.READY, now)
        status = self.status
        return LoadModelResult(
            node_id=status.node_id,
            backend=status.backend,
            model_id=status.model_id,
            replica_index=status.replica_index,
            slot=status.slot,
            address=status.address,
            files=status.files,
            bytes_sent=status.bytes_sent,
            phase_seconds=dict(status.phase_seconds),
            load_message=message,
            already_loaded=loaded.already_loaded,
        )

    def deadline_error(self) -> ApplicationError:
        return ApplicationError(
            f"load of {self.input.model_id} into {self.input.slot} on node {self.input.node_id} "
            f"did not finish within {self.input.deadline_seconds:g}s (phase "
            f"{self.status.phase.value}); last error: {self.status.last_error or 'none'}",
            type=LOAD_DEADLINE_EXCEEDED,
            non_retryable=True,
        )

    def details(self, workflow_id: str) -> str:
        """The UI's current details: phase, each file, the address, the last error."""
        status = self.status
        lines = [
            f"**Load `{status.model_id}` into `{status.slot}` on `{status.node_id}`** · "
            f"{status.phase.value} · sent {_gib(status.bytes_sent)}",
            "",
            "| file | state | size | on the node |",
            "|---|---|---|---|",
        ]
        for file in status.files[:20]:
            size = _gib(file.size) if file.size is not None else "?"
            lines.append(
                f"| {file.path} | {file.state.value} | {size} | {file.local_path or '-'} |"
            )
        if status.address:
            lines.append(f"\nbackend at {status.address}")
        if status.last_error:
            lines.append(f"\nlast error: {status.last_error[:300]}")
        lines.append(
            f"\nfollow: `backendctl watch {workflow_id}` · stop: `backendctl cancel {workflow_id}`"
        )
        return "\n".join(lines)
