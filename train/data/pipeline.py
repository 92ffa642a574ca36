"""WeSpeaker's per-sample processing on the host: a pure function of (epoch, position, utterance index)."""

from __future__ import annotations

import dataclasses
import tarfile

import numpy as np

from ecapa_jax.frontend.audio import AudioError
from train import augment
from train.data.config import DataConfig, DataError, chunk_samples
from train.data.source import DataSource

MAX_DRAWS = 100  # utterances tried for one sample before giving up
# What an unusable utterance raises: bad/missing/short audio (AudioError), I/O, a damaged tar.
BAD_AUDIO = (AudioError, OSError, EOFError, tarfile.TarError)


@dataclasses.dataclass(frozen=True)
class Sample:
    """A processed training sample and what happened on the way."""

    wav: np.ndarray  # (L,) float32
    label: int
    speed: int  # index into augment.SPEEDS
    aug: int  # augment.AUG_*
    index: int  # utterance used (after replacements)
    bad: tuple[tuple[str, str], ...]  # (key, reason) of each unusable utterance met
    filtered: int  # utterances skipped as too short


class SamplePipeline:
    """WeSpeaker's per-sample processing, a pure function of (epoch, position, utterance index)."""

    def __init__(self, source: DataSource, config: DataConfig):
        self.source, self.config = source, config
        ms = config.frame_shift_ms * config.sample_rate // 1000  # samples per frame shift
        self.min_len, self.max_len = config.min_num_frames * ms, config.max_num_frames * ms
        self.chunk_len = chunk_samples(
            config.num_frms, config.sample_rate, config.frame_shift_ms, config.frame_length_ms
        )
        noise = augment.list_audio(config.noise_data) if config.noise_data else []
        rirs = augment.list_audio(config.reverb_data) if config.reverb_data else []
        self.augmenter = None
        if config.aug_prob > 0 and (noise or rirs):
            self.augmenter = augment.WaveAugmenter(noise, rirs, config.aug_prob, config.sample_rate)

    def __call__(self, epoch: int, position: int, index: int) -> Sample:
        cfg, src = self.config, self.source
        rng = np.random.default_rng([cfg.seed, epoch, position])
        bad, filtered = [], 0
        for _ in range(MAX_DRAWS):
            try:
                x = src.load(index)
                if cfg.filter and len(x) < self.min_len:
                    filtered += 1
                    index = int(rng.integers(len(src)))
                    continue
                if cfg.filter and len(x) > self.max_len:
                    x = augment.random_chunk(x, self.max_len, rng)
                speed = int(rng.integers(len(augment.SPEEDS))) if cfg.speed_perturb else 0
                x = augment.speed_perturb(x, augment.SPEEDS[speed], cfg.sample_rate)
                x = augment.random_chunk(x, self.chunk_len, rng)
                aug = augment.AUG_NONE
                if self.augmenter is not None:
                    x, aug = self.augmenter(x, rng)
            except BAD_AUDIO as e:
                bad.append((src.utterances[index].key, str(e)))
                index = int(rng.integers(len(src)))
                continue
            label = int(src.labels[index]) + src.num_speakers * speed
            return Sample(x.astype(np.float32), label, speed, aug, index, tuple(bad), filtered)
        raise DataError(
            f"no usable utterance in {MAX_DRAWS} draws (epoch {epoch}, position {position}): {filtered} too short "
            f"(< {cfg.min_num_frames} frames), {len(bad)} unreadable, e.g. {bad[:2]}"
        )
