"""``python -m backendctl``: the operator's tool; see :mod:`backendctl.cli`."""

from __future__ import annotations

import os
import sys

from backendctl.cli import main

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: the Temporal client's native threads can abort it
    # ("PyGILState_Release ... must be current") about once in ten exits, long after our work
    # is done. Nothing is left to clean up at this point.
    os._exit(code)
