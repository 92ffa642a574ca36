"""WeSpeaker's training data pipeline on the host: data lists → fixed-size waveform chunks → batches.

Sources (WeSpeaker's data types):

=====  ===========================================================================================
raw    JSON lines ``{"key", "wav", "spk"}``, optional ``"vad": [[start_s, end_s], …]`` (kept parts)
shard  a list of uncompressed tar files; members ``<key>.spk`` + ``<key>.<wav|flac|ogg|…>``
kaldi  a data directory with ``wav.scp`` and ``utt2spk``
demo   the generated corpus of `train.demo_corpus` (no files at all)
=====  ===========================================================================================

Per sample, in WeSpeaker's order (``dataset/processor.py``): read + resample to 16 kHz → length
filter (shorter than min_num_frames: replaced; longer than max_num_frames: random crop) → speed
perturbation ({1.0, 0.9, 1.1}, label + S·idx) → random chunk of num_frms frames (tiled when
short) → reverb or noise with probability aug_prob, then peak normalisation (`train.augment`).
Fbank, CMN and SpecAugment run on the device in the train step.

A batch is ``{'wav': float32 (b, L), 'label': int32 (b,), 'speed': int32 (b,) (index into
SPEEDS), 'aug': int32 (b,) (AUG_*), 'index': int32 (b,) (utterance used)}`` with b this process's
slice of the global batch and L = `chunk_samples` (32,240 for 200 frames).

Determinism: epoch e's order is a permutation drawn from (seed, e); every random choice for the
sample at position p of the epoch (replacement, crop, speed, chunk, augmentation) comes from a
generator seeded with (seed, e, p). Batches therefore do not depend on the number of workers or
their scheduling, and `Loader.state()` → `Loader.restore()` replays exactly the same batches.

Where this differs from WeSpeaker, and why:

- One global shuffle per epoch (list entries and tar members are read by random access) instead
  of shuffling the shard order plus a 2500-sample buffer: better mixing, and resumable mid-epoch.
- A too-short or unreadable utterance is replaced by another one drawn at random (from the same
  per-sample generator) instead of being dropped, so every batch is full and an epoch is exactly
  ``num_utts // global_batch`` steps (WeSpeaker's ``epoch_iter``, which its infinite stream fills).
- A speaker missing from ``train_label`` is an error; WeSpeaker's label −1 would break the loss.
- Resampling (and hence speed perturbation) uses soxr through `ecapa_jax.frontend.audio`, not torchaudio
  or sox: the same operation, not the same samples.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import io
import json
import logging
import multiprocessing
import os
import tarfile
import time
from collections.abc import Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import soundfile as sf

from ecapa_jax.frontend.audio import AudioError, load_audio, resample
from ecapa_jax.io.kaldi_io import read_wav_scp
from train import augment
from train.demo_corpus import DemoCorpus

log = logging.getLogger(__name__)

DATA_TYPES = ("raw", "shard", "kaldi", "demo")
WORKER_TYPES = ("thread", "process")
AUDIO_FORMATS = ("flac", "mp3", "m4a", "ogg", "opus", "wav", "wma")  # WeSpeaker's shard members
MAX_DRAWS = 100  # utterances tried for one sample before giving up
# What an unusable utterance raises: bad/missing/short audio (AudioError), I/O, a damaged tar.
BAD_AUDIO = (AudioError, OSError, EOFError, tarfile.TarError)


class DataError(ValueError):
    """A data list or data set that cannot be used; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Every setting of the pipeline; defaults are WeSpeaker's ECAPA recipe (``ecapa_tdnn.yaml``).

    Attributes:
      data_type: 'raw', 'shard', 'kaldi' or 'demo'.
      train_data: the raw list, the shard list, or the Kaldi data directory.
      train_label: optional ``utt2spk`` whose sorted speaker set defines the labels (WeSpeaker's
        ``train_label``); empty: the speakers of ``train_data``.
      sample_rate: Hz after resampling (``resample_rate``); also the fbank's sample frequency.
      num_frms: frames per training chunk (200; 600 for large-margin fine-tuning).
      frame_shift_ms: fbank frame shift (``fbank_args.frame_shift``): sizes the chunks, and the step's fbank
        and the exported model's front-end use it (`train.config.TrainConfig.frontend`).
      frame_length_ms: fbank frame length (``fbank_args.frame_length``), likewise.
      filter: apply the length filter.
      min_num_frames: utterances shorter than this many frame shifts are replaced.
      max_num_frames: longer utterances are randomly cropped to this many frame shifts first.
      speed_perturb: speeds {1.0, 0.9, 1.1} uniformly, each a separate class.
      aug_prob: probability of reverb or noise on a sample (needs ``noise_data``/``reverb_data``).
      noise_data: directory or list file of noise recordings (MUSAN); empty: no noise.
      reverb_data: directory or list file of room impulse responses; empty: no reverb.
      global_batch_size: samples per step over all processes (recipe: 128 per GPU × 2 GPUs).
      shuffle: shuffle each epoch.
      drop_last: epochs of ⌊N/G⌋ full batches; otherwise ⌈N/G⌉, the last one wrapping around.
      seed: seeds the shuffle and every per-sample draw (recipe: 42).
      num_workers: loading workers; 0 loads in the calling thread.
      worker_type: 'thread' (default: reading, resampling, FFT convolution and NumPy release the
        GIL, and chunks need no pickling; measured faster here) or 'process' (spawned: the main
        script needs the ``if __name__ == "__main__"`` guard).
      prefetch_batches: batches loaded ahead of the consumer.
      max_bad_fraction: the loader fails once more than this fraction of reads were unusable.
      demo_speakers: training speakers of the demo corpus.
      demo_utts_per_speaker: utterances per demo speaker.
      demo_held_out: held-out demo speakers (for evaluation; never in the batches).
      demo_seed: seed of the demo corpus.
      spec_aug: apply `train.augment.spec_augment` on the device (off in the ECAPA recipe).
      spec_aug_prob: its probability.
      num_t_mask: its number of time masks.
      num_f_mask: its number of frequency masks.
      max_t: its widest time mask (frames).
      max_f: its widest frequency mask (bins).
    """

    data_type: str = "demo"
    train_data: str = ""
    train_label: str = ""
    sample_rate: int = 16000
    num_frms: int = 200
    frame_shift_ms: int = 10
    frame_length_ms: int = 25
    filter: bool = True
    min_num_frames: int = 100
    max_num_frames: int = 800
    speed_perturb: bool = True
    aug_prob: float = 0.6
    noise_data: str = ""
    reverb_data: str = ""
    global_batch_size: int = 256
    shuffle: bool = True
    drop_last: bool = True
    seed: int = 42
    num_workers: int = 4
    worker_type: str = "thread"
    prefetch_batches: int = 4
    max_bad_fraction: float = 0.01
    demo_speakers: int = 200
    demo_utts_per_speaker: int = 20
    demo_held_out: int = 40
    demo_seed: int = 0
    spec_aug: bool = False
    spec_aug_prob: float = 0.6
    num_t_mask: int = 1
    num_f_mask: int = 1
    max_t: int = 10
    max_f: int = 8

    def __post_init__(self):
        if self.data_type not in DATA_TYPES:
            raise ValueError(f"data_type must be one of {DATA_TYPES}, got {self.data_type!r}")
        if self.data_type != "demo" and not self.train_data:
            raise ValueError(f"data_type {self.data_type!r} needs train_data (a list file or data directory)")
        if self.worker_type not in WORKER_TYPES:
            raise ValueError(f"worker_type must be one of {WORKER_TYPES}, got {self.worker_type!r}")
        if self.global_batch_size < 1 or self.num_frms < 1 or self.prefetch_batches < 1 or self.num_workers < 0:
            raise ValueError("global_batch_size, num_frms and prefetch_batches must be >= 1, num_workers >= 0")
        if not 0.0 <= self.aug_prob <= 1.0 or not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(
                f"aug_prob ({self.aug_prob}) and max_bad_fraction ({self.max_bad_fraction}) must be in [0, 1]"
            )


def chunk_samples(num_frms: int, sample_rate: int = 16000, frame_shift_ms: int = 10, frame_length_ms: int = 25) -> int:
    """Samples giving exactly ``num_frms`` fbank frames: ((num_frms − 1)·shift + length)·sr / 1000.

    200 frames → 32,240 samples and 600 → 96,240 at 16 kHz (WeSpeaker's ``chunk_len``).
    """
    return ((num_frms - 1) * frame_shift_ms + frame_length_ms) * sample_rate // 1000


# ----------------------------------------------------------------------------- data lists


@dataclasses.dataclass(frozen=True, slots=True)
class Utterance:
    """One entry of a data list.

    Attributes:
      key: utterance id.
      spk: speaker name.
      wav: audio path; for shards the tar file; empty for the demo corpus.
      offset: byte offset of the audio member inside the tar (shards), else −1.
      size: byte size of that member.
      vad: (start_s, end_s) segments to keep, in seconds; empty keeps everything.
    """

    key: str
    spk: str
    wav: str = ""
    offset: int = -1
    size: int = 0
    vad: tuple[tuple[float, float], ...] = ()


def _check_path(value: str, where: str) -> str:
    """A local path from a list entry; WeSpeaker's pipes (``cmd |``) and URLs (fetched with wget) are refused."""
    if value.rstrip().endswith("|"):
        raise DataError(f"{where}: piped commands ({value!r}) are not supported; give a file path")
    scheme = urlparse(value).scheme
    if scheme not in ("", "file"):
        raise DataError(f"{where}: remote paths ({value!r}) are not supported; copy the data locally")
    return urlparse(value).path if scheme == "file" else value


def read_raw_list(path: str) -> list[Utterance]:
    """Reads a WeSpeaker raw list: one JSON object per line with "key", "wav", "spk" (and "vad").

    Raises:
      DataError: naming the file and line, for a line that is not a JSON object, a missing or
        non-string field, a bad "vad" value, a piped or remote "wav", or a repeated key.
    """
    utts, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not a JSON object ({e.msg})") from e
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object with 'key', 'wav', 'spk', got {type(obj).__name__}")
            for field in ("key", "wav", "spk"):
                if not isinstance(obj.get(field), str) or not obj[field]:
                    raise DataError(f"{where}: missing or empty string field {field!r}")
            vad = obj.get("vad", [])
            try:
                vad = tuple((float(s), float(e)) for s, e in vad)
            except (TypeError, ValueError) as e:
                raise DataError(f"{where}: 'vad' must be a list of [start_s, end_s] pairs, got {vad!r}") from e
            if any(not 0 <= s < e for s, e in vad):
                raise DataError(f"{where}: 'vad' segments need 0 <= start < end, got {list(vad)}")
            if obj["key"] in seen:
                raise DataError(f"{where}: duplicate key {obj['key']!r}")
            seen.add(obj["key"])
            utts.append(Utterance(obj["key"], obj["spk"], _check_path(obj["wav"], where), vad=vad))
    return utts


def read_utt2spk(path: str) -> dict[str, str]:
    """Reads a Kaldi ``utt2spk`` (``utt spk`` per line).

    Raises:
      DataError: naming the file and line, for a line that is not two fields or a repeated utterance.
    """
    out = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataError(f"{path}:{lineno}: expected 'utt spk', got {line.strip()!r}")
            if fields[0] in out:
                raise DataError(f"{path}:{lineno}: duplicate utterance {fields[0]!r}")
            out[fields[0]] = fields[1]
    return out


def read_kaldi_dir(directory: str) -> list[Utterance]:
    """Reads a Kaldi data directory: ``wav.scp`` (utt path) and ``utt2spk``, in ``wav.scp`` order.

    Raises:
      DataError: a missing file, or an utterance of ``wav.scp`` without a speaker in ``utt2spk``.
      ecapa_jax.io.kaldi_io.KaldiIOError: a malformed ``wav.scp`` line (file and line named).
    """
    scp, u2s = os.path.join(directory, "wav.scp"), os.path.join(directory, "utt2spk")
    for p in (scp, u2s):
        if not os.path.isfile(p):
            raise DataError(f"{directory}: not a Kaldi data directory, {os.path.basename(p)} is missing")
    utt2spk = read_utt2spk(u2s)
    utts = []
    for key, wav in read_wav_scp(scp).items():
        if key not in utt2spk:
            raise DataError(f"{scp}: utterance {key!r} has no speaker in {u2s}")
        utts.append(Utterance(key, utt2spk[key], _check_path(wav, f"{scp} ({key})")))
    return utts


def index_shard(path: str) -> list[Utterance]:
    """The utterances of one uncompressed tar shard, grouped by member prefix (before the last '.').

    Raises:
      DataError: naming the tar, for an unreadable or compressed tar, a member name without an
        extension, or an utterance without exactly one ``.spk`` and one audio member.
    """
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                prefix, dot, ext = member.name.rpartition(".")
                if not dot or not prefix:
                    raise DataError(f"{path}: member {member.name!r} has no '<key>.<ext>' name")
                groups.setdefault(prefix, {})[ext] = member
            spk = {k: tar.extractfile(m["spk"]).read().decode("utf-8").strip() for k, m in groups.items() if "spk" in m}
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable uncompressed tar shard ({e})") from e
    utts = []
    for key, members in groups.items():
        audio = [ext for ext in members if ext in AUDIO_FORMATS]
        if key not in spk or len(audio) != 1:
            raise DataError(
                f"{path}: utterance {key!r} needs one '.spk' and one audio member ({'/'.join(AUDIO_FORMATS)}), "
                f"has {sorted(members)}"
            )
        m = members[audio[0]]
        utts.append(Utterance(key, spk[key], path, offset=m.offset_data, size=m.size))
    return utts


def read_shard_list(path: str) -> list[Utterance]:
    """Reads a WeSpeaker shard list (one tar path per line; relative to the current directory, as
    WeSpeaker) and indexes every tar.

    Raises:
      DataError: naming the list file and line for a missing, remote or unreadable tar.
    """
    utts, seen = [], set()
    with open(path, encoding="utf-8") as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    for lineno, tar in lines:
        tar = _check_path(tar, f"{path}:{lineno}")
        if not os.path.isfile(tar):
            raise DataError(f"{path}:{lineno}: no such shard {tar!r}")
        for u in index_shard(tar):
            if u.key in seen:
                raise DataError(f"{path}:{lineno}: key {u.key!r} of {tar} already appeared in an earlier shard")
            seen.add(u.key)
            utts.append(u)
    return utts


def speaker_ids(speakers: Sequence[str]) -> dict[str, int]:
    """WeSpeaker's ``spk2id``: the sorted set of speaker names, numbered from 0."""
    return {s: i for i, s in enumerate(sorted(set(speakers)))}


# ----------------------------------------------------------------------------- sources


class DataSource:
    """Utterances with integer speaker labels and a reader for their waveforms.

    Args:
      utterances: the data list.
      spk2id: speaker name → label; every utterance's speaker must be in it.
      sample_rate: Hz of the returned waveforms.
      demo: the corpus that generates the waveforms (``data_type='demo'``), else None.
      label_file: where ``spk2id`` came from, for error messages.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        spk2id: dict[str, int],
        sample_rate: int = 16000,
        demo: DemoCorpus | None = None,
        label_file: str = "",
    ):
        if not utterances:
            raise DataError("the data list has no utterances")
        unknown = next((u for u in utterances if u.spk not in spk2id), None)
        if unknown is not None:
            raise DataError(
                f"{label_file or 'labels'}: speaker {unknown.spk!r} of utterance {unknown.key!r} is not among the "
                f"{len(spk2id)} labelled speakers"
            )
        if demo is not None and demo.sample_rate != sample_rate:
            raise DataError(f"the demo corpus is at {demo.sample_rate} Hz, the pipeline at {sample_rate} Hz")
        self.utterances = list(utterances)
        self.spk2id = dict(spk2id)
        self.labels = np.array([spk2id[u.spk] for u in self.utterances], np.int64)
        self.sample_rate = sample_rate
        self.demo = demo

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def num_speakers(self) -> int:
        return len(self.spk2id)

    def load(self, index: int) -> np.ndarray:
        """The waveform of utterance ``index``: float32 (N,) in [−1, 1] at ``sample_rate``, VAD applied.

        Raises:
          ecapa_jax.frontend.audio.AudioError (or OSError): unreadable or missing audio, naming the file.
        """
        u = self.utterances[index]
        if self.demo is not None:
            x = self.demo.waveform(u.key)
        elif u.offset >= 0:
            x = self._read_member(u)
        else:
            x = load_audio(u.wav, self.sample_rate, min_samples=1)
        if u.vad:
            sr = self.sample_rate
            x = np.concatenate([x[int(s * sr) : int(e * sr)] for s, e in u.vad])
            if not len(x):
                raise AudioError(f"{u.wav}: the 'vad' segments of {u.key!r} select no samples")
        return x

    def _read_member(self, u: Utterance) -> np.ndarray:
        """Decodes an audio member of a tar shard; as `ecapa_jax.frontend.audio.load_audio`, which takes paths only."""
        where = f"{u.wav}:{u.key}"
        with open(u.wav, "rb") as f:
            f.seek(u.offset)
            data = f.read(u.size)
        try:
            x, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)  # (N, channels)
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise AudioError(f"{where}: not a readable audio member ({e})") from e
        if x.shape[0] == 0 or not np.all(np.isfinite(x)):
            raise AudioError(f"{where}: empty audio or NaN/infinite samples")
        return resample(x.mean(axis=1), sr, self.sample_rate)


def demo_corpus(config: DataConfig) -> DemoCorpus:
    """The generated corpus that ``config``'s ``demo_*`` fields describe, each waveform generated once."""
    return DemoCorpus(
        num_speakers=config.demo_speakers,
        utts_per_speaker=config.demo_utts_per_speaker,
        seed=config.demo_seed,
        sample_rate=config.sample_rate,
        num_held_out=config.demo_held_out,
        cache=True,
    )


def make_source(config: DataConfig) -> DataSource:
    """The `DataSource` that ``config`` describes (list parsing, label set, demo corpus)."""
    demo = None
    if config.data_type == "demo":
        demo = demo_corpus(config)
        utts = [Utterance(key, spk) for key, spk in demo.utterances]
    else:
        reader = {"raw": read_raw_list, "shard": read_shard_list, "kaldi": read_kaldi_dir}[config.data_type]
        utts = reader(config.train_data)
    if config.train_label:
        spk2id = speaker_ids(list(read_utt2spk(config.train_label).values()))
    else:
        spk2id = speaker_ids([u.spk for u in utts])
    return DataSource(utts, spk2id, config.sample_rate, demo, label_file=config.train_label)


# ----------------------------------------------------------------------------- one sample


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


# Process workers get the pipeline once, at start-up, not with every task.
_WORKER_PIPELINE: SamplePipeline | None = None


def _init_worker(pipeline: SamplePipeline) -> None:
    global _WORKER_PIPELINE
    _WORKER_PIPELINE = pipeline


def _run_in_worker(epoch: int, position: int, index: int) -> Sample:
    return _WORKER_PIPELINE(epoch, position, index)


# ----------------------------------------------------------------------------- the loader


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


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m train.data``: loader throughput on the demo corpus (or a list) for a worker setup."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--data_type", default="demo", choices=DATA_TYPES)
    p.add_argument("--train_data", default="")
    p.add_argument("--num_frms", type=int, default=200)
    p.add_argument("--batch", type=int, default=64, help="global batch size")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--worker_type", nargs="+", default=list(WORKER_TYPES), choices=WORKER_TYPES)
    p.add_argument("--batches", type=int, default=5)
    args = p.parse_args(argv)
    for kind in args.worker_type:
        for workers in args.workers:
            config = DataConfig(
                data_type=args.data_type,
                train_data=args.train_data,
                num_frms=args.num_frms,
                global_batch_size=args.batch,
                num_workers=workers,
                worker_type=kind,
            )
            rate = measure_throughput(Loader(make_source(config), config), args.batches, warmup=1)
            print(f"{kind:7s} workers={workers}: {rate:8.1f} samples/s")


if __name__ == "__main__":
    main()
