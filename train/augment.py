"""Data augmentation as in WeSpeaker: waveform operations on the host (NumPy), SpecAugment on the device (jnp).

Host side, per sample (WeSpeaker's ``dataset/processor.py``):

- ``random_chunk``: a uniformly placed window of fixed length; shorter signals are tiled.
- ``speed_perturb``: sox ``speed s`` + ``rate sr``, i.e. pitch and tempo change together; done here
  as what it is, resampling: the samples are read as if recorded at s·sr and resampled to sr.
- ``add_noise`` at an SNR drawn from the MUSAN category of the noise file (noise [0, 15] dB,
  speech [10, 30], music [5, 15]); power in dB is 10·log10(mean(x²) + 1e-4).
- ``reverberate``: full convolution with an L2-normalised room impulse response, truncated to the
  input length.
- after either, ``peak_normalize``: x / (max|x| + 1e-4).

`WaveAugmenter` draws between them as WeSpeaker's ``add_reverb_noise``: with probability
``aug_prob`` one augmentation, reverb or noise with equal odds. Every random draw comes from the
``np.random.Generator`` passed in, so a sample's augmentation is reproducible.

Device side, ``spec_augment`` is WeSpeaker's batch SpecAugment (``utils/executor_utils``): with
probability ``prob`` one time mask and one frequency mask, zeroed, the same for the whole batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal

from ecapa_jax.frontend.audio import load_audio, resample

SPEEDS = (1.0, 0.9, 1.1)  # WeSpeaker's order: index i > 0 makes speaker s into class s + S·i
SNR_RANGES = {"noise": (0.0, 15.0), "speech": (10.0, 30.0), "music": (5.0, 15.0)}  # dB, by MUSAN category
DEFAULT_SNR = (0.0, 15.0)  # WeSpeaker's range for noise files outside the three categories
POWER_EPS = 1e-4  # inside the log of the power, WeSpeaker's
PEAK_EPS = 1e-4  # added to the peak in the normalisation, WeSpeaker's
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
AUG_NONE, AUG_REVERB, AUG_NOISE = 0, 1, 2  # WeSpeaker's aug_type numbering


# ----------------------------------------------------------------------------- waveform operations


def random_chunk(x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A window of ``length`` samples starting uniformly in [0, N − length]; tiled when N < length.

    WeSpeaker's ``get_random_chunk``: a short signal is repeated ⌊length/N⌋ + 1 times and cut,
    always from its start (no random offset).

    Args:
      x: (N,) signal, N ≥ 1.
      length: wanted length.
      rng: draws the start.

    Returns:
      (length,) copy.
    """
    if len(x) >= length:
        start = int(rng.integers(len(x) - length + 1))
        return x[start : start + length].copy()
    return np.tile(x, length // len(x) + 1)[:length]


def speed_perturb(x: np.ndarray, speed: float, sample_rate: int) -> np.ndarray:
    """sox ``speed <speed>`` then ``rate <sample_rate>``: pitch and tempo scaled together.

    Reading the samples as if recorded at speed·sr and resampling them to sr plays them ``speed``
    times faster: N samples become about N/speed.

    Args:
      x: (N,) signal at ``sample_rate``.
      speed: 0.9 or 1.1 in WeSpeaker (1.0 is the identity).
      sample_rate: Hz.

    Returns:
      (≈N/speed,) float32.
    """
    if speed == 1.0:
        return x
    return resample(x, round(speed * sample_rate), sample_rate)


def power_db(x: np.ndarray) -> float:
    """10·log10(mean(x²) + 1e-4), WeSpeaker's signal level (the 1e-4 floors silence at −40 dB)."""
    return float(10.0 * np.log10(np.mean(np.square(x, dtype=np.float64)) + POWER_EPS))


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """audio + g·noise with g such that power_db(audio) − power_db(g·noise) = snr_db (up to the 1e-4 floors).

    g = sqrt(10^((P_audio − P_noise − snr) / 10)), P = power_db, as WeSpeaker.

    Args:
      audio: (N,) signal.
      noise: (N,) noise, already cut or tiled to the signal's length.
      snr_db: wanted signal-to-noise ratio in dB.

    Returns:
      (N,) float32 mixture (not normalised).
    """
    if noise.shape != audio.shape:
        raise ValueError(f"noise shape {noise.shape} must equal the audio shape {audio.shape}")
    gain = np.sqrt(10.0 ** ((power_db(audio) - power_db(noise) - snr_db) / 10.0))
    return (audio + gain * noise).astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolution with the L2-normalised RIR (rir / ‖rir‖₂), full length, truncated to len(audio).

    Args:
      audio: (N,) signal.
      rir: (M,) room impulse response.

    Returns:
      (N,) float32 (not normalised).
    """
    norm = np.sqrt(np.sum(np.square(rir, dtype=np.float64)))
    if norm == 0.0:
        raise ValueError("room impulse response is all zeros")
    return signal.convolve(audio, rir / norm, mode="full")[: len(audio)].astype(np.float32)


def peak_normalize(x: np.ndarray) -> np.ndarray:
    """x / (max|x| + 1e-4): WeSpeaker's rescaling into [−1, 1] after an augmentation."""
    return (x / (np.max(np.abs(x)) + PEAK_EPS)).astype(np.float32)


def noise_category(path: str) -> str:
    """MUSAN category of a noise file: the path component nearest the file named noise, speech or
    music (e.g. ``musan/music/fma/x.wav`` → 'music'), else 'other' (SNR range as 'noise')."""
    for part in reversed(os.path.normpath(path).split(os.sep)):
        if part.lower() in SNR_RANGES:
            return part.lower()
    return "other"


def list_audio(spec: str) -> list[str]:
    """Audio files of a directory (recursively, sorted) or of a list file (one path per line, or
    ``key path`` as a Kaldi ``wav.scp``; relative paths are relative to the list file).

    Raises:
      FileNotFoundError: ``spec`` does not exist.
      ValueError: no audio file found, naming ``spec``.
    """
    if os.path.isdir(spec):
        files = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(spec)
            for name in names
            if name.lower().endswith(AUDIO_EXTENSIONS)
        )
    elif os.path.isfile(spec):
        base = os.path.dirname(os.path.abspath(spec))
        with open(spec, encoding="utf-8") as f:
            files = [os.path.join(base, line.split()[-1]) for line in f if line.strip()]
    else:
        raise FileNotFoundError(f"{spec}: no such directory or list file of augmentation audio")
    if not files:
        raise ValueError(f"{spec}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return files


class WaveAugmenter:
    """WeSpeaker's ``add_reverb_noise``: with probability ``aug_prob``, reverb or additive noise
    (equal odds; only the kinds whose file list is given), then peak normalisation.

    Args:
      noise_files: noise recordings (MUSAN); the SNR range follows `noise_category`.
      rir_files: room impulse responses (RIRS_NOISES simulated_rirs).
      aug_prob: probability of augmenting a sample (0.6 in the recipe).
      sample_rate: Hz; the files are resampled to it on reading.
    """

    def __init__(self, noise_files: Sequence[str], rir_files: Sequence[str], aug_prob: float, sample_rate: int):
        self.noise_files, self.rir_files = list(noise_files), list(rir_files)
        self.aug_prob, self.sample_rate = aug_prob, sample_rate
        self.kinds = [k for k, files in ((AUG_REVERB, self.rir_files), (AUG_NOISE, self.noise_files)) if files]
        if not self.kinds:
            raise ValueError("WaveAugmenter needs at least one noise or RIR file")

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """Returns (augmented (N,) float32, kind ∈ {AUG_NONE, AUG_REVERB, AUG_NOISE})."""
        if not rng.random() < self.aug_prob:
            return audio, AUG_NONE
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        if kind == AUG_REVERB:
            rir = load_audio(self.rir_files[int(rng.integers(len(self.rir_files)))], self.sample_rate, min_samples=1)
            return peak_normalize(reverberate(audio, rir)), kind
        path = self.noise_files[int(rng.integers(len(self.noise_files)))]
        noise = random_chunk(load_audio(path, self.sample_rate, min_samples=1), len(audio), rng)
        snr = rng.uniform(*SNR_RANGES.get(noise_category(path), DEFAULT_SNR))
        return peak_normalize(add_noise(audio, noise, snr)), kind


# ----------------------------------------------------------------------------- SpecAugment (device)


def _band_mask(key: jax.Array, size: int, max_width: int, num: int) -> jax.Array:
    """(size,) bool: the union of ``num`` bands [start, min(size, start + width)), start uniform in
    [0, size − 1], width uniform in [1, max_width] (WeSpeaker's ``random.randint`` bounds)."""
    k_start, k_width = jax.random.split(key)
    start = jax.random.randint(k_start, (num, 1), 0, size)
    width = jax.random.randint(k_width, (num, 1), 1, max_width + 1)
    pos = jnp.arange(size)[None]  # (1, size)
    return jnp.any((pos >= start) & (pos < start + width), axis=0)


def spec_augment(
    key: jax.Array,
    feats: jax.Array,
    *,
    prob: float = 0.6,
    num_t_mask: int = 1,
    num_f_mask: int = 1,
    max_t: int = 10,
    max_f: int = 8,
) -> jax.Array:
    """WeSpeaker's batch SpecAugment: with probability ``prob``, zero time and frequency bands.

    One draw for the whole batch (WeSpeaker's ``spec_aug`` on the GPU shares the masks across the
    batch): ``num_t_mask`` time masks of width 1…max_t and ``num_f_mask`` frequency masks of width
    1…max_f, each starting uniformly anywhere and clipped at the edge. Jit-able; shapes are static.
    (Park et al., SpecAugment, arXiv:1904.08779.)

    Args:
      key: PRNG key.
      feats: (B, T, F) features (after CMN, as WeSpeaker).
      prob: probability that the batch is masked at all.
      num_t_mask: number of time masks.
      num_f_mask: number of frequency masks.
      max_t: widest time mask, frames.
      max_f: widest frequency mask, bins.

    Returns:
      (B, T, F) with the masked entries set to 0.
    """
    _, t, f = feats.shape
    k_apply, k_t, k_f = jax.random.split(key, 3)
    time_mask = _band_mask(k_t, t, max_t, num_t_mask)  # (T,)
    freq_mask = _band_mask(k_f, f, max_f, num_f_mask)  # (F,)
    mask = (jax.random.uniform(k_apply) < prob) & (time_mask[:, None] | freq_mask[None, :])  # (T, F)
    return jnp.where(mask[None], jnp.zeros((), feats.dtype), feats)
