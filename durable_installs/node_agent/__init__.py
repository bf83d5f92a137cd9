"""A node agent: the worker side of the NATS backend-install protocol.

It installs backends from galleries into a backends directory, runs one backend process per
(model, replica) slot and answers the ``nodes.<node>.…`` subjects of docs/protocol.md.
Run it with ``backend-node-agent --help``, or in-process with :class:`Agent`.
"""

from durable_installs.node_agent.agent import Agent
from durable_installs.node_agent.config import AgentConfig
from durable_installs.protocol.connection import NatsOptions

__all__ = ["Agent", "AgentConfig", "NatsOptions"]
