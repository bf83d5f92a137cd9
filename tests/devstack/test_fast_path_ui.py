"""The web UI shows a warm install's fast-path answer in its history (issue 16)."""

from __future__ import annotations

from urllib.parse import quote

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from durable_installs.contracts.install import InstallBackendInput, install_workflow_id
from tests.devstack.browser import browser_page, screenshot
from tests.devstack.conftest import RunningStack
from workflows.install_backend import InstallBackendWorkflow


async def test_the_web_ui_shows_the_fast_path_answer_of_a_warm_install(
    stack: RunningStack,
) -> None:
    client = await Client.connect(stack.temporal_address, data_converter=pydantic_data_converter)
    input = InstallBackendInput(node_id="node-2", backend="echo", model_id="fast-ui")
    slot_id = install_workflow_id("node-2", "echo", "fast-ui", 0)
    cold = await client.execute_workflow(
        InstallBackendWorkflow.run, input, id=f"{slot_id}-cold", task_queue="backend-install"
    )
    warm_id = f"{slot_id}-warm"
    warm = await client.execute_workflow(
        InstallBackendWorkflow.run, input, id=warm_id, task_queue="backend-install"
    )
    assert warm.fast_path and warm.address == cold.address

    async with browser_page() as page:
        # The timeline draws the fast path as a local activity; clicking it shows the answer.
        await page.goto(f"{stack.ui_url}/namespaces/default/workflows/{quote(warm_id, safe='')}")
        await page.get_by_text("install_backend_fast").first.click()
        await page.get_by_text('"answered"').first.wait_for()
        await screenshot(page, "fast-path-answer")
