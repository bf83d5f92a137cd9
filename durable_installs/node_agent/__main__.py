"""``backend-node-agent``: the node agent (the ``backend-node-agent``
command); see :mod:`durable_installs.node_agent.cli`."""

from durable_installs.node_agent.cli import console

if __name__ == "__main__":
    console()
