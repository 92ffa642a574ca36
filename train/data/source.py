"""`DataSource`: the utterances of a data list, their integer labels, and the table their audio is read from;
the noise and RIR banks of the augmentation."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ecapa_jax.frontend.audio import AudioError
from ecapa_jax.io.kaldi_io import read_utt2spk
from train import augment
from train.data.audio import AudioRef, AudioTable, DemoTable, build_table, default_cache_dir
from train.data.config import DataConfig, DataError
from train.data.lists import Utterance, read_kaldi_dir, read_raw_list, read_shard_list, speaker_ids
from train.demo_corpus import DemoCorpus


class DataSource:
    """Utterances with integer speaker labels and the table their samples are read from.

    Args:
      utterances: the data list.
      spk2id: speaker name → label; every utterance's speaker must be in it.
      table: the utterances' audio, entry i for utterance i (`train.data.audio`).
      demo: the corpus that generates the waveforms (``data_type='demo'``), else None.
      label_file: where ``spk2id`` came from, for error messages.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance],
        spk2id: dict[str, int],
        table: AudioTable | DemoTable,
        demo: DemoCorpus | None = None,
        label_file: str = "",
    ):
        check_labels(utterances, spk2id, label_file)
        if len(table) != len(utterances):
            raise ValueError(f"the table has {len(table)} entries for {len(utterances)} utterances")
        self.utterances = list(utterances)
        self.spk2id = dict(spk2id)
        self.labels = np.array([spk2id[u.spk] for u in self.utterances], np.int64)
        self.table = table
        self.demo = demo

    def __len__(self) -> int:
        return len(self.utterances)

    @property
    def num_speakers(self) -> int:
        return len(self.spk2id)

    def load(self, index: int) -> np.ndarray:
        """The whole waveform of utterance ``index``: float32 (N,) in [−1, 1] at the table's rate, VAD applied.

        Raises:
          ecapa_jax.frontend.audio.AudioError: the utterance is unusable (the reason names the file).
        """
        if index in self.table.bad:
            raise AudioError(self.table.bad[index])
        x = np.empty(int(self.table.lengths[index]), self.table.dtype)
        self.table.read(index, 0, x)
        return x / np.float32(augment.PCM_SCALE) if x.dtype == np.int16 else x


def check_labels(utterances: Sequence[Utterance], spk2id: dict[str, int], label_file: str = "") -> None:
    """Raises DataError for an empty list or an utterance whose speaker has no label (naming ``label_file``)."""
    if not utterances:
        raise DataError("the data list has no utterances")
    unknown = next((u for u in utterances if u.spk not in spk2id), None)
    if unknown is not None:
        raise DataError(
            f"{label_file or 'labels'}: speaker {unknown.spk!r} of utterance {unknown.key!r} is not among the "
            f"{len(spk2id)} labelled speakers"
        )


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


def utterance_table(utterances: Sequence[Utterance], config: DataConfig) -> AudioTable:
    """The audio table of a file-based data list (WAVs read in place, the rest packed into ``config.cache_dir``)."""
    refs = [  # named by their files in messages: the path, or tar:key for a shard member
        AudioRef(u.wav, u.wav, vad=u.vad)
        if u.offset < 0
        else AudioRef(f"{u.wav}:{u.key}", u.wav, u.offset, u.size, u.vad)
        for u in utterances
    ]
    return build_table(refs, config.sample_rate, config.cache_dir or default_cache_dir(), max(1, config.num_workers))


def make_source(config: DataConfig) -> DataSource:
    """The `DataSource` that ``config`` describes (list parsing, label set, audio table, demo corpus)."""
    demo = None
    if config.data_type == "demo":
        demo = demo_corpus(config)
        utts = [Utterance(key, spk) for key, spk in demo.utterances]
        table = DemoTable(demo, [u.key for u in utts])
    else:
        reader = {"raw": read_raw_list, "shard": read_shard_list, "kaldi": read_kaldi_dir}[config.data_type]
        utts = reader(config.train_data)
        table = None
    if config.train_label:
        spk2id = speaker_ids(list(read_utt2spk(config.train_label).values()))
    else:
        spk2id = speaker_ids([u.spk for u in utts])
    check_labels(utts, spk2id, config.train_label)  # before the (possibly long) indexing of the audio
    return DataSource(utts, spk2id, table or utterance_table(utts, config), demo, label_file=config.train_label)


@dataclasses.dataclass
class Bank:
    """Augmentation recordings (noise or RIRs) as a table, with each noise file's MUSAN type (`augment.NOISE_TYPES`)."""

    table: AudioTable
    types: np.ndarray  # (N,) int32


def make_bank(spec: str, config: DataConfig) -> Bank:
    """The noise or RIR recordings of a directory or list file (`augment.list_audio`).

    Raises:
      DataError: an unusable recording, naming it (a broken augmentation set is a setup error, not data noise).
    """
    files = augment.list_audio(spec)
    table = build_table(
        [AudioRef(f, f) for f in files], config.sample_rate, config.cache_dir or default_cache_dir(), config.num_workers
    )
    if table.bad:
        reason = next(iter(table.bad.values()))
        raise DataError(f"{spec}: {len(table.bad)} unusable augmentation file(s), e.g. {reason}")
    types = np.array([augment.NOISE_TYPES.index(augment.noise_category(f)) for f in files], np.int32)
    return Bank(table, types)


__all__ = ["Bank", "DataSource", "demo_corpus", "make_bank", "make_source", "utterance_table"]
