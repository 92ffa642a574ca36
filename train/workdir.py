"""The workdir is the run: its files, its lock, and the model exported at the end.

::

    WORKDIR/config.json        the resolved TrainConfig (a different one is refused)
    WORKDIR/.lock              held (fcntl.flock) by the trainer using the workdir: pid, host, start time
    WORKDIR/checkpoints/<n>/   state after n steps + every process's loader state (`train.checkpointing`)
    WORKDIR/metrics.jsonl      every ``log_interval``-th step: loss, accuracy, lr, margin, grad_norm,
                               samples/s, and the data position and index checksum of its batch
    WORKDIR/eval.jsonl         held-out EER at step 0 (fresh runs), every ``eval_interval`` steps, the end
    WORKDIR/tensorboard/       the same scalars as TensorBoard event files (``tensorboard --logdir``)
    WORKDIR/model/             the final inference model directory (``ecapa_jax.load`` reads it)
    WORKDIR/model.pt           the same model as a WeSpeaker state_dict (``python -m ecapa_jax.convert``)
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import jax

from ecapa_jax.io.checkpoint import save_model_dir
from ecapa_jax.io.convert.wespeaker import dir_to_wespeaker
from ecapa_jax.models.ecapa import EcapaConfig
from train.config import TrainConfig, check_workdir_config

log = logging.getLogger(__name__)

METRICS_FILE, EVAL_FILE, CHECKPOINT_DIR, MODEL_DIR = "metrics.jsonl", "eval.jsonl", "checkpoints", "model"
WESPEAKER_FILE = "model.pt"  # the final model as WeSpeaker's state_dict, for WeSpeaker's own tools
TENSORBOARD_DIR, LOCK_FILE = "tensorboard", ".lock"
# What an interrupted export or log rewrite leaves: save_model_dir's and save_state_dict's temporaries
# (.model.<hex>.tmp/.old, .model.pt.<hex>.tmp) and JsonLog.truncate's (.metrics.jsonl.tmp).
_STALE = re.compile(r"^\.(model(\.pt)?\.[0-9a-f]{12}\.(tmp|old)|(metrics|eval)\.jsonl\.tmp)$")


class WorkdirBusyError(ValueError):
    """Another trainer holds the workdir's lock."""


class WorkdirLock:
    """One trainer per workdir: an exclusive ``fcntl.flock`` on ``WORKDIR/.lock``, held while training.

    The kernel drops the lock when its process ends, however it ends, so the lock of a killed trainer
    is taken over by the next one without any clean-up (no pid guessing). The file's text (pid, host,
    start) only serves the message of a refused trainer.
    """

    def __init__(self, workdir: Path):
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
          WorkdirBusyError: another live trainer holds it (its pid and host named).
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirBusyError(
                f"{self.path.parent} is in use by another trainer ({holder}); wait for it to finish, "
                "or use another --workdir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()
        )
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def open_workdir(workdir: Path, config: TrainConfig, force_config: bool = False) -> WorkdirLock:
    """Locks ``workdir`` for this trainer, records its config, and removes what interrupted exports left.

    The config is compared before anything is written, so a refused command leaves the workdir as it was.

    Returns:
      The held lock (release it when the run ends).

    Raises:
      ValueError: ``workdir`` holds a run with another config (unless ``force_config``).
      WorkdirBusyError: another trainer uses ``workdir``.
    """
    check_workdir_config(workdir, config, force=force_config, write=False)
    lock = WorkdirLock(workdir)
    lock.acquire()
    try:
        check_workdir_config(workdir, config, force=force_config)
        for path in sorted(Path(workdir).iterdir()):
            if _STALE.match(path.name):
                log.info("removing %s, left by an interrupted export", path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def export_model(workdir: Path, config: TrainConfig, state: Any, metadata: dict[str, Any]) -> Path:
    """Writes ``WORKDIR/model`` (and ``model.pt`` for WeSpeaker's ECAPA) from a replicated training state.

    Both are written under temporary names and renamed into place (`ecapa_jax.io.checkpoint.save_model_dir`).

    Returns:
      The model directory.
    """
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    model_dir = Path(workdir) / MODEL_DIR
    save_model_dir(model_dir, config.model, variables, config.frontend, metadata, overwrite=True)
    if isinstance(config.model, EcapaConfig) and config.model.is_wespeaker:  # WeSpeaker's layout: its ECAPA only
        dir_to_wespeaker(model_dir, Path(workdir) / WESPEAKER_FILE, overwrite=True)
    return model_dir


__all__ = [
    "CHECKPOINT_DIR",
    "EVAL_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "TENSORBOARD_DIR",
    "WESPEAKER_FILE",
    "WorkdirBusyError",
    "WorkdirLock",
    "export_model",
    "open_workdir",
]
