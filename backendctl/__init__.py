"""The operator's tool: ``python -m backendctl``, see :mod:`backendctl.cli`."""
