"""WeSpeaker's data augmentation: NumPy references, and the jitted device versions the train step runs.

WeSpeaker (``dataset/processor.py``) augments every sample on the host, in this order:

1. speed perturbation: sox ``speed s`` + ``rate sr`` with s uniform over {1.0, 0.9, 1.1}; a changed
   speed makes speaker k into class k + S·idx (S speakers);
2. a random chunk of ``chunk_len`` samples (tiled when shorter);
3. with probability ``aug_prob``, reverb or noise with equal odds:
   - reverb: full convolution with the L2-normalised room impulse response, truncated to the chunk;
   - noise: a random window of a MUSAN file (tiled when shorter) at an SNR uniform in its category's
     range (noise [0, 15] dB, speech [10, 30], music [5, 15]), with power 10·log10(mean(x²) + 1e-4);
   then peak normalisation x / (max|x| + 1e-4), for augmented samples only;
4. fbank (with dither) + CMN, and SpecAugment when enabled.

Here the host only reads and crops (`train.data`): a window of ``input_length`` samples of the
utterance, and for the samples it drew for augmentation a noise window or a RIR. Steps 1 and 3 run
in the jitted train step (`DeviceAugment`), statically shaped, drawn from the step's PRNG key (the
speed, the sub-window offset, the SNR); the host draws what decides what it reads (augmentation
kind, noise/RIR file and window), from the data seed. Each device operation has a NumPy reference
below, written independently (sliding windows, float64, ``scipy.signal.convolve``) and tested
against it on identical draws; the speed perturbation's reference is itself tested against
``torchaudio.functional.resample``.

Where the device version differs from WeSpeaker, and why:

- The speed change is band-limited resampling (torchaudio's windowed sinc with a Kaiser window,
  16 zero crossings: the "kaiser_best" setting) of the samples read as if recorded at s·sr; sox's
  ``speed`` + ``rate`` is the same operation with another filter: the same signal within the
  pass-band, not the same samples.
- The crop comes before the speed change: the host hands over a window long enough for the fastest
  speed (1.1 × chunk + the filter's context) and the step resamples the part the drawn speed needs,
  at an offset drawn uniformly in the slack. Resampling a 2 s window instead of the whole utterance
  keeps the shapes static and the work proportional to the chunk; inside the window the result is
  the whole-utterance result, because the filter sees real neighbouring samples, not padding.
- An utterance shorter than the window is tiled *before* the speed change (WeSpeaker tiles after):
  the same periodic signal, its period N samples before and N/s after resampling.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal, special

SPEEDS = (1.0, 0.9, 1.1)  # WeSpeaker's order: index i > 0 makes speaker s into class s + S·i
NOISE_TYPES = ("noise", "speech", "music", "other")  # MUSAN categories by path; 'other' as 'noise'
SNR_RANGES = {"noise": (0.0, 15.0), "speech": (10.0, 30.0), "music": (5.0, 15.0), "other": (0.0, 15.0)}  # dB
POWER_EPS = 1e-4  # inside the log of the power, WeSpeaker's
PEAK_EPS = 1e-4  # added to the peak in the normalisation, WeSpeaker's
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
AUG_NONE, AUG_REVERB, AUG_NOISE = 0, 1, 2  # WeSpeaker's aug_type numbering
PCM_SCALE = 32768.0  # int16 PCM → [−1, 1], as torchaudio.load(normalize=True) and soundfile

# The speed change's filter: torchaudio's sinc_interp_kaiser at its "kaiser_best" setting (librosa's too).
LOWPASS_WIDTH, ROLLOFF, KAISER_BETA = 16, 0.945, 14.769656459379492


# ----------------------------------------------------------------------------- speed: the filter and geometry


@functools.cache
def sinc_kernel(orig: int, new: int) -> tuple[np.ndarray, int]:
    """Polyphase kernel resampling by new/orig (coprime): torchaudio's ``_get_sinc_resample_kernel`` formula.

    Output sample m·new + p is Σ_k kernel[p, k] · x[m·orig + k − width]: a sinc low-pass at
    ``ROLLOFF`` · min(orig, new) with a Kaiser window over ``LOWPASS_WIDTH`` zero crossings.

    Returns:
      kernel (new, 2·width + orig) float64 (read-only), and width.
    """
    base = min(orig, new) * ROLLOFF
    width = math.ceil(LOWPASS_WIDTH * orig / base)
    t = (-np.arange(new)[:, None] / new + np.arange(-width, width + orig)[None] / orig) * base
    t = np.clip(t, -LOWPASS_WIDTH, LOWPASS_WIDTH)
    window = special.i0(KAISER_BETA * np.sqrt(1.0 - (t / LOWPASS_WIDTH) ** 2)) / special.i0(KAISER_BETA)
    kernel = np.sinc(t) * window * base / orig  # np.sinc(t) = sin(πt)/(πt)
    kernel.flags.writeable = False
    return kernel, width


@dataclasses.dataclass(frozen=True)
class SpeedPlan:
    """How one speed turns an input window into ``length`` output samples.

    Attributes:
      speed: the factor (output plays ``speed`` times faster).
      orig, new: the coprime resampling ratio new/orig (0.9 → 9/10, 1.1 → 11/10; 1.0 → 1/1).
      length: output samples (the chunk).
      span: input samples the output needs, the filter's context on both sides included.
    """

    speed: float
    orig: int
    new: int
    length: int

    @property
    def width(self) -> int:
        return sinc_kernel(self.orig, self.new)[1] if self.orig != self.new else 0

    @property
    def taps(self) -> int:
        """K, the kernel length 2·width + orig (1 for the identity)."""
        return 2 * self.width + self.orig if self.orig != self.new else 1

    @property
    def blocks(self) -> int:
        """M, output blocks of ``new`` samples: ⌈length / new⌉."""
        return -(-self.length // self.new)

    @property
    def span(self) -> int:
        return (self.blocks - 1) * self.orig + self.taps if self.orig != self.new else self.length


def speed_plans(length: int, sample_rate: int = 16000) -> tuple[SpeedPlan, ...]:
    """A `SpeedPlan` per entry of `SPEEDS`, for chunks of ``length`` samples."""
    plans = []
    for s in SPEEDS:
        orig, new = round(s * sample_rate), sample_rate
        g = math.gcd(orig, new)
        plans.append(SpeedPlan(s, orig // g, new // g, length))
    return tuple(plans)


def input_length(length: int, speed_perturb: bool, sample_rate: int = 16000) -> int:
    """Samples the host hands over for a chunk of ``length``: the longest span of any speed (≈ 1.1 × length)."""
    return max(p.span for p in speed_plans(length, sample_rate)) if speed_perturb else length


# ----------------------------------------------------------------------------- NumPy references


def speed_perturb(x: np.ndarray, speed: float, sample_rate: int = 16000) -> np.ndarray:
    """sox ``speed <speed>`` + ``rate <sample_rate>`` as resampling: the whole signal, zero-padded at its ends.

    The samples are read as if recorded at speed·sr and resampled to sr with `sinc_kernel` (exactly
    ``torchaudio.functional.resample(x, speed·sr, sr, "sinc_interp_kaiser", 16, 0.945)``), so N
    samples become ⌈N/speed⌉ and pitch and tempo scale together.

    Args:
      x: (N,) signal.
      speed: 0.9 or 1.1 in WeSpeaker (1.0 is the identity).
      sample_rate: Hz.

    Returns:
      (⌈N·new/orig⌉,) float64.
    """
    plan = next((p for p in speed_plans(len(x), sample_rate) if p.speed == speed), None)
    if plan is None:
        raise ValueError(f"speed must be one of {SPEEDS}, got {speed}")
    if plan.orig == plan.new:
        return np.asarray(x, np.float64)
    kernel, width = sinc_kernel(plan.orig, plan.new)
    padded = np.pad(np.asarray(x, np.float64), (width, width + plan.orig))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[:: plan.orig]  # (M', K)
    out = (frames @ kernel.T).reshape(-1)  # (M' · new,): block m, phase p at m·new + p
    return out[: -(-len(x) * plan.new // plan.orig)]


def speed_window(x: np.ndarray, offset: int, speed_index: int, length: int, sample_rate: int = 16000) -> np.ndarray:
    """The device's speed step on one window (reference): ``length`` samples at speed ``SPEEDS[speed_index]``
    from the inputs [offset, offset + plan.span) of ``x``, which must lie inside it.

    Output m·new + p is Σ_k kernel[p, k] · x[offset + m·orig + k]: `speed_perturb`'s sum without its zero
    padding, so ``speed_window(x, m·orig − width, i, n)`` is ``speed_perturb(x, SPEEDS[i])[m·new : m·new + n]``
    wherever that span fits inside ``x``.

    Returns:
      (length,) float64.
    """
    plan = speed_plans(length, sample_rate)[speed_index]
    if not 0 <= offset <= len(x) - plan.span:
        raise ValueError(f"offset {offset} + span {plan.span} does not fit a window of {len(x)} samples")
    seg = np.asarray(x[offset : offset + plan.span], np.float64)
    if plan.orig == plan.new:
        return seg
    kernel, _ = sinc_kernel(plan.orig, plan.new)
    frames = np.lib.stride_tricks.sliding_window_view(seg, plan.taps)[:: plan.orig]  # (M, K)
    return (frames @ kernel.T).reshape(-1)[:length]


def tile(x: np.ndarray, length: int) -> np.ndarray:
    """x repeated from its start and cut to ``length`` (WeSpeaker's ``get_random_chunk`` for short signals)."""
    return np.resize(x, length)


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
      (N,) float64 mixture (not normalised).
    """
    if noise.shape != audio.shape:
        raise ValueError(f"noise shape {noise.shape} must equal the audio shape {audio.shape}")
    gain = np.sqrt(10.0 ** ((power_db(audio) - power_db(noise) - snr_db) / 10.0))
    return np.asarray(audio, np.float64) + gain * np.asarray(noise, np.float64)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolution with the L2-normalised RIR (rir / ‖rir‖₂), full length, truncated to len(audio).

    Args:
      audio: (N,) signal.
      rir: (M,) room impulse response.

    Returns:
      (N,) float64 (not normalised).
    """
    rir = np.asarray(rir, np.float64)
    norm = np.sqrt(np.sum(np.square(rir)))
    if norm == 0.0:
        raise ValueError("room impulse response is all zeros")
    return signal.convolve(np.asarray(audio, np.float64), rir / norm, mode="full")[: len(audio)]


def peak_normalize(x: np.ndarray) -> np.ndarray:
    """x / (max|x| + 1e-4): WeSpeaker's rescaling into [−1, 1] after an augmentation."""
    return x / (np.max(np.abs(x)) + PEAK_EPS)


def augment_reference(
    wav: np.ndarray,
    offset: int,
    speed_index: int,
    aug: int,
    snr_db: float,
    noise: np.ndarray | None,
    rir: np.ndarray | None,
    length: int,
    sample_rate: int = 16000,
) -> np.ndarray:
    """One sample through WeSpeaker's waveform augmentations in NumPy: speed, then reverb or noise, then peak
    normalisation (augmented samples only). What `DeviceAugment.apply` does to a batch, row by row.

    Args:
      wav: (L_in,) the host's window, as floats in [−1, 1].
      offset, speed_index: the speed step's draws (`speed_window`).
      aug: AUG_NONE, AUG_REVERB or AUG_NOISE.
      snr_db: the SNR (noise only).
      noise: (length,) noise window (noise only).
      rir: (R,) impulse response (reverb only; trailing zeros change nothing).
      length: output samples.

    Returns:
      (length,) float64.
    """
    x = speed_window(wav, offset, speed_index, length, sample_rate)
    if aug == AUG_REVERB:
        return peak_normalize(reverberate(x, rir))
    if aug == AUG_NOISE:
        return peak_normalize(add_noise(x, noise, snr_db))
    return x


# ----------------------------------------------------------------------------- augmentation files


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


# ----------------------------------------------------------------------------- device versions (jnp)


def to_float(x: jax.Array) -> jax.Array:
    """Audio as float32 in [−1, 1]: int16 PCM / 32768 (exact), floats as they are."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        return x.astype(jnp.float32) * (1.0 / PCM_SCALE)
    return x.astype(jnp.float32)


def speed_window_jnp(x: jax.Array, offset: jax.Array, plan: SpeedPlan) -> jax.Array:
    """`speed_window` for a batch at one speed: polyphase resampling as one matrix product.

    Block m of ``new`` outputs needs the K inputs from offset + m·orig. The window is cut into rows of
    ``orig`` samples; J = ⌈K/orig⌉ consecutive rows side by side are block m's inputs (zero-padded kernel
    columns past K), so all blocks are ``frames (B, M, J·orig) @ kernel (J·orig, new)``.

    Args:
      x: (B, L_in) float32 windows.
      offset: (B,) int32 start of each span, in [0, L_in − plan.span].
      plan: the speed.

    Returns:
      (B, plan.length) float32.
    """
    if plan.orig == plan.new:
        return jax.vmap(lambda row, o: jax.lax.dynamic_slice(row, (o,), (plan.length,)))(x, offset)
    kernel, _ = sinc_kernel(plan.orig, plan.new)
    rows = -(-plan.taps // plan.orig)  # J
    size = (plan.blocks + rows - 1) * plan.orig  # ≥ span; the extra samples meet zero kernel columns
    x = jnp.pad(x, ((0, 0), (0, size)))
    seg = jax.vmap(lambda row, o: jax.lax.dynamic_slice(row, (o,), (size,)))(x, offset)
    seg = seg.reshape(x.shape[0], plan.blocks + rows - 1, plan.orig)  # (B, M + J − 1, orig)
    frames = jnp.concatenate([seg[:, j : j + plan.blocks] for j in range(rows)], axis=-1)  # (B, M, J·orig)
    weights = np.zeros((rows * plan.orig, plan.new), np.float32)
    weights[: plan.taps] = kernel.T
    out = jnp.matmul(frames, weights, precision=jax.lax.Precision.HIGHEST)  # (B, M, new)
    return out.reshape(x.shape[0], -1)[:, : plan.length]


def power_db_jnp(x: jax.Array) -> jax.Array:
    """`power_db` per row: (B, N) → (B,)."""
    return 10.0 * jnp.log10(jnp.mean(jnp.square(x), axis=-1) + POWER_EPS)


def add_noise_jnp(audio: jax.Array, noise: jax.Array, snr_db: jax.Array) -> jax.Array:
    """`add_noise` per row: audio (B, N), noise (B, N), snr_db (B,) → (B, N)."""
    gain = jnp.sqrt(10.0 ** ((power_db_jnp(audio) - power_db_jnp(noise) - snr_db) / 10.0))
    return audio + gain[:, None] * noise


def reverberate_jnp(audio: jax.Array, rir: jax.Array) -> jax.Array:
    """`reverberate` per row by FFT: audio (B, N), rir (B, R) zero-padded → (B, N).

    An all-zero RIR (a row that is not reverberated) gives zeros instead of a division by zero.
    """
    n = audio.shape[-1]
    size = 1 << (n + rir.shape[-1] - 2).bit_length()  # a power of two ≥ N + R − 1: no circular wrap
    norm = jnp.sqrt(jnp.sum(jnp.square(rir), axis=-1, keepdims=True))
    rir = rir / jnp.where(norm > 0, norm, 1.0)
    spectrum = jnp.fft.rfft(audio, size) * jnp.fft.rfft(rir, size)
    return jnp.fft.irfft(spectrum, size)[:, :n]


def peak_normalize_jnp(x: jax.Array) -> jax.Array:
    """`peak_normalize` per row: (B, N) → (B, N)."""
    return x / (jnp.max(jnp.abs(x), axis=-1, keepdims=True) + PEAK_EPS)


@dataclasses.dataclass(frozen=True)
class DeviceAugment:
    """WeSpeaker's waveform augmentations inside the jitted step (hashable: a static part of the step).

    The batch comes from `train.data.Loader`: ``wav`` (B, L_in) int16 or float32, ``label`` (B,) the
    speaker, ``aug`` (B,) AUG_* drawn by the host, and when the run has them ``noise`` (B, length) with
    ``noise_type`` (B,) (index into `NOISE_TYPES`) and ``rir`` (B, R). Rows whose ``aug`` does not ask
    for noise or reverb carry zeros there.

    Attributes:
      length: output samples per row (the chunk).
      num_speakers: S, for the label mapping label + S·speed index.
      speed_perturb: draw speeds from `SPEEDS` (else every row at 1.0).
      sample_rate: Hz.
    """

    length: int
    num_speakers: int
    speed_perturb: bool = True
    sample_rate: int = 16000

    @property
    def input_length(self) -> int:
        return input_length(self.length, self.speed_perturb, self.sample_rate)

    def draw(self, key: jax.Array, batch: dict) -> dict[str, jax.Array]:
        """The step's draws: speed index (uniform over SPEEDS), span offset (uniform in the slack), SNR (uniform in
        the noise type's range). Each row gets its own; the same key gives the same draws on any mesh."""
        b = batch["wav"].shape[0]
        k_speed, k_offset, k_snr = jax.random.split(key, 3)
        plans = speed_plans(self.length, self.sample_rate)
        speed = jax.random.randint(k_speed, (b,), 0, len(SPEEDS)) if self.speed_perturb else jnp.zeros(b, jnp.int32)
        slack = jnp.asarray([self.input_length - p.span for p in plans])[speed]  # (B,)
        offset = jnp.floor(jax.random.uniform(k_offset, (b,)) * (slack + 1)).astype(jnp.int32)
        lo, hi = (jnp.asarray([SNR_RANGES[t][i] for t in NOISE_TYPES]) for i in (0, 1))
        noise_type = batch.get("noise_type", jnp.zeros(b, jnp.int32))
        snr = lo[noise_type] + jax.random.uniform(k_snr, (b,)) * (hi[noise_type] - lo[noise_type])
        return {"speed": speed.astype(jnp.int32), "offset": offset, "snr": snr}

    def apply(self, batch: dict, draws: dict) -> tuple[jax.Array, jax.Array]:
        """Speed, reverb or noise, peak normalisation, label mapping. Returns (wav (B, length) float32, label (B,))."""
        wav = to_float(batch["wav"])
        if wav.shape[1] != self.input_length:
            raise ValueError(
                f"batch 'wav' has {wav.shape[1]} samples per row, this augmentation needs {self.input_length}"
            )
        plans = speed_plans(self.length, self.sample_rate)
        used = plans if self.speed_perturb else plans[:1]
        x = speed_window_jnp(wav, draws["offset"], used[0])
        for i, plan in enumerate(used[1:], 1):
            x = jnp.where((draws["speed"] == i)[:, None], speed_window_jnp(wav, draws["offset"], plan), x)
        aug = batch["aug"][:, None]
        out = x
        if "rir" in batch:
            out = jnp.where(aug == AUG_REVERB, reverberate_jnp(x, to_float(batch["rir"])), out)
        if "noise" in batch:
            out = jnp.where(aug == AUG_NOISE, add_noise_jnp(x, to_float(batch["noise"]), draws["snr"]), out)
        out = jnp.where(aug != AUG_NONE, peak_normalize_jnp(out), out)
        return out, batch["label"] + self.num_speakers * draws["speed"]

    def __call__(self, batch: dict, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.apply(batch, self.draw(key, batch))


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
