"""``python -m train [--config NAME|FILE.py] [--workdir DIR] [--force-config] [key=value ...]``.

Trains WeSpeaker's ECAPA recipe (or a preset of ``train/configs/``) into the workdir, resuming the
run there if there is one. Overrides are dotted fields with Python-literal values, e.g.
``num_epochs=2 model.channels=256 data.num_frms=150 scheduler_args.initial_lr=0.05``.
Defaults: the ``demo`` preset into ``./runs/demo``. Multi-process runs: see `train.loop`.
Exit status (``ecapa_jax.cli``): 0; 1 when the run stopped early with its checkpoints kept (a non-finite
loss); 2 for a bad config, data or workdir, found before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ecapa_jax.cli import EXIT_OK, EXIT_PARTIAL, ArgumentParser, command, error
from train.config import apply_overrides, load_config, preset_names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", default="demo", help=f"a preset ({', '.join(preset_names())}) or a .py file")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--force-config", action="store_true", help="continue a workdir whose config differs")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = apply_overrides(load_config(args.config), args.overrides)
    from train.loop import NonFiniteError, initialize_distributed, train_and_evaluate  # imports JAX

    initialize_distributed()
    workdir = args.workdir or f"runs/{args.config.removesuffix('.py').rsplit('/', 1)[-1]}"
    try:
        train_and_evaluate(config, workdir, force_config=args.force_config)
    except NonFiniteError as e:
        error(e)
        return EXIT_PARTIAL
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
