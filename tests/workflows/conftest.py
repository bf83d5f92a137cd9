"""Fixtures for workflow tests that drive real node agents.

They are the node agent tests' own (a gallery in ``tmp_path``, archives to build backends
into, a block of ports, in-process agents on the real NATS server), shared rather than
copied, so that both suites start agents the same way.
"""

from tests.node_agent.conftest import archives, gallery, port_range, start_agent

__all__ = ["archives", "gallery", "port_range", "start_agent"]
