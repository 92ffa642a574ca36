"""Wav file → embedding, ecapa_jax against WeSpeaker's inference path in PyTorch, same random weights.

Ours: ``audio.load_audio`` → ``Encoder.embed`` (resampling, fbank, CMN and model inside, padded to a
bucket). Theirs: ``torchaudio.compliance.kaldi.fbank`` with WeSpeaker's settings on the waveform × 32768,
mean-only CMN, WeSpeaker's ``ECAPA_TDNN_GLOB_c512`` on the exact-length features; our model directory is
converted from that model's ``state_dict`` by ``wespeaker_to_dir``.
"""

import numpy as np
import oracles
import pytest
import soundfile as sf
from test_convert import random_wespeaker_model
from test_embed import speech_like

from ecapa_jax.encoder import load
from ecapa_jax.frontend.audio import load_audio, resample
from ecapa_jax.io.convert.wespeaker import wespeaker_to_dir

MIN_COSINE = 0.99999
EMB_ATOL = 1e-5  # measured 1.0e-6 (16 kHz), 1.0e-6 (8 kHz), 1.5e-6 (44.1 kHz); |embedding| ≤ 0.5
SECONDS = 3.0  # every case resamples to the same 48,000 samples: one compiled program for the module


@pytest.fixture(scope="module")
def glob_c512(tmp_path_factory):
    """(WeSpeaker's ECAPA_TDNN_GLOB_c512 with random weights, our Encoder converted from it)."""
    torch = oracles.torch()
    torch.set_num_threads(1)
    model = random_wespeaker_model("ECAPA_TDNN_GLOB_c512", feat_dim=80, embed_dim=192)
    workdir = tmp_path_factory.mktemp("glob_c512")
    torch.save(model.state_dict(), workdir / "avg_model.pt")
    wespeaker_to_dir(workdir / "avg_model.pt", workdir / "model")
    return model, load(workdir / "model")


def wespeaker_embedding(model, samples: np.ndarray) -> np.ndarray:
    """WeSpeaker's inference front-end and model on (N,) int16-scale samples at 16 kHz. Returns (E,)."""
    torch = oracles.torch()
    feats = oracles.wespeaker_fbank(samples)  # (T, 80)
    feats = feats - feats.mean(dim=0)  # CMN, mean only
    with torch.no_grad():
        return model(feats[None])[-1][0].numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_16k_mono_wav_matches_wespeaker(glob_c512, tmp_path):
    """At 16 kHz the torch side reads the file itself, as WeSpeaker's CLI: int16 samples, no rescaling."""
    model, encoder = glob_c512
    path = tmp_path / "mono16k.wav"
    sf.write(path, speech_like(SECONDS, 16000, seed=1), 16000, subtype="PCM_16")
    got = encoder.embed(load_audio(path))
    int16, rate = sf.read(path, dtype="int16")
    assert rate == 16000
    want = wespeaker_embedding(model, int16)
    assert cosine(got, want) >= MIN_COSINE, cosine(got, want)
    np.testing.assert_allclose(got, want, rtol=0, atol=EMB_ATOL)


@pytest.mark.parametrize("rate,subtype", [(8000, "PCM_16"), (44100, "FLOAT")])
def test_resampled_stereo_wav_matches_wespeaker(glob_c512, tmp_path, rate, subtype):
    """8 kHz and 44.1 kHz stereo through the documented path (channel mean, soxr to 16 kHz in
    ``load_audio``). The torch side gets our resampled mono waveform: the resampler is tested in
    test_audio.py, this checks that everything after it matches WeSpeaker."""
    model, encoder = glob_c512
    path = tmp_path / f"stereo{rate}.wav"
    sf.write(path, speech_like(SECONDS, rate, seed=rate, channels=2), rate, subtype=subtype)
    waveform = load_audio(path)  # (48000,)
    assert waveform.shape == (int(SECONDS * 16000),)
    got = encoder.embed(waveform)
    want = wespeaker_embedding(model, waveform * 32768.0)
    assert cosine(got, want) >= MIN_COSINE, cosine(got, want)
    np.testing.assert_allclose(got, want, rtol=0, atol=EMB_ATOL)


def test_other_rates_are_resampled_as_load_audio_does(glob_c512):
    """``embed(x, 44100)`` is ``embed`` of x resampled by ``audio.resample`` (the e2e-tested path)."""
    _, encoder = glob_c512
    x = speech_like(SECONDS, 44100, seed=3)
    np.testing.assert_array_equal(encoder.embed(x, 44100), encoder.embed(resample(x, 44100, 16000)))
