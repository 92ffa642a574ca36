"""Everything a GPU run needs to show, in one call: training step, extraction, augmentation share, host loader.

    python -m benchmarks.gpu [--out gpu_results.json] [--budget-s 450] [--tiny]

On one accelerator, with JAX and PyTorch installed (plus this project's pure-Python dependencies and
``wespeaker-unofficial``, installed with ``--no-deps``; ``torchaudio`` is optional), it measures:

1. the device, the versions, and the accelerator's dense peak (a table by device name) next to the
   bf16 matmul rate it actually reaches here (``--matmul`` size);
2. our training step (`train.step`: fbank with dither + ECAPA GLOB_c512 + AAM over 17,982 classes +
   nesterov SGD, jitted, donated, batch 128 × 200 frames) in float32 and in bfloat16 (``model.dtype``),
   against WeSpeaker's model + ``ArcMarginProduct`` + SGD on the same device in float32 and with AMP
   (``torch.autocast`` float16 + ``GradScaler``, WeSpeaker's ``enable_amp``), features precomputed as
   its data loader does: samples/s, ratios, and MFU (3 × 2 × the model's multiply-adds per sample,
   the same count for both sides, over the table's peak);
3. embedding extraction, 64 × 10 s waveforms: ours (``encoder.embed_waveforms``, fp32 and bf16) vs
   WeSpeaker's model under ``inference_mode`` (fp32 and fp16 autocast), features precomputed;
   and corpus extraction (``benchmarks.extract.extraction_throughput``: ``Encoder.embed_files`` over 300
   synthetic files of 2–20 s with reading threads and length buckets, fp32 and bf16): files/s and RTF;
4. the device augmentation's share of the bf16 step (`train.augment.DeviceAugment` on a batch shaped
   as the loader hands it over for the recipe; float32 in ``--tiny`` mode);
5. the host loader (`python -m train.data`) on generated VoxCeleb/MUSAN/RIRS-shaped data with the
   recipe's settings, one core and all cores (``num_workers`` = cores).

Each section is guarded: a failure is printed and recorded, the others still run, and sections are
skipped once ``--budget-s`` is spent. Every figure is printed with its unit and written to ``--out``
(JSON). ``--tiny`` runs everything at toy sizes on any backend (the CPU test in `make test`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Dense peak FLOP/s by device name (vendor datasheets; SXM parts, no sparsity): (bf16/fp16 tensor, fp32).
PEAKS = {
    "H200": (989e12, 67e12),
    "H100": (989e12, 67e12),
    "A100": (312e12, 19.5e12),
    "L40S": (362e12, 91.6e12),
    "L4": (121e12, 30.3e12),
    "A10": (125e12, 31.2e12),
    "V100": (125e12, 15.7e12),
    "T4": (65e12, 8.1e12),
    "TPU v4": (275e12, 275e12),
    "TPU v5 lite": (197e12, 197e12),
    "TPU v5e": (197e12, 197e12),
    "TPU v5p": (459e12, 459e12),
    "TPU v6": (918e12, 918e12),
}


def peak_for(device_kind: str) -> tuple[float, float] | None:
    """(bf16, fp32) dense peak FLOP/s of a device from `PEAKS`, or None when it is not listed."""
    for name in sorted(PEAKS, key=len, reverse=True):  # longest first: "L40S" before "L4"
        if name.lower() in device_kind.lower():
            return PEAKS[name]
    return None


class Report:
    """Figures with units, printed as they come and collected for the JSON file."""

    def __init__(self, budget_s: float):
        self.results: dict[str, Any] = {"figures": {}, "errors": {}, "skipped": []}
        self.start, self.budget = time.perf_counter(), budget_s

    def figure(self, name: str, value: float | None, unit: str, note: str = "") -> None:
        self.results["figures"][name] = {"value": value, "unit": unit, **({"note": note} if note else {})}
        shown = "n/a" if value is None else (f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}")
        print(f"   {name:52s} {shown:>14s} {unit}{'  (' + note + ')' if note else ''}", flush=True)

    def section(self, name: str, fn: Callable[[], None]) -> None:
        elapsed = time.perf_counter() - self.start
        if elapsed > self.budget:
            print(f"\n== {name}: skipped, {elapsed:.0f} s of the {self.budget:.0f} s budget spent", flush=True)
            self.results["skipped"].append(name)
            return
        print(f"\n== {name} (at {elapsed:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken section must not cost the others' figures
            traceback.print_exc()
            self.results["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"   FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)


def timed(fn: Callable[[], Any], iters: int, warmup: int = 2) -> float:
    """Seconds per call: ``warmup`` calls (compilation), then ``iters`` calls dispatched back to back, one block."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    out = None
    for _ in range(iters):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / iters


def _torch_timed(torch, fn: Callable[[], Any], iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu_results.json", help="JSON file of every figure")
    p.add_argument("--budget-s", type=float, default=450.0, help="no section starts after this many seconds")
    p.add_argument("--tiny", action="store_true", help="toy sizes on any backend (the CPU test)")
    p.add_argument("--iters", type=int, default=20, help="timed steps per measurement")
    args = p.parse_args(argv)
    from benchmarks.augment import loader_batch
    from benchmarks.flops import model_macs
    from benchmarks.train_step import CLASSES, _jitted_step, fresh_state
    from ecapa_jax.encoder import embed_waveforms
    from ecapa_jax.frontend.kaldi import KaldiFrontEnd, wespeaker_features
    from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig
    from train import augment
    from train import step as train_step
    from train.data import chunk_samples

    tiny = args.tiny
    batch, frames, classes = (2, 20, 6) if tiny else (128, 200, CLASSES)
    emb_batch, emb_seconds = (2, 0.5) if tiny else (64, 10.0)
    iters = 2 if tiny else args.iters
    config = EcapaConfig.glob_c512().replace(channels=16) if tiny else EcapaConfig.glob_c512()
    length = chunk_samples(frames)
    report = Report(args.budget_s)
    dev = jax.devices()[0]
    peak = peak_for(dev.device_kind)
    flops_per_sample = 3 * 2 * (model_macs(config, frames) + config.embed_dim * classes)
    rng = np.random.default_rng(0)

    def environment():
        report.results["device"] = {"platform": dev.platform, "kind": dev.device_kind, "count": jax.device_count()}
        print(f"   device: {dev.device_kind} ({dev.platform}, {jax.device_count()} device(s)), {os.cpu_count()} CPUs")
        import flax

        versions = {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__}
        try:
            import torch

            versions["torch"] = torch.__version__
            if torch.cuda.is_available():
                versions["torch_device"] = torch.cuda.get_device_name(0)
        except ImportError:
            versions["torch"] = None
        report.results["versions"] = versions
        print(f"   versions: {versions}")
        report.figure("peak bf16 (datasheet)", peak and peak[0] / 1e12, "TFLOP/s", "" if peak else "device not listed")
        report.figure("peak fp32 (datasheet)", peak and peak[1] / 1e12, "TFLOP/s")
        n = 256 if tiny else 8192
        a = jnp.ones((n, n), jnp.bfloat16)
        dot = jax.jit(lambda x: x @ x)
        sec = timed(lambda: dot(a), 3 if tiny else 20)
        report.figure(f"measured bf16 matmul {n}^3", 2 * n**3 / sec / 1e12, "TFLOP/s")
        report.figure("model FLOPs per training sample (3 x 2 x MACs)", flops_per_sample / 1e9, "GFLOP")

    ours_rates: dict[str, float] = {}

    def ours_steps():
        wav = jnp.asarray((0.1 * rng.standard_normal((batch, length))).astype(np.float32))
        labels = jnp.asarray(rng.integers(0, classes, batch).astype(np.int32))
        for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
            cfg = config.replace(dtype=dtype)
            model, head, tx, mesh, step = _jitted_step(cfg, classes)
            state = fresh_state(model, head, tx, mesh, length)
            placed = train_step.shard_batch({"wav": wav, "label": labels}, mesh)
            holder = [state]

            def run(step=step, placed=placed, holder=holder):
                holder[0], metrics = step(holder[0], placed, jax.random.key(1))
                return metrics["loss"]

            rate = batch / timed(run, iters)
            ours_rates[name] = rate
            report.figure(f"ours train step {name}, {batch} x {frames} frames", rate, "samples/s")
            if peak:
                report.figure(f"ours train step {name} MFU", 100 * rate * flops_per_sample / peak[0], "% of bf16 peak")

    def theirs_steps():
        from benchmarks import common

        torch = common.import_torch()
        projections = common.wespeaker("models.projections")

        device = "cuda" if torch.cuda.is_available() else "cpu"
        torch.backends.cudnn.benchmark = True  # as WeSpeaker's train.py
        wav = (0.1 * rng.standard_normal((batch, length))).astype(np.float32)
        feats = torch.from_numpy(np.array(wespeaker_features(wav)[0])).to(device)
        labels = torch.from_numpy(rng.integers(0, classes, batch)).long().to(device)
        for name, amp in (("fp32", False), ("AMP fp16", True)):
            torch.manual_seed(0)
            model = common.wespeaker_model(config).train().to(device)
            proj = projections.ArcMarginProduct(config.embed_dim, classes, scale=32.0, margin=0.2).to(device)
            opt = torch.optim.SGD(
                list(model.parameters()) + list(proj.parameters()), lr=0.1, momentum=0.9, nesterov=True,
                weight_decay=1e-4,
            )  # fmt: skip
            scaler = torch.amp.GradScaler(device, enabled=amp and device == "cuda")

            def run(model=model, proj=proj, opt=opt, scaler=scaler, amp=amp):
                with torch.autocast(device, dtype=torch.float16, enabled=amp and device == "cuda"):
                    logits = proj(model(feats)[-1], labels)
                    loss = torch.nn.functional.cross_entropy(logits, labels)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()

            rate = batch / _torch_timed(torch, run, iters)
            report.figure(f"WeSpeaker train step {name}", rate, "samples/s", "features precomputed")
            if peak:
                report.figure(
                    f"WeSpeaker train step {name} MFU", 100 * rate * flops_per_sample / peak[0], "% of bf16 peak"
                )
            ours = ours_rates.get("bf16" if amp else "fp32")
            if ours:
                report.figure(f"ratio ours {'bf16' if amp else 'fp32'} / WeSpeaker {name}", ours / rate, "x")

    def extraction():
        from benchmarks import common

        samples = int(emb_seconds * 16000)
        wav = (0.1 * rng.standard_normal((emb_batch, samples))).astype(np.float32)
        lengths = jnp.full((emb_batch,), samples, jnp.int32)
        wav_j = jnp.asarray(wav)
        model = ECAPA_TDNN(config)
        variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, frames, config.feat_dim)))
        ours = {}
        for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
            cfg = config.replace(dtype=dtype)
            sec = timed(lambda cfg=cfg: embed_waveforms(variables, wav_j, lengths, cfg, KaldiFrontEnd()), iters)
            ours[name] = emb_batch / sec
            report.figure(
                f"ours extraction {name}, waveform -> emb, {emb_batch} x {emb_seconds:g} s", ours[name], "utt/s"
            )
        torch = common.import_torch()

        device = "cuda" if torch.cuda.is_available() else "cpu"
        theirs = common.wespeaker_model(config).to(device)
        feats = torch.from_numpy(np.array(wespeaker_features(wav)[0])).to(device)
        for name, amp in (("fp32", False), ("fp16 autocast", True)):

            def run(amp=amp):
                with torch.inference_mode(), torch.autocast(device, torch.float16, enabled=amp and device == "cuda"):
                    return theirs(feats)[-1]

            rate = emb_batch / _torch_timed(torch, run, iters)
            report.figure(f"WeSpeaker extraction {name}, features -> emb", rate, "utt/s", "features precomputed")
            report.figure(
                f"ratio ours {'bf16' if amp else 'fp32'} / WeSpeaker {name}",
                ours["bf16" if amp else "fp32"] / rate,
                "x",
            )

    def corpus_extraction():
        from benchmarks.extract import extraction_throughput, make_corpus
        from ecapa_jax.encoder import Encoder

        files, seconds = (6, (0.5, 1.5)) if tiny else (300, (2.0, 20.0))
        variables = jax.jit(ECAPA_TDNN(config).init)(jax.random.key(0), jnp.zeros((1, frames, config.feat_dim)))
        with tempfile.TemporaryDirectory() as tmp:
            table = make_corpus(tmp, files, seconds)
            for name, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
                encoder = Encoder(config.replace(dtype=dtype), variables)
                r = extraction_throughput(encoder, table, batch_size=4 if tiny else 64, workers=os.cpu_count() or 1)
                note = f"RTF {r['rtf']:.2g}, {r['audio_s']:.0f} s of audio, compile pass {r['compile_pass_s']:.0f} s"
                report.figure(f"ours corpus extraction {name}, {files} files", r["files_per_s"], "files/s", note)

    def augmentation_share():
        aug = augment.DeviceAugment(length, num_speakers=max(classes // 3, 1), speed_perturb=True)
        # bf16 on the accelerator; float32 in tiny mode, where it is the step `benchmarks.augment` compiled already
        dtype_name, dtype = ("fp32", jnp.float32) if tiny else ("bf16", jnp.bfloat16)
        cfg = config.replace(dtype=dtype)
        loaded = loader_batch(rng, batch, length, max(classes // 3, 1), min(24000, length))
        plain = {"wav": (0.1 * rng.standard_normal((batch, length))).astype(np.float32), "label": loaded["label"]}
        rates = {}
        for name, a, host in (("without", None, plain), ("with", aug, loaded)):
            model, head, tx, mesh, step = _jitted_step(cfg, classes, a)
            state = fresh_state(model, head, tx, mesh, length)
            placed = train_step.shard_batch(host, mesh)
            holder = [state]

            def run(step=step, placed=placed, holder=holder):
                holder[0], metrics = step(holder[0], placed, jax.random.key(1))
                return metrics["loss"]

            rates[name] = timed(run, iters)
            report.figure(f"ours {dtype_name} step {name} device augmentation", batch / rates[name], "samples/s")
        report.figure("device augmentation's share of the step", 100 * (rates["with"] / rates["without"] - 1), "%")

    def host_loader():
        from benchmarks.pipeline import make_corpus, recipe_overrides

        with tempfile.TemporaryDirectory() as tmp:
            paths = make_corpus(tmp, 12 if tiny else 600, noise_files=3 if tiny else 12, rirs=10 if tiny else 200)
            cpus = sorted(os.sched_getaffinity(0))  # the CPUs this process may use (a container's share)
            one, every = str(cpus[0]), ",".join(map(str, cpus))
            for name, workers, pinned in (("1 core", 0, one), (f"{len(cpus)} cores", len(cpus), every)):
                cmd = ["taskset", "-c", pinned, sys.executable, "-m", "train.data", "--config", "voxceleb_glob_c512"]
                cmd += ["--repeats", "1" if tiny else "3", "--batches", "1" if tiny else "10"]
                cmd += recipe_overrides(paths, os.path.join(tmp, "cache"), workers, 4 if tiny else 256)
                out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=_ROOT)
                if out.returncode:
                    raise RuntimeError(f"python -m train.data failed: {out.stderr[-1000:]}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                report.figure(f"host loader, recipe settings, {name}", result["samples_per_s"], "samples/s")

    report.section("environment", environment)
    report.section("our training step", ours_steps)
    report.section("WeSpeaker's training step", theirs_steps)
    report.section("embedding extraction", extraction)
    report.section("corpus extraction", corpus_extraction)
    report.section("device augmentation", augmentation_share)
    report.section("host loader", host_loader)
    report.results["total_s"] = time.perf_counter() - report.start
    with open(args.out, "w") as f:
        json.dump(report.results, f, indent=2)
    print(f"\nwrote {args.out} ({report.results['total_s']:.0f} s; {len(report.results['errors'])} section(s) failed)")
    return report.results


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if __name__ == "__main__":
    main()
    sys.exit(0)
