"""WeSpeaker's training data on the host: data lists → sources → per-sample pipeline → batches.

One job per module, in data-flow order:

==============  ==============================================================================
config.py       `DataConfig` (every setting; defaults are WeSpeaker's recipe), `chunk_samples`
lists.py        the list formats: raw JSON lines, tar shards, Kaldi dirs → `Utterance` lists
audio.py        audio tables: windows read in place from PCM WAVs, everything else packed once (int16)
source.py       `DataSource` (utterances + labels + audio table), `make_source`, the noise/RIR banks
pipeline.py     per step: which windows, noise and RIRs each sample needs (from seed, epoch, step), read
loader.py       `Loader`: deterministic, resumable, per-process slices of global batches
__main__.py     ``python -m train.data``: the loader's throughput (same overrides as ``python -m train``)

The host only reads and crops; the speed change, reverb, noise, peak normalisation, fbank and
SpecAugment run in the jitted train step (`train.augment.DeviceAugment`).
==============  ==============================================================================
"""

from train.data.audio import AudioRef, AudioTable, DemoTable, build_table
from train.data.config import DATA_TYPES, DataConfig, DataError, chunk_samples
from train.data.lists import (
    Utterance,
    index_shard,
    read_kaldi_dir,
    read_raw_list,
    read_shard_list,
    speaker_ids,
)
from train.data.loader import Loader, measure_throughput
from train.data.pipeline import BatchReader, StepPlan
from train.data.source import Bank, DataSource, demo_corpus, make_bank, make_source, utterance_table

__all__ = [
    "DATA_TYPES",
    "AudioRef",
    "AudioTable",
    "Bank",
    "BatchReader",
    "DemoTable",
    "StepPlan",
    "build_table",
    "make_bank",
    "utterance_table",
    "DataConfig",
    "DataError",
    "DataSource",
    "Loader",
    "Utterance",
    "chunk_samples",
    "demo_corpus",
    "index_shard",
    "make_source",
    "measure_throughput",
    "read_kaldi_dir",
    "read_raw_list",
    "read_shard_list",
    "speaker_ids",
]
