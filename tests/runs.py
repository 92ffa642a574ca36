"""Helpers for tests that run ``python -m train`` as real processes: a tiny run, logs, states, waiting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from ecapa_jax.io.checkpoint import CheckpointManager
from train.config import TrainConfig, apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
PRESET = "tiny"  # the recipe at toy size (train/configs/tiny.py)


def config(*overrides: str) -> TrainConfig:
    """The tiny run's `TrainConfig` with overrides."""
    return apply_overrides(load_config(PRESET), list(overrides))


OPTIMIZED = {"XLA_FLAGS": ""}  # overrides of `env` for XLA's default optimisation


def train_args(workdir: Path, *overrides: str, flags: Sequence[str] = ()) -> list[str]:
    """Arguments of ``python -m train`` for the tiny run in ``workdir``."""
    return [f"--config={PRESET}", f"--workdir={workdir}", *flags, *overrides]


def env(cache: Path, **extra: str) -> dict[str, str]:
    """CPU, one JAX compilation cache shared by the runs of the session, XLA's quick compilation.

    JAX writes the persistent cache from process 0 only, and the other processes of a multi-process
    run compute other keys, so they compile every time: ``--xla_backend_optimization_level=0`` makes
    that 2.5× faster (measured on this 2-core machine). Runs compared bit for bit are compiled alike;
    runs compared across device counts are not compiled this way (`OPTIMIZED`): unoptimised reductions
    round differently enough that the float32 losses of 1 and 4 devices drift 3e-2 apart in 6 steps.
    """
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
        **extra,
    }


# ``python -m train`` with the largest file it may write limited (RLIMIT_FSIZE: a write beyond it fails with
# EFBIG, "File too large", as a full disk fails with ENOSPC); set in the child, not by a fork of this process.
_LIMITED = (
    "import resource, runpy, sys; limit = int(sys.argv.pop(1)); "
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)); runpy.run_module('train', run_name='__main__')"
)


def run(
    workdir: Path,
    *overrides: str,
    environ: dict,
    flags: Sequence[str] = (),
    timeout: float = 300,
    file_size_limit: int | None = None,
):
    """One process of the tiny run to its end."""
    prefix = ["-m", "train"] if file_size_limit is None else ["-c", _LIMITED, str(file_size_limit)]
    cmd = [sys.executable, *prefix, *train_args(workdir, *overrides, flags=flags)]
    return subprocess.run(cmd, env=environ, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def wait(procs: Sequence[subprocess.Popen], timeout: float) -> list[int]:
    """The exit codes of ``procs``, killing any still running after ``timeout`` seconds (then the code is None)."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            codes.append(None)
    return codes


def lines(path: Path) -> int:
    """Complete lines in a (log) file, 0 if it does not exist."""
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def wait_for(what, procs: Sequence[subprocess.Popen], timeout: float = 300, logs: Path | None = None) -> None:
    """Polls until ``what`` (a path that must exist, or a predicate) holds; fails if a process ended first or
    time ran out."""
    holds = what if callable(what) else what.exists
    deadline = time.monotonic() + timeout
    while not holds():
        ended = [p.returncode for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            text = "".join(f.read_text()[-2000:] for f in sorted(logs.glob("*.log"))) if logs else ""
            raise AssertionError(f"{what} did not happen (exit codes {ended}):\n{text}")
        time.sleep(0.02)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def checkpoint(workdir: Path, step: int) -> tuple[dict, dict]:
    """(state as NumPy, extra) of checkpoint ``step`` of a run."""
    with CheckpointManager(workdir / "checkpoints") as ckpt:
        return ckpt.restore(step)


def max_abs_diff(a, b) -> float:
    """The largest absolute difference over two pytrees of the same structure."""
    diff = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y), initial=0.0)), a, b)
    return max(jax.tree.leaves(diff))


def bitwise_equal(a, b) -> bool:
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


def tensorboard_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of the event files in ``directory`` as TensorBoard shows them: ``{tag: [(step, value)]}``.

    Records are parsed and their checksums verified (TFRecord framing, masked CRC32C); files are read in
    name order, and a ``SessionLog.START`` at step s drops the scalars logged earlier at steps >= s (the
    purge a resumed run asks for). A record cut short at the end of a file (a kill) ends that file.
    """
    import struct

    from tensorboardX.proto.event_pb2 import Event, SessionLog
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            if pos + 16 + length > len(data):
                break
            assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header), path
            payload = data[pos + 12 : pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == masked_crc32c(payload), path
            pos += 16 + length
            event = Event.FromString(payload)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                scalars = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def hold_lock(workdir: Path) -> subprocess.Popen:
    """Another process holding ``workdir``'s trainer lock (`train.workdir.WorkdirLock`) until killed."""
    code = f"import time; from train.workdir import WorkdirLock; WorkdirLock({str(workdir)!r}).acquire(); "
    code += "print('locked', flush=True); time.sleep(600)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder
