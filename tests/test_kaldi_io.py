"""Kaldi vector ark/scp and wav.scp I/O against hand-built bytes (Kaldi's binary/text formats)."""

import re
import struct

import numpy as np
import pytest

from ecapa_jax.io.kaldi_io import KaldiIOError, read_ark, read_scp, read_wav_scp, write_vectors


def _fv(values):  # Kaldi binary float vector: "\0B" "FV " "\4" int32 dim float32[dim]
    return b"\0BFV \x04" + struct.pack("<i", len(values)) + np.asarray(values, "<f4").tobytes()


def _dv(values):
    return b"\0BDV \x04" + struct.pack("<i", len(values)) + np.asarray(values, "<f8").tobytes()


def test_hand_built_binary_archive_and_scp(tmp_path):
    ark = tmp_path / "x.ark"
    records = [(b"utt1 ", _fv([1.0, 2.5, -3.0])), (b"spk/utt-2 ", _dv([0.1, -1e300])), (b"e ", _fv([]))]
    ark.write_bytes(b"".join(k + v for k, v in records))
    out = read_ark(ark)
    assert list(out) == ["utt1", "spk/utt-2", "e"]
    assert out["utt1"].dtype == np.float32 and out["spk/utt-2"].dtype == np.float64
    np.testing.assert_array_equal(out["utt1"], np.float32([1.0, 2.5, -3.0]))
    np.testing.assert_array_equal(out["spk/utt-2"], [0.1, -1e300])
    assert out["e"].shape == (0,)
    # Offsets point just after "key ": 5, then 5 + 22 (FV, 3 floats) + 10 = 37 (DV header + 2 doubles = 26).
    (tmp_path / "x.scp").write_text(f"spk/utt-2 {ark}:37\nutt1 {ark}:5\n")
    by_scp = read_scp(tmp_path / "x.scp")
    assert list(by_scp) == ["spk/utt-2", "utt1"]
    np.testing.assert_array_equal(by_scp["utt1"], out["utt1"])
    np.testing.assert_array_equal(by_scp["spk/utt-2"], out["spk/utt-2"])


def test_written_binary_bytes_are_kaldis(tmp_path):
    write_vectors(tmp_path / "a.ark", {"a": np.float32([1, 2]), "b": np.float64([3])}, tmp_path / "a.scp")
    assert (tmp_path / "a.ark").read_bytes() == b"a " + _fv([1, 2]) + b"b " + _dv([3])
    assert (tmp_path / "a.scp").read_text() == f"a {tmp_path / 'a.ark'}:2\nb {tmp_path / 'a.ark'}:{2 + 18 + 2}\n"


def test_hand_written_text_archive(tmp_path):
    (tmp_path / "t.ark").write_text("a  [ 1 2.5 -3e-2 ]\nb [ ]\n\nc [4]\n")
    out = read_ark(tmp_path / "t.ark")
    np.testing.assert_array_equal(out["a"], np.float32([1, 2.5, -0.03]))
    assert out["b"].shape == (0,)
    np.testing.assert_array_equal(out["c"], np.float32([4]))


@pytest.mark.parametrize("binary", [True, False])
def test_round_trip_is_exact(tmp_path, binary):
    rng = np.random.default_rng(0)
    vectors = {f"id{i:02d}/u{i}": rng.standard_normal(7).astype(np.float32) for i in range(5)}
    vectors["double"] = rng.standard_normal(3)  # float64
    write_vectors(tmp_path / "v.ark", vectors.items(), tmp_path / "v.scp", binary=binary)
    for out in (read_ark(tmp_path / "v.ark"), read_scp(tmp_path / "v.scp")):
        assert list(out) == list(vectors)
        for key, v in vectors.items():
            assert out[key].dtype == (np.float64 if binary and v.dtype == np.float64 else np.float32)
            np.testing.assert_array_equal(out[key], v if binary else v.astype(np.float32).astype(out[key].dtype))


def test_text_round_trip_of_doubles_keeps_17_digits(tmp_path):
    v = np.array([0.1, 1 / 3, -2.5e-300])
    write_vectors(tmp_path / "d.ark", {"d": v}, binary=False)
    text = (tmp_path / "d.ark").read_text()
    assert [float(t) for t in text.split()[2:-1]] == v.tolist()  # exact in the text
    np.testing.assert_array_equal(read_ark(tmp_path / "d.ark")["d"], v.astype(np.float32))  # text reads as float


def test_wav_scp(tmp_path):
    (tmp_path / "wav.scp").write_text("u1 /data/a.wav\n\nu2 /data/with space.flac\n")
    assert read_wav_scp(tmp_path / "wav.scp") == {"u1": "/data/a.wav", "u2": "/data/with space.flac"}


def _raises(match):
    return pytest.raises(KaldiIOError, match=match)


def test_wav_scp_pipe_is_refused_with_file_and_line(tmp_path):
    path = tmp_path / "wav.scp"
    path.write_text("u1 /a.wav\nu2 sox /b.wav -t wav - |\n")
    with _raises(re.escape(f"{path}:2: piped commands") + ".*not supported"):
        read_wav_scp(path)


def test_table_errors_name_file_and_line(tmp_path):
    path = tmp_path / "x.scp"
    path.write_text("u1 /a.wav\nu1 /b.wav\n")
    with _raises(re.escape(f"{path}:2: duplicate key 'u1'")):
        read_wav_scp(path)
    path.write_text("u1\n")
    with _raises(re.escape(f"{path}:1: expected 'key value'")):
        read_wav_scp(path)
    path.write_text(f"u1 {tmp_path}/a.ark:12[0:3]\n")
    with _raises(re.escape(f"{path}:1: scp ranges")):
        read_scp(path)
    path.write_text(f"u1 {tmp_path}/a.ark\n")
    with _raises(re.escape(f"{path}:1: expected 'key path.ark:offset'")):
        read_scp(path)


def test_unsupported_or_broken_archives(tmp_path):
    ark = tmp_path / "m.ark"
    ark.write_bytes(b"m \0BFM \x04\x01\x00\x00\x00\x04\x01\x00\x00\x00" + b"\0" * 4)
    with _raises(re.escape(f"{ark}: m: object b'FM '") + ".*only FV/DV"):
        read_ark(ark)
    ark.write_bytes(b"t " + _fv([1, 2, 3])[:-5])
    with _raises(re.escape(f"{ark}: t: truncated vector (dim 3, 7 bytes left)")):
        read_ark(ark)
    ark.write_text("t [\n 1 2\n 3 4 ]\n")
    with _raises(re.escape(f"{ark}: t: multi-line text object")):
        read_ark(ark)
    ark.write_bytes(b"a " + _fv([1]) + b"a " + _fv([2]))
    with _raises(re.escape(f"{ark}: duplicate key 'a'")):
        read_ark(ark)
    with _raises(re.escape(f"{tmp_path / 'missing.ark'}: cannot read archive")):
        read_ark(tmp_path / "missing.ark")
    with _raises("key 'a b' is empty or contains whitespace"):
        write_vectors(ark, {"a b": np.zeros(2)})
