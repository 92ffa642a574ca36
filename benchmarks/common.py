"""Shared machinery of the side-by-side benchmarks: thread pinning, interleaved timing, the banner.

Every script times ecapa_jax and WeSpeaker's PyTorch code in one process, alternating the two
(ours, theirs, ours, theirs, ...) after a warm-up, so slow drifts of a shared machine hit both
sides alike; it reports medians, the spread (min–max) and the throughput ratio ecapa_jax / WeSpeaker.

Threads (``--threads T``, set on both sides before either runs anything):

- the process (and every thread it starts later) is restricted to T CPUs with ``sched_setaffinity``
  when T is below the CPUs available. XLA's CPU client sizes its thread pool from the affinity
  mask (``tsl::port::MaxParallelism``) when the backend starts; jaxlib 0.10 has no XLA_FLAGS flag
  for the pool size (``intra_op_parallelism_threads`` is a compile option, not a flag, and an
  unknown XLA flag is a fatal error);
- ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=true`` (the default, set explicitly): Eigen matmuls and
  convolutions use that pool;
- ``torch.set_num_threads(T)`` for PyTorch's intra-op pool.

The banner counts XLA's pool threads (Linux names ``tf_XLAEigen``: T of them, checked for T = 1, 2),
and each timing records the process CPU time, so the reports show the cores each side really kept
busy (CPU seconds / wall seconds).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

TESTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def add_arguments(parser: argparse.ArgumentParser, repeats: int = 7) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--threads``, ``--repeats``, ``--warmup``."""
    parser.add_argument("--threads", type=int, default=2, help="threads on both sides (default: 2)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed runs per side, interleaved")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side after compilation")
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--model`` (a WeSpeaker ECAPA preset, default GLOB_c512) and ``--channels`` (an override for smoke runs)."""
    parser.add_argument("--model", default="glob_c512", choices=["c512", "c1024", "glob_c512", "glob_c1024"])
    parser.add_argument("--channels", type=int, default=0, help="override the channels (tiny smoke runs)")
    return parser


def model_config(args: argparse.Namespace):
    """The ``EcapaConfig`` that ``--model`` and ``--channels`` ask for."""
    from ecapa_jax.models.ecapa import EcapaConfig

    config = EcapaConfig.preset(args.model)
    return config.replace(channels=args.channels) if args.channels else config


def pin_threads(threads: int) -> dict[str, Any]:
    """Restricts XLA and PyTorch to ``threads`` CPUs; call before JAX's backend starts.

    Returns:
      what was set: ``{'threads', 'cpus' (the affinity list), 'XLA_FLAGS', 'torch'}``.

    Raises:
      ValueError: ``threads`` < 1 or more than the CPUs this process may use.
    """
    available = sorted(os.sched_getaffinity(0))
    if not 1 <= threads <= len(available):
        raise ValueError(f"--threads must be in [1, {len(available)}] (the CPUs this process may use), got {threads}")
    if threads < len(available):
        os.sched_setaffinity(0, available[:threads])
    flag = "--xla_cpu_multi_thread_eigen=true"
    flags = os.environ.get("XLA_FLAGS", "")
    if flag not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
    torch = import_torch()
    torch.set_num_threads(threads)
    return {
        "threads": threads,
        "cpus": sorted(os.sched_getaffinity(0)),
        "XLA_FLAGS": os.environ["XLA_FLAGS"],
        "torch": torch.get_num_threads(),
    }


def import_torch():
    """PyTorch, imported on first use (the flops script and the test collection do without it)."""
    import torch

    return torch


def oracles():
    """``tests/oracles.py``: the one way this project imports WeSpeaker's code."""
    if TESTS_DIR not in sys.path:
        sys.path.insert(0, TESTS_DIR)
    import oracles

    return oracles


def wespeaker(submodule: str):
    """``wespeaker.<submodule>`` via `tests/oracles.py`; it sets torch to one thread, so call `pin_threads` after."""
    return oracles().wespeaker(submodule)


def wespeaker_model(config):
    """WeSpeaker's ECAPA_TDNN for one of our ``EcapaConfig`` (same channels, pooling, global context), eval mode."""
    model = wespeaker("models.ecapa_tdnn").ECAPA_TDNN(
        channels=config.channels,
        feat_dim=config.feat_dim,
        embed_dim=config.embed_dim,
        pooling_func=config.pooling,
        global_context_att=config.global_context_att,
        emb_bn=config.emb_bn,
    )
    return model.eval()


def side_by_side(args: argparse.Namespace) -> tuple[dict[str, Any], Any, Any]:
    """The set-up of every comparison with WeSpeaker's model: both sides pinned to ``--threads`` (after
    WeSpeaker's import, which sets torch to one thread), our config from ``--model`` / ``--channels``, and
    WeSpeaker's model for it drawn with torch's seed 0.

    Returns:
      (what `pin_threads` set, for the banner; the ``EcapaConfig``; their model, eval mode).
    """
    wespeaker("models.ecapa_tdnn")
    pinned = pin_threads(args.threads)
    config = model_config(args)
    import_torch().manual_seed(0)
    return pinned, config, wespeaker_model(config)


def wespeaker_variables(module) -> dict:
    """A WeSpeaker module's weights as our Flax variables (``tests/oracles.py``), for identical models."""
    return oracles().wespeaker_variables(module)


def banner(settings: Mapping[str, Any]) -> str:
    """Machine (CPU model, cores), versions (python, jax, jaxlib, flax, torch) and the settings, one per line."""
    import flax
    import jax
    import jaxlib
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [
        f"machine: {cpu}, {os.cpu_count()} cores, {len(os.sched_getaffinity(0))} usable, load {os.getloadavg()[0]:.2f}",
        f"versions: python {platform.python_version()}, jax {jax.__version__}, jaxlib {jaxlib.__version__}, "
        f"flax {flax.__version__}, torch {torch.__version__}, backend {jax.default_backend()}",
    ]
    lines += [f"{k}: {v}" for k, v in settings.items()]
    lines.append(f"XLA CPU pool: {xla_pool_threads()} threads (named tf_XLAEigen)")
    return "\n".join(lines)


def xla_pool_threads() -> int:
    """Threads of XLA's CPU Eigen pool in this process (Linux thread names), after the backend starts."""
    import jax

    jax.devices()  # starts the CPU client, which creates the pool
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:  # the thread ended meanwhile
            continue
    return sum(name.startswith("tf_XLAEigen") for name in names)


@dataclasses.dataclass(frozen=True)
class Timing:
    """Repeated timings of one side: wall seconds and process CPU seconds per run."""

    name: str
    wall: tuple[float, ...]
    cpu: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def cores(self) -> float:
        """CPU seconds per wall second, median over runs: the threads the side kept busy."""
        return statistics.median(c / w for c, w in zip(self.cpu, self.wall, strict=True))


def interleaved(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Times each function ``repeats`` times, alternating between them, after ``warmup`` untimed calls each.

    Args:
      fns: name → a call that runs one unit of work to completion (block on JAX results inside it).
      repeats: timed calls per function.
      warmup: untimed calls per function first (the first also compiles).

    Returns:
      name → its `Timing`.
    """
    for fn in fns.values():
        for _ in range(max(warmup, 0)):
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        # Alternate the order too, so neither side always runs right after the other's cache pollution.
        names = list(fns) if i % 2 == 0 else list(reversed(fns))
        for name in names:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            t1, c1 = time.perf_counter(), time.process_time()
            wall[name].append(t1 - t0)
            cpu[name].append(c1 - c0)
    return {k: Timing(k, tuple(wall[k]), tuple(cpu[k])) for k in fns}


def gemm_rate(repeats: int = 7, shape: tuple[int, int, int] = (2048, 1536, 1536)) -> dict[str, float]:
    """The float32 matrix-multiply rate XLA and PyTorch reach here: the CPU's practical peak.

    ECAPA's multiply-adds are ~95 % matmul-shaped (the 1×1 convs, the MFA conv, the attention), so
    model FLOPs / time against this rate says how far each side is from the hardware's ceiling.
    Times ``jnp.dot`` and ``torch.mm`` of an (M, K) × (K, N) product, interleaved.

    Returns:
      {'xla': GFLOP/s, 'torch': GFLOP/s}, medians.
    """
    import jax
    import jax.numpy as jnp

    torch = import_torch()
    m, k, n = shape
    a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
    ta, tb = torch.ones(m, k), torch.ones(k, n)
    dot = jax.jit(jnp.dot)
    timings = interleaved({"xla": lambda: dot(a, b).block_until_ready(), "torch": lambda: torch.mm(ta, tb)}, repeats)
    rates = {name: 2 * m * k * n / t.median / 1e9 for name, t in timings.items()}
    print(f"fp32 GEMM ({m}x{k} @ {k}x{n}): XLA {rates['xla']:.1f} GFLOP/s, torch {rates['torch']:.1f} GFLOP/s")
    return rates


def report(
    title: str,
    timings: Mapping[str, Timing],
    items: float,
    unit: str,
    ours: str,
    theirs: str,
    flops: float | None = None,
    peak: float | None = None,
) -> float:
    """Prints one line per side (median, min–max, throughput, busy cores) and the ratio line.

    Args:
      title: what was measured.
      timings: from `interleaved`.
      items: units of work per call (utterances, samples, seconds of audio).
      unit: their name, e.g. "utt/s".
      ours, theirs: the names in ``timings`` to compare.
      flops: the model's FLOPs per call (2 × the analytic multiply-adds; the same count for both sides);
        with ``peak`` (GFLOP/s, from `gemm_rate`) each line also shows GFLOP/s and the fraction of peak.

    Returns:
      throughput(ours) / throughput(theirs) = median time(theirs) / median time(ours).
    """
    print(f"-- {title}")
    for t in timings.values():
        rate = ""
        if flops is not None and peak:
            rate = f"  {flops / t.median / 1e9:6.1f} GFLOP/s = {100 * flops / t.median / 1e9 / peak:3.0f}% of GEMM"
        print(
            f"   {t.name:24s} median {t.median * 1e3:9.1f} ms  (min {min(t.wall) * 1e3:.1f}, "
            f"max {max(t.wall) * 1e3:.1f}, n={len(t.wall)})  {items / t.median:10.1f} {unit}  cores {t.cores:.2f}{rate}"
        )
    a, b = timings[ours], timings[theirs]
    ratio = b.median / a.median
    pairs = [wb / wa for wa, wb in zip(a.wall, b.wall, strict=True)]  # run i of each side, back to back
    print(f"   ratio {ours} / {theirs}: {ratio:.2f}x  (per interleaved pair {min(pairs):.2f}-{max(pairs):.2f})")
    return ratio


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the options and rejects non-positive repeat counts with a message naming the option."""
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args
