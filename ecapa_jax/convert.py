"""Command line: WeSpeaker, SpeechBrain and CAM++ checkpoints ↔ ecapa_jax model directories.

    python -m ecapa_jax.convert wespeaker SRC.pt DST_DIR [--overwrite] [--pooling NAME]
    python -m ecapa_jax.convert speechbrain EMBEDDING_MODEL.ckpt DST_DIR [--hparams hyperparams.yaml]
                                [--dilations 1,2,3,4,1] [--embedding-norm mean_var_norm_emb.ckpt] [--key NAME]
    python -m ecapa_jax.convert campplus SRC.pt DST_DIR [--flavour speakerlab|wespeaker] [--key NAME]
    python -m ecapa_jax.convert to-wespeaker DIR DST.pt [--overwrite]
    python -m ecapa_jax.convert to-speechbrain DIR DST.ckpt [--overwrite]
    python -m ecapa_jax.convert to-campplus DIR DST.pt [--overwrite]

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
from ecapa_jax.io.convert.campplus import FLAVOURS, campplus_to_dir, dir_to_campplus
from ecapa_jax.io.convert.speechbrain import dir_to_speechbrain, speechbrain_to_dir
from ecapa_jax.io.convert.wespeaker import dir_to_wespeaker, wespeaker_to_dir
from ecapa_jax.models.campplus import CamPPConfig
from ecapa_jax.models.pooling import POOLINGS


def describe(config: Any, variables: Mapping[str, Any], projection: Mapping[str, Any] | None) -> str:
    """One line: the architecture, sizes, parameter count, projection leaves."""
    n_params = sum(np.size(x) for x in traverse_util.flatten_dict(dict(variables["params"])).values())
    head = "none"
    if projection is not None:
        head = ", ".join(
            f"{'/'.join(k)} {np.shape(v)}" for k, v in traverse_util.flatten_dict(dict(projection)).items()
        )
    if isinstance(config, CamPPConfig):
        name = f"CAM++ (blocks {config.block_layers}, feat_dim {config.feat_dim}, embed_dim {config.embed_dim})"
    elif config.is_wespeaker:
        name = (
            f"{config.wespeaker_name} (pooling {config.pooling}, emb_bn {config.emb_bn}, "
            f"feat_dim {config.feat_dim}, embed_dim {config.embed_dim})"
        )
    else:
        name = (
            f"SpeechBrain ECAPA_TDNN (channels {config.channels}, mfa {config.mfa_dim}, kernel_sizes "
            f"{config.kernel_sizes}, dilations {config.dilations}, feat_dim {config.feat_dim}, "
            f"embed_dim {config.embed_dim})"
        )
    return f"{name}: {n_params:,} parameters; projection: {head}"


WRITERS = {  # command → (what it writes, the function)
    "to-wespeaker": ("WeSpeaker .pt", dir_to_wespeaker),
    "to-speechbrain": ("SpeechBrain .ckpt", dir_to_speechbrain),
    "to-campplus": ("CAM++ .pt", dir_to_campplus),
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 1,2,3,4,1, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ecapa_jax.convert", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("wespeaker", help="WeSpeaker .pt checkpoint → ecapa_jax model directory")
    p.add_argument("src", help="WeSpeaker checkpoint (model_N.pt, avg_model.pt)")
    p.add_argument("dst", help="model directory to create")
    p.add_argument("--pooling", choices=sorted(POOLINGS), help="pooling, when it cannot be told (TAP vs TSDP)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p = commands.add_parser("speechbrain", help="SpeechBrain ECAPA-TDNN checkpoint → ecapa_jax model directory")
    p.add_argument("src", help="SpeechBrain's embedding_model.ckpt (or a .pt/.pth holding its state_dict)")
    p.add_argument("dst", help="model directory to create")
    p.add_argument("--hparams", help="the model's hyperparams.yaml (architecture and front-end; read as data)")
    p.add_argument("--dilations", type=_ints, help="per-layer dilations when there is no --hparams, e.g. 1,2,3")
    p.add_argument("--embedding-norm", help="mean_var_norm_emb.ckpt: kept for Encoder.normalize / embed --normalize")
    p.add_argument("--key", help="the entry of SRC that holds the state_dict, when it holds several")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    p = commands.add_parser("campplus", help="CAM++ checkpoint (3D-Speaker or WeSpeaker) → ecapa_jax model directory")
    p.add_argument("src", help="CAMPPlus state_dict .pt (e.g. 3D-Speaker's campplus_cn_en_common.pt)")
    p.add_argument("dst", help="model directory to create")
    p.add_argument("--flavour", choices=FLAVOURS, default="speakerlab", help="whose front-end and pooling epsilon")
    p.add_argument("--key", help="the entry of SRC that holds the state_dict, when it holds several")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model directory")
    for name, what in WRITERS.items():
        p = commands.add_parser(name, help=f"ecapa_jax model directory → {what[0]} checkpoint")
        p.add_argument("src", help="model directory")
        p.add_argument("dst", help="file to write")
        p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "wespeaker":
        config, variables, projection = wespeaker_to_dir(
            args.src, args.dst, pooling=args.pooling, overwrite=args.overwrite
        )
    elif args.command == "speechbrain":
        config, variables = speechbrain_to_dir(
            args.src,
            args.dst,
            hparams=args.hparams,
            dilations=args.dilations,
            embedding_norm=args.embedding_norm,
            key=args.key,
            overwrite=args.overwrite,
        )
        projection = None
    elif args.command == "campplus":
        config, variables, projection = campplus_to_dir(
            args.src, args.dst, flavour=args.flavour, key=args.key, overwrite=args.overwrite
        )
    else:
        state_dict = WRITERS[args.command][1](args.src, args.dst, overwrite=args.overwrite)
        print(f"{args.src} → {args.dst}: {len(state_dict)} tensors")
        return EXIT_OK
    print(f"{args.src} → {args.dst}: {describe(config, variables, projection)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
