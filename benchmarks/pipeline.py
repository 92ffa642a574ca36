"""Host input pipeline: `python -m train.data` on VoxCeleb/MUSAN/RIRS-shaped data, and side by side the host-side
augmentation it replaces.

    python -m benchmarks.pipeline [--cores 1] [--utts 600] [--repeats 5] [--batches 20] [--keep DIR]

Generates (never committed; in a temporary directory unless ``--keep``) a Kaldi dir of 4–12 s
utterances (16-bit WAV), a MUSAN-like noise tree (noise / speech / music, 1–3 minute files) and
0.5–1.5 s RIRs, then runs, each pinned to ``--cores`` CPUs (``taskset``):

- ours: ``python -m train.data`` with the recipe's settings (speed perturbation, reverb/noise at
  p 0.6, 200-frame chunks, global batch 256, ``num_workers=0``): what the host does per sample now
  (read the windows; the rest runs in the train step). Its last line is the figure: the median of
  ``--repeats`` runs;
- grain: the same reads as an idiomatic ``grain`` pipeline (one element per sample, ``.batch()``), in
  this process pinned the same way (skipped when grain is not installed);
- host augmentation: WeSpeaker's per-sample work on the host in NumPy, as this project's loader did
  before issue 12: decode the utterance, speed-perturb it (soxr), crop the chunk, decode the whole
  noise file or RIR and mix (`train.augment.add_noise`) or convolve (``scipy.signal.convolve``),
  peak-normalise; the same odds.

It prints both rates and the ratio. The target is ≥ 10,000 samples/s per core for ours.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import soundfile as sf

SR = 16000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_corpus(directory: str, num_utts: int, num_speakers: int = 50, noise_files: int = 12, rirs: int = 200) -> dict:
    """Writes VoxCeleb/MUSAN/RIRS-shaped data (random audio of the right lengths); returns the three paths."""
    rng = np.random.default_rng(0)
    data, musan, rir_dir = (os.path.join(directory, d) for d in ("vox", "musan", "rirs"))
    os.makedirs(os.path.join(data, "wav"), exist_ok=True)
    with open(os.path.join(data, "wav.scp"), "w") as scp, open(os.path.join(data, "utt2spk"), "w") as u2s:
        for i in range(num_utts):
            path = os.path.join(data, "wav", f"u{i:05d}.wav")
            n = int(rng.uniform(4.0, 12.0) * SR)
            sf.write(path, rng.integers(-3000, 3000, n, dtype=np.int16), SR, subtype="PCM_16")
            scp.write(f"u{i:05d} {path}\n")
            u2s.write(f"u{i:05d} spk{i % num_speakers:03d}\n")
    for i in range(noise_files):
        kind = ("noise", "speech", "music")[i % 3]
        os.makedirs(os.path.join(musan, kind), exist_ok=True)
        n = int(rng.uniform(60.0, 180.0) * SR)
        sf.write(os.path.join(musan, kind, f"{kind}-{i:03d}.wav"), rng.integers(-5000, 5000, n, dtype=np.int16), SR)
    os.makedirs(rir_dir, exist_ok=True)
    for i in range(rirs):
        n = int(rng.uniform(0.5, 1.5) * SR)
        rir = np.exp(-np.arange(n) / (0.05 * SR)) * rng.standard_normal(n)
        sf.write(os.path.join(rir_dir, f"rir-{i:04d}.wav"), 0.9 * rir / np.max(np.abs(rir)), SR, subtype="PCM_16")
    return {"train_data": data, "noise_data": musan, "reverb_data": rir_dir}


def recipe_overrides(paths: dict, cache_dir: str, workers: int = 0, batch: int = 256) -> list[str]:
    """The `python -m train.data` / `python -m train` overrides of the recipe run on these paths."""
    return [
        "data.data_type=kaldi",
        f"data.train_data={paths['train_data']}",
        "data.train_label=",
        f"data.noise_data={paths['noise_data']}",
        f"data.reverb_data={paths['reverb_data']}",
        "data.aug_prob=0.6",
        "data.speed_perturb=True",
        f"data.num_workers={workers}",
        f"data.global_batch_size={batch}",
        f"data.cache_dir={cache_dir}",
    ]


def run_ours(paths: dict, cpus: Sequence[int], args: argparse.Namespace, cache_dir: str) -> dict:
    """``python -m train.data`` in a subprocess pinned to ``cpus``; its final JSON line."""
    cmd = ["taskset", "-c", ",".join(map(str, cpus)), sys.executable, "-m", "train.data"]
    cmd += ["--config", "voxceleb_glob_c512", "--repeats", str(args.repeats), "--batches", str(args.batches)]
    cmd += recipe_overrides(paths, cache_dir, args.workers, args.batch)
    print("$ " + " ".join(cmd[3:]), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"python -m train.data failed ({out.returncode}): {out.stderr[-2000:]}")
    lines = out.stdout.strip().splitlines()
    for line in lines[:-1]:
        print("   " + line)
    return json.loads(lines[-1])


def host_augment_rate(paths: dict, samples: int, seed: int = 0) -> float:
    """Samples/s of WeSpeaker's per-sample host work (decode, speed, chunk, decode noise/RIR, mix, normalise)."""
    from ecapa_jax.frontend.audio import load_audio, resample
    from train import augment
    from train.data.config import chunk_samples

    rng = np.random.default_rng(seed)
    wavs = [line.split()[1] for line in open(os.path.join(paths["train_data"], "wav.scp"))]
    noise = augment.list_audio(paths["noise_data"])
    rirs = augment.list_audio(paths["reverb_data"])
    length = chunk_samples(200)
    start = time.perf_counter()
    for _ in range(samples):
        x = load_audio(wavs[int(rng.integers(len(wavs)))])
        speed = augment.SPEEDS[int(rng.integers(3))]
        x = resample(x, round(speed * SR), SR)  # soxr, as the host pipeline this replaces did
        s = int(rng.integers(max(len(x) - length, 0) + 1))
        x = augment.tile(x[s : s + length], length)
        if rng.random() < 0.6:
            if rng.random() < 0.5:
                x = augment.peak_normalize(augment.reverberate(x, load_audio(rirs[int(rng.integers(len(rirs)))])))
            else:
                path = noise[int(rng.integers(len(noise)))]
                n = load_audio(path)
                s = int(rng.integers(max(len(n) - length, 0) + 1))
                snr = rng.uniform(*augment.SNR_RANGES[augment.noise_category(path)])
                x = augment.peak_normalize(augment.add_noise(x, augment.tile(n[s : s + length], length), snr))
    return samples / (time.perf_counter() - start)


def grain_rate(paths: dict, cache_dir: str, batch: int, batches: int, threads: int) -> float:
    """Samples/s of the same reads as an idiomatic grain pipeline: a ``MapDataset`` of positions, one sample per
    element (our `BatchReader` reading one row into its own arrays), ``.batch()`` stacking them, read with
    ``num_threads`` threads. The per-element work is ours; what differs is grain's per-element machinery and
    the stacking copy that batch-granular reading into one array avoids."""
    import grain

    from train.config import apply_overrides, load_config
    from train.data import make_source
    from train.data.loader import reuse_freed_memory
    from train.data.pipeline import BatchReader

    config = apply_overrides(load_config("voxceleb_glob_c512"), recipe_overrides(paths, cache_dir, 0, batch)).data
    reuse_freed_memory()
    reader = BatchReader(make_source(config), config)

    def sample(position: int) -> dict:
        step, row = divmod(position, batch)
        plan = reader.plan(0, step, row, 1)
        one = reader.allocate(1)
        reader.read(plan, range(1), one)
        return {k: v[0] for k, v in one.items()}

    steps = min(batches + 1, len(reader.usable) // batch)
    options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * batch if threads else 0)
    ds = grain.MapDataset.range(steps * batch).map(sample).batch(batch).to_iter_dataset(options)
    it = iter(ds)
    next(it)  # warm-up
    start = time.perf_counter()
    for _ in range(steps - 1):
        next(it)
    return (steps - 1) * batch / (time.perf_counter() - start)


def main(argv: Sequence[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=1, help="CPUs each side is pinned to")
    p.add_argument("--workers", type=int, default=0, help="data.num_workers for ours")
    p.add_argument("--utts", type=int, default=600, help="utterances generated (4-12 s each)")
    p.add_argument("--noise-files", type=int, default=12, help="MUSAN-like files of 1-3 min")
    p.add_argument("--rirs", type=int, default=200, help="RIRs of 0.5-1.5 s")
    p.add_argument("--batch", type=int, default=256, help="global batch (the recipe's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches", type=int, default=20, help="timed batches of 256 per run (ours)")
    p.add_argument("--host-samples", type=int, default=300, help="samples timed for the host augmentation")
    p.add_argument("--keep", default="", help="generate into (or reuse) this directory instead of a temporary one")
    args = p.parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))[: args.cores]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        marker = os.path.join(root, "paths.json")
        if os.path.isfile(marker):
            paths = json.load(open(marker))
        else:
            start = time.perf_counter()
            paths = make_corpus(root, args.utts, noise_files=args.noise_files, rirs=args.rirs)
            json.dump(paths, open(marker, "w"))
            print(f"generated {args.utts} utterances, {args.noise_files} noise files, {args.rirs} RIRs in "
                  f"{time.perf_counter() - start:.0f} s under {root}")  # fmt: skip
        ours = run_ours(paths, cpus, args, os.path.join(root, "cache"))
        os.sched_setaffinity(0, cpus)
        host = [host_augment_rate(paths, args.host_samples, seed) for seed in range(min(args.repeats, 3))]
        grains = []
        try:
            for _ in range(args.repeats):
                grains.append(grain_rate(paths, os.path.join(root, "cache"), args.batch, args.batches, args.workers))
        except ImportError:
            print("   grain is not installed: pip install grain (the comparison is skipped)")
    result = {
        "cores": args.cores,
        "ours_samples_per_s": ours["samples_per_s"],
        "ours_runs": ours["runs"],
        "host_augment_samples_per_s": statistics.median(host),
        "ratio": ours["samples_per_s"] / statistics.median(host),
        "grain_samples_per_s": statistics.median(grains) if grains else None,
    }
    print(f"-- host side, {args.cores} core(s), recipe settings (speed, reverb/noise p 0.6, 200 frames):")
    print(f"   ours (python -m train.data, read + crop)   {ours['samples_per_s']:10.1f} samples/s (median)")
    print(f"   host augmentation (WeSpeaker's design)    {result['host_augment_samples_per_s']:10.1f} samples/s")
    if grains:
        print(f"   grain (same reads, per element + .batch)  {result['grain_samples_per_s']:10.1f} samples/s (median)")
        print(f"   ratio ours / grain: {ours['samples_per_s'] / result['grain_samples_per_s']:.2f}x")
    print(f"   ratio ours / host augmentation: {result['ratio']:.1f}x; target >= 10,000 samples/s per core")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
