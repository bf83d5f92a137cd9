"""The floor any Temporal design pays: one workflow running one activity that does one request.

The activity sends exactly the body ``InstallBackendWorkflow``'s install activity sends, to the
same node subject, and parses the reply the same way, so the difference between this and the
real workflow is the price of everything the real one adds (validation, search attributes,
progress subscription, details, probe bookkeeping), not of NATS.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    from nats.aio.client import Client as NATS

    from durable_installs.protocol import subjects
    from durable_installs.protocol.messages import BackendInstallReply, BackendInstallRequest

MINIMAL_WORKFLOW = "BenchMinimalWorkflow"
MINIMAL_ACTIVITY = "bench_nats_request"


def install_body(node_id: str) -> bytes:
    """The install request body both the baseline and the raw NATS path send."""
    return BackendInstallRequest(backend="llama-cpp", model_id=f"m-{node_id}").to_wire()


class MinimalActivities:
    """Holds the worker's NATS connection, like the project's own activities."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    @activity.defn(name=MINIMAL_ACTIVITY)
    async def request(self, node_id: str) -> str:
        """One ``backend.install`` request; the address from the reply."""
        msg = await self._nc.request(subjects.install(node_id), install_body(node_id), timeout=60)
        reply = BackendInstallReply.model_validate_json(msg.data)
        return reply.address


@workflow.defn(name=MINIMAL_WORKFLOW)
class MinimalWorkflow:
    """One activity, no options beyond a timeout: the cheapest durable request there is."""

    @workflow.run
    async def run(self, node_id: str) -> str:
        address: str = await workflow.execute_activity(
            MINIMAL_ACTIVITY, node_id, start_to_close_timeout=timedelta(seconds=90)
        )
        return address
