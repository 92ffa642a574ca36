"""Command line: score verification trials from embedding files, as WeSpeaker's recipe scores them.

    python -m ecapa_jax.score --embeddings emb.npz --trials TRIALS [--mean-from train.npz]
                              [--cohort cohort.npz [--top-n 300]] --out scores.txt

Embeddings are ``.npz`` (id → vector), Kaldi ``.ark`` or ``.scp``; trials are ``enroll test
[target|nontarget]`` lines; the scores are written as ``enroll test %.5f [label]`` lines
(``ecapa_jax.backend.scoring``: mean subtraction, cosine, AS-norm). Exit status: ``ecapa_jax.cli``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from ecapa_jax.backend.scoring import load_embeddings, load_mean, read_trials, score_trials, write_scores
from ecapa_jax.cli import EXIT_OK, ArgumentParser, command
from ecapa_jax.io.files import check_output_file


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ecapa_jax.score", description=__doc__.split("\n")[0])
    parser.add_argument("--embeddings", required=True, help="trial embeddings: .npz, .ark or .scp")
    parser.add_argument("--trials", required=True, help="lines 'enroll test [target|nontarget]'")
    parser.add_argument("--mean-from", help="subtract the mean of these embeddings (or this .npy vector)")
    parser.add_argument("--cohort", help="AS-norm cohort embeddings (e.g. speaker means): .npz, .ark or .scp")
    parser.add_argument("--top-n", type=int, help="AS-norm top-n (recipe: 300); default: whole cohort (S-norm)")
    parser.add_argument("--out", required=True, help="score file to write")
    return parser


def _check_dim(name: str, path: str, dim: int, expected: int, expected_from: str) -> None:
    if dim != expected:
        raise ValueError(f"{path}: {name} dimension {dim} does not match {expected} of {expected_from}")


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.top_n is not None and args.cohort is None:
        parser.error("--top-n needs --cohort")
    check_output_file(args.out)
    embeddings = load_embeddings(args.embeddings)
    dim = len(next(iter(embeddings.values())))
    mean = cohort = None
    if args.mean_from:
        mean = load_mean(args.mean_from)
        _check_dim("mean", args.mean_from, len(mean), dim, args.embeddings)
    if args.cohort:
        cohort = np.stack(list(load_embeddings(args.cohort).values()))
        _check_dim("cohort", args.cohort, cohort.shape[1], dim, args.embeddings)
    trials = read_trials(args.trials)
    try:
        scores = score_trials(embeddings, trials, mean, cohort, args.top_n)
    except ValueError as e:
        raise ValueError(f"{args.trials} with {args.embeddings}: {e}") from None
    write_scores(args.out, trials, scores)
    print(f"{len(trials)} trials scored -> {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
