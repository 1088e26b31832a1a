"""One process of a distributed stage: the single entry point torchrun starts on every node.

``python -m pinas.stages.rank <stage> --config launch_config.json --paths '{"train_dir": ...}' --out DIR``
rebuilds the stage's config from the JSON its launcher wrote (:func:`pinas.stages.common.launch`) and runs the
stage's per-process function from the stage table (:data:`pinas.stages.graph.STAGES`, column ``rank``) with the
named input paths. ``--stop-after N`` ends the run after N steps (a search: after generation N), checkpointed, as if
it had been killed there (for tests of resumption).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from pinas.engine.distributed import shutdown
from pinas.stages.graph import BY_NAME


def main(argv: list[str] | None = None) -> None:
    distributed = [stage.name for stage in BY_NAME.values() if stage.rank is not None]
    parser = argparse.ArgumentParser(description="One process of a distributed stage (torchrun starts several)")
    parser.add_argument("stage", choices=distributed)
    parser.add_argument("--config", required=True, type=Path, help="JSON of the stage's config")
    parser.add_argument("--paths", default="{}", help="JSON of the named input paths")
    parser.add_argument("--out", required=True, type=Path, help="the stage folder")
    parser.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    stage = BY_NAME[args.stage]
    cfg = stage.config.model_validate_json(args.config.read_text())
    stage.rank(cfg, {name: Path(path) for name, path in json.loads(args.paths).items()}, args.out, args.stop_after)
    shutdown()


if __name__ == "__main__":
    main()
