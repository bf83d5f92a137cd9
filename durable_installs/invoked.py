"""How this process was started, as a command a person can type again.

Usage lines and the commands a tool prints (``watch`` this, ``cancel`` that) must work when
pasted. A console script found on ``PATH`` is named by its name (``backendctl``); one that is
not (``.venv/bin/backendctl`` in a checkout) by its path, relative to the working directory
when it lies below it; ``python -m`` by the interpreter and the module.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def _as_typed(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def invoked_as(module: str, argv0: str | None = None) -> str:
    """The command that started this process: a script's name or path, or ``python -m``."""
    argv0 = sys.argv[0] if argv0 is None else argv0
    script = Path(argv0)
    if not argv0 or script.name in ("__main__.py", "-c", "-m") or script.suffix == ".py":
        return f"{_as_typed(Path(sys.executable))} -m {module}"
    found = shutil.which(script.name)
    if found and script.exists() and os.path.samefile(found, script):
        return script.name
    return _as_typed(script)


def exit_now(code: int) -> None:
    """Flush and leave without interpreter finalisation.

    The Temporal client's native threads can abort finalisation ("PyGILState_Release ...
    must be current", exit -6 instead of the code we return) about once in ten exits, long
    after our work is done; and asyncio's subprocess transport would kill a child a node agent
    was told to keep. Nothing is left to clean up by the time a command calls this.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
