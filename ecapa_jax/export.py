"""Command line: a deployable artifact of a model directory, ``jax.export`` or ONNX, chosen by the suffix.

    python -m ecapa_jax.export MODEL_DIR OUT.jax [--waveform] [--platforms cpu,cuda]
    python -m ecapa_jax.export MODEL_DIR OUT.onnx [--opset 18]

``OUT.jax`` takes features ``(B, T, F)`` (or, with ``--waveform``, waveforms ``(B, N)`` at the front-end's
sample rate plus their lengths ``(B,)``, the front-end inside) and gives embeddings ``(B, E)``, for any B,
T, N; it runs with jax alone. ``OUT.onnx`` is WeSpeaker's runtime convention: ``feats (B, T, 80)`` →
``embs (B, E)``, dynamic B and T. Its spec beside it (``OUT.jax.json``, ``OUT.onnx.json``) says what the
artifact expects. The formats and the three lines that run a ``.jax`` artifact: ``ecapa_jax.io.export``.

After writing, the artifact is loaded back and compared with ecapa_jax on a random input of a shape not
used for anything else, and the difference is printed. Exit status (``ecapa_jax.cli``): 0, or 2 with one
line on stderr for a bad model directory, suffix, platform or output location (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax
import numpy as np

from ecapa_jax.cli import EXIT_OK, ArgumentParser, command
from ecapa_jax.encoder import embed_waveforms
from ecapa_jax.io.checkpoint import load_model_dir
from ecapa_jax.io.export import ONNX_OPSET, PLATFORMS, export, load_artifact, spec_path
from ecapa_jax.models import build_model


def check(model_dir: str, out: str, batch: int = 2, frames: int = 123) -> float:
    """max |artifact − ecapa_jax| on random input of ``batch`` rows of ``frames`` frames (or their samples)."""
    artifact, model = load_artifact(out), load_model_dir(model_dir)
    rng = np.random.default_rng(0)
    if artifact.kind == "waveform":
        samples = model.frontend.max_samples(frames)
        waves = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
        lengths = np.linspace(model.frontend.min_samples, samples, batch).astype(np.int32)
        got = artifact.embed_waveforms(waves, model.frontend.sample_rate, lengths)
        want = embed_waveforms(model.model_variables, waves, lengths, model.config, model.frontend)
    else:
        feats = rng.standard_normal((batch, frames, model.config.feat_dim)).astype(np.float32)
        got = artifact.embed(feats)
        module = build_model(model.config)
        want = jax.jit(lambda v, x: module.apply(v, x, train=False)[0])(model.model_variables, feats)
    return float(np.max(np.abs(got - np.asarray(want))))


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ecapa_jax.export", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="ecapa_jax model directory (python -m ecapa_jax.convert)")
    parser.add_argument(
        "out", help="artifact to write: .jax (jax.export) or .onnx; its spec OUT.*.json is written beside it"
    )
    parser.add_argument("--waveform", action="store_true", help=".jax only: waveforms + lengths in, front-end inside")
    parser.add_argument(
        "--platforms", default="cpu", help=f".jax only: comma-separated, of {', '.join(PLATFORMS)} (default: cpu)"
    )
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f".onnx only: ONNX opset (default {ONNX_OPSET})")
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    spec = export(args.model, args.out, waveform=args.waveform, platforms=platforms, opset=args.opset)
    inputs = ", ".join(f"{i['name']} ({', '.join(map(str, i['shape']))}) {i['dtype']}" for i in spec["inputs"])
    output = spec["outputs"][0]
    print(
        f"{args.model} → {args.out} ({spec['runtime']}) and {spec_path(args.out)}: {inputs} → "
        f"{output['name']} ({', '.join(map(str, output['shape']))}) {output['dtype']}"
    )
    error = check(args.model, args.out)
    print(f"checked against ecapa_jax at batch 2 × 123 frames: max |difference| = {error:.1e}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
