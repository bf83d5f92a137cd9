"""The node's file-transfer side: LocalAI's ``/v1/files/<key>`` HTTP API and free space.

A controller stages model files to the node before it asks a backend to load them:
:mod:`.server` serves the HTTP API (resumable uploads, verified before they are moved into
place), :mod:`.keys` maps keys to paths inside the node's directories and nowhere else,
:mod:`.store` keeps partial uploads apart until they are committed, :mod:`.space` answers
``nodes.<node>.files.space``. :class:`FilesConfig` is closed by default: no token, no server.
"""

from durable_installs.node_agent.files.config import FilesConfig
from durable_installs.node_agent.files.keys import PARTIAL_DIR, Roots
from durable_installs.node_agent.files.server import FileServer, FilesStartupError
from durable_installs.node_agent.files.space import space_reply

__all__ = ["PARTIAL_DIR", "FileServer", "FilesConfig", "FilesStartupError", "Roots", "space_reply"]
