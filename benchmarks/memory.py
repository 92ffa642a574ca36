"""Peak memory of embedding long recordings: ecapa_jax's CLI vs WeSpeaker's PyTorch model, one process each.

    python -m benchmarks.memory [--minutes 10] [--window-minutes 60] [--model glob_c512] [--threads 2]

One WeSpeaker model (random initialisation, seed 0) is saved as ``model.pt`` and converted into a model
directory; one synthetic recording of ``--minutes`` (demo-corpus speech of one speaker, 16-bit WAV) is
written. Then each side runs alone in a fresh process, one after the other, restricted to the same
``--threads`` CPUs, and its peak resident memory is read from ``os.wait4`` (``ru_maxrss`` of that child, forked
from a small launcher so that this process's memory is not counted):

- ``wespeaker``: WeSpeaker's whole-utterance extraction (``cli/speaker.py``: the file read, ``kaldi.fbank``
  80 × 25/10 ms hamming, mean CMN, the model on the whole utterance under ``inference_mode``); the file is
  read with soundfile as torchaudio's native loader is absent here;
- ``ecapa_jax``: ``python -m ecapa_jax.embed --model DIR FILE --out emb.npz``, as a user runs it (files over
  30 s are streamed and embedded whole in chunks, ``ecapa_jax.models.long_form``);
- ``ecapa_jax whole``: the same with ``--chunk-frames 0`` (one program for the whole file: what it was before);
- ``ecapa_jax windows``: ``--window 1.5 --shift 0.75`` on a ``--window-minutes`` recording (the first file
  repeated), whose memory must not grow with the length.

It prints each peak, the ratios, and the cosine of our embeddings with WeSpeaker's (same weights).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks import common
from ecapa_jax.io.convert.wespeaker import wespeaker_to_dir

# WeSpeaker's side, run as `python -c`: argv = tests dir, model.pt, wav, out.npy, channels, global context, threads.
WESPEAKER = """
import sys
sys.path.insert(0, sys.argv[1])
import numpy as np, soundfile as sf, torch
import oracles  # tests/oracles.py: WeSpeaker's model code without its package __init__ (also imports pytest, ~7 MB)
from torchaudio.compliance import kaldi
ecapa = oracles.wespeaker("models.ecapa_tdnn")
torch.set_num_threads(int(sys.argv[7]))
model = ecapa.ECAPA_TDNN(channels=int(sys.argv[5]), feat_dim=80, embed_dim=192, global_context_att=sys.argv[6] == "1")
model.load_state_dict(torch.load(sys.argv[2], weights_only=True))
model.eval()
samples, rate = sf.read(sys.argv[3], dtype="int16")  # int16 scale, as torchaudio.load(normalize=False)
wave = torch.from_numpy(samples.astype(np.float32))[None]
with torch.inference_mode():
    feats = kaldi.fbank(wave, num_mel_bins=80, frame_length=25, frame_shift=10, sample_frequency=rate,
                        window_type="hamming")
    feats = feats - torch.mean(feats, dim=0)
    emb = model(feats[None])[-1][0]
np.save(sys.argv[4], emb.numpy())
"""


def synthetic_recording(path: Path, minutes: float, seed: int = 0) -> float:
    """Writes ``minutes`` of one synthetic speaker (demo-corpus utterances back to back), 16-bit; returns seconds."""
    from train.demo_corpus import DemoCorpus

    n = max(1, round(minutes * 60 / 10))
    corpus = DemoCorpus(num_speakers=1, utts_per_speaker=n, seed=seed, min_duration=10.0, max_duration=10.0)
    with sf.SoundFile(path, "w", 16000, 1, "PCM_16") as f:
        for utt, _ in corpus.utterances:
            f.write(corpus.waveform(utt))
    return sf.info(path).duration


def repeat_recording(src: Path, dst: Path, times: int) -> float:
    """``src`` written ``times`` times back to back into ``dst`` (one block in memory); returns seconds."""
    samples, rate = sf.read(src, dtype="int16")
    with sf.SoundFile(dst, "w", rate, 1, "PCM_16") as f:
        for _ in range(times):
            f.write(samples)
    return sf.info(dst).duration


# Starts argv[2:] and writes "<its ru_maxrss in KB> <exit code>" to argv[1]. A process's peak RSS includes the
# peak of the address space it was forked from until it execs (Linux keeps the old mm's high-water mark), so the
# command is forked from this small launcher (~10 MB), never from the benchmark with torch and jax loaded.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def peak_rss(cmd: Sequence[str]) -> tuple[float, float]:
    """Runs ``cmd`` (on this process's CPUs); returns (its peak RSS in MB, wall seconds). Raises on a non-zero exit."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.getcwd()}
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "rusage"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", LAUNCHER, str(report), *cmd], env=env, check=True)
        wall = time.perf_counter() - start
        maxrss, code = map(int, report.read_text().split())
    if code:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... exited with {code}")
    return maxrss / 1024, wall  # Linux: kilobytes


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Runs every side; returns peak RSS in MB per side and the cosines."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="CPUs for every process (default: 2)")
    p.add_argument("--minutes", type=float, default=10.0, help="length of the whole-file recording")
    p.add_argument("--window-minutes", type=float, default=60.0, help="length of the sliding-window recording")
    common.add_model_arguments(p)
    args = p.parse_args(argv)
    if not 1 <= args.threads <= len(os.sched_getaffinity(0)):
        p.error(f"--threads must be in [1, {len(os.sched_getaffinity(0))}], got {args.threads}")
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.threads])  # inherited by every child
    torch = common.import_torch()
    config = common.model_config(args)
    print(
        common.banner({"model": f"{args.model} (channels {config.channels}), eval, float32", "threads": args.threads})
    )

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ecapa_memory_") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        torch.save(common.wespeaker_model(config).state_dict(), tmp / "model.pt")
        wespeaker_to_dir(tmp / "model.pt", tmp / "model")
        seconds = synthetic_recording(tmp / "long.wav", args.minutes)
        repeats = max(1, round(args.window_minutes / args.minutes))
        window_seconds = repeat_recording(tmp / "long.wav", tmp / "longer.wav", repeats)
        print(f"recordings: {seconds / 60:.1f} min (whole file), {window_seconds / 60:.1f} min (windows)")

        py = sys.executable
        embed = [py, "-m", "ecapa_jax.embed", "--model", str(tmp / "model")]
        theirs = [py, "-c", WESPEAKER, common.TESTS_DIR, str(tmp / "model.pt"), str(tmp / "long.wav")]
        theirs += [
            str(tmp / "theirs.npy"),
            str(config.channels),
            str(int(config.global_context_att)),
            str(args.threads),
        ]
        runs = {
            "wespeaker": theirs,
            "ecapa_jax": [*embed, str(tmp / "long.wav"), "--out", str(tmp / "ours.npz")],
            "ecapa_jax whole": [*embed, str(tmp / "long.wav"), "--out", str(tmp / "whole.npz"), "--chunk-frames", "0"],
            "ecapa_jax windows": [*embed, str(tmp / "longer.wav"), "--out", str(tmp / "win.npz"), "--window", "1.5"],
        }
        runs["ecapa_jax windows"] += ["--shift", "0.75"]
        print(f"\n-- peak resident memory, each side alone in its own process ({args.threads} CPUs)")
        for name, cmd in runs.items():
            rss, wall = peak_rss(cmd)
            results[name] = rss
            what = f"{window_seconds / 60:.1f} min, 1.5 s / 0.75 s windows" if "windows" in name else "whole file"
            print(f"   {name:18s} {rss:8.0f} MB  ({what}, {wall:.1f} s wall)")
        want = np.load(tmp / "theirs.npy")
        with np.load(tmp / "ours.npz") as ours, np.load(tmp / "whole.npz") as whole:
            results["cosine chunked vs wespeaker"] = cosine(ours["long"], want)
            results["cosine whole vs wespeaker"] = cosine(whole["long"], want)
            results["cosine chunked vs whole"] = cosine(ours["long"], whole["long"])
        with np.load(tmp / "win.npz") as windows:
            results["windows"] = len(windows.files)
    print(
        f"   ratio wespeaker / ecapa_jax: {results['wespeaker'] / results['ecapa_jax']:.2f}x less memory "
        f"(whole-file program: {results['wespeaker'] / results['ecapa_jax whole']:.2f}x); "
        f"windows: {results['ecapa_jax windows']:.0f} MB for {results['windows']:.0f} windows"
    )
    for key in ("cosine chunked vs wespeaker", "cosine whole vs wespeaker", "cosine chunked vs whole"):
        print(f"   {key}: {results[key]:.8f}")
    return results


if __name__ == "__main__":
    main()
