"""Kill soak of ``python -m train``: random SIGKILLs, then the same command again, until the run completes.

    python -m benchmarks.kill_soak [--kills 20] [--processes 1 2] [--seed 0] [--out DIR]

For each process count, a straight run of a tiny recipe (16 channels, 12 steps, a checkpoint every 2
steps, held-out evaluation every 4, export at the end) is the reference. Then runs of the same command
are SIGKILLed at random moments and relaunched until one completes; rounds repeat until ``--kills``
kills were made. The kill moments are drawn from:

- ``checkpoint``: while a checkpoint is being written (its orbax temporary directory exists);
- ``export``: while the final model directory or ``model.pt`` is being written (their temporaries exist);
- ``steps``: after a random number of further metrics lines;
- ``startup``: a random 0–8 s after launch (often before the first checkpoint);
- ``one``: (several processes) one random process only; the others must stop by themselves.

Every completed round must end bit-identical to the straight run (the final checkpoint: parameters,
BatchNorm statistics, optimiser state, step; and the exported model), with each step logged exactly
once in ``metrics.jsonl``, ``eval.jsonl`` and TensorBoard, and no stale export temporaries. Not run in
CI (minutes); the README gives the counts of the last run.
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ecapa_jax.io.checkpoint import load_model_dir
from train import launch

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12
RUN = [  # the tiny preset with a held-out evaluation (4 generated speakers)
    "--config=tiny",
    "data.demo_held_out=4",
    f"num_epochs={STEPS}",
    "checkpoint_interval=2",
    "keep_checkpoints=3",
    "eval_interval=4",
    "num_eval_trials=40",
]
KINDS = ("checkpoint", "export", "steps", "startup")


def start(workdir: Path, processes: int, env: dict, logs: Path) -> list[subprocess.Popen]:
    args = [f"--workdir={workdir}", "--heartbeat-timeout=10", "--init-timeout=60", *RUN]
    if processes == 1:
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / "process_0.log", "w") as out:
            return [subprocess.Popen([sys.executable, "-m", "train", *args], env=env, cwd=ROOT, stdout=out, stderr=out)]
    return launch.start(args, processes, logs=logs, env=env, cwd=ROOT)


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def moment_reached(kind: str, workdir: Path, started: float, target: float) -> bool:
    """Whether the moment drawn for this kill has come (``target``: seconds or further metrics lines)."""
    if kind == "checkpoint":
        return any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").glob("*"))
    if kind == "export":
        return any(p.name.endswith(".tmp") for p in workdir.glob(".model*"))
    if kind == "steps":
        return lines(workdir / "metrics.jsonl") >= target
    return time.monotonic() - started >= target  # startup, one


def check(workdir: Path, reference: Path) -> list[str]:
    """What differs from the straight run (empty when the round is good)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import runs  # the tests' helpers: the same comparisons as the resume tests

    problems = []
    (state, extra), (ref, ref_extra) = runs.checkpoint(workdir, STEPS), runs.checkpoint(reference, STEPS)
    if not runs.bitwise_equal(state, ref) or extra != ref_extra:
        problems.append("final checkpoint differs from the straight run")
    model, ref_model = load_model_dir(workdir / "model"), load_model_dir(reference / "model")
    if not runs.bitwise_equal(model.variables, ref_model.variables):
        problems.append("exported model differs")
    for name in ("metrics.jsonl", "eval.jsonl"):
        got, want = ([r["step"] for r in runs.jsonl(run / name)] for run in (workdir, reference))
        if got != want:
            problems.append(f"{name} steps {got} != {want}")

    got, want = runs.tensorboard_scalars(workdir / "tensorboard"), runs.tensorboard_scalars(reference / "tensorboard")
    if {k: [s for s, _ in v] for k, v in got.items()} != {k: [s for s, _ in v] for k, v in want.items()}:
        problems.append("TensorBoard steps differ from the straight run's")
    stale = [p.name for p in workdir.glob(".model*")]
    if stale:
        problems.append(f"stale export temporaries {stale}")
    return problems


def soak(processes: int, kills: int, rng: random.Random, out: Path, env: dict) -> dict:
    reference = out / f"p{processes}_straight"
    codes = [p.wait() for p in start(reference, processes, env, out / f"p{processes}_straight_logs")]
    if codes != [0] * processes:
        raise SystemExit(f"the straight {processes}-process run failed: {codes} (logs in {out})")
    counts, rounds, launches, failures = collections.Counter(), 0, 0, []
    while sum(counts.values()) < kills:
        rounds += 1
        workdir = out / f"p{processes}_round{rounds}"
        while True:
            launches += 1
            kinds = KINDS + (("one",) if processes > 1 else ())
            kind = rng.choice(kinds)
            target = {"steps": lines(workdir / "metrics.jsonl") + rng.randint(1, 8), "startup": rng.uniform(0, 8)}
            target["one"] = rng.uniform(5, 15)
            logs = out / f"p{processes}_round{rounds}_logs{launches}"
            procs, started = start(workdir, processes, env, logs), time.monotonic()
            killed = False
            while all(p.poll() is None for p in procs):
                if moment_reached(kind, workdir, started, target.get(kind, 0)):
                    victims = [rng.randrange(processes)] if kind == "one" else range(processes)
                    for i in victims:
                        procs[i].send_signal(signal.SIGKILL)
                    killed = True
                    break
                time.sleep(0.005)
            codes = [p.wait(timeout=120) for p in procs]
            if killed:
                counts[kind] += 1
                print(f"{processes} process(es), round {rounds}: killed ({kind}); exit codes {codes}", flush=True)
                continue
            if codes != [0] * processes:
                raise SystemExit(f"launch {launches} failed without a kill: {codes}; logs in {logs}")
            problems = check(workdir, reference)
            failures += [f"round {rounds}: {p}" for p in problems]
            print(f"{processes} process(es), round {rounds}: completed, {'OK' if not problems else problems}")
            break
    return {"processes": processes, "kills": dict(counts), "rounds": rounds, "launches": launches, "failures": failures}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kill_soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=20, help="SIGKILLs per process count")
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    args = p.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="kill_soak_"))
    cache = out / "jax_cache"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cache)}
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    # Processes other than 0 never hit JAX's compilation cache: quick (unoptimised) compilation, as the tests do;
    # every run compared is compiled the same way.
    env["XLA_FLAGS"] = "--xla_backend_optimization_level=0"
    rng = random.Random(args.seed)
    results = [soak(n, args.kills, rng, out, env) for n in args.processes]
    for r in results:
        verdict = r["failures"] or "every round bit-identical to the straight run, each step logged once"
        print(
            f"{r['processes']} process(es): {sum(r['kills'].values())} SIGKILLs {r['kills']}, {r['launches']} "
            f"launches, {r['rounds']} completed rounds; {verdict}"
        )
    if args.out is None:
        shutil.rmtree(out, ignore_errors=True)
    return 0 if not any(r["failures"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
