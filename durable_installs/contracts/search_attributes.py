"""The custom search attributes installs and loads carry, for filtering in the UI and the CLI.

All keyword attributes. A namespace must have them registered before an install runs (the worker
registers them where it may; on Temporal Cloud create them once by hand), or the install's first
workflow task fails.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

NODE_ID = SearchAttributeKey.for_keyword("NodeId")
BACKEND_NAME = SearchAttributeKey.for_keyword("BackendName")
MODEL_ID = SearchAttributeKey.for_keyword("ModelId")
INSTALL_PHASE = SearchAttributeKey.for_keyword("InstallPhase")
"""The install's :class:`contracts.install.InstallPhase`, e.g. ``still_installing``."""
ROLLOUT_ID = SearchAttributeKey.for_keyword("RolloutId")
"""The workflow id of the rollout that started the install, if any."""
LOAD_PHASE = SearchAttributeKey.for_keyword("LoadPhase")
"""A ``LoadModelWorkflow``'s :class:`contracts.load.LoadPhase`, e.g. ``staging``."""

SEARCH_ATTRIBUTES = (NODE_ID, BACKEND_NAME, MODEL_ID, INSTALL_PHASE, ROLLOUT_ID, LOAD_PHASE)
"""Every custom search attribute; register them all on the namespace."""
