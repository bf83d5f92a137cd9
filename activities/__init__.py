"""Everything that touches the network on the orchestrator side: install and probe activities.

Workflows import only :mod:`activities.models` and :mod:`activities.errors` (names, models,
failure types), never the NATS-bound implementations.
"""
