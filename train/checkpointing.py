"""The trainer's checkpoints: saved by every process, restored from the newest one that restores.

``WORKDIR/checkpoints/<n>/`` holds the state after n steps (``state``: params, batch_stats, opt_state,
step) and ``extra``: ``{"step": n, "loader": [state of process 0's loader, process 1's, ...]}``. Each
process's loader state is kept (its data position and its bad-read counts, which differ between
processes), so a resumed run continues every loader where it stopped.

A save is complete on disk when `Checkpoints.save` returns; a write that fails raises
`CheckpointError` at once, naming the path and the reason, and the earlier checkpoints stay as they
were. A checkpoint that does not restore (a truncated array file, a missing ``_METADATA``) is moved to
``WORKDIR/checkpoints.damaged/`` with a one-line warning naming it and the reason, and the one before
it is tried.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

from ecapa_jax.io.checkpoint import CheckpointManager
from train.distributed import all_true, allgather_json, is_lead, on_lead

log = logging.getLogger(__name__)

DAMAGED_SUFFIX = ".damaged"


class CheckpointError(OSError):
    """A checkpoint could not be written; the message names its path, the reason, and the last good one."""


def _reason(error: BaseException) -> str:
    """The first line of an error, short enough for one line of a message."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return line if len(line) <= 400 else line[:400] + " ..."


@contextlib.contextmanager
def _orbax_errors_reported_by_us() -> Iterator[None]:
    """While saving or restoring, orbax's own reports of a failed write or read are held back: the failure is
    raised once, and the caller reports it in one line with its reason.

    A failed write (or a read of a damaged checkpoint) makes orbax log a traceback from each of its threads
    (absl), asyncio report the tasks that failed alongside ("Task exception was never retrieved"), and
    tensorstore's callbacks report "Event loop is closed" (unraisable errors, hundreds on a full disk), some
    after the failure has been raised. Log records at ERROR are filtered, and after a failure the closed-loop
    reports are dropped (`_drop_closed_loop_reports`). In a single-process run file descriptor 2 is captured
    too (for what native code prints), and what it caught is written out again when the save or restore
    succeeds. Not in a multi-process run: there JAX may end the process from inside a save (a peer died) with
    a message that must not go into the capture.
    """
    below_error = lambda record: record.levelno < logging.ERROR  # noqa: E731 - a filter keeps what it accepts
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    for logger in loggers:
        logger.addFilter(below_error)
    failed = False
    with contextlib.ExitStack() as stack:
        captured = stack.enter_context(tempfile.TemporaryFile()) if jax.process_count() == 1 else None
        if captured is not None:
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            sys.unraisablehook = _drop_closed_loop_reports
            gc.collect()  # asyncio reports unretrieved task errors when the tasks are collected: now, held back
            raise
        finally:
            for logger in loggers:
                logger.removeFilter(below_error)
            if captured is not None:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                if not failed:
                    captured.seek(0)
                    os.write(2, captured.read())


def _drop_closed_loop_reports(unraisable: Any) -> None:
    """``sys.unraisablehook`` after a failed save or restore: tensorstore's callbacks for the reads and writes
    still in flight when orbax's event loop closed report "Event loop is closed" from their own threads,
    hundreds of times and for a while after the failure; those reports are dropped, any other is shown."""
    if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
        sys.__unraisablehook__(unraisable)


class Checkpoints:
    """The numbered checkpoints of a run (see the module docstring).

    Args:
      directory: ``WORKDIR/checkpoints``.
      keep: how many of the newest are kept.
    """

    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory)
        self.manager = CheckpointManager(self.directory, keep)

    def describe_latest(self) -> str:
        """'The last good checkpoint is step n in DIR' (or that there is none yet), for messages."""
        step = self.manager.latest_step()
        if step is None:
            return f"No checkpoint was written yet in {self.directory}"
        return f"The last good checkpoint is step {step} in {self.directory}"

    def save(self, step: int, state: Any, loader_state: dict) -> None:
        """Writes checkpoint ``step``: ``state`` and every process's ``loader_state`` (all processes call it).

        Raises:
          CheckpointError: the write failed (path and reason named); the earlier checkpoints are intact.
        """
        loaders = allgather_json(loader_state)
        path = self.manager.step_path(step)
        try:
            with _orbax_errors_reported_by_us():
                self.manager.save(step, state, {"step": step, "loader": loaders})
        except Exception as e:  # noqa: BLE001 - orbax raises ValueError, OSError, RuntimeError, ... for I/O
            raise CheckpointError(f"could not write checkpoint {step} to {path}: {_reason(e)}") from None

    def restore(self, target: Any) -> tuple[Any, dict, int] | None:
        """``(state, this process's loader state, step)`` of the newest checkpoint that restores; None if none.

        Checkpoints that do not restore are moved aside (module docstring), each with a warning.

        Args:
          target: the state's structure, as ``jax.ShapeDtypeStruct`` leaves with their shardings.

        Raises:
          ValueError: there are checkpoints but none restores, or the one that does was written by a
            different number of processes.
        """
        steps = self.manager.all_steps()
        skipped = []
        for step in reversed(steps):
            error = None
            try:
                saved = self.manager.shapes(step)
            except Exception as e:  # noqa: BLE001 - a damaged checkpoint fails in many ways inside orbax
                error = _reason(e)
            else:
                self._check_fits(step, saved, target)
                try:
                    with _orbax_errors_reported_by_us():
                        state, extra = self.manager.restore(step, target=target)
                except Exception as e:  # noqa: BLE001
                    error = _reason(e)
            if all_true(error is None):
                return state, self._loader_state(step, extra), step
            skipped.append(step)
            self._set_aside(step, error or "another process could not restore it")
        if skipped:
            raise ValueError(
                f"none of the checkpoints {skipped} in {self.directory} restores (moved to "
                f"{self.directory}{DAMAGED_SUFFIX}/); start afresh in another --workdir, or remove "
                f"{self.directory} to start this one afresh"
            )
        return None

    def _check_fits(self, step: int, saved: Any, target: Any) -> None:
        """Raises ValueError when checkpoint ``step`` holds other arrays than the state of this config (a model
        changed under --force-config): a config error, not damage, so nothing is moved aside."""
        shapes = lambda tree: sorted((x.shape, str(x.dtype)) for x in jax.tree.leaves(tree))  # noqa: E731
        if shapes(saved) != shapes(target):
            raise ValueError(
                f"checkpoint {self.manager.step_path(step)} holds a state of other shapes than this config's model "
                f"and optimiser ({len(jax.tree.leaves(saved))} vs {len(jax.tree.leaves(target))} arrays); continue "
                "it with the config it was written with, or start afresh in another --workdir"
            )

    def _loader_state(self, step: int, extra: dict) -> dict:
        loaders = extra.get("loader")
        if isinstance(loaders, dict):  # written before per-process loader states: a single process
            loaders = [loaders]
        count = jax.process_count()
        if not isinstance(loaders, list) or len(loaders) != count:
            written = len(loaders) if isinstance(loaders, list) else "an unknown number of"
            raise ValueError(
                f"checkpoint {self.manager.step_path(step)} was written by {written} processes and this run has "
                f"{count}: the data positions (and bad-read counts) are per process, resume with {written}"
            )
        return loaders[jax.process_index()]

    def _set_aside(self, step: int, reason: str) -> None:
        """Moves checkpoint ``step`` out of the way (process 0), so the next save of that step can happen."""
        source = self.manager.step_path(step)
        target = (
            self.directory.with_name(self.directory.name + DAMAGED_SUFFIX) / f"{step}.{time.strftime('%Y%m%d-%H%M%S')}"
        )
        if is_lead():
            log.warning(
                "checkpoint %s does not restore (%s); moved to %s, trying the one before", source, reason, target
            )

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)

        on_lead(f"set-aside/{step}", move)
        self.manager.reload()

    def close(self) -> None:
        self.manager.close()


__all__ = ["CheckpointError", "Checkpoints"]
