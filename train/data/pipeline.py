"""The host's share of WeSpeaker's per-sample pipeline: which windows a step's samples need, and reading them.

For the sample at position p of epoch e (this process reads its slice of each global batch):

- the utterance: entry p of epoch e's permutation of the usable utterances (not too short, readable);
- its window of ``input_length`` samples (``chunk_len``, or ≈ 1.1 × that plus the resampler's context
  when the step perturbs the speed): WeSpeaker's length filter first crops an utterance longer than
  ``max_num_frames`` at a uniform position, then the chunk is placed uniformly inside; a shorter one
  is tiled from its start;
- with probability ``aug_prob`` an augmentation kind, reverb or noise with equal odds (among those
  whose files are given), then a uniformly drawn RIR, or a noise file and a uniform window of it
  (tiled when the file is shorter than the chunk), read into the ``rir`` / ``noise`` rows.

Unlike WeSpeaker (shard order shuffled, then a 2,500-sample buffer), each epoch is one global
permutation: better mixing, and a position in it is all a resumed run needs. Every draw is a function
of (seed, epoch, step) — one generator per step, a row per global position, each process taking its
rows — so batches depend neither on the process count nor on the workers; an utterance that turns out
unreadable is replaced by one drawn from (seed, epoch, position, attempt).
The speed, the SNR and the rest of the augmentation are drawn on the device (`train.augment.DeviceAugment`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from train import augment
from train.data.config import DataConfig, DataError, chunk_samples
from train.data.source import DataSource, make_bank

MAX_DRAWS = 100  # utterances tried for one sample before giving up
BAD_READ = (OSError, ValueError)  # a file that changed or vanished since it was indexed (AudioError is a ValueError)


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """What this process reads for one step: per row, the utterance window and the augmentation's recordings."""

    epoch: int
    positions: np.ndarray  # (b,) positions in the epoch
    utt: np.ndarray  # (b,) utterance index
    start: np.ndarray  # (b,) first sample of the window
    count: np.ndarray  # (b,) samples read (< input length: tiled)
    aug: np.ndarray  # (b,) AUG_*
    noise: np.ndarray  # (b,) noise file
    noise_start: np.ndarray  # (b,)
    rir: np.ndarray  # (b,) RIR file


def tile_in_place(row: np.ndarray, filled: int) -> None:
    """Repeats ``row[:filled]`` over the whole row (WeSpeaker's tiling of a short signal), by doubling copies."""
    while filled < len(row):
        k = min(filled, len(row) - filled)
        row[filled : filled + k] = row[:k]
        filled += k


class BatchReader:
    """Plans and reads the host side of a step; every plan is a pure function of (seed, epoch, step).

    Args:
      source: the utterances and their audio table.
      config: the pipeline settings.

    Attributes:
      chunk_len: samples per chunk after the device's speed step (gives exactly ``num_frms`` frames).
      input_len: samples per row of ``wav``.
      usable: utterance indices an epoch permutes (bad and, with ``filter``, too-short ones left out).
      filtered: utterances left out as too short.
      noise, rirs: the augmentation banks, or None.
      rir_len: samples per row of ``rir`` (the longest RIR, at most ``chunk_len``: later taps cannot
        reach the chunk's samples).
    """

    def __init__(self, source: DataSource, config: DataConfig):
        self.source, self.config = source, config
        self.chunk_len = chunk_samples(
            config.num_frms, config.sample_rate, config.frame_shift_ms, config.frame_length_ms
        )
        self.input_len = augment.input_length(self.chunk_len, config.speed_perturb, config.sample_rate)
        shift = config.frame_shift_ms * config.sample_rate // 1000  # samples per frame shift
        self.max_len = config.max_num_frames * shift if config.filter else None
        lengths = source.table.lengths
        ok = np.ones(len(source), bool)
        ok[list(source.table.bad)] = False
        short = ok & (lengths < config.min_num_frames * shift) if config.filter else np.zeros(len(source), bool)
        self.filtered = int(short.sum())
        self.usable = np.flatnonzero(ok & ~short)
        self.noise = self.rirs = None
        if config.aug_prob > 0:
            self.noise = make_bank(config.noise_data, config) if config.noise_data else None
            self.rirs = make_bank(config.reverb_data, config) if config.reverb_data else None
        self.kinds = [k for k, bank in ((augment.AUG_REVERB, self.rirs), (augment.AUG_NOISE, self.noise)) if bank]
        self.rir_len = min(int(self.rirs.table.lengths.max()), self.chunk_len) if self.rirs else 0
        self._perm: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """Utterances of an epoch: a permutation of ``usable`` drawn from (seed, epoch), or ``usable`` in order."""
        if self._perm is None or self._perm[0] != epoch:  # epochs are visited in order: keep one
            perm = self.usable
            if self.config.shuffle:
                perm = self.usable[np.random.default_rng([self.config.seed, epoch]).permutation(len(self.usable))]
            self._perm = (epoch, perm)
        return self._perm[1]

    def _window(self, utt: np.ndarray, u_region: np.ndarray, u_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start, count) of each utterance's window from two uniforms: WeSpeaker's max-length crop, then the chunk."""
        n = self.source.table.lengths[utt]
        region = np.minimum(n, self.max_len) if self.max_len else n
        first = np.floor(u_region * (n - region + 1)).astype(np.int64)
        fits = region >= self.input_len
        start = first + np.where(fits, np.floor(u_start * (region - self.input_len + 1)).astype(np.int64), 0)
        return start, np.where(fits, self.input_len, region)

    def plan(self, epoch: int, step: int, first: int, count: int) -> StepPlan:
        """The rows [first, first + count) of global step ``step`` of epoch ``epoch``."""
        g = self.config.global_batch_size
        u = np.random.default_rng([self.config.seed, epoch, step]).random((g, 7))[first : first + count]
        order = self.order(epoch)
        positions = step * g + first + np.arange(count)
        utt = order[positions % len(order)]
        start, n = self._window(utt, u[:, 0], u[:, 1])
        aug = np.full(count, augment.AUG_NONE, np.int32)
        if self.kinds:
            kind = np.asarray(self.kinds, np.int32)[np.floor(u[:, 3] * len(self.kinds)).astype(np.int64)]
            aug = np.where(u[:, 2] < self.config.aug_prob, kind, augment.AUG_NONE).astype(np.int32)
        pick = lambda bank, x: np.floor(x * len(bank.table)).astype(np.int64) if bank else np.zeros(count, np.int64)
        noise = pick(self.noise, u[:, 4])
        noise_start = np.zeros(count, np.int64)
        if self.noise:
            spare = np.maximum(self.noise.table.lengths[noise] - self.chunk_len, 0)
            noise_start = np.floor(u[:, 5] * (spare + 1)).astype(np.int64)
        return StepPlan(epoch, positions, utt, start, n, aug, noise, noise_start, pick(self.rirs, u[:, 6]))

    def allocate(self, rows: int) -> dict[str, np.ndarray]:
        """Empty arrays for a batch of ``rows``; ``noise``/``rir`` are zeros where a row does not use them."""
        batch = {
            "wav": np.empty((rows, self.input_len), self.source.table.dtype),
            "label": np.empty(rows, np.int32),
            "index": np.empty(rows, np.int32),
            "aug": np.empty(rows, np.int32),
        }
        if self.noise:
            batch["noise"] = np.zeros((rows, self.chunk_len), np.int16)
            batch["noise_type"] = np.zeros(rows, np.int32)
        if self.rirs:
            batch["rir"] = np.zeros((rows, self.rir_len), np.int16)
        return batch

    def read(self, plan: StepPlan, rows: range, batch: dict[str, np.ndarray]) -> tuple[int, list[tuple[str, str]]]:
        """Reads ``rows`` of ``plan`` into ``batch``. Returns (utterance reads, [(name, reason)] of the failed ones).

        Raises:
          DataError: no readable utterance in `MAX_DRAWS` draws, or an augmentation file that became unreadable.
        """
        table, labels, wav = self.source.table, self.source.labels, batch["wav"]
        utt, start, count, aug = (plan.utt.tolist(), plan.start.tolist(), plan.count.tolist(), plan.aug.tolist())
        reads, bad = 0, []
        for r in rows:
            u, s, n = utt[r], start[r], count[r]
            for attempt in range(1, MAX_DRAWS + 1):
                reads += 1
                try:
                    table.read(u, s, wav[r, :n])
                    break
                except BAD_READ as e:
                    bad.append((self.source.utterances[u].key, str(e)))
                    u, s, n = self._redraw(plan.epoch, int(plan.positions[r]), attempt)
            else:
                raise DataError(
                    f"no readable utterance in {MAX_DRAWS} draws (epoch {plan.epoch}, position {plan.positions[r]}), "
                    f"e.g. {bad[-2:]}"
                )
            if n < self.input_len:
                tile_in_place(wav[r], n)
            batch["index"][r], batch["label"][r], batch["aug"][r] = u, labels[u], aug[r]
            try:
                if aug[r] == augment.AUG_NOISE:
                    f, row = int(plan.noise[r]), batch["noise"][r]
                    n = min(int(self.noise.table.lengths[f]), self.chunk_len)
                    self.noise.table.read(f, int(plan.noise_start[r]), row[:n])
                    tile_in_place(row, n)
                    batch["noise_type"][r] = self.noise.types[f]
                elif aug[r] == augment.AUG_REVERB:
                    f = int(plan.rir[r])
                    self.rirs.table.read(f, 0, batch["rir"][r, : min(int(self.rirs.table.lengths[f]), self.rir_len)])
            except BAD_READ as e:
                raise DataError(f"an augmentation file became unreadable: {e}") from e
        return reads, bad

    def _redraw(self, epoch: int, position: int, attempt: int) -> tuple[int, int, int]:
        """A replacement utterance and its window, drawn from (seed, epoch, position, attempt)."""
        u = np.random.default_rng([self.config.seed, epoch, position, attempt]).random(3)
        utt = self.usable[min(int(u[0] * len(self.usable)), len(self.usable) - 1)]
        start, n = self._window(np.array([utt]), u[1:2], u[2:3])
        return int(utt), int(start[0]), int(n[0])


__all__ = ["MAX_DRAWS", "BatchReader", "StepPlan", "tile_in_place"]
