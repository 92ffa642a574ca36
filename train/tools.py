"""After training: average checkpoints, export model directories and WeSpeaker ``.pt`` files.

    python -m train.tools average WORKDIR [--num N] [--out DIR]     # WeSpeaker's avg_model → model dir
    python -m train.tools export WORKDIR [--step N] [--out DIR]     # one checkpoint → model dir
    python -m train.tools wespeaker MODEL_DIR OUT.pt                 # model dir → WeSpeaker state_dict
    python -m train.tools demo-data OUT_DIR [--workdir RUN]          # the demo's held-out audio + trials

A model directory (`ecapa_jax.io.checkpoint.save_model_dir`) holds the encoder, its front-end and the
training head (``projection``), as WeSpeaker's ``avg_model.pt`` does; ``ecapa_jax.load`` reads it. A
checkpoint's ``params``/``batch_stats`` are already in the model directory's variable layout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecapa_jax.cli import EXIT_OK, ArgumentParser, command
from ecapa_jax.io.checkpoint import CheckpointManager, save_model_dir
from ecapa_jax.io.convert.wespeaker import dir_to_wespeaker
from ecapa_jax.io.files import read_json
from train.config import TrainConfig, load_config
from train.data import demo_corpus
from train.demo_corpus import write_dataset, write_trials
from train.workdir import CHECKPOINT_DIR


def average_trees(trees: Sequence[Any]) -> Any:
    """The element-wise mean of pytrees of the same structure, WeSpeaker's ``avg_model``.

    Float leaves are averaged in float64 and returned in their dtype; integer leaves (BatchNorm's
    ``num_batches_tracked``) are rounded back to integers, where WeSpeaker's division leaves a float.
    """
    import jax

    def mean(*leaves):
        m = np.mean([np.asarray(x, np.float64) for x in leaves], axis=0)
        dtype = np.asarray(leaves[0]).dtype
        return np.rint(m).astype(dtype) if np.issubdtype(dtype, np.integer) else m.astype(dtype)

    return jax.tree.map(mean, *trees)


def read_run_config(workdir: str | Path) -> TrainConfig:
    """The `TrainConfig` a workdir was trained with (its ``config.json``).

    Raises:
      FileNotFoundError: ``workdir`` has no ``config.json`` (not a training run).
    """
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{workdir} is not a training run directory: no config.json")
    return TrainConfig.from_dict(read_json(path))


def load_checkpoints(workdir: str | Path, steps: Sequence[int]) -> list[dict[str, Any]]:
    """The variables (``{'params', 'batch_stats'}``, ``{'model', 'projection'}`` each, NumPy) of checkpoints."""
    with CheckpointManager(Path(workdir) / CHECKPOINT_DIR) as ckpt:
        trees = [ckpt.restore(step)[0] for step in steps]
    return [{"params": t["params"], "batch_stats": t["batch_stats"]} for t in trees]


def last_steps(workdir: str | Path, num: int | None) -> list[int]:
    """The newest ``num`` checkpoint steps (all with None).

    Raises:
      FileNotFoundError: no checkpoints, or fewer than ``num``.
    """
    directory = Path(workdir) / CHECKPOINT_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} is not a training run directory: no {CHECKPOINT_DIR}/")
    with CheckpointManager(directory) as ckpt:
        steps = ckpt.all_steps()
    if not steps or (num is not None and len(steps) < num):
        raise FileNotFoundError(f"{workdir}/{CHECKPOINT_DIR} has checkpoints {steps}, fewer than the {num} asked for")
    return steps[-num:] if num is not None else steps


def export(workdir: str | Path, out: str | Path, steps: Sequence[int], overwrite: bool = False) -> Path:
    """Writes the model directory ``out`` from the average of the checkpoints ``steps`` (one: a copy).

    Returns:
      ``out``.
    """
    config = read_run_config(workdir)
    variables = average_trees(load_checkpoints(workdir, steps))
    metadata = {"source": str(Path(workdir).resolve()), "source_format": "ecapa_jax.train", "steps": list(steps)}
    return save_model_dir(out, config.model, variables, config.frontend, metadata, overwrite=overwrite)


def write_demo_eval(config: TrainConfig, out: str | Path, overwrite: bool = False) -> Path:
    """Writes the held-out speakers of ``config``'s demo corpus as a Kaldi data dir plus ``trials``.

    The trials are those the trainer scores for its held-out EER (``config.num_eval_trials`` of them),
    so embedding ``wav.scp`` and scoring ``trials`` with the CLIs reproduces that figure from files
    (up to the 16-bit quantisation of the WAVs).

    Returns:
      ``out``.

    Raises:
      ValueError: the config has no demo corpus or no held-out speakers.
      FileExistsError: ``out`` exists and is not empty (unless ``overwrite``).
    """
    if config.data.data_type != "demo" or config.data.demo_held_out < 2:
        raise ValueError(
            "demo-data needs a run on the demo corpus with >= 2 held-out speakers; this one has "
            f"data.data_type={config.data.data_type!r}, data.demo_held_out={config.data.demo_held_out}"
        )
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (--overwrite to write into it)")
    corpus = demo_corpus(config.data)
    write_dataset(corpus, str(out), corpus.held_out_utterances)
    write_trials(corpus.held_out_trials(config.num_eval_trials), str(out / "trials"))
    return out


@command
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m train.tools", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    avg = sub.add_parser("average", help="average the newest N checkpoints into a model directory")
    avg.add_argument("workdir")
    avg.add_argument("--num", type=int, default=None, help="checkpoints to average (default: the config's keep)")
    avg.add_argument("--out", default=None, help="model directory (default: WORKDIR/avg_model)")
    exp = sub.add_parser("export", help="one checkpoint (default: the newest) as a model directory")
    exp.add_argument("workdir")
    exp.add_argument("--step", type=int, default=None)
    exp.add_argument("--out", default=None, help="model directory (default: WORKDIR/model_STEP)")
    pt = sub.add_parser("wespeaker", help="a model directory as a WeSpeaker .pt state_dict")
    pt.add_argument("model_dir")
    pt.add_argument("out")
    demo = sub.add_parser("demo-data", help="the demo corpus's held-out audio and trials as a Kaldi data dir")
    demo.add_argument("out")
    demo.add_argument("--workdir", default=None, help="the run whose corpus and trials (default: the demo preset)")
    for sp in (avg, exp, pt, demo):
        sp.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.command == "average":
        num = args.num if args.num is not None else read_run_config(args.workdir).keep_checkpoints
        steps = last_steps(args.workdir, num)
        out = export(args.workdir, args.out or Path(args.workdir) / "avg_model", steps, args.overwrite)
    elif args.command == "export":
        steps = [args.step] if args.step is not None else last_steps(args.workdir, 1)
        out = export(args.workdir, args.out or Path(args.workdir) / f"model_{steps[0]}", steps, args.overwrite)
    elif args.command == "wespeaker":
        dir_to_wespeaker(args.model_dir, args.out, overwrite=args.overwrite)
        out, steps = args.out, None
    else:
        config = read_run_config(args.workdir) if args.workdir else load_config("demo")
        out, steps = write_demo_eval(config, args.out, args.overwrite), None
    print(f"wrote {out}" + (f" (checkpoints {steps})" if steps else ""))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
