"""The orchestrator side as a library: the worker's registration, the Temporal connection and the
worker's deployment version. ``worker_main.py`` is the command line around it."""
