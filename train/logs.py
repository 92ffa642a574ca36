"""What a run writes about itself: ``metrics.jsonl``, ``eval.jsonl``, TensorBoard events, the progress bar.

Only process 0 writes (the writers of the other processes are disabled). Each step is logged once,
whatever was killed when: on start the logs are cut back to the steps before the one the run resumes
from (`JsonLog.truncate`; TensorBoard gets a *purge* marker at that step, which its reader applies to
the events of earlier files), and every step after it is logged again by the resumed run.

Metrics are read one step late (`MetricsLog`): the host asks for step i's scalars only after step
i + 1 has been dispatched, so logging never leaves the device idle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import tqdm

from ecapa_jax.io.files import read_jsonl

log = logging.getLogger(__name__)

TRAIN_SCALARS = ("loss", "accuracy", "lr", "margin", "grad_norm", "samples_per_s")


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter; nothing non-finite was saved."""


class JsonLog:
    """Appends JSON lines, one record per step (or evaluation), on process 0 only."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def truncate(self, before_step: int) -> None:
        """Keeps the records of steps before ``before_step`` (none for 0); the file is replaced atomically.

        A last line without its newline is a write cut short by a kill, and is dropped.

        Raises:
          ValueError: a complete line that is not a JSON record with a ``step`` (file and line named).
        """
        if not (self.enabled and self.path.is_file()):
            return
        text = self.path.read_bytes()
        complete = text[: text.rfind(b"\n") + 1]
        if len(complete) < len(text):
            log.warning("%s: dropping a last line cut short by an interrupted write", self.path)
            self.path.write_bytes(complete)
        records = read_jsonl(self.path)
        for lineno, record in enumerate(records, 1):
            if not isinstance(record.get("step"), int):
                raise ValueError(f"{self.path}: record {lineno} has no integer 'step': {json.dumps(record)[:200]}")
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] < before_step))
        os.replace(tmp, self.path)

    def write(self, record: Mapping[str, Any]) -> None:
        """Appends ``record``.

        Raises:
          OSError: the write failed (a full disk); the message names the file.
        """
        if self.enabled:
            try:
                with self.path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise OSError(e.errno, f"could not write {self.path}: {e.strerror}") from None


class TensorBoard:
    """Scalars as TensorBoard event files in ``directory``, written synchronously with tensorboardX's writer.

    tensorboardX's ``SummaryWriter`` writes from a thread through a bounded queue; once that thread has
    died (a full disk) every further ``add_scalar`` blocks forever. Writing the records here, in the
    training loop's thread, turns a failed write into an ordinary ``OSError`` instead.

    Args:
      directory: where the event files go (created).
      purge_step: the step this run (re)starts from: TensorBoard drops the events of earlier files at
        this step and after, which the interrupted run logged and this one logs again.
      enabled: False on processes other than 0.
    """

    def __init__(self, directory: Path, purge_step: int, enabled: bool = True):
        self.directory, self._writer = Path(directory), None
        if not enabled:
            return
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        self.directory.mkdir(parents=True, exist_ok=True)
        # A nanosecond suffix: a restart within the same second must not reuse (and truncate) a file name.
        self._writer = EventsWriter(str(self.directory / "events"), f".{time.time_ns()}")
        self._event = Event
        self._writer.write_event(Event(step=purge_step, session_log=SessionLog(status=SessionLog.START)))

    def scalars(self, step: int, values: Mapping[str, float], prefix: str) -> None:
        """Writes ``prefix/name`` = value for each item, at ``step``."""
        if self._writer is None:
            return
        from tensorboardX.summary import scalar

        with self._naming_the_file():
            for name, value in values.items():
                summary = scalar(f"{prefix}/{name}", value)
                self._writer.write_event(self._event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        if self._writer is not None:
            with self._naming_the_file():
                self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file (again: nothing)."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with self._naming_the_file():
                writer.close()

    @contextlib.contextmanager
    def _naming_the_file(self) -> Iterator[None]:
        try:
            yield
        except OSError as e:
            raise OSError(e.errno, f"could not write TensorBoard events in {self.directory}: {e.strerror}") from None


class MetricsLog:
    """Training metrics, one step late: finiteness checked on every process; logged by process 0.

    Every ``log_interval``-th step (and the last) goes to ``metrics.jsonl`` (the metrics, samples/s,
    and the data position and index checksum of the step's batch), to TensorBoard and to the
    progress bar.

    Args:
      jsonl: the ``metrics.jsonl`` writer.
      tensorboard: the event writer.
      log_interval: steps between records.
      total: the run's length in steps.
      global_batch_size: samples per step, for samples/s.
      start: the step the run starts (or resumes) from.
      last_checkpoint: describes the newest checkpoint, for the message of a non-finite stop.
      lead: whether this process shows the progress bar.
    """

    def __init__(
        self,
        jsonl: JsonLog,
        tensorboard: TensorBoard,
        *,
        log_interval: int,
        total: int,
        global_batch_size: int,
        start: int,
        last_checkpoint: Callable[[], str],
        lead: bool,
    ):
        self.jsonl, self.tensorboard = jsonl, tensorboard
        self.log_interval, self.total, self.batch = log_interval, total, global_batch_size
        self.last_checkpoint = last_checkpoint
        self.steps_done = start  # steps dispatched so far, for messages
        self._pending: dict | None = None
        self._clock = (start, time.perf_counter())
        self.bar = tqdm.tqdm(total=total, initial=start, disable=not lead, desc="train", dynamic_ncols=True)

    def push(self, step: int, metrics: Mapping[str, jax.Array], data: Mapping[str, Any]) -> None:
        """Records step ``step`` (its metrics still on the device) and logs the step before it."""
        self.flush()
        self._pending = {"step": step, "metrics": metrics, "data": data}
        self.steps_done = step + 1
        self.bar.update(1)

    def flush(self) -> None:
        """Logs the pending step (reading its metrics from the device).

        Raises:
          NonFiniteError: its loss or gradient norm is not finite.
        """
        pending, self._pending = self._pending, None
        if pending is None:
            return
        step = pending["step"]
        data = {k: v() if callable(v) else v for k, v in pending["data"].items()}
        record = {"step": step, **{k: float(v) for k, v in jax.device_get(pending["metrics"]).items()}, **data}
        if not all(math.isfinite(record[k]) for k in ("loss", "grad_norm")):
            raise NonFiniteError(
                f"non-finite loss or gradient at step {step} (loss {record['loss']}, grad_norm "
                f"{record['grad_norm']}, lr {record['lr']:.4g}); stopped without saving. {self.last_checkpoint()}; "
                "lower scheduler_args.initial_lr or check the data, then rerun (with --force-config after "
                "changing the config) to continue from it"
            )
        if (step + 1) % self.log_interval and step + 1 != self.total:
            return
        now = time.perf_counter()
        record["samples_per_s"] = (step + 1 - self._clock[0]) * self.batch / (now - self._clock[1])
        self._clock = (step + 1, now)
        self.jsonl.write(record)
        self.tensorboard.scalars(step, {k: record[k] for k in TRAIN_SCALARS}, "train")
        self.bar.set_postfix(
            loss=f"{record['loss']:.3f}",
            acc=f"{record['accuracy']:.3f}",
            lr=f"{record['lr']:.3g}",
            margin=f"{record['margin']:.3f}",
            samples_s=f"{record['samples_per_s']:.0f}",
        )

    def restart_clock(self, step: int) -> None:
        """Samples/s counts training only: call after evaluating or saving."""
        self._clock = (step, time.perf_counter())

    def close(self) -> None:
        self.bar.close()


class _TqdmHandler(logging.Handler):
    """Log lines printed above the progress bar (``tqdm.write``) instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must not raise
            self.handleError(record)


@contextlib.contextmanager
def trainer_logging(level: int = logging.INFO) -> Iterator[None]:
    """Shows the trainer's own log lines (``train.*``: resumed from, skipped checkpoints, data warnings).

    absl (through orbax) configures the root logger when imported, so ``logging.basicConfig`` would do
    nothing: the ``train`` logger gets its own handler instead (and orbax's INFO chatter stays hidden),
    for the duration of the block only. Enter it after ``jax.distributed`` is set up (the lines of a
    multi-process run name their process).
    """
    logger = logging.getLogger("train")
    handler = _TqdmHandler()
    process = f" [process {jax.process_index()}]" if jax.process_count() > 1 else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(name)s{process}: %(message)s", "%H:%M:%S"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # the root logger's handler (absl's) would print every line a second time
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved


__all__ = ["JsonLog", "MetricsLog", "NonFiniteError", "TensorBoard", "trainer_logging"]
