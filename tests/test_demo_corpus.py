"""The synthetic demo corpus: determinism, speaker sets, signal ranges, and that voices are separable."""

import json

import numpy as np
import pytest
import soundfile as sf

from train.demo_corpus import DemoCorpus, write_dataset, write_trials

SR = 16000


@pytest.fixture(scope="module")
def corpus():
    return DemoCorpus(num_speakers=6, utts_per_speaker=6, seed=0, num_held_out=8)


def test_same_seed_same_samples_in_any_call_order(corpus):
    a1, b1 = corpus.waveform("spk0001-002"), corpus.waveform("eval0003-001")
    fresh = DemoCorpus(num_speakers=6, utts_per_speaker=6, seed=0, num_held_out=8)
    b2, a2 = fresh.waveform("eval0003-001"), fresh.waveform("spk0001-002")
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    other = DemoCorpus(num_speakers=6, utts_per_speaker=6, seed=1, num_held_out=8).waveform("spk0001-002")
    n = min(len(a1), len(other))
    assert len(other) != len(a1) or np.max(np.abs(other[:n] - a1[:n])) > 0.1, "seed 1 reproduced seed 0"


def test_cache_returns_the_same_read_only_samples(corpus):
    cached = DemoCorpus(num_speakers=6, utts_per_speaker=6, seed=0, num_held_out=8, cache=True)
    first = cached.waveform("spk0002-004")
    np.testing.assert_array_equal(first, corpus.waveform("spk0002-004"))
    assert cached.waveform("spk0002-004") is first  # generated once
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 0.0  # a caller writing into it would change every later read
    assert corpus.waveform("spk0002-004") is not corpus.waveform("spk0002-004")  # uncached: fresh arrays


def test_speaker_sets_are_disjoint_and_listed(corpus):
    assert corpus.speakers == [f"spk{i:04d}" for i in range(6)]
    assert corpus.held_out_speakers == [f"eval{i:04d}" for i in range(8)]
    assert not set(corpus.speakers) & set(corpus.held_out_speakers)
    assert len(corpus.utterances) == 36 and len(corpus.held_out_utterances) == 48
    assert {s for _, s in corpus.utterances} == set(corpus.speakers)
    # Voices come from separate random streams: no two speakers share a median F0.
    f0s = [corpus.voice(s).f0 for s in corpus.speakers + corpus.held_out_speakers]
    assert len(set(f0s)) == len(f0s)


def test_lengths_finite_and_peak(corpus):
    for utt, _ in corpus.utterances[::3]:
        x = corpus.waveform(utt)
        assert x.dtype == np.float32 and x.ndim == 1
        assert 2.0 * SR <= len(x) <= 6.0 * SR, (utt, len(x))
        assert corpus.num_samples(utt) == len(x)  # known without generating (the loader plans crops with it)
        assert np.all(np.isfinite(x))
        assert 0.3 - 1e-6 <= np.max(np.abs(x)) <= 0.9 + 1e-6  # drawn peak level, so ≤ 1


def _band_log_spectrum(x: np.ndarray) -> np.ndarray:
    """Mean log power spectrum over 312–3437 Hz (the band every random channel passes) of the louder
    half of the 32 ms frames, minus a quadratic fit (a smooth channel tilt)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, 512)[::160] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    loud = power.sum(axis=1) > np.median(power.sum(axis=1))
    spectrum = np.log(power[loud] + 1e-8).mean(axis=0)[10:110]
    bins = np.arange(len(spectrum))
    return spectrum - np.polyval(np.polyfit(bins, spectrum, 2), bins)


def test_held_out_speakers_are_separable_by_their_voice(corpus):
    # Nearest centroid on 8 held-out speakers: 3 enrolment, 3 test utterances each. Chance is 1/8;
    # measured 0.83–0.96 over seeds 0–4 (0.83 for seed 0).
    feats = {u: _band_log_spectrum(corpus.waveform(u)) for u, _ in corpus.held_out_utterances}
    spk = corpus.held_out_speakers
    centroids = np.stack([np.mean([feats[f"{s}-{u:03d}"] for u in range(3)], axis=0) for s in spk])
    hits = [
        np.argmin(np.sum((centroids - feats[f"{s}-{u:03d}"]) ** 2, axis=1)) == i
        for i, s in enumerate(spk)
        for u in range(3, 6)
    ]
    assert np.mean(hits) >= 0.6, f"accuracy {np.mean(hits):.2f} (chance 0.125)"
    # …while two utterances of one speaker are different signals, not copies.
    a, b = corpus.waveform("eval0000-000"), corpus.waveform("eval0000-001")
    n = min(len(a), len(b))
    assert abs(np.corrcoef(a[:n], b[:n])[0, 1]) < 0.1


def test_held_out_trials_are_balanced_and_deterministic(corpus):
    trials = corpus.held_out_trials(101, seed=3)
    assert trials == corpus.held_out_trials(101, seed=3)
    assert trials != corpus.held_out_trials(101, seed=4)
    held = {u for u, _ in corpus.held_out_utterances}
    assert sum(t for _, _, t in trials) == 51
    for enroll, test, target in trials:
        assert enroll in held and test in held and enroll != test
        assert (enroll.split("-")[0] == test.split("-")[0]) == target


def test_unknown_ids_and_impossible_trials_raise(corpus):
    with pytest.raises(ValueError, match="unknown demo utterance id 'spk0006-000'"):
        corpus.waveform("spk0006-000")
    with pytest.raises(ValueError, match="unknown demo utterance id 'eval0001-6'"):
        corpus.waveform("eval0001-6")
    with pytest.raises(ValueError, match="needs >= 2 held-out speakers"):
        DemoCorpus(num_speakers=2, utts_per_speaker=2, num_held_out=1).held_out_trials(4)


def test_write_dataset_and_trials(corpus, tmp_path):
    utts = corpus.held_out_utterances[:3]
    paths = write_dataset(corpus, str(tmp_path / "d"), utts)
    with open(paths["raw.list"]) as f:
        raw = [json.loads(line) for line in f]
    assert [(r["key"], r["spk"]) for r in raw] == utts
    with open(paths["wav.scp"]) as f:
        assert [line.split()[0] for line in f] == [u for u, _ in utts]
    with open(paths["spk2utt"]) as f:
        assert f.read() == "eval0000 eval0000-000 eval0000-001 eval0000-002\n"
    x, sr = sf.read(raw[1]["wav"], dtype="float32")
    assert sr == SR
    np.testing.assert_allclose(x, corpus.waveform(utts[1][0]), atol=1e-4)  # 16-bit quantisation
    trials = write_trials([("a", "b", True), ("a", "c", False)], str(tmp_path / "trials"))
    with open(trials) as f:
        assert f.read() == "a b target\na c nontarget\n"
