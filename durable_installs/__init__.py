"""Durable backend installs: Temporal workflows that install inference backends on worker
nodes over NATS, LocalAI-compatible.

The package holds everything but the workflows and activities themselves, which stay at the
top of the repository as the project was specified (``workflows/``, ``activities/``,
``worker_main.py``): the shared contracts (``contracts``), the wire protocol (``protocol``),
the worker as a library (``orchestrator``), the node agent (``node_agent``), observability
(``telemetry``), the operator's tool (``backendctl``), the local stack (``devstack``) and the
server harness it, the tests and the benchmarks share (``servers``).
"""
