"""The embedded development stack: ``backend-devstack`` (``make run``)."""
