"""Words a person reads in the Temporal UI list and in terminals, shared by every starter.

Every workflow this project starts carries a static summary (one line, shown in the UI's list
and at the top of the workflow page) and static details (Markdown). Starters are the CLI, the
dev stack and the rollout's ``install_slots`` activity; they all build the text here so the
fleet view reads the same whoever started an install.
"""

from __future__ import annotations

from durable_installs.contracts.install import install_workflow_id

ELLIPSIS = "…"


def shorten(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters, cut at a word with "…".

    A message cut mid-word ("backing off … (nod") reads as a bug; a word cut keeps every shown
    word whole. A single word longer than the limit is cut hard, still with "…".
    """
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    room = max(limit - len(ELLIPSIS), 1)
    cut = flat[: room + 1]
    space = cut.rfind(" ")
    head = cut[:space] if space > 0 else flat[:room]
    return head.rstrip(" ,;:·-(") + ELLIPSIS


def slot_name(backend: str, model_id: str, replica_index: int) -> str:
    """``<model_id or backend>#<replica>``, the node's process key for a slot."""
    return f"{model_id or backend}#{replica_index}"


def install_summary(
    backend: str, node_id: str, model_id: str, replica_index: int, rollout_id: str = ""
) -> str:
    """``install cpu-large on node-1 for demo#0`` (and the rollout that asked, if any)."""
    text = f"install {backend} on {node_id} for {slot_name(backend, model_id, replica_index)}"
    if rollout_id:
        text += f" (rollout {rollout_id})"
    return shorten(text, 200)


def install_details(
    backend: str, node_id: str, model_id: str, replica_index: int, requested_by: str
) -> str:
    """Static details: what the install is for, who asked, and how to follow or stop it."""
    slot = slot_name(backend, model_id, replica_index)
    workflow_id = install_workflow_id(node_id, backend, model_id, replica_index)
    return "\n".join(
        [
            f"Install `{backend}` on node `{node_id}` for slot `{slot}`.",
            "",
            f"- requested by: {requested_by}",
            "- live phase and progress: **Current Details** (press `R` to refresh them); the "
            "byte-level bar: **Pending Activities**",
            f"- follow in a terminal: `backendctl watch {workflow_id}`",
            f"- stop: `backendctl cancel {workflow_id}`",
        ]
    )


def rollout_summary(backend: str, slots: int) -> str:
    """``rollout cpu-large to 12 slot(s)``."""
    return shorten(f"rollout {backend} to {slots} slot(s)", 200)


def rollout_details(backend: str, nodes: list[str], requested_by: str) -> str:
    """Static details of a rollout: the backend, the nodes and how to find its installs."""
    shown = ", ".join(f"`{node}`" for node in nodes[:20])
    if len(nodes) > 20:
        shown += f" and {len(nodes) - 20} more"
    return "\n".join(
        [
            f"Roll out `{backend}` to node(s) {shown}.",
            "",
            f"- requested by: {requested_by}",
            '- its installs: list filter `RolloutId = "<this workflow id>"`',
        ]
    )
