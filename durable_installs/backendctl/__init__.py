"""The operator's tool: ``backendctl``, see :mod:`backendctl.cli`."""
