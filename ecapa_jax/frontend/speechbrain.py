"""SpeechBrain's ``Fbank`` and sentence-level mean normalisation in ``jnp``: batched, length-aware, jit-able.

Shape letters: B batch, N samples, T frames, K = n_fft // 2 + 1 frequency bins, F mel bins.

What ``speechbrain.lobes.features.Fbank`` (1.1.2) computes, stage by stage, with its defaults::

    waveforms (B, N) in [−1, 1] (no int16 scaling)
      STFT      torch.stft(center=True, pad_mode='constant'): n_fft // 2 zeros on both sides, frames of
                n_fft samples every hop, × periodic Hamming window of win_length (centred in n_fft),
                T = 1 + N // hop                                                        (B, T, K)
      power     re² + im²                       (spectral_magnitude, power=1)
      mel       power @ M: SpeechBrain's triangular filters, *symmetric in Hz* around centres evenly
                spaced on the mel scale 2595 log10(1 + f / 700), half-width = the gap to the
                previous centre; bins at linspace(0, sr // 2, K)                        (B, T, F)
      dB        10 log10(max(x, amin)) − 10 log10(max(amin, ref)), then floored at
                (max over the utterance's frames and bins) − top_db
      norm      InputNormalization(norm_type='sentence', std_norm=False): minus the mean over frames
                (with ``std_norm``, divided by max(biased std, 1e-10))

Padded batches: ``lengths`` (B,) gives each row's valid samples; row b has ``1 + lengths[b] // hop``
frames. Samples past a row's length are zeroed first, so a frame that straddles the row's end sees the
zeros ``center=True`` would have padded the utterance with; the top-dB floor and the normalisation use the
valid frames only, and frames past them are zeros. A padded row therefore gives exactly the features of
the row alone, which is what SpeechBrain's ``EncoderClassifier.encode_batch`` computes for one utterance
(its own batches normalise with *relative* lengths rounded to frames instead).

References: ``speechbrain/processing/features.py`` (``STFT``, ``spectral_magnitude``, ``Filterbank``,
``InputNormalization``), ``speechbrain/lobes/features.py`` (``Fbank``); the ``spkrec-ecapa-voxceleb``
hyperparameters (``Fbank(n_mels=80)``, sentence mean normalisation).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ecapa_jax.stats import apply_mask, lengths_to_mask, temporal_mean

Array = jnp.ndarray

STD_FLOOR = 1e-10  # InputNormalization's epsilon: the std is clamped at it


@dataclasses.dataclass(frozen=True)
class SpeechBrainFbank:
    """SpeechBrain's ``Fbank`` front-end with its sentence normalisation; a front-end (``ecapa_jax.frontend``).

    ``frontend(waveforms (B, N), lengths (B,)) -> (feats (B, T, F), frames (B,))``. The defaults are
    ``Fbank(n_mels=80)`` and ``InputNormalization(norm_type='sentence', std_norm=False)``, the front-end of
    ``spkrec-ecapa-voxceleb``.

    Attributes:
      sample_rate: of the waveforms, Hz.
      n_fft: FFT length in samples.
      n_mels: F, the number of mel filters.
      win_length: window length in ms (rounded to samples, as SpeechBrain).
      hop_length: hop in ms (rounded to samples).
      f_min: lowest filter frequency in Hz.
      f_max: highest filter frequency in Hz; None means sample_rate // 2.
      amin: floor of the filterbank energies before the log.
      ref_value: reference of the dB scale.
      top_db: the dynamic range kept below the utterance's maximum, in dB.
      mean_norm: subtract each utterance's mean over frames (SpeechBrain's ``mean_var_norm``).
      std_norm: also divide by its (biased) standard deviation.
    """

    sample_rate: int = 16000
    n_fft: int = 400
    n_mels: int = 80
    win_length: float = 25.0
    hop_length: float = 10.0
    f_min: float = 0.0
    f_max: float | None = None
    amin: float = 1e-10
    ref_value: float = 1.0
    top_db: float = 80.0
    mean_norm: bool = True
    std_norm: bool = False

    def __post_init__(self):
        if self.sample_rate <= 0 or self.n_mels < 1:
            raise ValueError(f"need sample_rate > 0 and n_mels >= 1, got {self.sample_rate}, {self.n_mels}")
        if not 0 < self.window_size <= self.n_fft:
            raise ValueError(f"win_length {self.win_length} ms = {self.window_size} samples; need 1..{self.n_fft}")
        if self.hop <= 0:
            raise ValueError(f"hop_length {self.hop_length} ms is {self.hop} samples at {self.sample_rate} Hz")
        if not 0 <= self.f_min < self.high_freq <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2, got {self.f_min}, {self.high_freq}")
        if self.std_norm and not self.mean_norm:
            raise ValueError("std_norm needs mean_norm (SpeechBrain deprecated mean_norm=False)")

    # ------------------------------------------------------------------------- sizes

    @property
    def hop(self) -> int:
        """The hop in samples: round(sample_rate / 1000 · hop_length)."""
        return int(round(self.sample_rate / 1000.0 * self.hop_length))

    @property
    def window_size(self) -> int:
        """The window in samples: round(sample_rate / 1000 · win_length)."""
        return int(round(self.sample_rate / 1000.0 * self.win_length))

    @property
    def high_freq(self) -> float:
        return float(self.sample_rate // 2 if self.f_max is None else self.f_max)

    @property
    def feature_dim(self) -> int:
        """F."""
        return self.n_mels

    @property
    def min_samples(self) -> int:
        """The shortest waveform accepted: one window (a centred STFT has a frame for any length, but a
        25 ms minimum keeps the same contract as the Kaldi front-end)."""
        return self.window_size

    def num_frames(self, n):
        """T = 1 + n // hop frames of n samples (int, or an integer array)."""
        return 1 + n // self.hop

    def max_samples(self, frames: int) -> int:
        """The most samples that still give ``frames`` frames."""
        return frames * self.hop - 1

    def with_dither(self, dither: float) -> SpeechBrainFbank:
        """SpeechBrain's Fbank has no dither: 0 returns the front-end itself, anything else is an error."""
        if dither != 0.0:
            raise ValueError(f"SpeechBrain's Fbank has no dither (got {dither}); use waveform augmentation instead")
        return self

    def __call__(self, waveforms, lengths=None, *, key: Array | None = None) -> tuple[Array, Array]:
        """``(feats (B, T, F) float32, num_frames (B,) int32)`` of (B, N) waveforms in [−1, 1]; ``key`` is unused."""
        del key  # no dither
        waveforms = jnp.asarray(waveforms)
        if waveforms.ndim != 2:
            raise ValueError(f"expected waveforms of shape (B, N), got shape {waveforms.shape}; use x[None] for one")
        batch, total = waveforms.shape
        if total < self.min_samples:
            raise ValueError(f"waveforms have {total} samples, fewer than one window ({self.min_samples})")
        if lengths is None:
            lengths = jnp.full((batch,), total, jnp.int32)
        elif not isinstance(lengths, jax.core.Tracer):
            values = np.asarray(lengths)
            if values.shape != (batch,) or np.any((values < self.min_samples) | (values > total)):
                raise ValueError(
                    f"lengths must be ({batch},) sample counts in [{self.min_samples}, {total}], got {values.tolist()}"
                )
        return _speechbrain_fbank(waveforms, jnp.asarray(lengths, jnp.int32), self)


# ----------------------------------------------------------------------------- per-config constants


def mel_scale(hz):
    """SpeechBrain's (HTK) mel scale, 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


@functools.cache
def mel_filters(fe: SpeechBrainFbank) -> np.ndarray:
    """SpeechBrain's frozen triangular filterbank (``Filterbank._triangular_filters``).

    Centres f_c are the n_mels interior points of n_mels + 2 points evenly spaced in mel between f_min and
    f_max; each filter's half-width is b = f_c − (the previous point), on *both* sides:
    weight(f) = max(0, 1 − |f − f_c| / b) at the bin frequencies linspace(0, sample_rate // 2, K).

    Returns:
      (K, n_mels) float32, read-only.
    """
    hz = _mel_to_hz(np.linspace(mel_scale(fe.f_min), mel_scale(fe.high_freq), fe.n_mels + 2))
    centre, band = hz[1:-1], (hz[1:] - hz[:-1])[:-1]
    freqs = np.linspace(0.0, fe.sample_rate // 2, fe.n_fft // 2 + 1)[:, None]  # (K, 1)
    slope = (freqs - centre) / band
    m = np.maximum(0.0, np.minimum(slope + 1.0, 1.0 - slope)).astype(np.float32)
    m.flags.writeable = False
    return m


@functools.cache
def stft_window(fe: SpeechBrainFbank) -> np.ndarray:
    """``torch.hamming_window(win_length)`` (periodic) zero-padded to n_fft, centred as ``torch.stft`` does. (n_fft,)"""
    w = fe.window_size
    window = 0.54 - 0.46 * np.cos(2.0 * np.pi * np.arange(w) / w)
    left = (fe.n_fft - w) // 2
    padded = np.zeros(fe.n_fft, np.float32)
    padded[left : left + w] = window
    padded.flags.writeable = False
    return padded


# ----------------------------------------------------------------------------- the computation


@functools.partial(jax.jit, static_argnames=("fe",))
def _speechbrain_fbank(waveforms: Array, lengths: Array, fe: SpeechBrainFbank) -> tuple[Array, Array]:
    """The stages of the module docstring, compiled per (shape, front-end)."""
    batch, total = waveforms.shape
    x = jnp.where(lengths_to_mask(lengths, total), waveforms.astype(jnp.float32), 0.0)  # (B, N)
    half = fe.n_fft // 2
    x = jnp.pad(x, ((0, 0), (half, half)))  # center=True, pad_mode='constant'
    frames_total = 1 + total // fe.hop
    arange = jnp.arange if jax.export.is_symbolic_dim(total) else np.arange  # static indices when N is known
    idx = fe.hop * arange(frames_total)[:, None] + np.arange(fe.n_fft)  # (T, n_fft)
    frames = x[:, idx] * stft_window(fe)  # (B, T, n_fft)
    spectrum = jnp.fft.rfft(frames, axis=-1)  # (B, T, K)
    power = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    # HIGHEST: accelerators otherwise multiply float32 in reduced precision (TF32 / bf16 passes).
    mel = jnp.matmul(power, mel_filters(fe), precision=jax.lax.Precision.HIGHEST)  # (B, T, F)

    db = 10.0 * jnp.log10(jnp.maximum(mel, fe.amin)) - 10.0 * math.log10(max(fe.amin, fe.ref_value))
    valid = fe.num_frames(lengths).astype(jnp.int32)  # (B,)
    mask = lengths_to_mask(valid, frames_total)  # (B, T)
    peak = jnp.max(jnp.where(mask[..., None], db, -jnp.inf), axis=(1, 2))  # (B,) over valid frames only
    feats = jnp.maximum(db, (peak - fe.top_db)[:, None, None])
    if fe.mean_norm:
        feats = feats - temporal_mean(feats, mask)[:, None, :]
        if fe.std_norm:  # biased, as InputNormalization._compute_current_stats
            var = temporal_mean(jnp.square(apply_mask(feats, mask)), mask)
            feats = feats / jnp.maximum(jnp.sqrt(var), STD_FLOOR)[:, None, :]
    return apply_mask(feats, mask), valid


def speechbrain_features(waveforms, lengths=None, *, n_mels: int = 80, sample_rate: int = 16000):
    """``spkrec-ecapa-voxceleb``'s front-end: ``SpeechBrainFbank(sample_rate, n_mels=n_mels)``.

    Args:
      waveforms: (B, N) float waveforms in [−1, 1].
      lengths: (B,) valid samples per row, or None.
      n_mels: F.
      sample_rate: of the waveforms, in Hz.

    Returns:
      ``(feats (B, T, F), num_frames (B,))``, frames past each row's count zeroed.
    """
    return SpeechBrainFbank(sample_rate=sample_rate, n_mels=n_mels)(waveforms, lengths)


__all__ = ["SpeechBrainFbank", "mel_filters", "mel_scale", "speechbrain_features", "stft_window"]
