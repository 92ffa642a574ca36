"""Full-size parity of the deployment paths: exported artifacts and long-form evaluation vs the library and
WeSpeaker's PyTorch model (no timing; the figures of the README's deployment table).

    python -m benchmarks.parity [--model glob_c512] [--frames 6001] [--chunk-frames 1000]

A WeSpeaker model (random initialisation, randomised BatchNorm statistics) is converted into a model
directory, then:

- ``.jax`` and ``.onnx`` artifacts (``ecapa_jax.io.export``) at (B, T) = (3, 317) and (1, 1999), shapes
  not used at export, against ``Encoder.embed_features`` and WeSpeaker's forward;
- the ``--waveform`` artifact on a padded batch (2 s, 0.77 s, one frame) against each row embedded alone;
- long-form evaluation of ``--frames`` frames in chunks of ``--chunk-frames`` against the whole-file pass and
  WeSpeaker's whole-utterance forward.

Prints max |difference| (and 1 − cosine for long-form) per line; returns them.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks import common
from ecapa_jax.encoder import embed_waveforms, load
from ecapa_jax.io.convert.wespeaker import wespeaker_to_dir
from ecapa_jax.io.export import export, load_artifact
from ecapa_jax.models.long_form import embed_long


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common.add_model_arguments(p)
    p.add_argument("--frames", type=int, default=6001, help="frames of the long-form utterance")
    p.add_argument("--chunk-frames", type=int, default=1000, help="long-form chunk length")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True, help="also the ONNX artifact")
    args = p.parse_args(argv)
    oracles = common.oracles()
    torch = oracles.torch()
    config = common.model_config(args)
    torch.manual_seed(0)
    theirs = common.wespeaker_model(config)
    oracles.randomise_batchnorm(theirs)

    def wespeaker(feats: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return theirs(torch.from_numpy(feats))[-1].numpy()

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ecapa_parity_") as tmp:
        tmp = Path(tmp)
        torch.save(theirs.state_dict(), tmp / "model.pt")
        wespeaker_to_dir(tmp / "model.pt", tmp / "model")
        encoder = load(tmp / "model")
        print(
            f"model: {args.model} (channels {config.channels}), WeSpeaker random weights, random BatchNorm statistics"
        )
        for name in ("model.jax", "model.onnx") if args.onnx else ("model.jax",):
            export(tmp / "model", tmp / name)
            artifact = load_artifact(tmp / name)
            for batch, frames in ((3, 317), (1, 1999)):
                feats = np.random.default_rng(frames).standard_normal((batch, frames, 80)).astype(np.float32)
                got = artifact.embed(feats)
                results[f"{name} {batch}x{frames} vs library"] = np.abs(got - encoder.embed_features(feats)).max()
                results[f"{name} {batch}x{frames} vs wespeaker"] = np.abs(got - wespeaker(feats)).max()
        export(tmp / "model", tmp / "wave.jax", waveform=True)
        lengths = np.array([32000, 12345, 400], np.int32)
        waves = (0.1 * np.random.default_rng(0).standard_normal((3, 32000))).astype(np.float32)
        got = load_artifact(tmp / "wave.jax").embed_waveforms(waves, 16000, lengths)
        alone = [
            embed_waveforms(
                encoder.variables, waves[b : b + 1, :n], lengths[b : b + 1], encoder.config, encoder.frontend
            )
            for b, n in enumerate(lengths)
        ]
        results["wave.jax padded rows vs alone"] = np.abs(got - np.concatenate(alone)).max()

    feats = np.random.default_rng(4).standard_normal((1, args.frames, 80)).astype(np.float32)
    chunked = embed_long(encoder.module, encoder.variables, feats[0], args.chunk_frames)
    for name, want in (("whole file", encoder.embed_features(feats)[0]), ("wespeaker", wespeaker(feats)[0])):
        results[f"long-form vs {name}"] = np.abs(chunked - want).max()
        cosine = np.dot(chunked, want) / (np.linalg.norm(chunked) * np.linalg.norm(want))
        results[f"long-form vs {name}, 1 - cosine"] = 1.0 - float(cosine)
    print(
        f"long-form: {args.frames} frames in chunks of {args.chunk_frames}; |embedding| ≤ {np.abs(chunked).max():.2f}"
    )
    for key, value in results.items():
        print(f"   {key:40s} {value:.1e}")
    return {k: float(v) for k, v in results.items()}


if __name__ == "__main__":
    main()
