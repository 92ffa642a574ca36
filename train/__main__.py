"""``python -m train [--config NAME|FILE.py] [--workdir DIR] [--force-config] [key=value ...]``.

Trains WeSpeaker's ECAPA recipe (or a preset of ``train/configs/``) into the workdir, resuming the
run there if there is one. Overrides are dotted fields with Python-literal values, e.g.
``num_epochs=2 model.channels=256 data.num_frms=150 scheduler_args.initial_lr=0.05``.
Defaults: the ``demo`` preset into ``./runs/demo``. Multi-process runs: see `train.distributed`.
Exit status (``ecapa_jax.cli``): 0; 1 when the run stopped early with its checkpoints kept (a non-finite
loss, a failed write, unusable data, another process failed); 2 for a bad config, data or workdir (or
one another trainer is using), found before anything is written.
"""

from __future__ import annotations

import argparse
import traceback
from collections.abc import Sequence

from ecapa_jax.cli import EXIT_OK, EXIT_PARTIAL, ArgumentParser, command, error
from train.config import apply_overrides, load_config, preset_names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", default="demo", help=f"a preset ({', '.join(preset_names())}) or a .py file")
    p.add_argument("--workdir", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--force-config", action="store_true", help="continue a workdir whose config differs")
    dist = p.add_argument_group("multi-process runs (JAX_COORDINATOR_ADDRESS, Slurm and Open MPI are detected)")
    dist.add_argument(
        "--distributed", action="store_true", help="call jax.distributed.initialize() anyway (Cloud TPU VM pod slices)"
    )
    dist.add_argument(
        "--heartbeat-timeout", type=int, default=100, metavar="S", help="seconds before a silent process is dead"
    )
    dist.add_argument("--init-timeout", type=int, default=300, metavar="S", help="seconds for all processes to connect")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    return p.parse_args(argv)


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = apply_overrides(load_config(args.config), args.overrides)
    from train.distributed import ProcessFailedError, initialize_distributed, post_failure  # imports JAX
    from train.logs import trainer_logging

    initialize_distributed(
        force=args.distributed, heartbeat_timeout=args.heartbeat_timeout, init_timeout=args.init_timeout
    )
    from train.loop import NonFiniteError, TrainingStoppedError, train_and_evaluate

    workdir = args.workdir or f"runs/{args.config.removesuffix('.py').rsplit('/', 1)[-1]}"
    try:
        with trainer_logging():
            train_and_evaluate(config, workdir, force_config=args.force_config)
    except (NonFiniteError, TrainingStoppedError, ProcessFailedError) as e:  # ProcessFailedError: another one
        error(e)
        return EXIT_PARTIAL
    except BaseException as e:
        post_failure(str(e))  # the other processes stop naming this one (no-op in a single-process run)
        raise
    return EXIT_OK


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # a bug: its traceback, then the same exit as any failure of a multi-process run
        traceback.print_exc()
        code = EXIT_PARTIAL
    from train.distributed import exit_process

    exit_process(code)
