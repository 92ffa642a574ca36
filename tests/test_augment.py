"""Waveform augmentations (NumPy) and SpecAugment (jnp) against hand-computed values and NumPy references."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from train import augment

SR = 16000


def _sine(freq: float, seconds: float, amp: float, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def test_random_chunk_uniform_start_and_tiling():
    rng = np.random.default_rng(0)
    x = np.arange(13, dtype=np.float32)
    starts = set()
    for _ in range(200):
        c = augment.random_chunk(x, 10, rng)
        np.testing.assert_array_equal(c, np.arange(c[0], c[0] + 10))
        starts.add(int(c[0]))
    assert starts == {0, 1, 2, 3}  # every start in [0, N − L], nothing else
    # Shorter than the chunk: repeated ⌊12/5⌋ + 1 = 3 times from the start, cut to 12.
    np.testing.assert_array_equal(augment.random_chunk(np.arange(5.0), 12, rng), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])


@pytest.mark.parametrize(("speed", "length"), [(0.9, 17778), (1.1, 14545), (1.0, 16000)])
def test_speed_perturb_changes_length_and_pitch_together(speed, length):
    x = _sine(1000.0, 1.0, 0.5)
    y = augment.speed_perturb(x, speed, SR)
    assert len(y) == length  # round(16000 / speed): tempo scaled by `speed`
    peak_hz = np.argmax(np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(len(y) - 4000)))) * SR / (len(y) - 4000)
    assert abs(peak_hz - 1000.0 * speed) < 2.0, peak_hz  # pitch scaled by `speed` (FFT bin ≈ 1.3 Hz)


@pytest.mark.parametrize("snr_db", [0.0, 7.3, 15.0, 30.0])
def test_add_noise_reaches_the_drawn_snr(snr_db):
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal(SR)).astype(np.float32)
    noise = (0.2 * rng.standard_normal(SR)).astype(np.float32)
    out = augment.add_noise(audio, noise, snr_db)
    achieved = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean((out - audio).astype(np.float64) ** 2))
    assert abs(achieved - snr_db) < 0.1, achieved  # the 1e-4 floors cost < 0.02 dB at these levels (−10, −14 dB)


def test_reverberate_and_peak_normalize():
    rng = np.random.default_rng(2)
    audio = rng.standard_normal(1000).astype(np.float32)
    rir = rng.standard_normal(64).astype(np.float32)
    out = augment.reverberate(audio, rir)
    assert out.shape == audio.shape
    np.testing.assert_allclose(out, np.convolve(audio, rir / np.linalg.norm(rir))[:1000], atol=1e-5)
    # A scaled, delayed impulse is a pure delay after L2 normalisation.
    np.testing.assert_allclose(augment.reverberate(audio, np.array([0, 0, 5.0, 0])), np.r_[0, 0, audio[:-2]], atol=1e-6)
    np.testing.assert_allclose(augment.peak_normalize(np.array([0.5, -2.0])), [0.5 / 2.0001, -2.0 / 2.0001], rtol=1e-6)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"noise shape \(5,\) must equal the audio shape \(4,\)"):
        augment.add_noise(np.ones(4), np.ones(5), 10.0)
    with pytest.raises(ValueError, match="room impulse response is all zeros"):
        augment.reverberate(np.ones(4), np.zeros(3))
    with pytest.raises(FileNotFoundError, match="nowhere: no such directory or list file"):
        augment.list_audio("nowhere")
    with pytest.raises(ValueError, match="WaveAugmenter needs at least one noise or RIR file"):
        augment.WaveAugmenter([], [], 0.6, SR)


def test_noise_category_and_list_audio(tmp_path):
    assert augment.noise_category("/data/musan/music/fma/x.wav") == "music"
    assert augment.noise_category("/home/music/musan/speech/us-gov/y.wav") == "speech"  # nearest the file
    assert augment.noise_category("/data/other/z.wav") == "other"
    for rel in ["a/noise/1.wav", "a/speech/b/2.flac", "a/readme.txt"]:
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert augment.list_audio(str(tmp_path / "a")) == [
        str(tmp_path / "a/noise/1.wav"),
        str(tmp_path / "a/speech/b/2.flac"),
    ]
    (tmp_path / "list").write_text("n1 a/noise/1.wav\n\n/abs/x.wav\n")
    assert augment.list_audio(str(tmp_path / "list")) == [str(tmp_path / "a/noise/1.wav"), "/abs/x.wav"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no audio files"):
        augment.list_audio(str(tmp_path / "empty"))


def _write(path, x):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, SR, subtype="FLOAT")
    return str(path)


def test_wave_augmenter_snr_ranges_by_category(tmp_path):
    # The speech is a 500 Hz tone, every noise file a 3 kHz tone: orthogonal, so the SNR of an
    # augmented (peak-normalised) sample is read back by projecting onto the clean tone.
    audio = _sine(500.0, 1.0, 0.4)
    files = {c: _write(tmp_path / f"musan/{c}/x/n.wav", _sine(3000.0, 2.5, 0.2, phase=1.0)) for c in augment.SNR_RANGES}
    for category, (lo, hi) in augment.SNR_RANGES.items():
        aug = augment.WaveAugmenter([files[category]], [], aug_prob=1.0, sample_rate=SR)
        rng = np.random.default_rng(3)
        snrs = []
        for _ in range(40):
            out, kind = aug(audio, rng)
            assert kind == augment.AUG_NOISE
            assert np.max(np.abs(out)) <= 1.0
            clean = np.dot(out, audio) / np.dot(audio, audio) * audio
            snrs.append(10 * np.log10(np.sum(clean**2) / np.sum((out - clean) ** 2)))
        assert lo - 0.1 <= min(snrs) and max(snrs) <= hi + 0.1, (category, min(snrs), max(snrs))
        assert min(snrs) < lo + 3 and max(snrs) > hi - 3, (category, min(snrs), max(snrs))  # spans the range


def test_wave_augmenter_probability_kinds_and_reverb(tmp_path):
    audio = _sine(500.0, 0.5, 0.4)
    rir = np.zeros(400, np.float32)
    rir[[0, 160, 399]] = [1.0, 0.5, 0.25]
    aug = augment.WaveAugmenter(
        [_write(tmp_path / "noise/n.wav", _sine(3000.0, 1.0, 0.2))], [_write(tmp_path / "rir/r.wav", rir)], 0.6, SR
    )
    rng = np.random.default_rng(4)
    kinds = []
    for _ in range(400):
        out, kind = aug(audio, rng)
        kinds.append(kind)
        if kind == augment.AUG_REVERB:
            expected = augment.reverberate(audio, rir)
            np.testing.assert_allclose(out, expected / (np.max(np.abs(expected)) + 1e-4), atol=1e-6)
        elif kind == augment.AUG_NONE:
            np.testing.assert_array_equal(out, audio)
    counts = np.bincount(kinds, minlength=3) / len(kinds)
    # Binomial std of each fraction ≤ 0.025: 0.4 none, 0.3 reverb, 0.3 noise within 0.08.
    np.testing.assert_allclose(counts, [0.4, 0.3, 0.3], atol=0.08)


# ----------------------------------------------------------------------------- SpecAugment


SHAPE = (3, 20, 16)  # (B, T, F), one shape so the masks compile once


@jax.jit
def _zeroed(keys, prob):
    """Zeroed entries of ones(SHAPE) under spec_augment, for each key. (K, B, T, F) bool"""
    return jax.vmap(lambda k: augment.spec_augment(k, jnp.ones(SHAPE), prob=prob) == 0)(keys)


def test_spec_augment_widths_and_shared_across_batch():
    masked = np.asarray(_zeroed(jax.random.split(jax.random.key(0), 2000), 1.0))  # max_t 10, max_f 8
    np.testing.assert_array_equal(masked, np.broadcast_to(masked[:, :1], masked.shape))  # same for all B
    time_rows = masked[:, 0].all(axis=2)  # (K, T) frames zeroed across all bins
    freq_cols = masked[:, 0].all(axis=1)  # (K, F) bins zeroed across all frames
    t_width, f_width = time_rows.sum(1), freq_cols.sum(1)
    assert t_width.min() == 1 and t_width.max() == 10  # width 1…max_t (clipped at the end)
    assert f_width.min() == 1 and f_width.max() == 8
    # Each mask is one contiguous band; starts cover [0, T − 1] and [0, F − 1].
    for rows in (time_rows, freq_cols):
        assert np.all(np.sum(np.diff(rows.astype(int), axis=1) == 1, axis=1) + rows[:, 0] == 1)
    assert set(np.argmax(time_rows, 1)) == set(range(20)) and set(np.argmax(freq_cols, 1)) == set(range(16))
    # Entries outside the bands are untouched.
    np.testing.assert_array_equal(masked[:, 0], time_rows[:, :, None] | freq_cols[:, None, :])


def test_spec_augment_probability():
    keys = jax.random.split(jax.random.key(1), 400)
    assert not np.asarray(_zeroed(keys, 0.0)).any()
    assert np.asarray(_zeroed(keys, 1.0)).reshape(400, -1).any(1).all()
    applied = np.asarray(_zeroed(keys, 0.6)).reshape(400, -1).any(1).mean()
    assert abs(applied - 0.6) < 0.1, applied  # binomial std 0.025
    feats = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    np.testing.assert_array_equal(augment.spec_augment(keys[0], feats, prob=0.0), feats)  # identity
