"""``pinas-pipeline`` (and ``python -m flows``): the command line.

The commands that run a flow (``run``, ``study``) check their input first, so bad input is one line in seconds, then
begin starting Prefect's temporary API server (:mod:`flows.early_api`), which comes up while the pipeline is
imported.
"""
from __future__ import annotations

import sys


def main() -> int:
    from flows.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
