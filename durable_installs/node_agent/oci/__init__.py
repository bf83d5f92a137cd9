"""OCI image backends: pull from a registry (distribution API v2) or an ``ocifile://`` layout.

Modules: :mod:`.reference` (parsing refs), :mod:`.manifest` (manifests, indexes, platforms),
:mod:`.auth` (credentials, token flow), :mod:`.registry` (HTTP client), :mod:`.layout`
(layout tarballs), :mod:`.layers` (applying layers safely), :mod:`.pull` (the whole pull).
"""

from durable_installs.node_agent.oci.errors import PullError
from durable_installs.node_agent.oci.pull import PullOptions, PullProgress, pull

__all__ = ["PullError", "PullOptions", "PullProgress", "pull"]
