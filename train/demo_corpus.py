"""A synthetic multi-speaker corpus, generated from a seed: the smoke corpus of `python -m train`.

Every speaker is a source-filter voice (Fant's model, as in Klatt's synthesiser) with its own
characteristics drawn from the seed: median F0 and intonation depth, vocal-tract length (all
formants scale as 1/length) plus small per-formant offsets, formant bandwidths, glottal open
quotient and spectral tilt, breathiness (aspiration noise), jitter and shimmer, speaking rate,
and how often it uses each vowel.
An utterance is a random sequence of syllables — vowels, nasals, fricative noise, stop bursts and
pauses — rendered as

    Rosenberg glottal pulses (F0 contour, jitter, shimmer) → tilt → + aspiration
      → cascade of five formant resonators (updated every 10 ms) → lip radiation (1st difference)
      + band-passed frication → + coloured noise at a random SNR → random channel (high-pass,
      low-pass, two peaking EQs) → random peak level.

The noise, the channel and the level are drawn per utterance, so telling speakers apart needs the
voice, not the recording conditions. Train and held-out speakers come from disjoint random streams
(names ``spk0000…`` and ``eval0000…``); every waveform is a pure function of (seed, speaker,
utterance index), whatever the call order. Generation runs at about 25–40 utterances/s (≈ 100×
real time) on one core of a busy 2-core machine.

What it is for: proving that the pipeline and the trainer learn (a model trained on it separates
the held-out speakers) without downloading anything. It is not a benchmark: synthetic voices are
much easier to separate than real ones, and an EER on it says nothing about VoxCeleb.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence

import numpy as np
import soundfile as sf
from scipy import ndimage, signal

# Peterson & Barney (1952) average male F1–F3 (Hz) of ten English vowels, F4/F5 typical values.
VOWELS = np.array(
    [
        [270, 2290, 3010, 3500, 4500],  # i
        [390, 1990, 2550, 3500, 4500],  # ɪ
        [530, 1840, 2480, 3500, 4500],  # ɛ
        [660, 1720, 2410, 3500, 4500],  # æ
        [730, 1090, 2440, 3500, 4500],  # ɑ
        [570, 840, 2410, 3500, 4500],  # ɔ
        [440, 1020, 2240, 3500, 4500],  # ʊ
        [300, 870, 2240, 3500, 4500],  # u
        [520, 1190, 2390, 3500, 4500],  # ʌ
        [490, 1350, 1690, 3500, 4500],  # ɝ
    ],
    dtype=np.float64,
)
NASAL = np.array([250, 1000, 2200, 3500, 4500], dtype=np.float64)  # a murmur-like low-F1 resonance
BANDWIDTHS = np.array([60, 90, 120, 180, 250], dtype=np.float64)  # Hz, scaled per speaker
FRICATIVE_BANDS = np.array([[4000, 7500], [2200, 4500], [1200, 7000], [1500, 3000]], dtype=np.float64)  # s ʃ f x
BLOCK_S = 0.01  # formant-update interval, as Klatt's 10 ms frames


@dataclasses.dataclass(frozen=True)
class Voice:
    """One speaker's voice; every field is drawn once per speaker by `draw_voice`.

    Attributes:
      f0: median fundamental frequency (Hz).
      f0_range: intonation depth, std of the F0 contour in semitones.
      vtl: vocal-tract length factor; formants scale as 1/vtl.
      formant_shift: per-formant multiplicative offsets (5,) on top of 1/vtl.
      bandwidth: formant bandwidth scale.
      open_quotient: open fraction of the glottal cycle.
      tilt: pole of the one-pole low-pass on the glottal flow (more = steeper spectral tilt).
      breathiness: aspiration noise level relative to the voiced flow.
      jitter: relative std of the F0 from one period to the next.
      shimmer: relative std of the amplitude from one period to the next.
      rate: speaking rate; segment durations are divided by it.
      vowel_weights: how often the speaker uses each vowel (VOWELS rows), a speaking habit.
    """

    f0: float
    f0_range: float
    vtl: float
    formant_shift: tuple[float, ...]
    bandwidth: float
    open_quotient: float
    tilt: float
    breathiness: float
    jitter: float
    shimmer: float
    rate: float
    vowel_weights: tuple[float, ...]


def draw_voice(rng: np.random.Generator) -> Voice:
    """A random voice. F0 follows vocal-tract length loosely (longer tracts, lower voices)."""
    vtl = rng.uniform(0.8, 1.2)
    f0 = float(np.clip(125.0 * vtl**-2.5 * np.exp(rng.normal(0.0, 0.12)), 70.0, 300.0))
    shift = np.exp(np.concatenate([rng.normal(0.0, 0.05, 3), rng.normal(0.0, 0.08, 2)]))
    return Voice(
        f0=f0,
        f0_range=rng.uniform(1.0, 4.0),
        vtl=vtl,
        formant_shift=tuple(float(s) for s in shift),
        bandwidth=rng.uniform(0.8, 1.5),
        open_quotient=rng.uniform(0.4, 0.8),
        tilt=rng.uniform(0.2, 0.9),
        breathiness=rng.uniform(0.01, 0.3),
        jitter=rng.uniform(0.002, 0.02),
        shimmer=rng.uniform(0.01, 0.1),
        rate=rng.uniform(0.8, 1.25),
        vowel_weights=tuple(float(w) for w in rng.dirichlet(np.ones(len(VOWELS)))),
    )


# ----------------------------------------------------------------------------- source and filter


def rosenberg_pulse(phase: np.ndarray, open_quotient: float) -> np.ndarray:
    """Rosenberg (1971) glottal flow over one period; phase in [0, 1). Returns values in [0, 1].

    g = ½(1 − cos(π p/t_p)) while opening (p < t_p), cos(π (p − t_p)/(2 t_n)) while closing,
    0 when closed; t_p = 0.7·OQ, t_n = 0.3·OQ.
    """
    tp, tn = 0.7 * open_quotient, 0.3 * open_quotient
    rising = 0.5 * (1.0 - np.cos(np.pi * phase / tp))
    falling = np.cos(np.pi * np.minimum(phase - tp, tn) / (2.0 * tn))
    return np.where(phase < tp, rising, np.where(phase < tp + tn, falling, 0.0))


def glottal_source(f0: np.ndarray, voice: Voice, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Glottal flow for a per-sample F0 contour (N,), with jitter, shimmer, tilt and aspiration."""
    # Jitter and shimmer are per period: index the random draws by the period number.
    periods = int(np.sum(f0) / sample_rate) + 2
    period = np.floor(np.cumsum(f0) / sample_rate).astype(np.int64)
    f0 = f0 * (1.0 + voice.jitter * rng.standard_normal(periods))[period]
    phase = np.cumsum(f0) / sample_rate
    period = np.floor(phase).astype(np.int64)
    flow = rosenberg_pulse(phase - period, voice.open_quotient)
    flow = flow * (1.0 + voice.shimmer * rng.standard_normal(period[-1] + 1))[period]
    flow = signal.lfilter([1.0 - voice.tilt], [1.0, -voice.tilt], flow)
    # Aspiration: turbulence while the glottis is open, so it is modulated by the flow.
    aspiration = np.diff(rng.standard_normal(len(f0) + 1)) * (0.3 + flow)
    return flow + voice.breathiness * aspiration


def formant_filter(formants: np.ndarray, bandwidths: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Cascade of second-order resonators with unit gain at DC (Klatt 1980), as one all-pole filter.

    Each resonator is (1 − 2r cos θ + r²) / (1 − 2r cos θ z⁻¹ + r² z⁻²) with r = exp(−π B/sr) and
    θ = 2π F/sr; the cascade is the product, an order-10 LPC-style synthesis filter.

    Args:
      formants: (..., 5) formant frequencies (Hz).
      bandwidths: (..., 5) bandwidths (Hz).
      sample_rate: Hz.

    Returns:
      gain (...,) and denominator coefficients (..., 11).
    """
    r = np.exp(-np.pi * bandwidths / sample_rate)
    c = -2.0 * r * np.cos(2.0 * np.pi * formants / sample_rate)
    a = np.ones(formants.shape[:-1] + (1,))
    for j in range(formants.shape[-1]):  # a ← a · (1 + c z⁻¹ + r² z⁻²)
        prev = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, 2)])
        a = prev.copy()
        a[..., 1:] += c[..., j : j + 1] * prev[..., :-1]
        a[..., 2:] += r[..., j : j + 1] ** 2 * prev[..., :-2]
    return np.prod(1.0 + c + r * r, axis=-1), a


def vocal_tract(source: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray, sample_rate: int) -> np.ndarray:
    """Formant filtering whose resonances change every block, filter state carried over.

    Args:
      source: (N,) excitation.
      formants: (K, 5) formant frequencies per block of ``ceil(N / K)`` samples.
      bandwidths: (5,) bandwidths in Hz.
      sample_rate: Hz.

    Returns:
      (N,) filtered signal.
    """
    block = -(-len(source) // len(formants))
    gain, a = formant_filter(formants, np.broadcast_to(bandwidths, formants.shape), sample_rate)
    state = np.zeros(a.shape[1] - 1)
    out = np.empty_like(source)
    for k in range(len(formants)):
        sl = slice(k * block, (k + 1) * block)
        out[sl], state = signal.lfilter(gain[k : k + 1], a[k], source[sl], zi=state)
    return out


def biquad(kind: str, freq: float, q: float, sample_rate: int, gain_db: float = 0.0) -> np.ndarray:
    """RBJ audio-EQ-cookbook biquad ('lowpass', 'highpass', 'bandpass' (0 dB peak), 'peaking') as an SOS row (6,)."""
    w0 = 2.0 * np.pi * freq / sample_rate
    alpha, cos_w0 = np.sin(w0) / (2.0 * q), np.cos(w0)
    a_gain = 10.0 ** (gain_db / 40.0)
    b, a = {
        "lowpass": ([(1 - cos_w0) / 2, 1 - cos_w0, (1 - cos_w0) / 2], [1 + alpha, -2 * cos_w0, 1 - alpha]),
        "highpass": ([(1 + cos_w0) / 2, -1 - cos_w0, (1 + cos_w0) / 2], [1 + alpha, -2 * cos_w0, 1 - alpha]),
        "bandpass": ([alpha, 0.0, -alpha], [1 + alpha, -2 * cos_w0, 1 - alpha]),
        "peaking": (
            [1 + alpha * a_gain, -2 * cos_w0, 1 - alpha * a_gain],
            [1 + alpha / a_gain, -2 * cos_w0, 1 - alpha / a_gain],
        ),
    }[kind]
    return np.concatenate([b, a]) / a[0]


def random_channel(rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A random microphone/line colouration: high-pass, 4th-order low-pass, two peaking EQs. SOS (5, 6)."""
    low = min(rng.uniform(3400.0, 7800.0), 0.45 * sample_rate)
    return np.stack(
        [biquad("highpass", rng.uniform(60.0, 250.0), 0.7071, sample_rate)]
        + [biquad("lowpass", low, q, sample_rate) for q in (0.5412, 1.3066)]  # Butterworth pair
        + [
            biquad(
                "peaking",
                np.exp(rng.uniform(np.log(300.0), np.log(4000.0))),
                rng.uniform(0.7, 2.0),
                sample_rate,
                rng.uniform(-6.0, 6.0),
            )
            for _ in range(2)
        ]
    )


# ----------------------------------------------------------------------------- utterance plan


@dataclasses.dataclass(frozen=True)
class Segment:
    """One stretch of an utterance: ``kind`` ∈ {sil, vowel, nasal, fric, burst}; ``index`` picks the
    vowel (VOWELS row) or the frication band (FRICATIVE_BANDS row)."""

    kind: str
    samples: int
    index: int = 0


def plan_utterance(rng: np.random.Generator, num_samples: int, voice: Voice, sample_rate: int) -> list[Segment]:
    """A random syllable sequence (C)V(C) with pauses, at least ``num_samples`` long."""

    vowel_weights = np.asarray(voice.vowel_weights)

    def dur(lo_ms: float, hi_ms: float) -> int:
        return max(1, int(rng.uniform(lo_ms, hi_ms) / voice.rate * sample_rate / 1000))

    segments, total = [Segment("sil", dur(50, 250))], 0
    while total < num_samples:
        syllable = []
        onset = rng.random()
        if onset < 0.3:
            syllable.append(Segment("fric", dur(60, 150), int(rng.integers(len(FRICATIVE_BANDS)))))
        elif onset < 0.55:
            syllable += [Segment("sil", dur(20, 60)), Segment("burst", dur(8, 20), int(rng.integers(4)))]
        elif onset < 0.7:
            syllable.append(Segment("nasal", dur(40, 90)))
        syllable.append(Segment("vowel", dur(70, 200), int(rng.choice(len(VOWELS), p=vowel_weights))))
        if rng.random() < 0.3:
            syllable.append(Segment("nasal" if rng.random() < 0.5 else "fric", dur(40, 120), int(rng.integers(4))))
        if rng.random() < 0.15:
            syllable.append(Segment("sil", dur(80, 350)))
        segments += syllable
        total = sum(s.samples for s in segments)
    return segments


def formant_targets(segments: list[Segment], voice: Voice, sample_rate: int) -> np.ndarray:
    """Per-segment formant targets (S, 5); unvoiced segments anticipate the next voiced one."""
    targets = np.zeros((len(segments), 5))
    upcoming = VOWELS[8]  # schwa-like ʌ until a voiced segment is seen
    for i in reversed(range(len(segments))):
        s = segments[i]
        if s.kind in ("vowel", "nasal"):
            upcoming = VOWELS[s.index] if s.kind == "vowel" else NASAL
        targets[i] = upcoming
    targets = targets / voice.vtl * np.asarray(voice.formant_shift)
    return np.minimum(targets, 0.45 * sample_rate)


def render(segments: list[Segment], voice: Voice, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Dry speech (before noise and channel) for a segment plan, vowels at unit RMS. (N,)"""
    lengths = np.array([s.samples for s in segments])
    n = int(lengths.sum())
    ends = np.cumsum(lengths)
    seg_of = np.repeat(np.arange(len(segments)), lengths)  # (N,) segment index of each sample

    # Voiced amplitude: 1 in vowels, 0.3 in nasals, smoothed over 15 ms for onsets and offsets.
    level = np.array([{"vowel": 1.0, "nasal": 0.3}.get(s.kind, 0.0) for s in segments])
    ramp = max(1, int(0.015 * sample_rate))
    voicing = ndimage.uniform_filter1d(level[seg_of], ramp)

    # F0: declination plus a smooth random intonation contour, in semitones around the median.
    t = np.arange(n) / sample_rate
    knots = np.arange(0.0, t[-1] + 0.5, 0.3 / voice.rate)
    semitones = np.interp(t, knots, rng.normal(0.0, voice.f0_range, len(knots)))
    semitones += rng.normal(0.0, 0.5) - rng.uniform(0.0, 3.0) * t / t[-1]
    f0 = voice.f0 * 2.0 ** (semitones / 12.0)

    # Formant tracks: per-block targets, smoothed over ~50 ms for coarticulation.
    block = int(BLOCK_S * sample_rate)
    centres = np.minimum(np.arange(0, n, block) + block // 2, n - 1)
    tracks = formant_targets(segments, voice, sample_rate)[np.searchsorted(ends, centres, side="right")]
    kernel = np.ones(5) / 5
    padded = np.pad(tracks, ((2, 2), (0, 0)), mode="edge")
    tracks = np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(5)], axis=1)
    voiced = vocal_tract(
        glottal_source(f0, voice, sample_rate, rng) * voicing, tracks, BANDWIDTHS * voice.bandwidth, sample_rate
    )
    voiced = np.diff(voiced, prepend=0.0)  # lip radiation
    voiced /= np.sqrt(np.mean(voiced[voicing > 0.5] ** 2)) + 1e-12

    # Frication and stop bursts: band-passed noise (two 2nd-order band-passes per band) at a random
    # level below the vowels; one noise stream per band, cut where the segments are.
    noise = np.zeros(n)
    streams = {}
    start = 0
    for s in segments:
        if s.kind in ("fric", "burst"):
            if s.index not in streams:
                lo, hi = np.minimum(FRICATIVE_BANDS[s.index] / np.sqrt(voice.vtl), 0.45 * sample_rate)
                sos = np.stack([biquad("bandpass", np.sqrt(lo * hi), np.sqrt(lo * hi) / (hi - lo), sample_rate)] * 2)
                streams[s.index] = signal.sosfilt(sos, rng.standard_normal(n))
            burst = streams[s.index][start : start + s.samples] * np.hanning(s.samples)
            noise[start : start + s.samples] = rng.uniform(0.05, 0.4) * burst / (np.std(burst) + 1e-12)
        start += s.samples
    return voiced + noise


# ----------------------------------------------------------------------------- the corpus


@dataclasses.dataclass(frozen=True)
class DemoCorpus:
    """Synthetic speakers and their utterances; waveforms are generated on demand.

    Attributes:
      num_speakers: training speakers (``spk0000`` …).
      utts_per_speaker: utterances per speaker (train and held-out).
      seed: every voice and every waveform is a function of (seed, speaker, utterance).
      sample_rate: Hz.
      num_held_out: held-out speakers (``eval0000`` …), disjoint from the training ones.
      min_duration: shortest utterance (s).
      max_duration: longest utterance (s).
      snr_db: range of the additive background noise SNR (dB).
      cache: keep every generated waveform in memory (read-only) and return it on later calls. A trainer
        reads each utterance once per epoch and generating one takes ≈ 70 ms, more than a train step
        spends on it; the demo recipe's 1,000 utterances take ≈ 260 MB.
    """

    num_speakers: int = 200
    utts_per_speaker: int = 20
    seed: int = 0
    sample_rate: int = 16000
    num_held_out: int = 40
    min_duration: float = 2.0
    max_duration: float = 6.0
    snr_db: tuple[float, float] = (5.0, 30.0)
    cache: bool = False

    @functools.cached_property
    def _waveforms(self) -> dict[str, np.ndarray]:
        return {}

    @functools.cached_property
    def speakers(self) -> list[str]:
        """Training speaker names, sorted."""
        return [f"spk{i:04d}" for i in range(self.num_speakers)]

    @functools.cached_property
    def held_out_speakers(self) -> list[str]:
        """Held-out speaker names, sorted; none is a training speaker."""
        return [f"eval{i:04d}" for i in range(self.num_held_out)]

    @functools.cached_property
    def utterances(self) -> list[tuple[str, str]]:
        """Training utterances as (utt_id, speaker), sorted by id."""
        return [(f"{s}-{u:03d}", s) for s in self.speakers for u in range(self.utts_per_speaker)]

    @functools.cached_property
    def held_out_utterances(self) -> list[tuple[str, str]]:
        """Held-out utterances as (utt_id, speaker), sorted by id."""
        return [(f"{s}-{u:03d}", s) for s in self.held_out_speakers for u in range(self.utts_per_speaker)]

    def _locate(self, utt_id: str) -> tuple[int, int, int]:
        """(group, speaker index, utterance index) of an id; group 0 is train, 1 held-out."""
        spk, _, utt = utt_id.rpartition("-")
        for group, (prefix, count) in enumerate([("spk", self.num_speakers), ("eval", self.num_held_out)]):
            if spk.startswith(prefix) and spk[len(prefix) :].isdigit() and utt.isdigit():
                s, u = int(spk[len(prefix) :]), int(utt)
                if s < count and u < self.utts_per_speaker and utt_id == f"{prefix}{s:04d}-{u:03d}":
                    return group, s, u
        raise ValueError(
            f"unknown demo utterance id {utt_id!r}: expected spkNNNN-UUU (< {self.num_speakers} speakers) or "
            f"evalNNNN-UUU (< {self.num_held_out}), with UUU < {self.utts_per_speaker}"
        )

    def voice(self, speaker: str) -> Voice:
        """The voice of a speaker (train or held-out)."""
        group, s, _ = self._locate(f"{speaker}-000")
        return draw_voice(np.random.default_rng([self.seed, group, s]))

    def waveform(self, utt_id: str) -> np.ndarray:
        """The samples of one utterance: float32 (N,), peak in [0.3, 0.9], same id → same samples."""
        if not self.cache:
            return self._generate(utt_id)
        if utt_id not in self._waveforms:  # threads may both generate it: same samples, harmless
            x = self._generate(utt_id)
            x.flags.writeable = False  # shared by every later caller
            self._waveforms[utt_id] = x
        return self._waveforms[utt_id]

    def num_samples(self, utt_id: str) -> int:
        """The length of an utterance's waveform, without generating it (its first draw)."""
        return self._length(np.random.default_rng(self._utterance_seed(utt_id)))

    def _utterance_seed(self, utt_id: str) -> list[int]:
        group, s, u = self._locate(utt_id)
        return [self.seed, group, s, 1 + u]

    def _length(self, rng: np.random.Generator) -> int:
        return int(rng.uniform(self.min_duration, self.max_duration) * self.sample_rate)

    def _generate(self, utt_id: str) -> np.ndarray:
        group, s, u = self._locate(utt_id)
        voice = draw_voice(np.random.default_rng([self.seed, group, s]))
        rng = np.random.default_rng(self._utterance_seed(utt_id))
        sr = self.sample_rate
        n = self._length(rng)
        speech = render(plan_utterance(rng, n, voice, sr), voice, sr, rng)[:n]
        # Background noise: white through a random one-pole low-pass (white … brown-ish colour).
        pole = rng.uniform(0.0, 0.98)
        noise = signal.lfilter([1.0], [1.0, -pole], rng.standard_normal(n))
        snr = rng.uniform(*self.snr_db)
        noise *= np.sqrt(np.mean(speech**2) / (np.mean(noise**2) * 10.0 ** (snr / 10.0)))
        x = signal.sosfilt(random_channel(rng, sr), speech + noise)
        return (x * rng.uniform(0.3, 0.9) / np.max(np.abs(x))).astype(np.float32)

    def held_out_trials(self, num_trials: int, seed: int = 0) -> list[tuple[str, str, bool]]:
        """Verification trials over held-out speakers: half target, half non-target, in random order.

        Args:
          num_trials: number of (enroll, test) pairs; ⌈n/2⌉ target trials (same speaker, two
            different utterances), the rest non-target (two different speakers).
          seed: trial sampling seed (independent of the corpus seed).

        Returns:
          [(enroll_utt_id, test_utt_id, is_target)].
        """
        if self.num_held_out < 2 or self.utts_per_speaker < 2:
            raise ValueError(
                f"held_out_trials needs >= 2 held-out speakers and >= 2 utterances per speaker, got "
                f"{self.num_held_out} and {self.utts_per_speaker}"
            )
        rng = np.random.default_rng(seed)
        spk, upk = self.held_out_speakers, self.utts_per_speaker
        num_target = (num_trials + 1) // 2
        trials = []
        for i in range(num_trials):
            if i < num_target:
                s = int(rng.integers(len(spk)))
                u1, u2 = rng.choice(upk, size=2, replace=False)
                pair = (spk[s], spk[s])
            else:
                s1, s2 = rng.choice(len(spk), size=2, replace=False)
                u1, u2 = rng.integers(upk, size=2)
                pair = (spk[s1], spk[s2])
            trials.append((f"{pair[0]}-{u1:03d}", f"{pair[1]}-{u2:03d}", i < num_target))
        order = rng.permutation(num_trials)
        return [trials[i] for i in order]


def write_dataset(
    corpus: DemoCorpus, directory: str, utterances: Sequence[tuple[str, str]] | None = None
) -> dict[str, str]:
    """Writes utterances as 16-bit WAV files plus a Kaldi data dir and a WeSpeaker raw list.

    Layout: ``wav/<utt>.wav``, ``wav.scp`` (``utt path``), ``utt2spk`` (``utt spk``), ``spk2utt``,
    and ``raw.list`` (JSON lines ``{"key", "wav", "spk"}``); paths are absolute.

    Args:
      corpus: the demo corpus.
      directory: output directory (created).
      utterances: (utt_id, speaker) pairs; default all training utterances.

    Returns:
      {'dir', 'wav.scp', 'utt2spk', 'spk2utt', 'raw.list'} → paths.
    """
    utterances = corpus.utterances if utterances is None else utterances
    directory = os.path.abspath(directory)
    os.makedirs(os.path.join(directory, "wav"), exist_ok=True)
    spk2utt: dict[str, list[str]] = {}
    with (
        open(os.path.join(directory, "wav.scp"), "w") as scp,
        open(os.path.join(directory, "utt2spk"), "w") as u2s,
        open(os.path.join(directory, "raw.list"), "w") as raw,
    ):
        for utt, spk in utterances:
            path = os.path.join(directory, "wav", f"{utt}.wav")
            sf.write(path, corpus.waveform(utt), corpus.sample_rate, subtype="PCM_16")
            scp.write(f"{utt} {path}\n")
            u2s.write(f"{utt} {spk}\n")
            raw.write(json.dumps({"key": utt, "wav": path, "spk": spk}) + "\n")
            spk2utt.setdefault(spk, []).append(utt)
    with open(os.path.join(directory, "spk2utt"), "w") as f:
        f.writelines(f"{spk} {' '.join(utts)}\n" for spk, utts in sorted(spk2utt.items()))
    names = ["wav.scp", "utt2spk", "spk2utt", "raw.list"]
    return {"dir": directory, **{n: os.path.join(directory, n) for n in names}}


def write_trials(trials: Sequence[tuple[str, str, bool]], path: str) -> str:
    """Writes trials in Kaldi/WeSpeaker form, one ``enroll test target|nontarget`` per line."""
    with open(path, "w") as f:
        f.writelines(f"{e} {t} {'target' if tgt else 'nontarget'}\n" for e, t, tgt in trials)
    return path
