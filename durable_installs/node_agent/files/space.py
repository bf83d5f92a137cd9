"""The ``nodes.<node>.files.space`` answer: what the models filesystem can still take.

It answers also when the HTTP server is off (then without an address): free space is useful
to a scheduler whichever way the files arrive, and LocalAI's workers report theirs in every
heartbeat whether or not anything is staged over HTTP.
"""

from __future__ import annotations

from durable_installs.node_agent.files.config import FilesConfig
from durable_installs.node_agent.files.keys import Roots
from durable_installs.node_agent.files.store import space_of
from durable_installs.protocol.messages import FilesSpaceReply


def space_reply(config: FilesConfig, roots: Roots, address: str) -> FilesSpaceReply:
    """Free and total bytes of the models directory's filesystem, the reserve, the limit."""
    try:
        space = space_of(roots.models)
    except OSError as err:
        return FilesSpaceReply(error=f"cannot read the models filesystem: {err.strerror or err}")
    return FilesSpaceReply(
        available_disk=space.available,
        total_disk=space.total,
        reserved_disk=config.reserve_bytes,
        max_file_size=config.max_file_bytes,
        address=address,
    )
