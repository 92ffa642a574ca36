"""Command line: WeSpeaker checkpoints ↔ ecapa_jax model directories.

    python -m ecapa_jax.convert wespeaker SRC.pt DST_DIR [--overwrite] [--pooling NAME]
    python -m ecapa_jax.convert to-wespeaker DIR DST.pt [--overwrite]

The converters themselves are ``ecapa_jax.io.convert``. Exit status (``ecapa_jax.cli``): 0, or 2 with one
line on stderr for a bad file, an existing destination, ... (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util

from ecapa_jax.cli import EXIT_OK, ArgumentParser, command
from ecapa_jax.io.convert.wespeaker import dir_to_wespeaker, wespeaker_to_dir
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.models.pooling import POOLINGS


def describe(config: EcapaConfig, variables: Mapping[str, Any], projection: Mapping[str, Any] | None) -> str:
    """One line: WeSpeaker variant, pooling, sizes, parameter count, projection leaves."""
    n_params = sum(np.size(x) for x in traverse_util.flatten_dict(dict(variables["params"])).values())
    head = "none"
    if projection is not None:
        head = ", ".join(
            f"{'/'.join(k)} {np.shape(v)}" for k, v in traverse_util.flatten_dict(dict(projection)).items()
        )
    return (
        f"{config.wespeaker_name} (pooling {config.pooling}, emb_bn {config.emb_bn}, feat_dim {config.feat_dim}, "
        f"embed_dim {config.embed_dim}): {n_params:,} parameters; projection: {head}"
    )


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ecapa_jax.convert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("wespeaker", help="WeSpeaker .pt checkpoint → ecapa_jax model directory")
    p.add_argument("src", help="WeSpeaker checkpoint (model_N.pt, avg_model.pt)")
    p.add_argument("dst", help="model directory to create")
    p.add_argument("--pooling", choices=sorted(POOLINGS), help="pooling, when it cannot be told (TAP vs TSDP)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p = commands.add_parser("to-wespeaker", help="ecapa_jax model directory → WeSpeaker .pt checkpoint")
    p.add_argument("src", help="model directory")
    p.add_argument("dst", help=".pt file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "wespeaker":
        config, variables, projection = wespeaker_to_dir(
            args.src, args.dst, pooling=args.pooling, overwrite=args.overwrite
        )
        print(f"{args.src} → {args.dst}: {describe(config, variables, projection)}")
    else:
        state_dict = dir_to_wespeaker(args.src, args.dst, overwrite=args.overwrite)
        print(f"{args.src} → {args.dst}: {len(state_dict)} tensors")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
