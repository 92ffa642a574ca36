"""Kaldi-compatible log-mel filterbank and cepstral mean normalisation, pure ``jnp``, batched, jit-able.

Shape letters: B batch, N samples, T frames, W frame length in samples, K = padded FFT length / 2,
F feature dimension (mel bins, plus one with ``use_energy``).

The pipeline per frame is Kaldi's ``compute-fbank-feats`` as re-implemented by
``torchaudio.compliance.kaldi.fbank``, which is what WeSpeaker calls::

    waveforms (B, N) × waveform_scale
      frame       gather W samples every S, reflecting at the edges unless snip_edges   (B, T, W)
      dither      + dither · N(0, 1), drawn per frame (overlapping samples get independent noise)
      DC          − mean over the frame
      energy      log max(Σ x², eps), floored at log(energy_floor)  (raw_energy: here)
      preemph     x[j] − c · x[j − 1], with x[−1] = x[0]
      window      × w (hamming, povey = hann^0.85, hanning, rectangular, blackman)
      FFT         |rfft(x, 2K)|² (or |·| without use_power)                             (B, T, K + 1)
      mel         power[:, :, :K] @ M, triangular filters on the mel scale 1127 ln(1 + f/700) (B, T, F)
      log         log max(mel, eps), eps = float32 machine epsilon

The mel matrix and the window are computed once per configuration in NumPy (float64, then float32)
and cached; everything else runs in float32 inside one ``jit`` with the configuration static.

Padded batches: ``lengths`` (B,) gives each row's valid samples. Row b yields ``num_frames(lengths[b])``
frames; the frames after them are zeros, in ``fbank`` and again after ``cmn``. With
``snip_edges=False`` the edge reflection uses each row's own length, so a padded row gives exactly the
frames of the row alone.

References: Kaldi ``src/feat/feature-fbank.cc``, ``feature-window.cc``, ``mel-computations.cc``;
``torchaudio.compliance.kaldi.fbank``; WeSpeaker ``wespeaker/dataset/processor.py`` (``compute_fbank``)
and ``dataset_utils.apply_cmvn``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ecapa_jax.stats import STD_EPS, apply_mask, lengths_to_mask, temporal_mean, temporal_std

Array = jnp.ndarray

EPSILON = float(np.finfo(np.float32).eps)  # Kaldi's log floor: std::numeric_limits<float>::epsilon()
WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")


@dataclasses.dataclass(frozen=True)
class FbankConfig:
    """Options of Kaldi's fbank; the defaults are ``torchaudio.compliance.kaldi.fbank``'s.

    Attributes:
      num_mel_bins: number of triangular mel filters (> 3).
      frame_length: frame length in milliseconds.
      frame_shift: frame shift in milliseconds.
      sample_frequency: sample rate of the waveforms in Hz.
      dither: standard deviation of the Gaussian noise added to every frame sample (0 disables it; any
        other value needs a PRNG key).
      window_type: one of ``WINDOW_TYPES``.
      blackman_coeff: a in the generalised Blackman window a − 0.5 cos(2πn/(W−1)) + (0.5 − a) cos(4πn/(W−1)).
      preemphasis_coefficient: c in x[j] − c · x[j − 1], in [0, 1].
      remove_dc_offset: subtract each frame's mean.
      round_to_power_of_two: zero-pad the FFT input to the next power of two.
      snip_edges: only frames that fit completely (T = 1 + (N − W) // S); else T = (N + S // 2) // S and
        the signal is reflected at both ends.
      low_freq: low cut-off of the mel filters in Hz.
      high_freq: high cut-off in Hz; ≤ 0 means an offset from the Nyquist frequency.
      energy_floor: floor on the frame energy (absolute, before the log); 0 disables it.
      use_energy: prepend the log energy to the features (append with ``htk_compat``).
      raw_energy: take the energy before pre-emphasis and windowing (else after).
      htk_compat: put the energy last.
      use_log_fbank: log of the mel energies (else linear).
      use_power: power spectrum (else magnitude).
      waveform_scale: factor applied to the waveforms before anything else. Kaldi works on int16-range
        samples; WeSpeaker multiplies its float waveform in [−1, 1] by 32768 (``1 << 15``) before fbank.

    Not offered: VTLN warping (``vtln_warp`` is 1), ``min_duration``, ``channel`` (the input is mono
    rows) and ``subtract_mean`` (``cmn`` does it, length-aware).
    """

    num_mel_bins: int = 23
    frame_length: float = 25.0
    frame_shift: float = 10.0
    sample_frequency: float = 16000.0
    dither: float = 0.0
    window_type: str = "povey"
    blackman_coeff: float = 0.42
    preemphasis_coefficient: float = 0.97
    remove_dc_offset: bool = True
    round_to_power_of_two: bool = True
    snip_edges: bool = True
    low_freq: float = 20.0
    high_freq: float = 0.0
    energy_floor: float = 1.0
    use_energy: bool = False
    raw_energy: bool = True
    htk_compat: bool = False
    use_log_fbank: bool = True
    use_power: bool = True
    waveform_scale: float = 1.0

    @classmethod
    def wespeaker(
        cls,
        sample_rate: int = 16000,
        dither: float = 0.0,
        num_mel_bins: int = 80,
        frame_length: float = 25.0,
        frame_shift: float = 10.0,
    ) -> FbankConfig:
        """WeSpeaker's ``compute_fbank`` (its recipes' ``fbank_args``): 80 bins, 25/10 ms, hamming, input × 32768.

        Dither is 1.0 in its training recipe and 0.0 at extraction/inference; everything not set here is
        torchaudio's default (pre-emphasis 0.97, DC removal, 512-point FFT, snip_edges, 20 Hz–Nyquist).
        """
        return cls(
            num_mel_bins=num_mel_bins,
            frame_length=frame_length,
            frame_shift=frame_shift,
            sample_frequency=float(sample_rate),
            dither=dither,
            window_type="hamming",
            use_energy=False,
            waveform_scale=32768.0,
        )

    @classmethod
    def speakerlab(cls, sample_rate: int = 16000, num_mel_bins: int = 80) -> FbankConfig:
        """3D-Speaker's ``FBank`` (``speakerlab.process.processor``): ``kaldi.fbank`` with its defaults
        (povey window, dither 0) and 80 bins, on the waveform in [−1, 1] as ``torchaudio.load`` gives it
        (no × 32768); its inference then subtracts the mean over frames (``mean_nor=True``)."""
        return cls(num_mel_bins=num_mel_bins, sample_frequency=float(sample_rate))

    def __post_init__(self):
        if self.window_type not in WINDOW_TYPES:
            raise ValueError(f"window_type {self.window_type!r} is not one of {WINDOW_TYPES}")
        if self.sample_frequency <= 0:
            raise ValueError(f"sample_frequency must be > 0, got {self.sample_frequency}")
        if self.num_mel_bins <= 3:
            raise ValueError(f"num_mel_bins must be > 3, got {self.num_mel_bins}")
        if self.window_shift <= 0:
            raise ValueError(f"frame_shift {self.frame_shift} ms gives a shift of {self.window_shift} samples")
        if self.window_size < 2:
            raise ValueError(f"frame_length {self.frame_length} ms gives {self.window_size} samples, fewer than 2")
        if self.padded_window_size % 2:
            raise ValueError(
                f"the FFT length {self.padded_window_size} is odd: set round_to_power_of_two or change frame_length"
            )
        if not 0.0 <= self.preemphasis_coefficient <= 1.0:
            raise ValueError(f"preemphasis_coefficient must be in [0, 1], got {self.preemphasis_coefficient}")
        if self.energy_floor < 0:
            raise ValueError(f"energy_floor must be >= 0, got {self.energy_floor}")
        nyquist = 0.5 * self.sample_frequency
        if not 0.0 <= self.low_freq < self.mel_high_freq <= nyquist:
            raise ValueError(
                f"need 0 <= low_freq < high_freq <= Nyquist: low_freq {self.low_freq}, high_freq {self.high_freq} "
                f"(→ {self.mel_high_freq}), Nyquist {nyquist}"
            )

    @property
    def window_shift(self) -> int:
        """S, the frame shift in samples (truncated, as torchaudio)."""
        return int(self.sample_frequency * self.frame_shift * 0.001)

    @property
    def window_size(self) -> int:
        """W, the frame length in samples (truncated, as torchaudio)."""
        return int(self.sample_frequency * self.frame_length * 0.001)

    @property
    def padded_window_size(self) -> int:
        """2K, the FFT length."""
        w = self.window_size
        return 1 << (w - 1).bit_length() if self.round_to_power_of_two else w

    @property
    def mel_high_freq(self) -> float:
        """The high cut-off in Hz with a non-positive ``high_freq`` read as an offset from Nyquist."""
        return self.high_freq + 0.5 * self.sample_frequency if self.high_freq <= 0 else self.high_freq

    @property
    def feature_dim(self) -> int:
        """F, the number of output features per frame."""
        return self.num_mel_bins + int(self.use_energy)


# ----------------------------------------------------------------------------- per-config constants


@functools.cache
def window(cfg: FbankConfig) -> np.ndarray:
    """The analysis window, w[n] for n = 0 … W − 1 (Kaldi's ``FeatureWindowFunction``).

    hamming 0.54 − 0.46 cos(2πn/(W−1)); hanning 0.5 − 0.5 cos(2πn/(W−1)); povey hanning^0.85;
    blackman a − 0.5 cos(2πn/(W−1)) + (0.5 − a) cos(4πn/(W−1)); rectangular 1.

    Returns:
      (W,) float32, read-only.
    """
    a = 2.0 * np.pi * np.arange(cfg.window_size) / (cfg.window_size - 1)
    hann = 0.5 - 0.5 * np.cos(a)
    w = {
        "hamming": lambda: 0.54 - 0.46 * np.cos(a),
        "hanning": lambda: hann,
        "povey": lambda: hann**0.85,
        "rectangular": lambda: np.ones_like(a),
        "blackman": lambda: cfg.blackman_coeff - 0.5 * np.cos(a) + (0.5 - cfg.blackman_coeff) * np.cos(2 * a),
    }[cfg.window_type]()
    return _frozen(w)


def mel_scale(freq: np.ndarray | float) -> np.ndarray:
    """Kaldi's mel scale, 1127 ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(freq, np.float64) / 700.0)


@functools.cache
def mel_banks(cfg: FbankConfig) -> np.ndarray:
    """Triangular mel filters over the FFT bins 0 … K − 1 (Kaldi's ``MelBanks``, no VTLN warp).

    Bin m spans the mel interval [l_m, l_m + 2Δ], peak at l_m + Δ, with l_m = mel(low) + m Δ and
    Δ = (mel(high) − mel(low)) / (M + 1). FFT bin k sits at mel(k · sample_frequency / 2K); its weight
    is max(0, min(up-slope, down-slope)). The Nyquist bin K gets no weight, as in Kaldi.

    Returns:
      (K, num_mel_bins) float32, read-only: ``power[..., :K] @ mel_banks(cfg)`` gives the mel energies.
    """
    mel_low, mel_high = mel_scale(cfg.low_freq), mel_scale(cfg.mel_high_freq)
    delta = (mel_high - mel_low) / (cfg.num_mel_bins + 1)
    left = mel_low + delta * np.arange(cfg.num_mel_bins)  # (M,)
    center, right = left + delta, left + 2.0 * delta
    num_fft_bins = cfg.padded_window_size // 2
    mel = mel_scale(cfg.sample_frequency / cfg.padded_window_size * np.arange(num_fft_bins))[:, None]  # (K, 1)
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    return _frozen(np.maximum(0.0, np.minimum(up, down)))  # (K, M)


def _frozen(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    x.flags.writeable = False  # shared by the cache
    return x


# ----------------------------------------------------------------------------- frames


def num_frames(n, cfg: FbankConfig):
    """Frames Kaldi extracts from n samples (``NumFrames`` in feature-window.cc).

    snip_edges: T = 1 + (n − W) // S, else T = (n + S // 2) // S; never below 0.

    Args:
      n: a Python int or an integer array of sample counts.
      cfg: the fbank options.

    Returns:
      T, a Python int for an int, else an array of n's shape.
    """
    shift = cfg.window_shift
    t = 1 + (n - cfg.window_size) // shift if cfg.snip_edges else (n + shift // 2) // shift
    return max(t, 0) if isinstance(t, int) else jnp.maximum(t, 0)


def _frame(x: Array, lengths: Array, cfg: FbankConfig) -> Array:
    """Cuts each row into frames by one gather. x: (B, N); lengths: (B,). Returns (B, T, W).

    Frame t holds samples t·S + j − p, j < W, with p = 0 if snip_edges else W // 2 − S // 2 (Kaldi
    centres frame t on t·S + S // 2). Without snip_edges an index i outside [0, n) of its row reads
    the reflected sample: −i − 1 before the start, 2n − 1 − i after the end (Kaldi's "[2,1,0,0,1,2]").
    """
    total = x.shape[1]
    pad = 0 if cfg.snip_edges else cfg.window_size // 2 - cfg.window_shift // 2
    starts = cfg.window_shift * np.arange(num_frames(total, cfg)) - pad  # (T,)
    idx = starts[:, None] + np.arange(cfg.window_size)  # (T, W), static
    if cfg.snip_edges:
        return x[:, idx]  # (B, T, W)
    n = lengths[:, None, None]  # (B, 1, 1)
    idx = jnp.where(idx < 0, -idx - 1, idx)
    idx = jnp.where(idx >= n, 2 * n - 1 - idx, idx)  # (B, T, W)
    # Reflection is single: n ≥ W > p. Frames past a row's end may still fall outside; they are zeroed later.
    idx = jnp.clip(idx, 0, total - 1)
    return jnp.take_along_axis(x, idx.reshape(x.shape[0], -1), axis=1).reshape(idx.shape)


def _frame_mean(frames: Array) -> Array:
    """Mean of each frame, correctly rounded in float32 almost always. frames: (B, T, W). Returns (B, T, 1).

    A plain float32 sum rounds differently with the batch shape (XLA vectorises the reduction per
    layout), and after pre-emphasis a 1-ulp change of the mean moves the lowest mel bin of a noise frame
    by ~1e-5 in log. So each sample is split exactly into x = hi + lo, hi a multiple of q = 2^(e − 24 + b)
    with 2^e > max |x| and 2^b > W: Σ hi is exact in any order (|Σ hi| / q < W · 2^(24 − b) < 2^24), and
    |lo| ≤ q / 2 is 2^(24 − b) times smaller than the samples, so Σ lo's rounding error stays far below
    one ulp of the mean.
    """
    _, exponent = jnp.frexp(jnp.max(jnp.abs(frames), axis=-1, keepdims=True))  # max |x| < 2^exponent
    exponent = jnp.maximum(exponent, -100)  # keeps q a normal float for (near-)silent frames
    quantum = jnp.ldexp(jnp.float32(1.0), exponent - 24 + frames.shape[-1].bit_length())  # (B, T, 1)
    hi = jnp.round(frames / quantum) * quantum
    total = jnp.sum(hi, axis=-1, keepdims=True) + jnp.sum(frames - hi, axis=-1, keepdims=True)
    return total / frames.shape[-1]


def _log_energy(frames: Array, floor: float) -> Array:
    """log max(Σ_j x_j², eps), then max(·, log floor) unless floor is 0. frames: (B, T, W). Returns (B, T)."""
    log_energy = jnp.log(jnp.maximum(jnp.sum(jnp.square(frames), axis=-1), EPSILON))
    return log_energy if floor == 0.0 else jnp.maximum(log_energy, math.log(floor))


# ----------------------------------------------------------------------------- fbank


def fbank(waveforms, cfg: FbankConfig, lengths=None, *, key: Array | None = None) -> tuple[Array, Array]:
    """Kaldi log-mel filterbank of a batch of waveforms, frames past each row's length zeroed.

    Args:
      waveforms: (B, N) samples (float or int), in the range ``cfg.waveform_scale`` expects.
      cfg: the fbank options; static under ``jit`` (one compilation per shape and configuration).
      lengths: (B,) valid samples per row, each in [W, N]; None means every row is N samples.
      key: PRNG key for the dither; required when ``cfg.dither != 0``, ignored otherwise.

    Returns:
      ``(feats (B, T, F) float32, num_frames (B,) int32)`` with T = ``num_frames(N, cfg)`` and
      F = ``cfg.feature_dim``.

    Raises:
      ValueError: waveforms not (B, N), rows shorter than one frame, lengths not (B,) or out of
        [W, N] (checked when they are concrete), or dither without a key.
    """
    waveforms = jnp.asarray(waveforms)
    if waveforms.ndim != 2:
        raise ValueError(f"fbank expects waveforms of shape (B, N), got shape {waveforms.shape}; use x[None] for one")
    batch, total = waveforms.shape
    minimum = cfg.window_size
    if total < minimum:
        raise ValueError(
            f"waveforms have {total} samples, shorter than one frame: the minimum is {minimum} samples "
            f"({cfg.frame_length} ms at {cfg.sample_frequency:g} Hz)"
        )
    if lengths is None:
        lengths = jnp.full((batch,), total, jnp.int32)
    else:
        lengths = _check_lengths(lengths, batch, total, minimum)
    if cfg.dither != 0.0 and key is None:
        raise ValueError(f"dither={cfg.dither} needs a PRNG key (key=jax.random.key(...)); use dither=0.0 for none")
    if cfg.dither == 0.0:
        key = None
    return _fbank(waveforms, lengths, key, cfg)


def _check_lengths(lengths, batch: int, total: int, minimum: int) -> Array:
    """(B,) int32 lengths; their values are checked unless traced (inside a caller's jit)."""
    if not isinstance(lengths, jax.core.Tracer):
        values = np.asarray(lengths)
        if values.shape != (batch,):
            raise ValueError(f"lengths must have shape ({batch},), one per waveform row, got {values.shape}")
        bad = np.flatnonzero((values < minimum) | (values > total))
        if bad.size:
            b = int(bad[0])
            raise ValueError(
                f"lengths[{b}] = {int(values[b])} samples is outside [{minimum}, {total}]: the minimum is one "
                f"frame ({minimum} samples), the maximum the padded length"
            )
    elif lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), one per waveform row, got {lengths.shape}")
    return jnp.asarray(lengths, jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _fbank(waveforms: Array, lengths: Array, key: Array | None, cfg: FbankConfig) -> tuple[Array, Array]:
    """``fbank`` after its checks: the stages of the module docstring, compiled per (shape, config)."""
    x = waveforms.astype(jnp.float32) * cfg.waveform_scale  # (B, N)
    frames = _frame(x, lengths, cfg)  # (B, T, W)
    if key is not None:
        frames = frames + cfg.dither * jax.random.normal(key, frames.shape, jnp.float32)
    if cfg.remove_dc_offset:
        frames = frames - _frame_mean(frames)
    if cfg.raw_energy:
        log_energy = _log_energy(frames, cfg.energy_floor)  # (B, T)
    if cfg.preemphasis_coefficient != 0.0:
        previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
        frames = frames - cfg.preemphasis_coefficient * previous
    frames = frames * window(cfg)
    if not cfg.raw_energy:
        log_energy = _log_energy(frames, cfg.energy_floor)

    spectrum = jnp.fft.rfft(frames, n=cfg.padded_window_size, axis=-1)  # (B, T, K + 1)
    spectrum = jnp.square(spectrum.real) + jnp.square(spectrum.imag)
    if not cfg.use_power:
        spectrum = jnp.sqrt(spectrum)
    k = cfg.padded_window_size // 2
    # HIGHEST: accelerators otherwise multiply float32 in reduced precision (TF32 / bf16 passes).
    feats = jnp.matmul(spectrum[..., :k], mel_banks(cfg), precision=jax.lax.Precision.HIGHEST)  # (B, T, M)
    if cfg.use_log_fbank:
        feats = jnp.log(jnp.maximum(feats, EPSILON))
    if cfg.use_energy:
        parts = [feats, log_energy[..., None]] if cfg.htk_compat else [log_energy[..., None], feats]
        feats = jnp.concatenate(parts, axis=-1)  # (B, T, M + 1)

    valid = num_frames(lengths, cfg).astype(jnp.int32)  # (B,)
    return apply_mask(feats, lengths_to_mask(valid, feats.shape[1])), valid


# ----------------------------------------------------------------------------- CMN


@functools.partial(jax.jit, static_argnames=("norm_var",))
def cmn(feats: Array, lengths: Array | None = None, norm_var: bool = False) -> Array:
    """Per-utterance cepstral mean (and variance) normalisation over the valid frames.

    y = x − mean_t x; with ``norm_var``, y / sqrt(var_t x + 1e-7) with the unbiased variance, as
    WeSpeaker's ``apply_cmvn`` (mean only in its recipes). Frames past a row's count are zeroed.

    Args:
      feats: (B, T, F).
      lengths: (B,) valid frames per row (e.g. ``fbank``'s second output), or None for all T.
      norm_var: also divide by the standard deviation.

    Returns:
      (B, T, F) float32.
    """
    if feats.ndim != 3:
        raise ValueError(f"cmn expects features of shape (B, T, F), got shape {feats.shape}")
    mask = None if lengths is None else lengths_to_mask(lengths, feats.shape[1])
    feats = feats.astype(jnp.float32)
    feats = feats - temporal_mean(feats, mask)[:, None, :]
    if norm_var:
        feats = feats / temporal_std(feats, mask, STD_EPS)[:, None, :]  # WeSpeaker's apply_cmvn epsilon
    return apply_mask(feats, mask)


# ----------------------------------------------------------------------------- the front-end


@dataclasses.dataclass(frozen=True)
class KaldiFrontEnd:
    """Waveforms → features as WeSpeaker (and 3D-Speaker) compute them: Kaldi fbank, then per-utterance CMN.

    Attributes:
      fbank: the fbank options (``FbankConfig.wespeaker()``: 80 bins, 25/10 ms, hamming, input × 32768).
      norm_var: also normalise the variance (WeSpeaker's recipes normalise the mean only).
    """

    fbank: FbankConfig = FbankConfig.wespeaker()
    norm_var: bool = False

    def __call__(self, waveforms, lengths=None, *, key: Array | None = None) -> tuple[Array, Array]:
        """``(feats (B, T, F), num_frames (B,))`` of (B, N) waveforms in [−1, 1]; see ``fbank`` and ``cmn``."""
        feats, valid = fbank(waveforms, self.fbank, lengths, key=key)
        return cmn(feats, valid, self.norm_var), valid

    @property
    def sample_rate(self) -> int:
        """Hz of the waveforms it takes."""
        return int(self.fbank.sample_frequency)

    @property
    def feature_dim(self) -> int:
        """F."""
        return self.fbank.feature_dim

    @property
    def min_samples(self) -> int:
        """The shortest waveform with one frame: one frame length."""
        return self.fbank.window_size

    def num_frames(self, n):
        """Frames of ``n`` samples (see ``num_frames``)."""
        return num_frames(n, self.fbank)

    def max_samples(self, frames: int) -> int:
        """The most samples that still give ``frames`` frames (the padded length of a bucket of ``frames``)."""
        w, s = self.fbank.window_size, self.fbank.window_shift
        return w + s * frames - 1 if self.fbank.snip_edges else (frames + 1) * s - s // 2 - 1

    def with_dither(self, dither: float) -> KaldiFrontEnd:
        """The same front-end with the fbank's dither set (WeSpeaker trains with 1.0, embeds with 0.0)."""
        return dataclasses.replace(self, fbank=dataclasses.replace(self.fbank, dither=dither))


def wespeaker_features(
    waveforms, lengths=None, *, dither: float = 0.0, key: Array | None = None, sample_rate: int = 16000
) -> tuple[Array, Array]:
    """WeSpeaker's front-end: fbank of waveform × 32768 (``FbankConfig.wespeaker``), then mean-only CMN.

    Args:
      waveforms: (B, N) float waveforms in [−1, 1].
      lengths: (B,) valid samples per row, or None.
      dither: 1.0 for training as WeSpeaker's recipe, 0.0 (no key needed) for inference.
      key: PRNG key, required when dither is non-zero.
      sample_rate: of the waveforms, in Hz.

    Returns:
      ``(feats (B, T, 80), num_frames (B,))``, frames past each row's count zeroed.
    """
    return KaldiFrontEnd(FbankConfig.wespeaker(sample_rate, dither))(waveforms, lengths, key=key)
