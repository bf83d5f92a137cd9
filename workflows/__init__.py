"""Workflow definitions: deterministic code only, no I/O.

Activities are called by name with their models from :mod:`contracts`, so no NATS code is
imported into the workflow sandbox, and nothing here imports :mod:`activities`.
"""
