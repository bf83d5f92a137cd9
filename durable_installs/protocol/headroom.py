"""How much free disk a node needs before it is handed a model: LocalAI's rule, in one place.

LocalAI decides at scheduling time, from the node's reported free space on its models
filesystem, instead of letting a transfer run for minutes into "no space left on device".
The requirement is the payload plus a margin (5 %, at least 1 GiB), because staging is not the
only writer on that filesystem; a payload whose size is unknown needs a small 2 GiB floor
("the filesystem is not wedged"), not a capacity estimate. A node that reports no disk at all
(``total_disk`` 0: a stock worker, or a failed stat) is never ruled out, so a rolling upgrade
cannot empty the candidate pool.
"""

from __future__ import annotations

GIB = 1024**3
MARGIN_RATIO = 0.05
MIN_MARGIN_BYTES = 1 * GIB
UNKNOWN_SIZE_BYTES = 2 * GIB


def disk_requirement_for(payload_bytes: int) -> int:
    """Free bytes a node must have on its models filesystem to stage ``payload_bytes``."""
    if payload_bytes <= 0:
        return UNKNOWN_SIZE_BYTES
    return payload_bytes + max(int(payload_bytes * MARGIN_RATIO), MIN_MARGIN_BYTES)
