"""WeSpeaker's waveform augmentations: NumPy references against torchaudio and hand-computed values; the device
(jnp) versions against the references on identical draws; the step's draws statistically; SpecAugment."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

from train import augment

SR = 16000


def _sine(freq: float, seconds: float, amp: float, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


# ----------------------------------------------------------------------------- NumPy references


@pytest.mark.parametrize("n", [1000, 4001])
def test_speed_perturb_is_torchaudios_kaiser_resampler(n):
    """The reference resampler is torchaudio.functional.resample (kaiser_best) of x read at speed·sr."""
    torch = oracles.torch()
    from torchaudio import functional

    x = np.random.default_rng(n).standard_normal(n)
    for speed in (0.9, 1.1):
        ours = augment.speed_perturb(x, speed, SR)
        theirs = functional.resample(
            torch.from_numpy(x), round(speed * SR), SR, augment.LOWPASS_WIDTH, augment.ROLLOFF,
            "sinc_interp_kaiser", augment.KAISER_BETA,
        ).numpy()  # fmt: skip
        assert ours.shape == theirs.shape == (int(np.ceil(n / speed - 1e-9)),)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)  # torchaudio's float32 kernel vs our float64 one
    np.testing.assert_array_equal(augment.speed_perturb(x, 1.0, SR), x)


@pytest.mark.parametrize(("speed", "length"), [(0.9, 17778), (1.1, 14546)])
def test_speed_perturb_changes_length_and_pitch_together(speed, length):
    y = augment.speed_perturb(_sine(1000.0, 1.0, 0.5), speed, SR)
    assert len(y) == length  # ⌈16000 / speed⌉: tempo scaled by `speed`
    peak_hz = np.argmax(np.abs(np.fft.rfft(y[2000:-2000] * np.hanning(len(y) - 4000)))) * SR / (len(y) - 4000)
    assert abs(peak_hz - 1000.0 * speed) < 2.0, peak_hz  # pitch scaled by `speed` (FFT bin ≈ 1.3 Hz)


def test_speed_window_is_the_whole_signal_result_inside_it():
    """Cropping before the speed change loses nothing: a window's output is the whole signal's output there."""
    x = np.random.default_rng(0).standard_normal(6000)
    length = 2000
    for i, plan in enumerate(augment.speed_plans(length, SR)):
        whole = augment.speed_perturb(x, plan.speed, SR)
        for m in (3, 50, 170):
            offset = m * plan.orig - plan.width
            np.testing.assert_array_equal(
                augment.speed_window(x, offset, i, length, SR), whole[m * plan.new : m * plan.new + length]
            )
    # The host's window covers the longest span: 1.1 × 32,240 + the filter's 2 × 19 samples of context.
    assert augment.input_length(32240, True) == max(p.span for p in augment.speed_plans(32240)) == 35502
    assert augment.input_length(32240, False) == 32240


@pytest.mark.parametrize("snr_db", [0.0, 7.3, 15.0, 30.0])
def test_add_noise_reaches_the_drawn_snr(snr_db):
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal(SR)).astype(np.float32)
    noise = (0.2 * rng.standard_normal(SR)).astype(np.float32)
    out = augment.add_noise(audio, noise, snr_db)
    achieved = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) / np.mean((out - audio) ** 2))
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
    np.testing.assert_array_equal(augment.tile(np.arange(5.0), 12), [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"noise shape \(5,\) must equal the audio shape \(4,\)"):
        augment.add_noise(np.ones(4), np.ones(5), 10.0)
    with pytest.raises(ValueError, match="room impulse response is all zeros"):
        augment.reverberate(np.ones(4), np.zeros(3))
    with pytest.raises(FileNotFoundError, match="nowhere: no such directory or list file"):
        augment.list_audio("nowhere")
    with pytest.raises(ValueError, match="speed must be one of"):
        augment.speed_perturb(np.ones(4), 1.2)
    with pytest.raises(ValueError, match="offset 10 \\+ span 100 does not fit a window of 105 samples"):
        augment.speed_window(np.ones(105), 10, 0, 100)


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


# ----------------------------------------------------------------------------- device versions vs references

LENGTH = 3200  # a 0.2 s chunk keeps the jitted shapes small; the geometry is the same as at 32,240
AUG = augment.DeviceAugment(LENGTH, num_speakers=5, speed_perturb=True, sample_rate=SR)


def test_device_speed_matches_the_reference_at_every_offset():
    rng = np.random.default_rng(3)
    wav = (0.3 * rng.standard_normal((4, AUG.input_length))).astype(np.float32)
    for i, plan in enumerate(augment.speed_plans(LENGTH, SR)):
        slack = AUG.input_length - plan.span  # 0 for the fastest speed: the host's window is its span
        offset = np.array([0, min(1, slack), slack // 2, slack], np.int32)
        out = np.asarray(jax.jit(augment.speed_window_jnp, static_argnums=2)(wav, offset, plan))
        ref = np.stack([augment.speed_window(w, int(o), i, LENGTH, SR) for w, o in zip(wav, offset, strict=True)])
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=f"speed {plan.speed}")
        print(f"speed {plan.speed}: max |device - reference| = {np.max(np.abs(out - ref)):.2e}")


def test_device_noise_reverb_and_peak_match_the_references():
    rng = np.random.default_rng(4)
    audio = (0.3 * rng.standard_normal((3, LENGTH))).astype(np.float32)
    noise = (0.05 * rng.standard_normal((3, LENGTH))).astype(np.float32)
    rir = np.zeros((3, 1500), np.float32)
    for b, n in enumerate((1, 700, 1500)):  # an impulse, a short and a full-length decay
        rir[b, :n] = np.exp(-np.arange(n) / 200.0) * rng.standard_normal(n)
    snr = np.array([0.0, 7.5, 30.0], np.float32)
    got = jax.jit(lambda a, n, r, s: (
        augment.add_noise_jnp(a, n, s), augment.reverberate_jnp(a, r), augment.peak_normalize_jnp(a)
    ))(audio, noise, rir, snr)  # fmt: skip
    for b in range(3):
        np.testing.assert_allclose(got[0][b], augment.add_noise(audio[b], noise[b], float(snr[b])), atol=1e-5)
        np.testing.assert_allclose(got[1][b], augment.reverberate(audio[b], rir[b]), atol=1e-5)
        np.testing.assert_allclose(got[2][b], augment.peak_normalize(audio[b].astype(np.float64)), atol=1e-6)
    # A row without a RIR (all zeros) gives zeros, not NaN: it is not selected, but must not poison anything.
    assert np.all(np.asarray(augment.reverberate_jnp(audio[:1], np.zeros((1, 8), np.float32))) == 0)


def _device_batch(rng, b=12):
    """A batch as the loader hands it over: int16 windows, each aug kind, noise of each type, RIRs of varied length."""
    pcm = lambda shape, scale: np.round(scale * rng.standard_normal(shape) * 32768).astype(np.int16)
    aug = np.arange(b, dtype=np.int32) % 3  # none, reverb, noise, ...
    noise = np.where((aug == augment.AUG_NOISE)[:, None], pcm((b, LENGTH), 0.05), 0).astype(np.int16)
    rir = np.zeros((b, 900), np.int16)
    for i in np.flatnonzero(aug == augment.AUG_REVERB):
        n = int(rng.integers(1, 900))
        rir[i, :n] = np.round(np.exp(-np.arange(n) / 150.0) * rng.uniform(-1, 1, n) * 20000)
    return {
        "wav": pcm((b, AUG.input_length), 0.2),
        "label": rng.integers(0, 5, b).astype(np.int32),
        "aug": aug,
        "noise": noise,
        "noise_type": (np.arange(b, dtype=np.int32) // 3) % len(augment.NOISE_TYPES),
        "rir": rir,
    }


def test_device_augment_matches_the_reference_chain_on_identical_draws():
    """The full recipe on a batch (speed → reverb | noise → peak normalisation, label mapping) vs NumPy, row by row."""
    batch = _device_batch(np.random.default_rng(5))
    draws = jax.jit(AUG.draw)(jax.random.key(0), batch)
    draws = {k: np.asarray(v) for k, v in draws.items()}
    draws["speed"] = np.arange(12, dtype=np.int32) // 4 % 3  # every (speed, aug) pair at least once
    slack = np.array([AUG.input_length - p.span for p in augment.speed_plans(LENGTH, SR)])[draws["speed"]]
    draws["offset"] = (np.arange(12) * 7919 % (slack + 1)).astype(np.int32)
    wav, label = jax.jit(AUG.apply)(batch, draws)
    assert wav.shape == (12, LENGTH) and wav.dtype == jnp.float32
    np.testing.assert_array_equal(label, batch["label"] + 5 * draws["speed"])
    worst = 0.0
    for b in range(12):
        ref = augment.augment_reference(
            batch["wav"][b] / 32768.0, int(draws["offset"][b]), int(draws["speed"][b]), int(batch["aug"][b]),
            float(draws["snr"][b]), batch["noise"][b] / 32768.0, batch["rir"][b] / 32768.0, LENGTH, SR,
        )  # fmt: skip
        np.testing.assert_allclose(wav[b], ref, atol=1e-5, err_msg=f"row {b}")
        worst = max(worst, float(np.max(np.abs(wav[b] - ref))))
    print(f"full chain: max |device - reference| = {worst:.2e}")
    assert np.max(np.abs(np.asarray(wav)[batch["aug"] != 0])) <= 1.0  # peak-normalised


def test_device_draws_follow_the_recipe_distributions():
    """Speeds uniform over {1.0, 0.9, 1.1}, offsets uniform in the slack, SNRs uniform in each type's range.

    8,000 rows per statistic, fixed keys: a binomial fraction's std is ≤ 0.0056, a uniform's mean ≤ 0.0032 of
    its range, so the bounds below (≥ 5 std) cannot flake, and a wrong range or a biased draw fails them.
    """
    batch = {
        "wav": jnp.zeros((8000, AUG.input_length), jnp.int16),
        "noise_type": jnp.arange(8000, dtype=jnp.int32) % len(augment.NOISE_TYPES),
    }
    draws = jax.jit(AUG.draw)(jax.random.key(1), batch)
    speed, offset, snr = (np.asarray(draws[k]) for k in ("speed", "offset", "snr"))
    np.testing.assert_allclose(np.bincount(speed, minlength=3) / 8000, [1 / 3] * 3, atol=0.03)
    for i, plan in enumerate(augment.speed_plans(LENGTH, SR)):
        slack = AUG.input_length - plan.span
        o = offset[speed == i]
        assert o.min() == 0 and o.max() == slack, (plan.speed, o.min(), o.max(), slack)  # the whole slack, no more
        if slack:  # 1.1 has none: the host's window is exactly its span
            assert abs(o.mean() / slack - 0.5) < 0.03, (plan.speed, o.mean(), slack)
    for t, name in enumerate(augment.NOISE_TYPES):
        lo, hi = augment.SNR_RANGES[name]
        s = snr[np.asarray(batch["noise_type"]) == t]
        assert lo <= s.min() and s.max() <= hi and s.min() < lo + 0.1 * (hi - lo) and s.max() > hi - 0.1 * (hi - lo)
        assert abs((s.mean() - lo) / (hi - lo) - 0.5) < 0.03, (name, s.mean())
    no_speed = augment.DeviceAugment(LENGTH, num_speakers=5, speed_perturb=False, sample_rate=SR)
    assert not np.asarray(no_speed.draw(jax.random.key(2), {"wav": jnp.zeros((64, LENGTH))})["speed"]).any()


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
