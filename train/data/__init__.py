"""WeSpeaker's training data on the host: data lists → sources → per-sample pipeline → batches.

One job per module, in data-flow order:

==============  ==============================================================================
config.py       `DataConfig` (every setting; defaults are WeSpeaker's recipe), `chunk_samples`
lists.py        the list formats: raw JSON lines, tar shards, Kaldi dirs → `Utterance` lists
source.py       `DataSource` (utterances + labels + audio reader), `make_source`, `demo_corpus`
pipeline.py     the per-sample processing, a pure function of (seed, epoch, position)
loader.py       `Loader`: deterministic, resumable, per-process slices of global batches
__main__.py     ``python -m train.data``: the loader's throughput
==============  ==============================================================================
"""

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
from train.data.pipeline import Sample, SamplePipeline
from train.data.source import DataSource, demo_corpus, make_source

__all__ = [
    "DATA_TYPES",
    "DataConfig",
    "DataError",
    "DataSource",
    "Loader",
    "Sample",
    "SamplePipeline",
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
