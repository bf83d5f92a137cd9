"""How much one worker process takes on at once: every limit chosen with the others.

A worker runs three kinds of work that compete for one Python thread and the SDK's slots:

* **workflow tasks** (``max_concurrent_workflow_tasks``): each install's first task also
  runs the fast path's request, a local activity that may wait up to its bound (1 s);
* **local activities** (``max_concurrent_local_activities``): those fast-path requests;
* **activities** (``max_concurrent_activities``): an install activity mostly waits for its
  node, so a worker follows many at once; past this, installs wait in the task queue (their
  request is out, the node works, the reply is kept for them: ``activities/replies.py``).

Every install in flight has a workflow run; a run that is not cached is replayed from its
history for each task it gets, so the cache (``max_cached_workflows``) holds at least as
many runs as the worker follows installs, with room for those waiting for an activity slot.
The figures these defaults were measured with: docs/operating/scale.md ("Past one worker").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class WorkerSizing:
    """The slot limits and cache size of one worker; the defaults are the worker's."""

    activities: int = 1000
    """Install (and other) activities at once."""
    workflow_tasks: int = 100
    """Workflow tasks at once, fast-path requests included."""
    cached_workflows: int = 4000
    """Workflow runs kept in memory between their tasks."""
    sticky_seconds: float = 60.0
    """How long a workflow task waits for this worker on its sticky queue before any worker
    may take it (and replay the run)."""

    def options(self) -> dict[str, object]:
        """The ``temporalio.worker.Worker`` keyword arguments."""
        return {
            "max_concurrent_activities": self.activities,
            "max_concurrent_local_activities": self.activities,
            "max_concurrent_workflow_tasks": self.workflow_tasks,
            "max_cached_workflows": self.cached_workflows,
            "sticky_queue_schedule_to_start_timeout": timedelta(seconds=self.sticky_seconds),
        }
