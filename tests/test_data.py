"""The host data pipeline: list formats, chunking, speed perturbation, determinism, resume, bad audio."""

import gzip
import io
import json
import os
import tarfile

import numpy as np
import oracles
import pytest
import soundfile as sf

from ecapa_jax.io.kaldi_io import KaldiIOError, read_utt2spk
from train import augment
from train.data import (
    DataConfig,
    DataError,
    DataSource,
    Loader,
    SamplePipeline,
    Utterance,
    chunk_samples,
    make_source,
    measure_throughput,
    read_kaldi_dir,
    read_raw_list,
    read_shard_list,
    speaker_ids,
)
from train.demo_corpus import DemoCorpus, write_dataset

SR = 16000
NUM_SPK = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 demo utterances (4 speakers, 2–6 s) written as a Kaldi dir and a raw list."""
    corpus = DemoCorpus(num_speakers=NUM_SPK, utts_per_speaker=3, seed=0, num_held_out=0)
    return write_dataset(corpus, str(tmp_path_factory.mktemp("data") / "train"))


def _config(dataset, **overrides):
    base = dict(
        data_type="kaldi", train_data=dataset["dir"], global_batch_size=4, num_workers=0, aug_prob=0.0,
        speed_perturb=False,
    )  # fmt: skip
    return DataConfig(**{**base, **overrides})


def _batches(config, n, **loader_kw):
    it = iter(Loader(make_source(config), config, **loader_kw))
    return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _write_wav(path, x):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, x, SR, subtype="PCM_16")
    return str(path)


def _read16(path):
    return sf.read(path, dtype="float32")[0]  # int16 / 32768 exactly, as load_audio


# ----------------------------------------------------------------------------- chunk sizes


def test_chunk_samples_give_exact_frame_counts():
    assert chunk_samples(200) == 32240 and chunk_samples(600) == 96240  # WeSpeaker's chunk_len
    assert chunk_samples(200, sample_rate=8000) == 16120
    torch = oracles.torch()
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    for frames in (200, 600):
        wav = torch.randn(1, chunk_samples(frames)) * 1000
        feats = kaldi.fbank(wav, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0, window_type="hamming")
        assert feats.shape == (frames, 80)


@pytest.mark.parametrize("num_frms", [200, 600])
def test_batches_have_the_chunk_shape(dataset, num_frms):
    (batch,) = _batches(_config(dataset, num_frms=num_frms), 1)
    assert batch["wav"].shape == (4, chunk_samples(num_frms)) and batch["wav"].dtype == np.float32
    assert {k: v.dtype for k, v in batch.items() if k != "wav"} == dict.fromkeys(
        ["label", "speed", "aug", "index"], np.int32
    )
    assert np.max(np.abs(batch["wav"])) <= 1.0


# ----------------------------------------------------------------------------- data lists


def _write_shards(dataset, directory, groups):
    """Tar shards of the dataset's wavs: utterances ``groups[i]`` in shard i; odd ones as FLAC."""
    utts = read_raw_list(dataset["raw.list"])
    paths = []
    for i, group in enumerate(groups):
        path = os.path.join(directory, f"shard_{i}.tar")
        with tarfile.open(path, "w") as tar:
            for j in group:
                u = utts[j]
                audio = io.BytesIO()
                sf.write(audio, _read16(u.wav), SR, format="FLAC" if j % 2 else "WAV", subtype="PCM_16")
                for name, data in (
                    (f"{u.key}.spk", u.spk.encode()),
                    (f"{u.key}.{'flac' if j % 2 else 'wav'}", audio.getvalue()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    listing = os.path.join(directory, "shard.list")
    with open(listing, "w") as f:
        f.writelines(p + "\n" for p in paths)
    return listing


def test_raw_shard_and_kaldi_lists_agree(dataset, tmp_path):
    raw = read_raw_list(dataset["raw.list"])
    kaldi = read_kaldi_dir(dataset["dir"])
    shards = read_shard_list(_write_shards(dataset, str(tmp_path), [range(0, 7), range(7, 12)]))
    assert [(u.key, u.spk) for u in raw] == [(u.key, u.spk) for u in kaldi] == [(u.key, u.spk) for u in shards]
    assert len(raw) == 12 and all(u.offset > 0 for u in shards)
    spk2id = speaker_ids([u.spk for u in raw])
    assert spk2id == {f"spk{i:04d}": i for i in range(NUM_SPK)}
    sources = [DataSource(utts, spk2id) for utts in (raw, kaldi, shards)]
    for i in (0, 5, 11):  # 5 and 11 are FLAC members
        expected = _read16(raw[i].wav)
        for source in sources:
            np.testing.assert_array_equal(source.load(i), expected)
    np.testing.assert_array_equal(sources[2].labels, [int(u.spk[3:]) for u in raw])


def test_raw_list_vad_segments_are_cut_and_joined(dataset, tmp_path):
    first = read_raw_list(dataset["raw.list"])[0]
    path = tmp_path / "vad.list"
    path.write_text(json.dumps({"key": "k", "wav": first.wav, "spk": "s", "vad": [[0.5, 1.0], [1.5, 1.75]]}) + "\n")
    (u,) = read_raw_list(str(path))
    assert u.vad == ((0.5, 1.0), (1.5, 1.75))
    x = _read16(first.wav)
    np.testing.assert_array_equal(DataSource([u], {"s": 0}).load(0), np.r_[x[8000:16000], x[24000:28000]])


def test_speaker_ids_are_the_sorted_set_and_train_label_defines_them(dataset, tmp_path):
    assert speaker_ids(["b", "a", "b", "c"]) == {"a": 0, "b": 1, "c": 2}
    label = tmp_path / "utt2spk"
    label.write_text("x aaa\n" + open(dataset["utt2spk"]).read())  # one more speaker, sorted first
    source = make_source(_config(dataset, train_label=str(label)))
    assert source.num_speakers == NUM_SPK + 1 and source.spk2id["aaa"] == 0
    np.testing.assert_array_equal(source.labels, np.repeat(np.arange(1, NUM_SPK + 1), 3))
    assert read_utt2spk(str(label))["x"] == "aaa"


GOOD = '{"key": "u1", "wav": "/a.wav", "spk": "s"}\n'


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (GOOD + "not json\n", r"raw\.list:2: not a JSON object"),
        ('["u1"]\n', r"raw\.list:1: expected a JSON object"),
        ('{"key": "u1", "wav": "/a.wav"}\n', r"raw\.list:1: missing or empty string field 'spk'"),
        ('\n{"key": "u1", "wav": 3, "spk": "s"}\n', r"raw\.list:2: missing or empty string field 'wav'"),
        ('{"key": "u1", "wav": "sox a.flac -t wav - |", "spk": "s"}\n', r"raw\.list:1: piped commands"),
        ('{"key": "u1", "wav": "https://x/a.wav", "spk": "s"}\n', r"raw\.list:1: remote paths"),
        ('{"key": "u1", "wav": "/a.wav", "spk": "s", "vad": [1, 2]}\n', r"raw\.list:1: 'vad' must be a list"),
        ('{"key": "u1", "wav": "/a.wav", "spk": "s", "vad": [[2, 1]]}\n', r"raw\.list:1: 'vad' segments need"),
        (GOOD + GOOD, r"raw\.list:2: duplicate key 'u1'"),
    ],
)
def test_malformed_raw_list_lines(tmp_path, text, match):
    path = tmp_path / "raw.list"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        read_raw_list(str(path))


def test_malformed_kaldi_dirs(tmp_path):
    d = tmp_path / "kaldi"
    d.mkdir()
    (d / "wav.scp").write_text("u1 /a.wav\nu2 /b.wav\n")
    with pytest.raises(DataError, match=r"not a Kaldi data directory, utt2spk is missing"):
        read_kaldi_dir(str(d))
    (d / "utt2spk").write_text("u1 s1\nu2 s2 extra\n")
    with pytest.raises(KaldiIOError, match=r"utt2spk:2: expected 'utt spk'"):
        read_kaldi_dir(str(d))
    (d / "utt2spk").write_text("u1 s1\n")
    with pytest.raises(DataError, match=r"wav\.scp: utterance 'u2' has no speaker in .*utt2spk"):
        read_kaldi_dir(str(d))
    (d / "wav.scp").write_text("u1 sox /a.flac -t wav - |\n")
    with pytest.raises(KaldiIOError, match=r"wav\.scp:1: piped commands"):
        read_kaldi_dir(str(d))


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_malformed_shards(tmp_path):
    listing = tmp_path / "shard.list"
    good = _tar(tmp_path / "good.tar", {"u1.spk": b"s1", "u1.wav": b"RIFF"})
    listing.write_text(f"{good}\n{tmp_path / 'missing.tar'}\n")
    with pytest.raises(DataError, match=r"shard\.list:2: no such shard"):
        read_shard_list(str(listing))
    listing.write_text(f"{good}\n\n{good}\n")
    with pytest.raises(DataError, match=r"shard\.list:3: key 'u1' of .*good\.tar already appeared"):
        read_shard_list(str(listing))
    no_spk = _tar(tmp_path / "no_spk.tar", {"u1.wav": b"RIFF", "u2.spk": b"s", "u2.flac": b"fLaC"})
    with pytest.raises(DataError, match=r"no_spk\.tar: utterance 'u1' needs one '\.spk' and one audio member"):
        read_shard_list(_write_list(tmp_path, no_spk))
    no_ext = _tar(tmp_path / "no_ext.tar", {"u1": b"s"})
    with pytest.raises(DataError, match=r"no_ext\.tar: member 'u1' has no '<key>\.<ext>' name"):
        read_shard_list(_write_list(tmp_path, no_ext))
    gz = tmp_path / "x.tar.gz"
    gz.write_bytes(gzip.compress(open(good, "rb").read()))
    with pytest.raises(DataError, match=r"x\.tar\.gz: not a readable uncompressed tar shard"):
        read_shard_list(_write_list(tmp_path, str(gz)))


def _write_list(tmp_path, *lines):
    path = tmp_path / "one.list"
    path.write_text("".join(f"{line}\n" for line in lines))
    return str(path)


def test_config_and_loader_errors(dataset, tmp_path):
    with pytest.raises(ValueError, match=r"data_type must be one of .* got 'lmdb'"):
        DataConfig(data_type="lmdb")
    with pytest.raises(ValueError, match=r"data_type 'raw' needs train_data"):
        DataConfig(data_type="raw")
    with pytest.raises(ValueError, match=r"worker_type must be one of"):
        DataConfig(worker_type="fiber")
    config = _config(dataset)
    source = make_source(config)
    with pytest.raises(ValueError, match=r"global_batch_size 4 is not divisible by process_count 3"):
        Loader(source, config, process_count=3)
    with pytest.raises(DataError, match=r"12 utterances are fewer than one global batch \(16\)"):
        Loader(source, _config(dataset, global_batch_size=16))
    with pytest.raises(ValueError, match=r"loader state must be .* got \{'epoch': 0, 'step': 3\}"):
        Loader(source, config).restore({"epoch": 0, "step": 3})
    label = tmp_path / "utt2spk"
    label.write_text("x spk0000\n")
    with pytest.raises(DataError, match=r"utt2spk: speaker 'spk0001' of utterance 'spk0001-000' is not among"):
        make_source(_config(dataset, train_label=str(label)))


# ----------------------------------------------------------------------------- one sample


def test_short_audio_is_tiled_replaced_or_kept(dataset, tmp_path):
    x = (np.random.default_rng(0).uniform(-0.5, 0.5, 8000)).astype(np.float32)  # 0.5 s = 50 frames
    short = Utterance("short", "spk0000", _write_wav(tmp_path / "short.wav", x))
    utts = [short] + read_kaldi_dir(dataset["dir"])
    source = DataSource(utts, speaker_ids([u.spk for u in utts]))
    # No filter: tiled ⌊32240/8000⌋ + 1 = 5 times from the start and cut.
    sample = SamplePipeline(source, _config(dataset, filter=False))(0, 0, 0)
    np.testing.assert_array_equal(sample.wav, np.tile(_read16(short.wav), 5)[:32240])
    assert sample.index == 0 and sample.filtered == 0
    # Filter on (min 100 frames): replaced by a random other utterance, and counted.
    for position in range(5):
        sample = SamplePipeline(source, _config(dataset))(0, position, 0)
        assert sample.index != 0 and sample.filtered >= 1


def test_long_audio_is_cropped_before_chunking(dataset):
    # max_num_frames 150 → 24,000 samples kept, then tiled up to the 32,240-sample chunk.
    config = _config(dataset, max_num_frames=150)
    source = make_source(config)
    sample = SamplePipeline(source, config)(0, 0, 2)
    x = _read16(source.utterances[2].wav)
    assert len(x) > 24000
    windows = np.lib.stride_tricks.sliding_window_view(x, 64)
    (start,) = np.flatnonzero(np.all(windows == sample.wav[:64], axis=1))
    np.testing.assert_array_equal(sample.wav[:24000], x[start : start + 24000])
    np.testing.assert_array_equal(sample.wav[24000:], sample.wav[: 32240 - 24000])


def test_speed_perturbation_makes_new_classes(dataset):
    config = _config(dataset, speed_perturb=True, global_batch_size=12)
    loader = Loader(make_source(config), config)
    assert loader.num_classes == 3 * NUM_SPK
    it = iter(loader)
    batches = [next(it) for _ in range(4)]
    speed = np.concatenate([b["speed"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    np.testing.assert_array_equal(labels, index // 3 + NUM_SPK * speed)  # 3 utterances per speaker
    counts = np.bincount(speed, minlength=3)
    assert counts.min() >= 8, counts  # uniform over {1.0, 0.9, 1.1}: 16 each expected of 48


# ----------------------------------------------------------------------------- the loader


def test_epochs_are_deterministic_permutations(dataset):
    config = _config(dataset)
    epochs = _batches(config, 6)  # epoch_iter = 12 // 4 = 3
    order = [np.concatenate([b["index"] for b in epochs[e * 3 : e * 3 + 3]]) for e in range(2)]
    assert sorted(order[0]) == list(range(12)) and sorted(order[1]) == list(range(12))
    assert list(order[0]) != list(order[1])
    _assert_same_batches(epochs, _batches(config, 6))
    assert list(np.concatenate([b["index"] for b in _batches(_config(dataset, seed=7), 3)])) != list(order[0])
    unshuffled = _batches(_config(dataset, shuffle=False), 3)
    assert list(np.concatenate([b["index"] for b in unshuffled])) == list(range(12))


def _augment_dirs(tmp_path):
    rng = np.random.default_rng(5)
    noise = _write_wav(tmp_path / "musan/noise/a/n.wav", 0.1 * rng.standard_normal(SR))
    rir = np.exp(-np.arange(800) / 100.0) * rng.standard_normal(800)
    _write_wav(tmp_path / "rirs/r.wav", 0.5 * rir / np.max(np.abs(rir)))
    return os.path.dirname(os.path.dirname(os.path.dirname(noise))), str(tmp_path / "rirs")


def test_resume_and_workers_give_the_same_batches(dataset, tmp_path):
    noise, rirs = _augment_dirs(tmp_path)
    config = _config(dataset, speed_perturb=True, aug_prob=0.6, noise_data=noise, reverb_data=rirs)
    straight = _batches(config, 4)  # crosses the epoch boundary after 3
    assert set(np.concatenate([b["aug"] for b in straight])) == {
        augment.AUG_NONE,
        augment.AUG_REVERB,
        augment.AUG_NOISE,
    }
    source = make_source(config)
    first = Loader(source, config)
    it = iter(first)
    half = [next(it), next(it)]
    state = first.state()
    assert state == {"epoch": 0, "step": 2}
    resumed = Loader(source, config)
    resumed.restore(state)
    it = iter(resumed)
    _assert_same_batches(straight, half + [next(it), next(it)])
    assert resumed.state() == {"epoch": 1, "step": 1}
    # Scheduling does not matter: threads and (spawned) processes give the same batches.
    _assert_same_batches(straight, _batches(_config(dataset, **{**_kw(config), "num_workers": 3}), 4))
    process = _config(dataset, **{**_kw(config), "num_workers": 1, "worker_type": "process", "prefetch_batches": 2})
    _assert_same_batches(straight[:2], _batches(process, 2))


def _kw(config):
    return {f: getattr(config, f) for f in ("speed_perturb", "aug_prob", "noise_data", "reverb_data")}


def test_processes_get_disjoint_slices_of_the_global_batch(dataset):
    config = _config(dataset, speed_perturb=True)
    whole = _batches(config, 3)
    parts = [_batches(config, 3, process_index=i, process_count=2) for i in range(2)]
    for step in range(3):
        for k in whole[step]:
            np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), whole[step][k])


def test_without_drop_last_the_last_batch_wraps_around(dataset):
    config = _config(dataset, global_batch_size=5, drop_last=False)
    batches = _batches(config, 4)  # ⌈12 / 5⌉ = 3 steps per epoch
    order = np.concatenate([b["index"] for b in batches[:3]])
    np.testing.assert_array_equal(order[12:], order[:3])
    assert sorted(order[:12]) == list(range(12))


def test_bad_audio_is_skipped_counted_and_bounded(dataset, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "garbage.wav").write_bytes(b"RIFF not really a wav file")
    scp = open(dataset["wav.scp"]).read() + f"bad1 {d / 'missing.wav'}\nbad2 {d / 'garbage.wav'}\n"
    (d / "wav.scp").write_text(scp)
    (d / "utt2spk").write_text(open(dataset["utt2spk"]).read() + "bad1 spk0000\nbad2 spk0001\n")
    config = DataConfig(
        data_type="kaldi", train_data=str(d), global_batch_size=7, num_workers=0, aug_prob=0.0, max_bad_fraction=0.5
    )
    loader = Loader(make_source(config), config)
    it = iter(loader)
    batches = [next(it) for _ in range(2)]  # one epoch: every utterance is drawn once
    assert all(b["wav"].shape == (7, 32240) for b in batches)
    assert not {12, 13} & set(np.concatenate([b["index"] for b in batches]))
    assert loader.counts["bad"] >= 2 and set(loader.bad_keys) == {"bad1", "bad2"}
    assert "missing.wav: no such audio file" in loader.bad_keys["bad1"]
    assert loader.counts["reads"] == 14 + loader.counts["bad"] + loader.counts["filtered"]
    _assert_same_batches(batches, _batches(config, 2))  # the replacements are deterministic
    strict = DataConfig(**{**_kw_all(config), "max_bad_fraction": 0.05})
    with pytest.raises(DataError, match=r"audio reads failed \(.*% > max_bad_fraction 5\.0%\); e\.g\. bad"):
        _batches(strict, 2)


def _kw_all(config):
    return {f: getattr(config, f) for f in config.__dataclass_fields__}


def test_demo_source_and_throughput():
    config = DataConfig(
        demo_speakers=3, demo_utts_per_speaker=2, demo_held_out=0, global_batch_size=2, num_workers=2,
        aug_prob=0.0,
    )  # fmt: skip
    loader = Loader(make_source(config), config)
    assert loader.source.num_speakers == 3 and loader.num_classes == 9 and loader.epoch_iter == 3
    rate = measure_throughput(loader, num_batches=1, warmup=1)
    assert np.isfinite(rate) and rate > 0
