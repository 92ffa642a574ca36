"""Waveform and file embeddings: bucketed batches against one-at-a-time, the API's errors, and the CLI
(``python -m ecapa_jax.embed``) followed by ``ecapa_jax.score`` and ``ecapa_jax.metrics``."""

import math
import re

import numpy as np
import oracles
import pytest
import soundfile as sf
from test_convert import TINY, numpy_state_dict, random_wespeaker_model

from ecapa_jax import compute_eer
from ecapa_jax import metrics as metrics_cli
from ecapa_jax import score as score_cli
from ecapa_jax.embed import main
from ecapa_jax.encoder import Buckets, Encoder, embed_waveforms, load, plan_batches, sliding_windows
from ecapa_jax.frontend.audio import AudioError, load_audio
from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd, num_frames
from ecapa_jax.io import kaldi_io
from ecapa_jax.io.convert.wespeaker import from_wespeaker, wespeaker_to_dir

SMALL = {"channels": 64, "feat_dim": 80, "embed_dim": 32, "global_context_att": True}  # 80 bins: the front-end's
BATCH_ATOL = 1e-5  # batched vs alone: measured 1.5e-6, |embedding| ≤ 0.4
FRONT_END = FbankConfig.wespeaker()


def speech_like(seconds: float, sample_rate: int, seed: int, channels: int = 1) -> np.ndarray:
    """A voiced-sounding test signal in [−1, 1]: 12 harmonics of a gliding 80–240 Hz pitch (all below the
    4 kHz Nyquist frequency of 8 kHz audio), syllable-rate amplitude modulation and a little noise.

    Returns:
      (N,) float32, or (N, channels) where each channel is a differently scaled and noised copy.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(90, 220) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 13))
    envelope = 0.2 + 0.8 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi)) ** 2
    x = 0.15 * envelope * voiced
    rows = [x * rng.uniform(0.6, 1.0) + 0.003 * rng.standard_normal(t.size) for _ in range(channels)]
    return (np.stack(rows, axis=1) if channels > 1 else rows[0]).astype(np.float32)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    """A model directory converted from a narrow WeSpeaker ECAPA_TDNN (random weights, randomised BN)."""
    torch = oracles.torch()
    workdir = tmp_path_factory.mktemp("small")
    torch.save(random_wespeaker_model(**SMALL).state_dict(), workdir / "model.pt")
    wespeaker_to_dir(workdir / "model.pt", workdir / "model")
    return workdir / "model"


@pytest.fixture(scope="module")
def encoder(small_dir):
    return load(small_dir)


# ----------------------------------------------------------------------------- buckets


def test_buckets_are_sqrt2_steps_from_one_second():
    buckets = Buckets()
    # round(100 · √2^k): 100, 141, 200, 283, 400, 566, 800, 1131, 1600
    assert [buckets.frames(t) for t in (1, 100, 101, 141, 142, 1131, 1132, 1198)] == [
        100, 100, 141, 141, 200, 1131, 1600, 1600,
    ]  # fmt: skip
    # 3 rows of ≤ 1 s: 4 rows (power of two) of 400 + 160 · 100 − 1 samples, the most giving 100 frames.
    assert buckets.shape(16000, 3, 16, KaldiFrontEnd()) == (4, 16399) and num_frames(16399, FRONT_END) == 100
    assert num_frames(16400, FRONT_END) == 101
    assert buckets.shape(16400, 9, 12, KaldiFrontEnd()) == (12, 400 + 160 * 141 - 1)  # the batch cap is the batch size
    with pytest.raises(ValueError, match=r"Buckets need min_frames >= 1 and ratio > 1, got 100 and 1"):
        Buckets(ratio=1)


def test_a_corpus_compiles_few_shapes():
    # 1000 utterances of 0.3–600 s: every padded shape holds its batch, and there are at most
    # (length buckets: 20 from 1 s to 10 min) × (batch buckets: 1, 2, 4, 8, 16) of them.
    rng = np.random.default_rng(0)
    lengths = np.round(np.exp(rng.uniform(np.log(0.3), np.log(600), 1000)) * 16000).astype(int)
    buckets = Buckets()
    shapes = set()
    for batch in plan_batches(lengths, batch_size=16):
        rows, samples = buckets.shape(int(lengths[batch].max()), len(batch), 16, KaldiFrontEnd())
        assert rows >= len(batch) and samples >= lengths[batch].max()
        t = num_frames(int(lengths[batch].max()), FRONT_END)
        assert num_frames(samples, FRONT_END) <= max(100, math.ceil(1.42 * t))  # padding < 42 % past 1 s
        shapes.add((rows, samples))
    assert len(shapes) <= 20 * 5 and len({n for _, n in shapes}) <= 20
    assert sorted(np.concatenate(plan_batches(lengths, 16))) == list(range(1000))


def test_plan_batches_groups_by_length():
    batches = plan_batches([5.0, 1.0, 3.0, 2.0, 4.0], batch_size=2)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 4], [0]]
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        plan_batches([1.0], 0)


# ----------------------------------------------------------------------------- waveform API


def test_batch_equals_one_at_a_time(encoder):
    """0.5–12 s in one padded batch (5 rows of 16 s) against each alone (a batch of one in its own bucket)."""
    seconds = [0.5, 0.9, 11.4, 11.7, 12.0]  # two length buckets (≤ 1 s, 11.3–16 s): one-at-a-time compiles twice
    waves = [speech_like(s, 16000, seed=i) for i, s in enumerate(seconds)]
    before = embed_waveforms._cache_size()
    batched = encoder.embed_batch(waves, batch_size=5)
    alone = np.stack([encoder.embed(w) for w in waves])
    assert batched.shape == (5, SMALL["embed_dim"]) and batched.dtype == np.float32
    assert np.max(np.abs(batched - alone)) <= BATCH_ATOL, np.max(np.abs(batched - alone))
    # (5, 16 s), (1, 1 s) and (1, 16 s): three programs, not one per length (fewer if compiled before).
    assert embed_waveforms._cache_size() - before <= 3


@pytest.mark.parametrize(
    "waveform,rate,message",
    [
        (np.zeros((2, 800), np.float32), 16000, r"waveform 0: expected a 1-D mono waveform, got shape \(2, 800\)"),
        (np.zeros(800, np.int16), 16000, r"waveform 0: expected float samples in \[-1, 1\], got int16"),
        (np.float32([0.0] * 799 + [np.inf]), 16000, r"waveform 0: 1 sample\(s\) are NaN or infinite"),
        (np.zeros(399, np.float32), 16000, r"waveform 0: too short, 399 samples at 16000 Hz .* needs 400"),
        (np.zeros(199, np.float32), 8000, r"too short, 398 samples at 16000 Hz \(from 199 at 8000 Hz\)"),
        (np.zeros(800, np.float32), 0, r"sample_rate must be a positive number of Hz, got 0"),
    ],
)
def test_bad_waveforms_are_named(encoder, waveform, rate, message):
    with pytest.raises(ValueError, match=message):
        encoder.embed(waveform, rate)


def test_embed_files_wants_a_collection(encoder):
    with pytest.raises(
        TypeError, match=r"embed_files takes a list of paths or \{id: path\}, got the single path 'a\.wav'"
    ):
        encoder.embed_files("a.wav")


def test_waveform_api_needs_80_mel_bins():
    config, variables, _ = from_wespeaker(numpy_state_dict(random_wespeaker_model(**TINY)))
    with pytest.raises(
        ValueError, match=r"gives 80 features per frame, but this model takes feat_dim=24: .* embed_features"
    ):
        Encoder(config, variables).embed_batch([np.zeros(800, np.float32)])


def test_similarity_is_cosine_or_wespeakers_unit_interval():
    a, b = np.float32([3.0, 0.0]), np.float32([1.0, 1.0])
    assert Encoder.similarity(a, b) == pytest.approx(math.sqrt(0.5), abs=1e-12)
    assert Encoder.similarity(a, b, unit_interval=True) == pytest.approx((1 + math.sqrt(0.5)) / 2, abs=1e-12)
    rows = Encoder.similarity(np.stack([a, a]), np.stack([b, -a]))
    np.testing.assert_allclose(rows, [math.sqrt(0.5), -1.0], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"two \(E,\) or two \(M, E\) arrays, got shapes \(2,\) and \(3,\)"):
        Encoder.similarity(a, np.zeros(3))
    # A zero embedding has cosine 0 with anything, as torch's F.normalize/cosine_similarity give (not NaN).
    assert Encoder.similarity(a, np.zeros(2)) == 0.0


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory):
    """Four good wavs (0.6–1.0 s, one stereo at 8 kHz), one corrupt, one too short. Returns (good, bad) paths."""
    root = tmp_path_factory.mktemp("wavs")
    good = []
    for i, (seconds, rate, channels) in enumerate([(0.6, 16000, 1), (0.8, 16000, 1), (0.9, 8000, 2), (1.0, 16000, 1)]):
        path = root / f"utt{i}.wav"
        sf.write(path, speech_like(seconds, rate, seed=10 + i, channels=channels), rate, subtype="PCM_16")
        good.append(path)
    (root / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk" + bytes(64))
    sf.write(root / "short.wav", np.zeros(100, np.float32), 16000)
    return good, [root / "corrupt.wav", root / "short.wav"]


def test_cli_embeds_good_files_and_reports_bad_ones(small_dir, encoder, audio_files, tmp_path, capsys):
    good, bad = audio_files
    out = tmp_path / "emb.npz"
    files = [str(p) for p in (good[0], bad[0], good[1], good[2], bad[1], good[3])]
    assert main(["--model", str(small_dir), *files, "--out", str(out), "--batch-size", "4"]) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: corrupt: .*corrupt\.wav: not a readable audio file", err), err
    assert re.search(r"error: short: .*short\.wav: too short, 100 samples at 16000 Hz", err), err
    with np.load(out) as npz:
        got = {key: npz[key] for key in npz.files}
    assert list(got) == ["utt0", "utt1", "utt2", "utt3"]  # input order, bad files left out
    for path in good:  # each id holds its own file's embedding
        want = encoder.embed(load_audio(path))
        np.testing.assert_allclose(got[path.stem], want, rtol=0, atol=BATCH_ATOL, err_msg=path.stem)


def test_cli_ark_output_scores_and_metrics(small_dir, encoder, audio_files, tmp_path, capsys):
    good, bad = audio_files
    wav_scp = tmp_path / "wav.scp"
    ids = ["spk1-a", "spk1-b", "spk2-a", "spk2-b", "spk3-bad", "spk3-short"]
    wav_scp.write_text("".join(f"{u} {p}\n" for u, p in zip(ids, good + bad, strict=True)))
    ark = tmp_path / "xvector.ark"
    args = ["--model", str(small_dir), "--wav-scp", str(wav_scp), "--out", str(ark), "--format", "ark"]
    assert main([*args, "--batch-size", "4"]) == 1  # the batches of the test above: no new program
    err = capsys.readouterr().err
    assert "error: spk3-bad: " in err and "error: spk3-short: " in err and "corrupt.wav" in err
    vectors = kaldi_io.read_scp(tmp_path / "xvector.scp")
    assert list(vectors) == ids[:4] and list(kaldi_io.read_ark(ark)) == ids[:4]
    for utt, path in zip(ids, good, strict=False):
        np.testing.assert_allclose(vectors[utt], encoder.embed(load_audio(path)), rtol=0, atol=BATCH_ATOL)

    trials = [("spk1-a", "spk1-b", "target"), ("spk2-a", "spk2-b", "target"), ("spk1-a", "spk2-a", "nontarget"),
              ("spk1-b", "spk2-b", "nontarget"), ("spk1-a", "spk2-b", "nontarget")]  # fmt: skip
    (tmp_path / "trials").write_text("".join(" ".join(t) + "\n" for t in trials))
    scores_path = tmp_path / "scores"
    assert score_cli.main(["--embeddings", str(tmp_path / "xvector.scp"), "--trials", str(tmp_path / "trials"),
                           "--out", str(scores_path)]) == 0  # fmt: skip
    lines = [line.split() for line in scores_path.read_text().splitlines()]
    want = [Encoder.similarity(vectors[e], vectors[t]) for e, t, _ in trials]  # no mean subtraction asked
    np.testing.assert_allclose([float(s) for _, _, s, _ in lines], want, rtol=0, atol=5e-6)  # printed %.5f

    capsys.readouterr()
    assert metrics_cli.main([str(scores_path)]) == 0
    labels = [label == "target" for *_, label in trials]
    eer = float(re.search(r"EER = ([0-9.]+)", capsys.readouterr().out).group(1))
    assert eer == pytest.approx(100 * compute_eer([float(s) for _, _, s, _ in lines], labels)[0], abs=5e-4)


@pytest.mark.parametrize(
    "args,message",
    [
        (["x/a.wav", "y/a.wav"], r"error: duplicate utterance id 'a': x/a\.wav and y/a\.wav \(use --wav-scp"),
        (["--wav-scp", "missing.scp"], r"error: .*No such file or directory: 'missing\.scp'"),
        (["a.wav", "--model", "nowhere"], r"error: .*nowhere is not an ecapa_jax model directory: no such directory"),
    ],
)
def test_cli_usage_errors_exit_2(small_dir, tmp_path, capsys, args, message):
    assert main(["--model", str(small_dir), *args, "--out", str(tmp_path / "e.npz")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "args,message",
    [
        (["--out", "e.npz"], "give audio FILES or --wav-scp, not both and not neither"),
        (["a.wav", "--wav-scp", "wav.scp", "--out", "e.npz"], "give audio FILES or --wav-scp"),
        (["a.wav", "--out", "e.txt"], r"--out e\.txt: expected a \.npz or \.ark file matching --format \(any\)"),
        (["a.wav", "--out", "e.npz", "--format", "ark"], r"expected a \.npz or \.ark file matching --format \(ark\)"),
        (["a.wav", "--out", "e.npz", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ],
)
def test_cli_argument_errors_exit_2(capsys, args, message):
    assert main(["--model", "m", *args]) == 2
    assert re.search(message, capsys.readouterr().err)


# ----------------------------------------------------------------------------- sliding windows


def wespeaker_subsegments(total: int, size: int, step: int) -> list[tuple[int, int]]:
    """WeSpeaker's ``diar/extract_emb.py::subsegment`` window bounds, written out (in samples here), less the empty
    windows it makes past the end when the shift exceeds the window."""
    if total <= size:
        return [(0, total)]
    return [(begin, min(begin + size, total)) for begin in range(0, total - size + step, step) if begin < total]


def test_sliding_windows_follow_wespeakers_subsegments():
    rng = np.random.default_rng(0)
    for _ in range(500):
        total, size, step = int(rng.integers(1, 300)), int(rng.integers(1, 60)), int(rng.integers(1, 80))
        signal = np.arange(total, dtype=np.float32)
        blocks = np.split(signal, np.sort(rng.integers(0, total + 1, rng.integers(0, 6))))  # any block sizes
        got = list(sliding_windows(blocks, size, step))
        assert [(s, s + len(w)) for s, w in got] == wespeaker_subsegments(total, size, step), (total, size, step)
        assert all(np.array_equal(w, signal[s : s + len(w)]) for s, w in got)
    # A last window shorter than min_samples is left out (it would have no frame).
    assert [(s, len(w)) for s, w in sliding_windows([np.zeros(25, np.float32)], 10, 8, min_samples=5)] == [
        (0, 10), (8, 10), (16, 9),
    ]  # fmt: skip
    assert [s for s, _ in sliding_windows([np.zeros(27, np.float32)], 10, 8, min_samples=5)] == [0, 8, 16]


def test_windows_equal_each_window_embedded_alone(encoder):
    wave = speech_like(5.3, 16000, seed=20)  # windows 0-1.5, 0.75-2.25, ..., 3.75-5.25, then 4.5-5.3 (short)
    times, got = encoder.embed_windows(wave, window=1.5, shift=0.75, batch_size=4)
    np.testing.assert_allclose(times, [(0.75 * k, min(0.75 * k + 1.5, 5.3)) for k in range(7)], rtol=0, atol=1e-9)
    alone = np.stack([encoder.embed(wave[round(a * 16000) : round(b * 16000)]) for a, b in times])
    assert got.shape == (7, SMALL["embed_dim"]) and got.dtype == np.float32
    assert np.max(np.abs(got - alone)) <= BATCH_ATOL, np.max(np.abs(got - alone))


def test_file_windows_are_streamed_and_equal_the_waveforms(encoder, tmp_path):
    path = tmp_path / "stereo8k.wav"
    sf.write(path, speech_like(4.1, 8000, seed=21, channels=2), 8000, subtype="PCM_16")
    times, got = encoder.embed_file_windows(path, window=1.5, shift=0.75, batch_size=4)
    want_times, want = encoder.embed_windows(load_audio(path), window=1.5, shift=0.75, batch_size=4)
    np.testing.assert_array_equal(times, want_times)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # the same samples (soxr streams exactly)
    with pytest.raises(ValueError, match=r"window 0.02 s / shift 0.75 s: a window needs at least one frame \(400"):
        encoder.embed_file_windows(path, window=0.02)
    sf.write(tmp_path / "short.wav", np.zeros(300, np.float32), 16000)
    with pytest.raises(AudioError, match=r"short\.wav: no window: less than one frame of audio \(400 samples\)"):
        encoder.embed_file_windows(tmp_path / "short.wav")


def test_cli_windows_write_ids_with_times_and_segments(small_dir, encoder, audio_files, tmp_path, capsys):
    good, bad = audio_files
    out = tmp_path / "win.npz"
    args = ["--model", str(small_dir), str(good[1]), str(good[3]), str(bad[0]), "--out", str(out)]
    assert main([*args, "--window", "0.5", "--shift", "0.25", "--batch-size", "4"]) == 1
    captured = capsys.readouterr()
    assert "error: corrupt: " in captured.err
    assert re.search(
        r"files failed; [0-9.]+ s of audio in [0-9.]+ s: [0-9.e+-]+ files/s, real-time factor", captured.out
    )
    with np.load(out) as npz:
        got = {key: npz[key] for key in npz.files}
    segments = [line.split() for line in (tmp_path / "win.segments").read_text().splitlines()]
    assert [s[0] for s in segments] == list(got)
    for utt, path in [("utt1", good[1]), ("utt3", good[3])]:
        times, want = encoder.embed_windows(load_audio(path), window=0.5, shift=0.25, batch_size=4)
        keys = [f"{utt}-{round(a * 1000):08d}-{round(b * 1000):08d}" for a, b in times]
        assert [s for s in segments if s[1] == utt] == [
            [k, utt, f"{a:.3f}", f"{b:.3f}"] for k, (a, b) in zip(keys, times, strict=True)
        ]
        np.testing.assert_allclose(np.stack([got[k] for k in keys]), want, rtol=0, atol=1e-6)
    assert main(["--model", str(small_dir), str(good[0]), "--out", str(out), "--shift", "1"]) == 2
    assert "--shift needs --window" in capsys.readouterr().err
