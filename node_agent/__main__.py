"""``python -m node_agent``: see :mod:`node_agent.cli`."""

import sys

from node_agent.cli import main

sys.exit(main())
