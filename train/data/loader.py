"""`Loader`: endless, deterministic, resumable batches for one process of a (multi-host) run.

A batch is this process's slice (b = global batch / processes rows) of a global batch:

==============  ==============================================================================
``wav``         (b, input_len) int16 PCM (float32 for the demo corpus): the utterance windows
``label``       (b,) int32 speaker label (the step adds S·speed index when it perturbs the speed)
``index``       (b,) int32 utterance used (after replacing unreadable ones)
``aug``         (b,) int32 `train.augment` AUG_NONE / AUG_REVERB / AUG_NOISE, drawn here
``noise``       (b, chunk_len) int16 noise window of AUG_NOISE rows, zeros elsewhere (with ``noise_data``)
``noise_type``  (b,) int32 its MUSAN type (`train.augment.NOISE_TYPES`), which sets the SNR range
``rir``         (b, rir_len) int16 impulse response of AUG_REVERB rows, zeros elsewhere (with ``reverb_data``)
==============  ==============================================================================

`Loader.device_augment` is the step's half of the pipeline (`train.augment.DeviceAugment`), or None when
the run has neither speed perturbation nor augmentation files (then ``wav`` is the chunk itself).

The books on unusable audio (`Loader.counts`, `Loader.bad_keys`) are part of `Loader.state()`, so a
resumed run judges ``max_bad_fraction`` on the whole run, not on what it read since the restart.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import functools
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from train import augment
from train.data.config import DataConfig, DataError
from train.data.pipeline import BatchReader
from train.data.source import DataSource

log = logging.getLogger(__name__)

MAX_BAD_KEYS = 20  # unusable utterances named in the state and the error message
_COUNTERS = ("samples", "reads", "bad_reads")


@functools.cache
def reuse_freed_memory() -> bool:
    """Lets glibc keep batch-sized blocks on its heap (``mallopt``), so a new batch reuses a freed one's pages.

    By default glibc serves blocks over 128 KiB with a fresh ``mmap`` and unmaps them when freed: every batch
    array (18 MB at 256 × 2.2 s int16) then costs a page fault per 4 KiB on first write, which measured
    2.4× the time of writing into reused memory, the largest share of the host's work per sample. Raising
    the mmap threshold to its maximum (32 MiB) and the trim threshold to 1 GiB keeps them on the heap.
    Process-wide, once; a no-op (False) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


class Loader:
    """Endless, deterministic, resumable batches for one process of a (multi-host) run.

    Iterating yields this process's slice of each global batch, epoch after epoch; `state()` is the
    position of the next batch to yield (and the books so far), and `restore(state)` makes the next
    iteration start there. One iteration at a time: a new ``iter()`` restarts from the current `state()`.

    Args:
      source: utterances, labels and their audio table (`make_source`).
      config: the pipeline settings.
      process_index: this process (``jax.process_index()``).
      process_count: processes in the run (``jax.process_count()``); each yields
        ``global_batch_size // process_count`` samples per step, disjoint slices of the global batch.

    Raises:
      DataError: fewer usable utterances than one global batch, or more unusable ones (unreadable at
        indexing) than ``max_bad_fraction`` of the list, naming some.
    """

    def __init__(self, source: DataSource, config: DataConfig, process_index: int = 0, process_count: int = 1):
        g = config.global_batch_size
        if g % process_count:
            raise ValueError(f"global_batch_size {g} is not divisible by process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
        self.source, self.config = source, config
        reuse_freed_memory()
        self.reader = BatchReader(source, config)
        table = source.table
        self._bad_listed = len(table.bad)
        keys = [u.key for u in source.utterances]
        self.bad_keys: dict[str, str] = {keys[i]: r for i, r in list(table.bad.items())[:MAX_BAD_KEYS]}
        for name, reason in self.bad_keys.items():
            log.warning("skipping unusable utterance %s: %s", name, reason)
        if self._bad_listed > config.max_bad_fraction * len(source):
            raise DataError(
                f"{self._bad_listed} of {len(source)} utterances are unusable ({self._bad_listed / len(source):.1%} > "
                f"max_bad_fraction {config.max_bad_fraction:.1%}); e.g. {self._examples()}"
            )
        n = len(self.reader.usable)
        self.epoch_iter = n // g if config.drop_last else -(-n // g)
        if self.epoch_iter == 0:
            raise DataError(
                f"{n} usable utterances ({self.reader.filtered} too short, {self._bad_listed} unusable left out) are "
                f"fewer than one global batch ({g}) with drop_last"
            )
        if self.reader.filtered:
            log.info(
                "%d of %d utterances are shorter than min_num_frames %d and left out",
                self.reader.filtered,
                len(source),
                config.min_num_frames,
            )
        self.local_batch = g // process_count
        self.offset = process_index * self.local_batch
        self._epoch, self._step = 0, 0
        self._books = dict.fromkeys(_COUNTERS, 0)

    @property
    def num_classes(self) -> int:
        """Speakers × 3 with speed perturbation (each speed a class), else speakers."""
        return self.source.num_speakers * (len(augment.SPEEDS) if self.config.speed_perturb else 1)

    @property
    def chunk_len(self) -> int:
        """Samples per chunk the step's front-end sees (``num_frms`` frames)."""
        return self.reader.chunk_len

    @property
    def device_augment(self) -> augment.DeviceAugment | None:
        """The step's half of the pipeline (speed, reverb/noise, peak normalisation, label mapping), or None."""
        if not (self.config.speed_perturb or self.reader.kinds):
            return None
        return augment.DeviceAugment(
            self.chunk_len, self.source.num_speakers, self.config.speed_perturb, self.config.sample_rate
        )

    @property
    def device_keys(self) -> tuple[str, ...]:
        """The batch entries the train step takes (``index`` stays on the host)."""
        keys = ["wav", "label"]
        if self.device_augment is not None:
            keys += (
                ["aug"] + (["noise", "noise_type"] if self.reader.noise else []) + (["rir"] if self.reader.rirs else [])
            )
        return tuple(keys)

    @property
    def counts(self) -> dict[str, int]:
        """{'samples' delivered, 'reads' of utterances, 'bad' unusable (at indexing + failed reads), 'filtered'
        (too short, left out)}, over the whole run (restored with the state)."""
        b = self._books
        return {
            "samples": b["samples"],
            "reads": b["reads"],
            "bad": self._bad_listed + b["bad_reads"],
            "filtered": self.reader.filtered,
        }

    def state(self) -> dict[str, Any]:
        """The next batch's {'epoch', 'step'} and the books (counters, first unusable files): JSON, enough to resume."""
        return {"epoch": self._epoch, "step": self._step, **self._books, "bad_keys": dict(self.bad_keys)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continues from a `state()`: the next batch yielded is the one that followed it, the books carry on.

        A state of an older version without the books ({'epoch', 'step'} only) restores the position.
        """
        ok = (
            isinstance(state, dict)
            and {"epoch", "step"} <= set(state) <= {"epoch", "step", "bad_keys", *_COUNTERS}
            and 0 <= state["step"] < self.epoch_iter
            and state["epoch"] >= 0
        )
        if not ok:
            raise ValueError(
                f"loader state must be {{'epoch' >= 0, 'step' in [0, {self.epoch_iter}), counters}}, got {state}"
            )
        self._epoch, self._step = int(state["epoch"]), int(state["step"])
        self._books = {k: int(state.get(k, 0)) for k in _COUNTERS}
        self.bad_keys = {**dict(state.get("bad_keys", {})), **self.bad_keys}

    def _examples(self) -> str:
        return "; ".join(f"{k}: {r}" for k, r in list(self.bad_keys.items())[:3])

    def _steps(self) -> Iterator[tuple[int, int]]:
        epoch, step = self._epoch, self._step
        while True:
            yield epoch, step
            epoch, step = (epoch + 1, 0) if step + 1 == self.epoch_iter else (epoch, step + 1)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        workers = self.config.num_workers
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="data") if workers else None
        # Rows are split between the workers; each fills its rows of the step's arrays in place.
        parts = max(1, min(workers, self.local_batch))
        bounds = np.linspace(0, self.local_batch, parts + 1).astype(int)
        steps, pending = self._steps(), collections.deque()
        depth = self.config.prefetch_batches if pool else 1
        try:
            while True:
                while len(pending) < depth:
                    epoch, step = next(steps)
                    plan = self.reader.plan(epoch, step, self.offset, self.local_batch)
                    batch = self.reader.allocate(self.local_batch)
                    tasks = [(plan, range(a, b), batch) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
                    if pool is None:
                        results = [_Done(self.reader.read(*t)) for t in tasks]
                    else:
                        results = [pool.submit(self.reader.read, *t) for t in tasks]
                    pending.append((epoch, step, batch, results))
                epoch, step, batch, results = pending.popleft()
                self._account([r.result() for r in results])
                self._epoch, self._step = (epoch + 1, 0) if step + 1 == self.epoch_iter else (epoch, step + 1)
                yield batch
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _account(self, results: list[tuple[int, list[tuple[str, str]]]]) -> None:
        """Adds a batch's reads and failures to the books; stops a data set whose reads fail too often."""
        b = self._books
        b["samples"] += self.local_batch
        for reads, bad in results:
            b["reads"] += reads
            b["bad_reads"] += len(bad)
            for key, reason in bad:
                if key not in self.bad_keys:
                    log.warning("skipping unusable utterance %s: %s", key, reason)
                    if len(self.bad_keys) < MAX_BAD_KEYS:
                        self.bad_keys[key] = reason
        # Judged against the list size until more reads than that were made: one bad file met early is
        # one in N, not one in the few reads so far (issue 11).
        if b["bad_reads"] > self.config.max_bad_fraction * max(b["reads"], len(self.source)):
            raise DataError(
                f"{b['bad_reads']} of {b['reads']} audio reads failed ({b['bad_reads'] / b['reads']:.1%} > "
                f"max_bad_fraction {self.config.max_bad_fraction:.1%}); e.g. {self._examples()}"
            )


class _Done:
    """A finished 'future' for loading without workers."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def measure_throughput(loader: Loader, num_batches: int = 10, warmup: int = 2) -> float:
    """Samples per second the loader delivers (this process), after ``warmup`` batches.

    It consumes batches, so it advances ``loader.state()``: measure with a loader of its own.
    """
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    rate = num_batches * loader.local_batch / (time.perf_counter() - start)
    it.close()
    return rate


__all__ = ["Loader", "measure_throughput"]
