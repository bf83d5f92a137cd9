"""Benchmarks: what durability costs, measured against the bare minimum in the same run.

Every benchmark starts its own Temporal dev server, ``nats-server`` and worker process, runs
its baseline and its subject back to back on those same servers, and reports ratios, because
absolute numbers on a shared machine mean little. ``python -m bench.run_all --quick``.
"""
