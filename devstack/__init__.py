"""The embedded development stack: ``python -m devstack`` (``make run``)."""
