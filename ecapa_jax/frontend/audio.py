"""Audio loading for the front-end: any libsndfile format → mono float32 at 16 kHz.

Samples are floats in [−1, 1] as ``torchaudio.load(normalize=True)`` gives them, i.e. the scale
WeSpeaker multiplies by 32768 before ``kaldi.fbank``: int16 PCM becomes x / 32768 exactly, 24- and
32-bit PCM x / 2²³ and x / 2³¹; float files are returned as stored. Channels are averaged, then
the signal is resampled with soxr.

Every problem with an input file raises :class:`AudioError` naming the file, so a batch job can
catch it, report the utterance and go on.
"""

from __future__ import annotations

import os
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

MIN_SAMPLES = 400  # one 25 ms fbank frame at 16 kHz: fewer samples give no frame at all


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file."""


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling with soxr at its "HQ" quality (librosa's default ``soxr_hq``).

    "HQ" is libsoxr's 20-bit recipe (about 120 dB of alias rejection, < 0.01 dB passband
    roll-off); soxr is deterministic, fast, and needs no torch. WeSpeaker's training pipeline
    instead uses ``torchaudio.transforms.Resample`` (windowed sinc); the two agree on in-band
    content, not sample for sample.

    Args:
      x: (N,) signal.
      orig_sr: its sample rate in Hz.
      target_sr: the wanted sample rate in Hz.

    Returns:
      (M,) float32 with M = floor(N·target_sr/orig_sr + 1/2), soxr's rounding (half up).
    """
    if orig_sr == target_sr:
        return np.asarray(x, np.float32)
    return soxr.resample(np.asarray(x, np.float32), orig_sr, target_sr, quality="HQ")


def load_audio(
    source: str | os.PathLike | BinaryIO,
    target_sr: int = 16000,
    min_samples: int = MIN_SAMPLES,
    name: str | None = None,
) -> np.ndarray:
    """Reads an audio file (or file-like object) as a mono float32 signal at ``target_sr``.

    Formats are those of libsndfile (WAV, FLAC, OGG/Vorbis, MP3 from libsndfile 1.1 on, ...).

    Args:
      source: the audio file, or a binary file-like object holding one (e.g. ``io.BytesIO`` of a tar
        member).
      target_sr: output sample rate in Hz.
      min_samples: the fewest samples accepted after resampling (default: one 25 ms frame at
        16 kHz, the shortest input fbank accepts).
      name: what error messages call the audio (default: the path, or the object's ``name``).

    Returns:
      (N,) float32, channels averaged, resampled to ``target_sr``.

    Raises:
      AudioError: missing or unreadable audio, 0 samples, NaN/inf samples, or fewer than
        ``min_samples`` samples after resampling; the message starts with ``name``.
    """
    is_path = isinstance(source, (str, os.PathLike))
    name = name or (os.fspath(source) if is_path else getattr(source, "name", "<audio>"))
    if is_path and not os.path.isfile(source):
        raise AudioError(f"{name}: no such audio file")
    try:
        x, sr = sf.read(source, dtype="float32", always_2d=True)  # (N, channels)
    except (sf.LibsndfileError, TypeError, RuntimeError) as e:  # TypeError: headerless RAW (no sample rate)
        raise AudioError(f"{name}: not a readable audio file ({e})") from e
    if x.shape[0] == 0:
        raise AudioError(f"{name}: empty audio (0 samples)")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{name}: {np.count_nonzero(~np.isfinite(x))} sample(s) are NaN or infinite")
    x = resample(x.mean(axis=1), sr, target_sr)  # (N,)
    if x.shape[0] < min_samples:
        raise AudioError(
            f"{name}: too short, {x.shape[0]} samples at {target_sr} Hz after resampling from {sr} Hz "
            f"(need at least {min_samples})"
        )
    return x
