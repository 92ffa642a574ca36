"""`Loader`: endless, deterministic, resumable batches for one process of a (multi-host) run."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Iterator

import numpy as np

from train import augment
from train.data.config import DataConfig, DataError
from train.data.pipeline import Sample, SamplePipeline
from train.data.source import DataSource

log = logging.getLogger(__name__)


# Process workers get the pipeline once, at start-up, not with every task.
_WORKER_PIPELINE: SamplePipeline | None = None


def _init_worker(pipeline: SamplePipeline) -> None:
    global _WORKER_PIPELINE
    _WORKER_PIPELINE = pipeline


def _run_in_worker(epoch: int, position: int, index: int) -> Sample:
    return _WORKER_PIPELINE(epoch, position, index)


class Loader:
    """Endless, deterministic, resumable batches for one process of a (multi-host) run.

    Iterating yields this process's slice of each global batch, epoch after epoch; `state()` is the
    position of the next batch to yield, and `restore(state)` makes the next iteration start there.
    One iteration at a time: a new ``iter()`` restarts from the current `state()`.

    Args:
      source: utterances and labels (`make_source`).
      config: the pipeline settings.
      process_index: this process (``jax.process_index()``).
      process_count: processes in the run (``jax.process_count()``); each yields
        ``global_batch_size // process_count`` samples per step, disjoint slices of the global batch.
    """

    def __init__(self, source: DataSource, config: DataConfig, process_index: int = 0, process_count: int = 1):
        g = config.global_batch_size
        if g % process_count:
            raise ValueError(f"global_batch_size {g} is not divisible by process_count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
        n = len(source)
        self.epoch_iter = n // g if config.drop_last else -(-n // g)
        if self.epoch_iter == 0:
            raise DataError(f"{n} utterances are fewer than one global batch ({g}) with drop_last")
        self.source, self.config = source, config
        self.local_batch = g // process_count
        self.offset = process_index * self.local_batch
        self.pipeline = SamplePipeline(source, config)
        self.counts = collections.Counter()  # samples, reads, bad, filtered
        self.bad_keys: dict[str, str] = {}  # first failures, key → reason
        self._epoch, self._step = 0, 0
        self._perms: dict[int, np.ndarray] = {}

    @property
    def num_classes(self) -> int:
        """Speakers × 3 with speed perturbation (each speed a class), else speakers."""
        return self.source.num_speakers * (len(augment.SPEEDS) if self.config.speed_perturb else 1)

    @property
    def chunk_len(self) -> int:
        return self.pipeline.chunk_len

    def state(self) -> dict[str, int]:
        """{'epoch', 'step'} of the next batch; enough to resume exactly."""
        return {"epoch": self._epoch, "step": self._step}

    def restore(self, state: dict[str, int]) -> None:
        """Continues from a `state()`; the next batch yielded is the one that followed it."""
        if set(state) != {"epoch", "step"} or not 0 <= state["step"] < self.epoch_iter or state["epoch"] < 0:
            raise ValueError(f"loader state must be {{'epoch' >= 0, 'step' in [0, {self.epoch_iter})}}, got {state}")
        self._epoch, self._step = int(state["epoch"]), int(state["step"])

    def _order(self, epoch: int) -> np.ndarray:
        """Utterance order of an epoch: a permutation drawn from (seed, epoch), or the list order."""
        if epoch not in self._perms:
            n = len(self.source)
            perm = (
                np.random.default_rng([self.config.seed, epoch]).permutation(n) if self.config.shuffle else np.arange(n)
            )
            self._perms = {epoch: perm}  # epochs are visited in order: keep one
        return self._perms[epoch]

    def _tasks(self, epoch: int, step: int) -> list[tuple[int, int, int]]:
        """(epoch, position, utterance index) of this process's samples of one step."""
        order, g = self._order(epoch), self.config.global_batch_size
        first = step * g + self.offset
        return [(epoch, p, int(order[p % len(order)])) for p in range(first, first + self.local_batch)]

    def _steps(self) -> Iterator[tuple[int, int]]:
        epoch, step = self._epoch, self._step
        while True:
            yield epoch, step
            epoch, step = (epoch + 1, 0) if step + 1 == self.epoch_iter else (epoch, step + 1)

    def _pool(self) -> concurrent.futures.Executor | None:
        cfg = self.config
        if cfg.num_workers == 0:
            return None
        if cfg.worker_type == "thread":
            return concurrent.futures.ThreadPoolExecutor(cfg.num_workers, thread_name_prefix="data")
        # spawn, not fork: forking a process that runs JAX's threads can deadlock.
        return concurrent.futures.ProcessPoolExecutor(
            cfg.num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.pipeline,),
        )

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        pool = self._pool()
        if pool is None:
            submit = lambda task: _Done(self.pipeline(*task))
        elif isinstance(pool, concurrent.futures.ProcessPoolExecutor):
            submit = lambda task: pool.submit(_run_in_worker, *task)
        else:
            submit = lambda task: pool.submit(self.pipeline, *task)
        steps, pending = self._steps(), collections.deque()
        depth = 1 if pool is None else self.config.prefetch_batches
        try:
            while True:
                while len(pending) < depth:
                    epoch, step = next(steps)
                    pending.append((epoch, step, [submit(t) for t in self._tasks(epoch, step)]))
                epoch, step, futures = pending.popleft()
                batch = self._collate([f.result() for f in futures])
                self._epoch, self._step = (epoch + 1, 0) if step + 1 == self.epoch_iter else (epoch, step + 1)
                yield batch
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _collate(self, samples: list[Sample]) -> dict[str, np.ndarray]:
        """Stacks samples into a batch and keeps the books on unusable audio."""
        for s in samples:
            self.counts.update(samples=1, reads=1 + len(s.bad) + s.filtered, bad=len(s.bad), filtered=s.filtered)
            for key, reason in s.bad:
                if key not in self.bad_keys:
                    log.warning("skipping unusable utterance %s: %s", key, reason)
                    if len(self.bad_keys) < 1000:
                        self.bad_keys[key] = reason
        bad, reads = self.counts["bad"], self.counts["reads"]
        if bad > self.config.max_bad_fraction * reads:
            examples = "; ".join(f"{k}: {r}" for k, r in list(self.bad_keys.items())[:3])
            raise DataError(
                f"{bad} of {reads} audio reads failed ({bad / reads:.1%} > max_bad_fraction "
                f"{self.config.max_bad_fraction:.1%}); e.g. {examples}"
            )
        return {
            "wav": np.stack([s.wav for s in samples]),
            "label": np.array([s.label for s in samples], np.int32),
            "speed": np.array([s.speed for s in samples], np.int32),
            "aug": np.array([s.aug for s in samples], np.int32),
            "index": np.array([s.index for s in samples], np.int32),
        }


@dataclasses.dataclass(frozen=True)
class _Done:
    """A finished 'future' for loading without workers."""

    value: Sample

    def result(self) -> Sample:
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
