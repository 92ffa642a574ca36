"""`python -m train` as a real multi-process run: two processes × two forced CPU devices (jax.distributed over
127.0.0.1, Gloo collectives), against one process with the same global batch; SIGKILL of all processes and
relaunch; one process dying or hanging while the others wait in a collective.

The runs share a JAX compilation cache, so each program is compiled once per topology.
"""

import signal
import time

import numpy as np
import pytest
import runs

import ecapa_jax
from train import launch

STEPS, HALF = 6, 3
RUN = [f"num_epochs={STEPS}", f"checkpoint_interval={HALF}", "keep_checkpoints=2"]
# Held-out evaluation (4 generated speakers, 40 trials) at steps 0, HALF and STEPS: done by process 0 alone.
EVAL = ["data.demo_held_out=4", "num_eval_trials=40", f"eval_interval={HALF}"]
PROCESSES, DEVICES = 2, 2
HEARTBEAT = 5  # --heartbeat-timeout of the runs where a process dies: the bound on noticing a silent peer


@pytest.fixture(scope="module")
def optimized_env(train_env):
    """XLA's default optimisation: for the runs compared across device counts (`runs.env`)."""
    return {**train_env, **runs.OPTIMIZED}


def _start(workdir, train_env, *overrides, flags=()):
    args = runs.train_args(workdir, *RUN, *overrides, flags=flags)
    return launch.start(
        args, PROCESSES, DEVICES, logs=workdir.parent / f"{workdir.name}_logs", env=train_env, cwd=runs.ROOT
    )


def _logs(workdir) -> list[str]:
    return [(workdir.parent / f"{workdir.name}_logs" / f"process_{i}.log").read_text() for i in range(PROCESSES)]


@pytest.fixture(scope="module")
def single(optimized_env, tmp_path_factory):
    """One process, one device: the reference."""
    workdir = tmp_path_factory.mktemp("single") / "run"
    result = runs.run(workdir, *RUN, *EVAL, environ=optimized_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.fixture(scope="module")
def multi(optimized_env, tmp_path_factory):
    """Two processes × two devices, uninterrupted."""
    workdir = tmp_path_factory.mktemp("multi") / "run"
    codes = runs.wait(_start(workdir, optimized_env, *EVAL), timeout=400)
    assert codes == [0] * PROCESSES, (codes, [log[-3000:] for log in _logs(workdir)])
    return workdir


def test_two_processes_equal_one(single, multi):
    """Same global batch, seed and schedule on 1 process × 1 device and 2 processes × 2 devices.

    The batches are the same (index checksum of every step's global batch); losses agree to float32
    reduction order (1e-4 relative) and parameters to 1e-3 (README, Limitations: a float32 ReLU network
    across device counts). Only process 0 logs and exports; every process's loader state is in the
    checkpoint; the processes leave together through the shutdown barrier (exit 0, no JAX error).
    """
    ref, got = runs.jsonl(single / "metrics.jsonl"), runs.jsonl(multi / "metrics.jsonl")
    keys = ("step", "data_epoch", "data_step", "index_crc")
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in ref]
    assert [r["step"] for r in got] == list(range(STEPS))
    loss_ref, loss = np.array([r["loss"] for r in ref]), np.array([r["loss"] for r in got])
    print(f"losses: max relative difference {np.max(np.abs(loss - loss_ref) / np.abs(loss_ref)):.2e}")
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-4)
    (state_ref, _), (state, extra) = runs.checkpoint(single, STEPS), runs.checkpoint(multi, STEPS)
    diff = runs.max_abs_diff(state["params"], state_ref["params"])
    print(f"parameters after {STEPS} steps: max |difference| {diff:.2e}")
    assert diff <= 1e-3, diff
    assert extra["step"] == STEPS and len(extra["loader"]) == PROCESSES
    # Evaluated by process 0 (the other waiting) at the same steps, once each; the EERs of two models this close
    # agree (a trial's score would have to cross the threshold to change them).
    evals, evals_ref = runs.jsonl(multi / "eval.jsonl"), runs.jsonl(single / "eval.jsonl")
    assert [e["step"] for e in evals] == [e["step"] for e in evals_ref] == [0, HALF, STEPS]
    print("held-out EER, 1 process:", [e["eer"] for e in evals_ref], "2 processes:", [e["eer"] for e in evals])
    np.testing.assert_allclose([e["eer"] for e in evals], [e["eer"] for e in evals_ref], atol=0.05)
    encoder = ecapa_jax.load(multi / "model")
    np.testing.assert_array_equal(
        encoder.variables["params"]["linear"]["kernel"], state["params"]["model"]["linear"]["kernel"]
    )
    for text in _logs(multi):
        assert "Traceback" not in text and "Terminating process" not in text and "error:" not in text, text[-3000:]


def test_sigkill_of_all_processes_then_relaunch_is_exact(multi, optimized_env, tmp_path):
    """All processes killed after checkpoint HALF, the same command again: the uninterrupted run's parameters
    bit for bit, the same batches, each step logged once."""
    workdir = tmp_path / "run"
    procs = _start(workdir, optimized_env, *EVAL)
    runs.wait_for(workdir / "checkpoints" / str(HALF), procs, logs=tmp_path / "run_logs")
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    runs.wait(procs, timeout=30)
    assert not (workdir / "checkpoints" / str(STEPS)).exists(), "the kill came too late"
    codes = runs.wait(_start(workdir, optimized_env, *EVAL), timeout=300)
    assert codes == [0] * PROCESSES, (codes, [log[-3000:] for log in _logs(workdir)])
    assert f"resumed {workdir} from step {HALF}" in _logs(workdir)[0]
    straight, resumed = runs.jsonl(multi / "metrics.jsonl"), runs.jsonl(workdir / "metrics.jsonl")
    keys = ("step", "data_epoch", "data_step", "index_crc", "loss", "grad_norm")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    assert runs.jsonl(workdir / "eval.jsonl") == runs.jsonl(multi / "eval.jsonl")
    scalars, reference = (runs.tensorboard_scalars(d / "tensorboard") for d in (workdir, multi))
    assert {tag: [s for s, _ in v] for tag, v in scalars.items()} == {
        tag: [s for s, _ in v] for tag, v in reference.items()
    }
    assert scalars["train/loss"] == reference["train/loss"] and len(scalars["train/loss"]) == STEPS
    (a, extra_a), (b, extra_b) = runs.checkpoint(multi, STEPS), runs.checkpoint(workdir, STEPS)
    assert extra_a == extra_b
    assert runs.bitwise_equal(a, b), runs.max_abs_diff(a, b)


@pytest.mark.parametrize(
    ("victim", "how", "expect"),
    [
        # Killed: its sockets close, the survivor's collective fails at once; our one-line error, exit 1.
        (1, signal.SIGKILL, "error: training stopped after"),
        # The coordinator hung (or its host gone): nothing closes; the survivor's heartbeats go unanswered and
        # JAX terminates it with its own message after the heartbeat timeout.
        (0, signal.SIGSTOP, "another task died"),
    ],
)
def test_a_failed_process_stops_the_others_in_bounded_time(train_env, tmp_path, victim, how, expect):
    """While the others are inside a train step's collectives, one process dies or hangs: they stop within
    the heartbeat timeout (plus the 2 s given to read a failure posted by the peer, and slack), not hang.

    (Where a survivor waits in the coordination service instead, in orbax's barrier of a checkpoint, a killed
    peer is noticed at the heartbeat timeout too, and JAX's message ends it: the soak script meets that case.)"""
    workdir = tmp_path / "run"
    # 12 steps, no checkpoint before the end: from step 4 on, the processes are in the steps' collectives (at a
    # checkpoint, orbax's barrier in the coordination service would notice only at the heartbeat timeout).
    long = ["num_epochs=12", "checkpoint_interval=12"]
    procs = _start(workdir, train_env, *long, flags=[f"--heartbeat-timeout={HEARTBEAT}"])
    try:
        runs.wait_for(lambda: runs.lines(workdir / "metrics.jsonl") >= 5, procs, logs=tmp_path / "run_logs")
        procs[victim].send_signal(how)
        start = time.monotonic()
        survivors = [p for i, p in enumerate(procs) if i != victim]
        codes = runs.wait(survivors, timeout=HEARTBEAT + 25)
        elapsed = time.monotonic() - start
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    survivor_log = _logs(workdir)[1 - victim]
    print(f"victim {victim} ({how.name}): the survivor ended after {elapsed:.1f} s with {codes}")
    assert None not in codes and all(c != 0 for c in codes), (codes, survivor_log[-3000:])
    assert elapsed < HEARTBEAT + 25, elapsed
    assert expect in survivor_log, survivor_log[-3000:]
    if how == signal.SIGKILL and victim == 1:
        assert codes == [1] and "lost contact with another process" in survivor_log
        assert survivor_log.count("Traceback") == 0, survivor_log[-3000:]


def test_a_setup_error_of_the_lead_stops_every_process(train_env, tmp_path):
    """Process 0 finds the workdir locked by another trainer: it exits 2 naming the holder, and process 1, waiting
    for it, exits 1 naming process 0's error; nothing is written."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    holder = runs.hold_lock(workdir)
    try:
        codes = runs.wait(_start(workdir, train_env), timeout=120)
    finally:
        holder.kill()
        holder.wait()
    lead, other = _logs(workdir)
    assert codes == [2, 1], (codes, lead[-2000:], other[-2000:])
    message = f"is in use by another trainer (pid {holder.pid} on"
    assert f"error: {workdir} {message}" in lead and f"error: process 0: {workdir} {message}" in other, other
    assert sorted(p.name for p in workdir.iterdir()) == [".lock"]
