"""Several processes, one run: ``jax.distributed`` set-up, work done by process 0, failing together.

Every process runs the same command. Process 0 (the *lead*) writes the logs, evaluates and exports;
checkpoints are written and restored by all processes (orbax). Host-side work of the lead is wrapped
in `on_lead`: the lead runs it and then posts ``done`` in the coordination service's key-value store;
the other processes wait for that key. A process that fails posts its one-line error there first
(`post_failure`), so the others stop naming the process and the reason rather than a bare
"connection closed" from a collective.

How a failure ends the others, and how fast (measured on CPU with Gloo, see tests/test_multiprocess.py):

- a process that fails posts its error and leaves with ``os._exit`` (`exit_process`), skipping the
  coordination service's shutdown barrier, which would otherwise hold it until ``shutdown_timeout``
  and then abort it; its sockets close, so a peer inside a collective fails at once and reports the
  posted error (process 0, which hosts the service, first waits a little for the others to read it);
- a process that is killed posts nothing: its peers' collectives fail at once on a closed socket
  (Gloo), "lost contact with another process"; where nothing notices (a host that vanished or hangs,
  or peers waiting in the coordination service, e.g. orbax's barrier around a checkpoint), the service
  declares it dead after ``heartbeat_timeout`` seconds and JAX terminates the others with its own
  message ("another task died"). That timeout is the bound; ``python -m train --heartbeat-timeout``
  sets it (JAX's default is 100 s).

Single-process runs skip all of it: `on_lead` calls the function, the rest are no-ops.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

T = TypeVar("T")
KEY_PREFIX = "ecapa_jax/train/"  # this run's keys in the coordination service
FAILURE_KEY = KEY_PREFIX + "failure"
LEFT_KEY = KEY_PREFIX + "left/"  # processes that stopped after a failure (`exit_process`)
POLL_S = 0.05  # how often a waiting process looks for the lead's key (and for a failure)


class ProcessFailedError(RuntimeError):
    """Another process of the run failed (its message is in this one) or could no longer be reached."""


def initialize_distributed(
    environ: Mapping[str, str] = os.environ, force: bool = False, heartbeat_timeout: int = 100, init_timeout: int = 300
) -> bool:
    """``jax.distributed.initialize`` for a multi-process run described by the environment; True if called.

    ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``) describes the run
    explicitly. Otherwise JAX detects the processes itself, which happens here when Slurm
    (``SLURM_NTASKS > 1``), Open MPI (``OMPI_COMM_WORLD_SIZE > 1``) or a GKE TPU slice
    (``TPU_WORKER_HOSTNAMES`` with several hosts) is seen, or always with ``force`` (a Cloud TPU VM pod
    slice, whose hosts JAX finds through the metadata server: ``python -m train --distributed``).

    Args:
      environ: the environment to read.
      force: call ``jax.distributed.initialize()`` even when no multi-process launcher is recognised.
      heartbeat_timeout: seconds without a heartbeat after which a process is declared dead and the
        others are stopped.
      init_timeout: seconds to wait for all processes to connect.

    Raises:
      ValueError: ``JAX_COORDINATOR_ADDRESS`` without ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.
    """
    timeouts = {"heartbeat_timeout_seconds": heartbeat_timeout, "initialization_timeout": init_timeout}
    if "JAX_COORDINATOR_ADDRESS" in environ:
        count, index = environ.get("JAX_NUM_PROCESSES"), environ.get("JAX_PROCESS_ID")
        if count is None or index is None:
            raise ValueError("JAX_COORDINATOR_ADDRESS needs JAX_NUM_PROCESSES and JAX_PROCESS_ID as well")
        jax.distributed.initialize(environ["JAX_COORDINATOR_ADDRESS"], int(count), int(index), **timeouts)
        return True
    tasks = max(int(environ.get("SLURM_NTASKS", 1)), int(environ.get("OMPI_COMM_WORLD_SIZE", 1)))
    tpu_hosts = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if force or tasks > 1 or len(tpu_hosts) > 1:
        jax.distributed.initialize(**timeouts)
        return True
    return False


def is_lead() -> bool:
    """Whether this is the process that logs, evaluates and exports (process 0)."""
    return jax.process_index() == 0


def _client():
    """The coordination service's client (``jax.distributed``; orbax reaches it the same way), or None."""
    from jax._src import distributed  # no public handle on the key-value store in JAX 0.10

    return distributed.global_state.client if jax.process_count() > 1 else None


def post_failure(message: str) -> None:
    """Tells the other processes why this one stops (the first failure posted wins); best effort."""
    client = _client()
    if client is None:
        return
    try:
        client.key_value_set(FAILURE_KEY, f"process {jax.process_index()}: {message}")
    except Exception:  # noqa: BLE001 - an earlier failure is posted already, or the coordinator is gone
        pass


def posted_failure(wait_s: float = 0.0) -> str | None:
    """The failure another process posted, waiting up to ``wait_s`` for one to appear; None if none did.

    A peer that raised posts its message before it leaves; a collective may fail on the closed socket
    a moment before the message is readable, hence the short wait.
    """
    client = _client()
    if client is None:
        return None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.key_value_try_get(FAILURE_KEY)
        except Exception:  # noqa: BLE001 - NOT_FOUND, or the coordinator is unreachable
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_S)


def on_lead(name: str, fn: Callable[[], T], timeout_s: float = 3600.0) -> T | None:
    """Runs ``fn`` on the lead while the other processes wait for it; returns its result on the lead.

    Args:
      name: unique in the run (e.g. ``eval/124``): the key the lead posts when ``fn`` returned.
      fn: host-side work (evaluation, export, log files) that only process 0 does.
      timeout_s: how long the others wait for the lead.

    Raises:
      ProcessFailedError: (on the others) the lead or another process failed, or the lead took longer
        than ``timeout_s``.
    """
    client = _client()
    if client is None:
        return fn()
    key = f"{KEY_PREFIX}done/{name}"
    if is_lead():
        try:
            result = fn()
        except BaseException as e:
            post_failure(f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError)) else str(e))
            raise
        client.key_value_set(key, "1")
        return result
    deadline = time.monotonic() + timeout_s
    while True:
        failure = posted_failure()
        if failure is not None:
            raise ProcessFailedError(failure)
        try:
            client.key_value_try_get(key)
            return None
        except Exception as e:  # noqa: BLE001 - NOT_FOUND until the lead is done
            if "NOT_FOUND" not in str(e):
                raise ProcessFailedError(
                    f"lost contact with process 0 while it ran {name!r}: {_first_line(e)}"
                ) from None
        if time.monotonic() > deadline:
            raise ProcessFailedError(f"process 0 did not finish {name!r} within {timeout_s:.0f} s")
        time.sleep(POLL_S)


def barrier(name: str, timeout_s: float = 3600.0) -> None:
    """Every process waits here for all the others (the coordination service's barrier, not a collective).

    Used once the train step is compiled: a process that reaches its first collective more than 30 s
    before another (Gloo's fixed set-up timeout; compiling the step can take longer than that, or be
    a cache hit on one process and not on another) fails it.

    Raises:
      ProcessFailedError: another process failed, or ``timeout_s`` passed.
    """
    client = _client()
    if client is None:
        return
    try:
        client.wait_at_barrier(KEY_PREFIX + name, int(timeout_s * 1000))
    except Exception as e:  # noqa: BLE001 - DEADLINE_EXCEEDED, or a peer failed (the barrier reports it)
        raise ProcessFailedError(
            posted_failure(wait_s=2.0) or f"waiting for the other processes: {_first_line(e)}"
        ) from None


def failure_message(error: BaseException) -> str:
    """Why the run stops, in one line: this process's own error, or the failure another process posted.

    A collective that failed because a peer left carries no reason; the peer's posted message (if it
    raised rather than being killed) does. This process's own errors are posted for the others.
    """
    if _client() is None or isinstance(error, ProcessFailedError):
        return str(error)
    if _lost_peer(error):
        posted = posted_failure(wait_s=2.0)
        return posted or f"lost contact with another process (killed, or its host is gone): {_first_line(error)}"
    post_failure(str(error))
    return str(error)


def _lost_peer(error: BaseException) -> bool:
    """Whether a runtime error comes from a collective or the coordination service losing another process."""
    text = str(error)
    markers = ("Gloo", "NCCL", "Connection closed", "Connection reset", "heartbeat", "UNAVAILABLE", "coordination")
    return isinstance(error, jax.errors.JaxRuntimeError) or any(m in text for m in markers)


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable ``value``, in process order (on every process)."""
    if jax.process_count() == 1:
        return [value]
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([len(data)], np.int64))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: len(data)] = data
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(row[: int(n)].tobytes()) for row, n in zip(rows, sizes[:, 0], strict=True)]


def all_true(flag: bool) -> bool:
    """Whether ``flag`` is True on every process."""
    return all(allgather_json(bool(flag)))


def exit_process(code: int, linger_s: float = 10.0) -> None:
    """Ends the process with ``code``; at once (``os._exit``) when the run failed.

    A failed run skips the interpreter's exit: in a multi-process run that is the coordination service's
    shutdown barrier (see the module docstring), and in any run the collection of orbax's failed writer
    tasks, which would print their tracebacks after the one-line error. Output streams are flushed first.
    Process 0 hosts the coordination service, so when it posted a failure of its own it waits (up to
    ``linger_s``) before it leaves for the others to say they have read it; they say so as they leave.

    A successful run exits normally, through the shutdown barrier, which every process reaches together
    because the others wait for the lead's export (`on_lead`).
    """
    if code == 0:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    client = _client()
    if client is not None:
        try:
            own_failure = (posted_failure() or "").startswith("process 0:")
            if is_lead() and own_failure:  # the others may still be reading it
                deadline = time.monotonic() + linger_s
                while len(client.key_value_dir_get(LEFT_KEY)) < jax.process_count() - 1:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(POLL_S)
            else:
                client.key_value_set(f"{LEFT_KEY}{jax.process_index()}", str(code))
        except Exception:  # noqa: BLE001 - the coordinator is gone already
            pass
    os._exit(code)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


__all__ = [
    "ProcessFailedError",
    "all_true",
    "allgather_json",
    "barrier",
    "exit_process",
    "initialize_distributed",
    "is_lead",
    "on_lead",
    "failure_message",
    "post_failure",
    "posted_failure",
]
