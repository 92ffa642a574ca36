"""`DataConfig`: every setting of the host data pipeline; the defaults are WeSpeaker's ECAPA recipe."""

from __future__ import annotations

import dataclasses

DATA_TYPES = ("raw", "shard", "kaldi", "demo")


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
      filter: apply WeSpeaker's length filter (the two fields below).
      min_num_frames: utterances shorter than this many frame shifts are left out of every epoch, and
        counted (``Loader.counts['filtered']``).
      max_num_frames: a longer utterance is first cropped to this many frame shifts at a uniform
        position, and the chunk placed uniformly inside that crop (WeSpeaker's order of draws).
      speed_perturb: speeds {1.0, 0.9, 1.1} uniformly, each a separate class; done in the train step.
      aug_prob: probability of reverb or noise on a sample (needs ``noise_data``/``reverb_data``); drawn
        on the host, applied in the train step.
      noise_data: directory or list file of noise recordings (MUSAN); empty: no noise.
      reverb_data: directory or list file of room impulse responses; empty: no reverb.
      global_batch_size: samples per step over all processes (recipe: 128 per GPU × 2 GPUs).
      shuffle: shuffle each epoch.
      drop_last: epochs of ⌊N/G⌋ full batches; otherwise ⌈N/G⌉, the last one wrapping around.
      seed: seeds the shuffle and every per-sample draw (recipe: 42).
      num_workers: reading threads (each fills its rows of a batch; reads and copies release the GIL),
        also used to index and pack the audio; 0 reads in the calling thread.
      prefetch_batches: batches read ahead of the consumer (with workers).
      max_bad_fraction: the loader fails, naming files, once more than this fraction of the list
        (unusable when indexed) or of the reads (failed later) were unusable.
      cache_dir: where audio that cannot be read in place (compressed, resampled, VAD-cut) is packed
        once (`train.data.audio`); empty: ``$XDG_CACHE_HOME/ecapa_jax/audio``.
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
    prefetch_batches: int = 4
    max_bad_fraction: float = 0.01
    cache_dir: str = ""
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
