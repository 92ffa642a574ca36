"""The fbank front-end: ecapa_jax vs torchaudio's kaldi.fbank vs kaldi-native-fbank, seconds of audio per second.

    python -m benchmarks.fbank [--threads 2] [--repeats 7] [--batch 8] [--seconds 10]

All three compute WeSpeaker's features (80 bins, 25/10 ms, hamming, dither 0, waveform × 32768)
followed by mean-only CMN, for a batch of equal-length utterances. Ours is
`ecapa_jax.frontend.kaldi.wespeaker_features`, one jitted program for the batch; torchaudio's
``compliance.kaldi.fbank`` (what WeSpeaker calls) and kaldi-native-fbank's ``OnlineFbank`` take
one utterance at a time, so they loop over the batch. The script checks the features agree first.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.embed import SAMPLE_RATE, torch_features
from ecapa_jax.frontend.kaldi import wespeaker_features


def knf_features(knf, wavs: np.ndarray) -> np.ndarray:
    """kaldi-native-fbank with WeSpeaker's settings per utterance, then CMN: (B, N) → (B, T, 80)."""
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.frame_length_ms = 25
    opts.frame_opts.frame_shift_ms = 10
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hamming"
    opts.mel_opts.num_bins = 80
    opts.use_energy = False
    out = []
    for w in wavs:
        fbank = knf.OnlineFbank(opts)
        fbank.accept_waveform(SAMPLE_RATE, (w * (1 << 15)).tolist())
        fbank.input_finished()
        f = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])  # (T, 80)
        out.append(f - f.mean(axis=0))
    return np.stack(out)


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Times the three; returns {'torchaudio' | 'kaldi-native-fbank': ratio ours / theirs}."""
    p = common.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    args = common.parse(p, argv)

    common.wespeaker("models.ecapa_tdnn")  # the oracles' torch import, before the threads are set
    import kaldi_native_fbank as knf
    from torchaudio.compliance import kaldi

    torch = common.import_torch()
    pinned = common.pin_threads(args.threads)
    print(common.banner({"input": f"batch {args.batch} x {args.seconds:g} s at {SAMPLE_RATE} Hz", **pinned}))
    rng = np.random.default_rng(0)
    wavs = (0.1 * rng.standard_normal((args.batch, int(args.seconds * SAMPLE_RATE)))).astype(np.float32)  # (B, N)
    wav_j = jnp.asarray(wavs)

    ours = np.asarray(wespeaker_features(wav_j)[0])
    for name, ref in (("torchaudio", torch_features(torch, kaldi, wavs).numpy()), ("knf", knf_features(knf, wavs))):
        print(f"max |ours - {name}| = {np.max(np.abs(ours - ref)):.1e} (log-mel units)")

    audio = args.batch * args.seconds
    fns = {
        "ecapa_jax": lambda: wespeaker_features(wav_j)[0].block_until_ready(),
        "torchaudio": lambda: torch_features(torch, kaldi, wavs),
        "kaldi-native-fbank": lambda: knf_features(knf, wavs),
    }
    timings = common.interleaved(fns, args.repeats, args.warmup)
    ratios = {"torchaudio": common.report("fbank + CMN", timings, audio, "audio s/s", "ecapa_jax", "torchaudio")}
    theirs = timings["kaldi-native-fbank"]
    ratios["kaldi-native-fbank"] = theirs.median / timings["ecapa_jax"].median
    print(f"   ratio ecapa_jax / kaldi-native-fbank: {ratios['kaldi-native-fbank']:.2f}x")
    return ratios


if __name__ == "__main__":
    main()
