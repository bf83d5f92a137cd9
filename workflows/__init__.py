"""Workflow definitions: deterministic code only, no I/O.

Activities are called by name with their models from :mod:`activities.models`, so no NATS code
is imported into the workflow sandbox.
"""
