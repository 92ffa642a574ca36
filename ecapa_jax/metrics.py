"""Command line: EER and minDCF of WeSpeaker score files, printed as WeSpeaker's ``compute_metrics.py``.

    python -m ecapa_jax.metrics scores.txt [more.txt ...] [--p-target 0.01] [--c-miss 1] [--c-fa 1]

Each file holds ``enroll test score target|nontarget`` lines (``ecapa_jax.backend.metrics``). A file that
cannot be read is reported and the others are still printed. Exit status (``ecapa_jax.cli``): 0; 1 when
some files failed and others were reported; 2 when none could be.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ecapa_jax.backend.metrics import report
from ecapa_jax.cli import EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, INPUT_ERRORS, ArgumentParser, command, error


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ecapa_jax.metrics", description=__doc__.split("\n")[0])
    parser.add_argument("scores", nargs="+", help="WeSpeaker score files: 'enroll test score target|nontarget'")
    parser.add_argument("--p-target", type=float, default=0.01)
    parser.add_argument("--c-miss", type=float, default=1.0)
    parser.add_argument("--c-fa", type=float, default=1.0)
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    failed = 0
    for path in args.scores:
        try:
            print(report(path, args.p_target, args.c_miss, args.c_fa))
        except INPUT_ERRORS as e:
            error(e)
            failed += 1
    if failed == len(args.scores):
        return EXIT_USAGE
    return EXIT_PARTIAL if failed else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
