"""``pinas-pipeline`` (and ``python -m flows``): the command line, with Prefect's temporary API started first.

The commands that run a flow (``run``, ``study``) begin starting the temporary API server (:mod:`flows.early_api`)
before the CLI's imports (torch, the pipeline) and input checks, which then overlap the server's start-up.
"""
from __future__ import annotations

import sys

from flows import early_api

FLOW_COMMANDS = ("run", "study")


def main() -> int:
    if sys.argv[1:2] and sys.argv[1] in FLOW_COMMANDS and "-h" not in sys.argv and "--help" not in sys.argv:
        early_api.start()
    from flows.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
