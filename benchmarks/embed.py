"""Embedding extraction, eval mode: ecapa_jax vs WeSpeaker's PyTorch model, utterances per second.

    python -m benchmarks.embed [--threads 2] [--repeats 7] [--cases 8x2 4x10] [--model glob_c512]

Both sides hold the same weights (WeSpeaker's random initialisation, copied into our layout) and
embed the same batch of equal-length utterances; the script checks the embeddings agree before
timing. Two paths per case:

- features → embedding: the model alone on mean-normalised fbank (B, T, 80).
- waveform → embedding: ours is `ecapa_jax.encoder.embed_waveforms` (fbank + CMN + model in one
  jitted program, the path `Encoder.embed_batch` runs); theirs is WeSpeaker's extraction front-end,
  ``torchaudio.compliance.kaldi.fbank`` per utterance (waveform × 32768, 80 bins, 25/10 ms, hamming,
  dither 0) and mean subtraction, then the model on the stacked batch, under ``torch.inference_mode``.

Each side's model GFLOP/s (2 × the analytic multiply-adds of the model at T frames, the same count for
both) is shown as a fraction of the float32 GEMM rate measured first (`common.gemm_rate`): the
ceiling any implementation of this model can approach on the machine.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.flops import model_macs
from ecapa_jax.encoder import embed_waveforms
from ecapa_jax.frontend.kaldi import KaldiFrontEnd, wespeaker_features
from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig

SAMPLE_RATE = 16000
FRONT_END = KaldiFrontEnd()  # WeSpeaker's inference front-end: 16 kHz, 80 bins, dither 0


def torch_features(torch, kaldi, wavs: np.ndarray):
    """WeSpeaker's extraction front-end per utterance, stacked: (B, N) → (B, T, 80) torch tensor."""
    feats = []
    for w in torch.from_numpy(wavs):
        f = kaldi.fbank(
            w[None] * (1 << 15),
            num_mel_bins=80,
            frame_length=25,
            frame_shift=10,
            dither=0.0,
            sample_frequency=SAMPLE_RATE,
            window_type="hamming",
        )
        feats.append(f - f.mean(dim=0))  # CMN, mean only
    return torch.stack(feats)


def run_case(
    batch: int, seconds: float, args, config: EcapaConfig, variables, theirs, kaldi, peak: float
) -> dict[str, float]:
    """Both paths for one batch of ``batch`` random utterances of ``seconds``; prints and returns the ratios."""
    torch = common.import_torch()
    samples = int(seconds * SAMPLE_RATE)
    wavs = (0.1 * np.random.default_rng(0).standard_normal((batch, samples))).astype(np.float32)  # (B, N)
    lengths = np.full(batch, samples, np.int32)
    feats = wespeaker_features(wavs)[0]  # (B, T, 80)
    feats_t = torch.from_numpy(np.array(feats))
    model = ECAPA_TDNN(config)
    ours_feats = jax.jit(lambda v, f: model.apply(v, f, train=False)[0])

    def run_theirs(x):
        with torch.inference_mode():
            return theirs(x)[-1]

    ref = run_theirs(torch_features(torch, kaldi, wavs)).numpy()
    ours = np.asarray(embed_waveforms(variables, wavs, lengths, config, FRONT_END))
    err = float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))
    name = f"{batch}x{seconds:g}s"
    print(
        f"\ncase: batch {batch} x {seconds:g} s ({feats.shape[1]} frames); max |ours - theirs| / max |theirs| {err:.1e}"
    )

    timings = common.interleaved(
        {
            "ecapa_jax": lambda: ours_feats(variables, feats).block_until_ready(),
            "wespeaker": lambda: run_theirs(feats_t),
        },
        args.repeats,
        args.warmup,
    )
    title = f"features -> embedding, batch {batch} x {seconds:g} s"
    flops = 2 * batch * model_macs(config, feats.shape[1])
    report = functools.partial(common.report, flops=flops, peak=peak)
    ratios = {f"{name} features": report(title, timings, batch, "utt/s", "ecapa_jax", "wespeaker")}
    wav_j = jnp.asarray(wavs)
    timings = common.interleaved(
        {
            "ecapa_jax": lambda: embed_waveforms(variables, wav_j, lengths, config, FRONT_END).block_until_ready(),
            "wespeaker": lambda: run_theirs(torch_features(torch, kaldi, wavs)),
        },
        args.repeats,
        args.warmup,
    )
    title = f"waveform -> embedding, batch {batch} x {seconds:g} s"
    ratios[f"{name} waveform"] = report(title, timings, batch, "utt/s", "ecapa_jax", "wespeaker")
    return ratios


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Runs every case; returns {'<B>x<s>s <path>': ratio ours / theirs}."""
    p = common.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--cases", nargs="+", default=["8x2", "4x10"], help="BATCHxSECONDS, e.g. 8x2 4x10")
    common.add_model_arguments(p)
    args = common.parse(p, argv)
    cases = [tuple(float(v) for v in c.split("x")) for c in args.cases]

    pinned, config, theirs = common.side_by_side(args)
    from torchaudio.compliance import kaldi

    variables = jax.device_put(common.wespeaker_variables(theirs))
    print(common.banner({"model": f"{args.model} (channels {config.channels}), eval, float32", **pinned}))
    peak = max(common.gemm_rate(args.repeats).values())

    ratios = {}
    for batch, seconds in cases:
        ratios.update(run_case(int(batch), seconds, args, config, variables, theirs, kaldi, peak))
    return ratios


if __name__ == "__main__":
    main()
