"""``python -m train.launch -n N [--devices-per-process D] [--logs DIR] -- TRAIN ARGS``: N local processes.

Starts ``python -m train TRAIN ARGS`` N times on this machine as one multi-process run, with the
environment a cluster launcher would set (``JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``), CPU collectives over Gloo. It is how the tests and
``benchmarks/kill_soak.py`` run several processes, and a way to try a multi-process run without a
cluster; on a cluster, use the cluster's launcher instead (README, "Training").

``--devices-per-process`` forces that many CPU devices in each process (``JAX_PLATFORMS=cpu``). The exit
status is the first non-zero status of the processes (0 when all succeeded).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ecapa_jax.cli import ArgumentParser, command


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 now (for the coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(index: int, count: int, port: int, devices: int | None = None, base: Mapping[str, str] | None = None):
    """The environment of process ``index`` of ``count`` (coordinator on 127.0.0.1:``port``)."""
    env = dict(os.environ if base is None else base)
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES=str(count), JAX_PROCESS_ID=str(index))
    if devices:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform")]
        env.update(
            JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
        )
    return env


def start(
    args: Sequence[str],
    count: int,
    devices: int | None = None,
    logs: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> list[subprocess.Popen]:
    """Starts ``count`` processes of ``python -m train *args``; their output goes to ``logs/process_<i>.log``
    (or is inherited when ``logs`` is None)."""
    port = free_port()
    procs = []
    for i in range(count):
        out = None
        if logs is not None:
            Path(logs).mkdir(parents=True, exist_ok=True)
            out = open(Path(logs) / f"process_{i}.log", "w")  # noqa: SIM115 - the child owns it
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "train", *args],
                env=process_env(i, count, port, devices, env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )
        )
        if out is not None:
            out.close()
    return procs


@command
def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m train.launch", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", "--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=None, help="forced CPU devices in each process")
    p.add_argument("--logs", default=None, help="one log file per process in this directory")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m train")
    args = p.parse_args(argv)
    if args.processes < 1 or (args.devices_per_process is not None and args.devices_per_process < 1):
        raise ValueError(
            f"--processes and --devices-per-process must be >= 1, got {args.processes}, {args.devices_per_process}"
        )
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    procs = start(train_args, args.processes, args.devices_per_process, args.logs)
    codes = [proc.wait() for proc in procs]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
