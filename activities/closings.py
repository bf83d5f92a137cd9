"""Which of many workflows have closed, asked of visibility: no long poll per workflow.

Waiting on a workflow's result (``handle.result()``) holds a long poll on the server until it
closes. A rollout batch of 100 installs held 100; a few thousand slots in flight held a few
thousand, and the server limits the concurrent long polls of a namespace (the dev server's
``frontend.namespaceCount``): past it, requests of that namespace are refused, the workers'
task polls among them, and the installs stop making progress while the clients wait for them.
So a batch asks visibility every few seconds which of its installs have closed (one list
request per hundred workflows), and reads the outcome of each closed one, which the server
answers at once. ``backendctl`` waits on one workflow at a time; the benchmarks count open
workflows the same way (``bench/load.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from temporalio.client import Client, WorkflowExecutionStatus

CLOSED = "ExecutionStatus != 'Running' AND ExecutionStatus != 'ContinuedAsNew'"
IDS_PER_QUERY = 100
"""Workflow ids in one visibility query (about 5 KB of query text)."""


def _quoted(workflow_id: str) -> str:
    return "'" + workflow_id.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Closings:
    """The workflows of a set (by id) whose latest run has closed, as visibility sees them.

    Visibility lists every run of an id, an earlier execution of the same id too (a slot
    installed last week). A run seen closed while the id's latest run is still open is such
    an earlier one and is not looked at again.
    """

    def __init__(self, client: Client, workflow_ids: Iterable[str]) -> None:
        self._client = client
        self.pending = set(workflow_ids)
        self._earlier: set[tuple[str, str]] = set()

    async def closed(self) -> list[str]:
        """The pending ids whose latest run has closed since the last call (now not pending)."""
        ids = sorted(self.pending)
        candidates: dict[str, list[str]] = {}
        for start in range(0, len(ids), IDS_PER_QUERY):
            chunk = ids[start : start + IDS_PER_QUERY]
            query = f"WorkflowId IN ({', '.join(map(_quoted, chunk))}) AND {CLOSED}"
            async for execution in self._client.list_workflows(query):
                if (execution.id, execution.run_id) not in self._earlier:
                    candidates.setdefault(execution.id, []).append(execution.run_id)
        closed: list[str] = []
        for workflow_id, runs in candidates.items():
            description = await self._client.get_workflow_handle(workflow_id).describe()
            if description.status is WorkflowExecutionStatus.RUNNING:
                self._earlier.update((workflow_id, run) for run in runs)
            else:
                closed.append(workflow_id)
        self.pending.difference_update(closed)
        return closed
