"""Fbank and CMN against torchaudio's kaldi.fbank (WeSpeaker's front-end), kaldi-native-fbank and NumPy.

Log-mel tolerance 1e-3 max abs (measured ≤ 5e-4 against torchaudio, ≤ 4e-4 against kaldi-native-fbank,
the worst on white noise): both references run in float32 and agree with each other only to that order
(oracles.md).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

from ecapa_jax.frontend import kaldi as features
from ecapa_jax.frontend.kaldi import FbankConfig

LOG_TOL = 1e-3  # log-mel vs the float32 references
BATCH_TOL = 1e-5  # a padded row vs the same row alone
LOG_FLOOR = np.log(np.finfo(np.float32).eps)

# Option sets beyond WeSpeaker's; every field not named keeps torchaudio's default.
OPTION_SETS = {
    "povey-40bins-no-snip-no-preemph": FbankConfig(
        num_mel_bins=40, snip_edges=False, preemphasis_coefficient=0.0, waveform_scale=32768.0
    ),
    "8k-hanning-energy": FbankConfig(
        sample_frequency=8000.0, num_mel_bins=30, window_type="hanning", use_energy=True, waveform_scale=32768.0
    ),
    "8k-rect-no-snip-windowed-energy-htk-no-pow2": FbankConfig(
        sample_frequency=8000.0,
        window_type="rectangular",
        snip_edges=False,
        use_energy=True,
        raw_energy=False,
        htk_compat=True,
        energy_floor=0.0,
        round_to_power_of_two=False,
        waveform_scale=32768.0,
    ),
    "blackman-magnitude-linear-no-dc-band": FbankConfig(
        window_type="blackman",
        blackman_coeff=0.4,
        use_power=False,
        use_log_fbank=False,
        remove_dc_offset=False,
        low_freq=100.0,
        high_freq=-400.0,
        waveform_scale=32768.0,
    ),
    "hamming-no-snip-energy": dataclasses.replace(FbankConfig.wespeaker(), snip_edges=False, use_energy=True),
}


def _signals(sr: int) -> dict[str, np.ndarray]:
    """Float waveforms in [−1, 1]; no length is a multiple of the shift, `shortest` is one frame."""
    rng = np.random.default_rng(sr)
    n = int(1.3 * sr) + 37
    t = np.arange(n) / sr
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * sr / 5.3 * t)
    bursts = np.zeros(int(1.1 * sr) + 11)  # exact digital silence between speech-like bursts
    for start in (0.1, 0.45, 0.8):
        m = int(0.2 * sr)
        burst = np.convolve(rng.standard_normal(m), [1.0, 0.8, 0.5, 0.2], "same") * np.hanning(m) * 0.3
        bursts[int(start * sr) : int(start * sr) + m] = burst
    signals = {
        "noise": 0.1 * rng.standard_normal(n),
        # A pure tone has ~130 dB between its peak and the far mel bins of a povey/hanning window without
        # pre-emphasis: there float32 FFT rounding dominates, and torchaudio's float32 output is itself
        # 0.08 off its float64 output. A −60 dB floor, as any recording has, keeps every reference exact.
        "tone": tone + 1e-3 * rng.standard_normal(n),
        "bursts": bursts,
        "shortest": 0.1 * rng.standard_normal(int(sr * 0.025)),
    }
    return {k: v.astype(np.float32) for k, v in signals.items()}


def _torchaudio_fbank(wave: np.ndarray, cfg: FbankConfig, **overrides) -> np.ndarray:
    """torchaudio's kaldi.fbank of one float waveform under `cfg` (scaled as `cfg.waveform_scale`). (T, F)."""
    torch = oracles.torch()
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    kwargs = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "waveform_scale"}
    kwargs.update(overrides)
    return kaldi.fbank(torch.from_numpy(wave * np.float32(cfg.waveform_scale))[None], **kwargs).numpy()


def _log(feats: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    """Linear filterbanks are compared on the log scale, as the log-mel outputs."""
    return feats if cfg.use_log_fbank else np.log(np.maximum(feats, np.finfo(np.float32).eps))


def _padded(waves: list[np.ndarray], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(B, N) batch padded with noise (which must be ignored) and the (B,) lengths."""
    total = max(len(w) for w in waves)
    batch = np.random.default_rng(seed).uniform(-1, 1, (len(waves), total)).astype(np.float32)
    for row, wave in zip(batch, waves, strict=True):
        row[: len(wave)] = wave
    return batch, np.array([len(w) for w in waves])


# ----------------------------------------------------------------------------- parity with the oracles


@pytest.mark.parametrize("name", ["noise", "tone", "pure_tone", "bursts", "shortest"])
def test_wespeaker_settings_match_torchaudio(name):
    """WeSpeaker's exact call: kaldi.fbank(wav × 32768, 80 bins, 25/10 ms, dither 0, hamming, no energy)."""
    signals = _signals(16000)
    n = len(signals["noise"])
    signals["pure_tone"] = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / 16000)).astype(np.float32)
    wave = signals[name]
    cfg = FbankConfig.wespeaker()
    ref = oracles.wespeaker_fbank(wave * (1 << 15)).numpy()
    ours, count = features.fbank(wave[None], cfg)
    assert ours.shape == (1, *ref.shape) and int(count[0]) == ref.shape[0] == features.num_frames(len(wave), cfg)
    np.testing.assert_allclose(np.asarray(ours[0]), ref, atol=LOG_TOL, rtol=0)
    if name == "bursts":  # silent frames sit on the log floor in both
        assert (ref == LOG_FLOOR).any() and np.array_equal(ref == LOG_FLOOR, np.asarray(ours[0]) == LOG_FLOOR)


@pytest.mark.parametrize("option_set", OPTION_SETS)
def test_option_sets_match_torchaudio(option_set):
    """Each signal as one row of a padded batch, its valid frames against torchaudio on the row alone."""
    cfg = OPTION_SETS[option_set]
    signals = _signals(int(cfg.sample_frequency))
    batch, lengths = _padded(list(signals.values()))
    ours, counts = features.fbank(batch, cfg, lengths)
    for b, (name, wave) in enumerate(signals.items()):
        ref = _torchaudio_fbank(wave, cfg)
        assert int(counts[b]) == ref.shape[0] and ref.shape[1] == cfg.feature_dim, name
        np.testing.assert_allclose(
            _log(np.asarray(ours[b, : ref.shape[0]]), cfg), _log(ref, cfg), atol=LOG_TOL, rtol=0, err_msg=name
        )


def _knf_fbank(wave: np.ndarray, cfg: FbankConfig) -> np.ndarray:
    """kaldi-native-fbank with every option set explicitly (its defaults differ from torchaudio's). (T, F)."""
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()
    frame = opts.frame_opts
    frame.samp_freq = cfg.sample_frequency
    frame.frame_length_ms = cfg.frame_length
    frame.frame_shift_ms = cfg.frame_shift
    frame.dither = cfg.dither
    frame.preemph_coeff = cfg.preemphasis_coefficient
    frame.remove_dc_offset = cfg.remove_dc_offset
    frame.window_type = cfg.window_type
    frame.round_to_power_of_two = cfg.round_to_power_of_two
    frame.blackman_coeff = cfg.blackman_coeff
    frame.snip_edges = cfg.snip_edges
    opts.mel_opts.num_bins = cfg.num_mel_bins
    opts.mel_opts.low_freq = cfg.low_freq
    opts.mel_opts.high_freq = cfg.high_freq
    opts.mel_opts.is_librosa = False
    opts.mel_opts.htk_mode = False
    opts.use_energy = cfg.use_energy
    opts.energy_floor = cfg.energy_floor
    opts.raw_energy = cfg.raw_energy
    opts.htk_compat = cfg.htk_compat
    opts.use_log_fbank = cfg.use_log_fbank
    opts.use_power = cfg.use_power
    extractor = knf.OnlineFbank(opts)
    extractor.accept_waveform(cfg.sample_frequency, (wave * np.float32(cfg.waveform_scale)).tolist())
    extractor.input_finished()
    return np.stack([extractor.get_frame(i) for i in range(extractor.num_frames_ready)])


@pytest.mark.parametrize("name", ["noise", "tone", "bursts", "shortest"])
def test_wespeaker_settings_match_kaldi_native_fbank(name):
    """Measured max abs ≤ 4e-4 on these signals; asserted at the same 1e-3 as torchaudio."""
    cfg = FbankConfig.wespeaker()
    wave = _signals(16000)[name]
    ref = _knf_fbank(wave, cfg)
    ours, count = features.fbank(wave[None], cfg)
    assert int(count[0]) == ref.shape[0]
    np.testing.assert_allclose(np.asarray(ours[0]), ref, atol=LOG_TOL, rtol=0)


def test_wespeaker_features_match_wespeaker_front_end():
    """`wespeaker_features` on a padded batch = torchaudio fbank of wav × 32768 minus its mean over time."""
    signals = _signals(16000)
    batch, lengths = _padded(list(signals.values()))
    feats, counts = features.wespeaker_features(batch, lengths)
    for b, wave in enumerate(signals.values()):
        ref = _torchaudio_fbank(wave, FbankConfig.wespeaker())
        ref = ref - ref.mean(axis=0, keepdims=True)
        assert int(counts[b]) == ref.shape[0]
        np.testing.assert_allclose(np.asarray(feats[b, : ref.shape[0]]), ref, atol=LOG_TOL, rtol=0)
        assert not np.asarray(feats[b, ref.shape[0] :]).any()


def test_window_and_mel_banks_match_references():
    """Windows against kaldi-native-fbank (≤ 1e-6); mel filters against torchaudio's float32 ones (≤ 5e-5)."""
    knf = pytest.importorskip("kaldi_native_fbank")
    oracles.torch()
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    for cfg in [FbankConfig.wespeaker(), *OPTION_SETS.values()]:
        opts = knf.FrameExtractionOptions()
        opts.samp_freq, opts.window_type, opts.blackman_coeff = (
            cfg.sample_frequency,
            cfg.window_type,
            cfg.blackman_coeff,
        )
        opts.frame_length_ms = cfg.frame_length
        ref_window = np.array(knf.FeatureWindowFunction(opts).window)
        np.testing.assert_allclose(features.window(cfg), ref_window, atol=1e-6, rtol=0)
        ref_mel, _ = kaldi.get_mel_banks(
            cfg.num_mel_bins,
            cfg.padded_window_size,
            cfg.sample_frequency,
            cfg.low_freq,
            cfg.high_freq,
            100.0,
            -500.0,
            1.0,
        )
        np.testing.assert_allclose(features.mel_banks(cfg), ref_mel.numpy().T, atol=5e-5, rtol=0)


@pytest.mark.parametrize("snip_edges", [True, False])
def test_num_frames_matches_kaldi_native_fbank(snip_edges):
    knf = pytest.importorskip("kaldi_native_fbank")
    cfg = dataclasses.replace(FbankConfig.wespeaker(), snip_edges=snip_edges)
    opts = knf.FbankOptions()
    opts.frame_opts.snip_edges = snip_edges
    lengths = [400, 479, 480, 559, 560, 561, 1234, 16000, 16079, 16080, 32240]
    expected = []
    for n in lengths:
        extractor = knf.OnlineFbank(opts)
        extractor.accept_waveform(16000, [0.0] * n)
        extractor.input_finished()
        expected.append(extractor.num_frames_ready)
    assert [features.num_frames(n, cfg) for n in lengths] == expected
    assert np.asarray(features.num_frames(np.array(lengths), cfg)).tolist() == expected
    if snip_edges:  # WeSpeaker's 200-frame training crop is 32,240 samples
        assert features.num_frames(32240, cfg) == 200


# ----------------------------------------------------------------------------- padded batches and CMN


@pytest.mark.parametrize("snip_edges", [True, False])
def test_padded_batch_equals_rows_alone(snip_edges):
    cfg = dataclasses.replace(FbankConfig.wespeaker(), snip_edges=snip_edges)
    rng = np.random.default_rng(1)
    waves = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (400, 1234, 4037)]
    batch, lengths = _padded(waves)
    feats, counts = features.fbank(batch, cfg, lengths)
    normed = features.cmn(feats, counts)
    assert counts.tolist() == [features.num_frames(len(w), cfg) for w in waves]
    for b, wave in enumerate(waves):
        alone, _ = features.fbank(wave[None], cfg)
        t = int(counts[b])
        assert alone.shape[1] == t
        np.testing.assert_allclose(np.asarray(feats[b, :t]), np.asarray(alone[0]), atol=BATCH_TOL, rtol=0)
        np.testing.assert_allclose(
            np.asarray(normed[b, :t]), np.asarray(features.cmn(alone)[0]), atol=BATCH_TOL, rtol=0
        )
        assert not np.asarray(feats[b, t:]).any() and not np.asarray(normed[b, t:]).any()


@pytest.mark.parametrize("norm_var", [False, True])
def test_cmn_matches_numpy(norm_var):
    """x − mean over valid frames, / sqrt(unbiased var + 1e-7) with norm_var (WeSpeaker's apply_cmvn)."""
    feats = np.random.default_rng(2).normal(3.0, 2.0, (3, 20, 5)).astype(np.float32)
    lengths = np.array([20, 7, 2])
    out = np.asarray(features.cmn(feats, lengths, norm_var=norm_var))
    for b, t in enumerate(lengths):
        x = feats[b, :t].astype(np.float64)
        ref = x - x.mean(axis=0)
        if norm_var:
            ref = ref / np.sqrt(x.var(axis=0, ddof=1) + 1e-7)
        np.testing.assert_allclose(out[b, :t], ref, atol=1e-5, rtol=0)
        assert not out[b, t:].any()
    full = np.asarray(features.cmn(feats, norm_var=norm_var))  # no lengths: every frame counts
    everything = np.asarray(features.cmn(feats, np.array([20, 20, 20]), norm_var=norm_var))
    np.testing.assert_allclose(full, everything, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- dither


def test_dither_is_keyed_and_optional():
    cfg = FbankConfig.wespeaker(dither=1.0)
    wave = np.zeros((1, 4000), np.float32)  # digital silence: the dither is all there is
    a, _ = features.fbank(wave, cfg, key=jax.random.key(0))
    b, _ = features.fbank(wave, cfg, key=jax.random.key(0))
    c, _ = features.fbank(wave, cfg, key=jax.random.key(1))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.5  # independent noise: O(1) log differences
    assert np.asarray(a).min() > LOG_FLOOR + 5  # silence is lifted off the floor
    plain = FbankConfig.wespeaker()
    no_key, _ = features.fbank(wave, plain)
    ignored_key, _ = features.fbank(wave, plain, key=jax.random.key(3))
    assert np.array_equal(np.asarray(no_key), np.asarray(ignored_key))
    assert np.all(np.asarray(no_key) == LOG_FLOOR)


def test_dither_std_matches_torchaudio_definition():
    """torchaudio adds N(0, 1) × dither to every frame sample before DC removal and the window.

    With no DC removal, pre-emphasis or window, the raw log energy is log Σ_j (dither · g_j)², so
    sqrt(mean_t exp(energy) / W) estimates dither; over 98 × 400 independent draws its relative
    standard error is ≈ 0.4 %, asserted within 2 % for ours and for torchaudio's on the same silence.
    """
    torch = oracles.torch()
    dither = 0.5
    cfg = FbankConfig(
        dither=dither,
        window_type="rectangular",
        remove_dc_offset=False,
        preemphasis_coefficient=0.0,
        use_energy=True,
        energy_floor=0.0,
    )
    silence = np.zeros(16000, np.float32)
    ours, _ = features.fbank(silence[None], cfg, key=jax.random.key(0))
    torch.manual_seed(0)
    ref = _torchaudio_fbank(silence, cfg)
    for energy in (np.asarray(ours[0, :, 0], np.float64), ref[:, 0].astype(np.float64)):
        std = np.sqrt(np.mean(np.exp(energy)) / cfg.window_size)
        assert abs(std - dither) < 0.02 * dither


def test_dithered_wespeaker_fbank_statistics_match_torchaudio():
    """Training-time front-end (dither 1.0 in int16 units) on silence: same log-mel distribution as torchaudio.

    Per bin, the means over 298 frames differ by less than 5 standard errors of their difference
    (computed from the two samples; low bins, a log-χ² of one or two FFT bins, spread most); the means
    over all bins and frames agree to 0.05 (≈ 5 standard errors).
    """
    oracles.torch().manual_seed(0)
    cfg = FbankConfig.wespeaker(dither=1.0)
    silence = np.zeros(48000, np.float32)
    ours, _ = features.fbank(silence[None], cfg, key=jax.random.key(0))
    ours = np.asarray(ours[0], np.float64)
    ref = _torchaudio_fbank(silence, cfg).astype(np.float64)
    standard_error = np.sqrt((ours.var(axis=0, ddof=1) + ref.var(axis=0, ddof=1)) / len(ref))  # (80,)
    assert np.all(np.abs(ours.mean(axis=0) - ref.mean(axis=0)) < 5 * standard_error)
    assert abs(ours.mean() - ref.mean()) < 0.05


# ----------------------------------------------------------------------------- errors and jit


def test_bad_input_raises_clear_errors():
    cfg = FbankConfig.wespeaker()
    with pytest.raises(ValueError, match=r"399 samples, shorter than one frame: the minimum is 400 samples"):
        features.fbank(np.zeros((2, 399), np.float32), cfg)
    with pytest.raises(ValueError, match=r"shape \(B, N\), got shape \(1000,\)"):
        features.fbank(np.zeros(1000, np.float32), cfg)
    with pytest.raises(ValueError, match=r"shape \(B, N\), got shape \(1, 1, 1000\)"):
        features.fbank(np.zeros((1, 1, 1000), np.float32), cfg)
    with pytest.raises(ValueError, match=r"lengths\[1\] = 399 samples is outside \[400, 1000\]"):
        features.fbank(np.zeros((2, 1000), np.float32), cfg, np.array([1000, 399]))
    with pytest.raises(ValueError, match=r"lengths\[0\] = 1001 samples is outside \[400, 1000\]"):
        features.fbank(np.zeros((2, 1000), np.float32), cfg, np.array([1001, 500]))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\), one per waveform row, got \(3,\)"):
        features.fbank(np.zeros((2, 1000), np.float32), cfg, np.array([500, 500, 500]))
    with pytest.raises(ValueError, match=r"dither=1.0 needs a PRNG key"):
        features.fbank(np.zeros((1, 1000), np.float32), FbankConfig.wespeaker(dither=1.0))
    with pytest.raises(ValueError, match=r"cmn expects features of shape \(B, T, F\), got shape \(10, 80\)"):
        features.cmn(jnp.zeros((10, 80)))


@pytest.mark.parametrize(
    "options,match",
    [
        ({"window_type": "hann"}, r"window_type 'hann' is not one of"),
        ({"num_mel_bins": 3}, r"num_mel_bins must be > 3, got 3"),
        ({"high_freq": 9000.0}, r"low_freq 20.0, high_freq 9000.0 .*Nyquist 8000.0"),
        ({"low_freq": 5000.0, "high_freq": 4000.0}, r"need 0 <= low_freq < high_freq <= Nyquist"),
        ({"round_to_power_of_two": False, "frame_length": 25.0625}, r"FFT length 401 is odd"),
        ({"preemphasis_coefficient": 1.5}, r"preemphasis_coefficient must be in \[0, 1\], got 1.5"),
        ({"frame_shift": 0.01}, r"frame_shift 0.01 ms gives a shift of 0 samples"),
    ],
)
def test_bad_config_raises_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        FbankConfig(**options)


def test_jit_compiles_once_per_shape_and_config():
    traces = []

    @functools.partial(jax.jit, static_argnames="cfg")
    def extract(waveforms, lengths, cfg):
        traces.append(cfg)
        return features.fbank(waveforms, cfg, lengths)

    batch, lengths = _padded([np.ones(500, np.float32), np.ones(900, np.float32)])
    eager, eager_counts = features.fbank(batch, FbankConfig.wespeaker(), lengths)
    for row_lengths in (lengths, np.array([900, 900]), np.array([400, 700])):
        # An equal config built anew hits the cache: FbankConfig hashes by value.
        feats, counts = extract(batch, row_lengths, FbankConfig.wespeaker())
    assert len(traces) == 1
    assert counts.tolist() == [features.num_frames(n, FbankConfig.wespeaker()) for n in (400, 700)]
    feats, counts = extract(batch, lengths, FbankConfig.wespeaker())
    np.testing.assert_array_equal(np.asarray(feats), np.asarray(eager))  # traced lengths = concrete lengths
    np.testing.assert_array_equal(np.asarray(counts), np.asarray(eager_counts))
    extract(batch[:, :800], np.array([800, 800]), FbankConfig.wespeaker())  # new shape
    extract(batch, lengths, FbankConfig.wespeaker(dither=0.0, sample_rate=8000))  # new config
    assert len(traces) == 3
