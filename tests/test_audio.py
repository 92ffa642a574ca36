"""load_audio / resample against exact PCM scaling, analytic tones and torchaudio's resampler."""

import re

import numpy as np
import oracles
import pytest
import soundfile as sf

from ecapa_jax.frontend.audio import MIN_SAMPLES, AudioError, load_audio, resample


def _tone(freq, sr, n, amp=0.5):
    return amp * np.sin(2 * np.pi * freq * np.arange(n) / sr)


def _pcm16(n, seed=0, channels=1):
    x = np.random.default_rng(seed).integers(-32768, 32768, size=(n, channels), dtype=np.int16)
    x[:2, 0] = [-32768, 32767]  # the full range, both ends
    return x


def test_int16_wav_is_scaled_by_1_over_32768_exactly(tmp_path):
    x = _pcm16(1000)[:, 0]
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    y = load_audio(tmp_path / "a.wav")
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x / 32768.0)  # exact (tolerance 0)


def test_flac_is_lossless_and_24_bit_is_scaled_by_2_pow_23(tmp_path):
    x16 = _pcm16(800, seed=1)[:, 0]
    sf.write(tmp_path / "a.flac", x16, 16000, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(tmp_path / "a.flac"), x16 / 32768.0)
    x24 = np.random.default_rng(2).integers(-(2**23), 2**23, size=800).astype(np.int32) * 256  # 24-bit in int32
    sf.write(tmp_path / "b.wav", x24, 16000, subtype="PCM_24")
    np.testing.assert_array_equal(load_audio(tmp_path / "b.wav"), (x24 // 256 / 2.0**23).astype(np.float32))


def test_float_wav_is_returned_as_stored(tmp_path):
    x = np.random.default_rng(3).uniform(-1, 1, 900).astype(np.float32)
    sf.write(tmp_path / "f.wav", x, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "f.wav"), x)


def test_stereo_is_the_exact_channel_average(tmp_path):
    x = _pcm16(700, seed=4, channels=2)
    sf.write(tmp_path / "s.wav", x, 16000, subtype="PCM_16")
    expected = ((x[:, 0] / 32768.0 + x[:, 1] / 32768.0) / 2).astype(np.float32)
    np.testing.assert_array_equal(load_audio(tmp_path / "s.wav"), expected)  # exact: 17-bit sums fit float32


@pytest.mark.parametrize("sr", [8000, 44100])
def test_resampled_tone_keeps_frequency_amplitude_and_phase(tmp_path, sr):
    n = sr // 2 + 7  # 0.5 s and an odd remainder, so the length rule is exercised
    sf.write(tmp_path / "t.wav", _tone(1000, sr, n).astype(np.float32), sr, subtype="FLOAT")
    y = load_audio(tmp_path / "t.wav")
    assert len(y) == int(np.floor(n * 16000 / sr + 0.5))  # soxr's rule: round half up
    inner = slice(200, len(y) - 200)  # the edges see the zero padding outside the signal
    # soxr has no delay: the output is the 1 kHz tone sampled at 16 kHz (measured max error 3e-7).
    np.testing.assert_allclose(y[inner], _tone(1000, 16000, len(y))[inner], rtol=0, atol=1e-5)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 1000) <= 16000 / len(y)  # peak within one bin
    assert np.sqrt(np.mean(y[inner] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=1e-3)


def test_resampling_removes_content_above_the_new_nyquist():
    x = _tone(10000, 44100, 22050)  # would alias to 6 kHz without the anti-aliasing filter
    y = resample(x, 44100, 16000)
    assert np.sqrt(np.mean(y[200:-200] ** 2)) < 1e-6  # > 110 dB below the input RMS 0.35 (measured 2.5e-8)


def test_resample_is_close_to_torchaudio_used_by_wespeaker():
    torch = oracles.torch()
    taf = pytest.importorskip("torchaudio.functional")
    x = _tone(1000, 44100, 22050).astype(np.float32)
    ours = resample(x, 44100, 16000)
    theirs = taf.resample(torch.from_numpy(x), 44100, 16000).numpy()
    assert len(ours) == len(theirs)  # torchaudio rounds up (ceil); equal here since 22050·16000/44100 = 8000
    # Different filters (soxr 20-bit vs torchaudio's windowed sinc, width 6): measured max 2.0e-4.
    np.testing.assert_allclose(ours[200:-200], theirs[200:-200], rtol=0, atol=5e-4)


@pytest.mark.parametrize("fmt", ["ogg", "mp3"])
def test_lossy_formats_decode_to_the_tone(tmp_path, fmt):
    if fmt.upper() not in sf.available_formats():
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) has no {fmt} support")
    path = tmp_path / f"t.{fmt}"
    sf.write(path, _tone(1000, 16000, 16000).astype(np.float32), 16000)
    y = load_audio(path)
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 1000) <= 16000 / len(y)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)  # lossy codec


def _raises(path, what):
    return pytest.raises(AudioError, match=re.escape(str(path)) + ".*" + what)


def test_missing_file(tmp_path):
    with _raises(tmp_path / "nope.wav", "no such audio file"):
        load_audio(tmp_path / "nope.wav")


def test_not_audio(tmp_path):
    path = tmp_path / "text.wav"
    path.write_text("not a RIFF header\n")
    with _raises(path, "not a readable audio file"):
        load_audio(path)
    raw = tmp_path / "headerless.raw"
    raw.write_bytes(bytes(1000))
    with _raises(raw, "not a readable audio file .samplerate must be specified"):
        load_audio(raw)


def test_empty(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.int16), 16000)
    with _raises(path, r"empty audio \(0 samples\)"):
        load_audio(path)


def test_nan_and_inf(tmp_path):
    x = np.zeros(1000, np.float32)
    x[[10, 20]] = [np.nan, np.inf]
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    with _raises(path, "2 sample.s. are NaN or infinite"):
        load_audio(path)


def test_too_short_is_judged_after_resampling(tmp_path):
    ok, short = tmp_path / "ok.wav", tmp_path / "short.wav"
    sf.write(ok, np.zeros(MIN_SAMPLES // 2, np.int16), 8000)  # 200 samples → 400 at 16 kHz
    sf.write(short, np.zeros(MIN_SAMPLES // 2 - 1, np.int16), 8000)  # 199 → 398
    assert len(load_audio(ok)) == MIN_SAMPLES
    with _raises(short, "too short, 398 samples at 16000 Hz after resampling from 8000 Hz .need at least 400"):
        load_audio(short)
    with _raises(ok, "need at least 401"):
        load_audio(ok, min_samples=401)


def test_file_like_objects_are_read_and_named(tmp_path):
    """Tar members are read from their bytes (``io.BytesIO``); messages name what ``name`` says."""
    import io

    x = _pcm16(2000)[:, 0]
    sf.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    data = (tmp_path / "a.flac").read_bytes()
    np.testing.assert_array_equal(load_audio(io.BytesIO(data), name="shard.tar:u1"), x / 32768.0)
    with pytest.raises(AudioError, match=r"^shard\.tar:u1: not a readable audio file"):
        load_audio(io.BytesIO(b"RIFF garbage"), name="shard.tar:u1")
    with pytest.raises(AudioError, match=r"^<audio>: not a readable audio file"):
        load_audio(io.BytesIO(b"RIFF garbage"))
