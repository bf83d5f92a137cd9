"""``backendctl``: the operator's tool (the ``backendctl`` command)."""

from __future__ import annotations

from durable_installs.backendctl.cli import console

if __name__ == "__main__":
    console()
