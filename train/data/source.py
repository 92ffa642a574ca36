"""`DataSource`: the utterances of a data list with their integer labels, and a reader for their audio."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ecapa_jax.frontend.audio import AudioError, load_audio
from ecapa_jax.io.kaldi_io import read_utt2spk
from train.data.config import DataConfig, DataError
from train.data.lists import Utterance, read_kaldi_dir, read_raw_list, read_shard_list, speaker_ids
from train.demo_corpus import DemoCorpus


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
            with open(u.wav, "rb") as f:  # the member's bytes only: a shard holds ~1000 utterances
                f.seek(u.offset)
                data = io.BytesIO(f.read(u.size))
            x = load_audio(data, self.sample_rate, min_samples=1, name=f"{u.wav}:{u.key}")
        else:
            x = load_audio(u.wav, self.sample_rate, min_samples=1)
        if u.vad:
            sr = self.sample_rate
            x = np.concatenate([x[int(s * sr) : int(e * sr)] for s, e in u.vad])
            if not len(x):
                raise AudioError(f"{u.wav}: the 'vad' segments of {u.key!r} select no samples")
        return x


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
