"""The torch-free .pt reader and writer, against torch.save and torch.load."""

import collections
import os
import pickle
import re
import struct
import zipfile

import ml_dtypes
import numpy as np
import oracles
import pytest

from ecapa_jax.io.torchzip import load_state_dict, save_state_dict


def _numpy_dtypes(torch) -> dict:
    return {
        torch.float32: np.dtype(np.float32),
        torch.float64: np.dtype(np.float64),
        torch.float16: np.dtype(np.float16),
        torch.bfloat16: np.dtype(ml_dtypes.bfloat16),
        torch.int64: np.dtype(np.int64),
        torch.int32: np.dtype(np.int32),
        torch.int16: np.dtype(np.int16),
        torch.int8: np.dtype(np.int8),
        torch.uint8: np.dtype(np.uint8),
        torch.bool: np.dtype(np.bool_),
    }


def _mixed_state_dict(torch) -> collections.OrderedDict:
    """Every supported dtype, a 0-d int64, an empty tensor, a Parameter and views sharing one storage."""
    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    for dtype in _numpy_dtypes(torch):
        sd[f"{dtype}.matrix"] = (torch.randn(4, 6, generator=g) * 50).to(dtype)
    shared = torch.randn(5, 6, generator=g)
    sd["view.transposed"] = shared.t()  # strides (1, 6)
    sd["view.column"] = shared[1:, 2]  # storage offset 8, stride 6, same storage as above
    sd["bn.num_batches_tracked"] = torch.tensor(7)
    sd["empty"] = torch.zeros(0, 3)
    sd["param"] = torch.nn.Parameter(torch.randn(3, generator=g))  # pickled via _rebuild_parameter
    return sd


def _assert_same(arrays: dict, tensors: dict) -> None:
    """Same keys in the same order, dtypes, shapes and bytes."""
    torch = oracles.torch()
    assert list(arrays) == list(tensors)
    for key, t in tensors.items():
        t = t.detach().contiguous()
        assert arrays[key].dtype == _numpy_dtypes(torch)[t.dtype], key
        assert arrays[key].shape == tuple(t.shape), key
        assert arrays[key].tobytes() == t.reshape(-1).view(torch.uint8).numpy().tobytes(), key


def test_reads_what_torch_saves_with_and_without_torch(tmp_path):
    torch = oracles.torch()
    sd = _mixed_state_dict(torch)
    torch.save(sd, tmp_path / "mixed.pt")
    ours = load_state_dict(tmp_path / "mixed.pt")
    _assert_same(ours, sd)
    _assert_same(load_state_dict(tmp_path / "mixed.pt", use_torch=True), sd)
    assert all(a.flags.writeable and a.flags.c_contiguous for a in ours.values())


def test_wrappers_and_ddp_prefix_are_unwrapped(tmp_path):
    torch = oracles.torch()
    sd = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)).state_dict()  # has _metadata
    variants = {
        "plain": sd,
        "wrapped": {"state_dict": sd, "epoch": 3, "lr": [0.1, 0.01]},
        "ddp": collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()),
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        for use_torch in (False, True):
            _assert_same(load_state_dict(tmp_path / f"{name}.pt", use_torch=use_torch), sd)


def test_written_files_load_in_torch(tmp_path):
    torch = oracles.torch()
    rng = np.random.default_rng(0)
    arrays = {f"{dtype}": (rng.standard_normal((3, 5)) * 50).astype(dtype) for dtype in _numpy_dtypes(torch).values()}
    arrays |= {"bn.num_batches_tracked": np.array(2**40, np.int64), "empty": np.zeros((0, 4), np.float32)}
    arrays |= {"transposed": rng.standard_normal((4, 3), dtype=np.float32).T}  # written contiguous
    save_state_dict(tmp_path / "ours.pt", arrays)
    for mmap in (False, True):  # mmap needs the 64-byte aligned records torch writes
        back = torch.load(tmp_path / "ours.pt", weights_only=True, mmap=mmap)
        assert type(back) is collections.OrderedDict
        _assert_same(arrays, back)
    again = load_state_dict(tmp_path / "ours.pt")
    assert all(again[k].dtype == v.dtype and again[k].tobytes() == v.tobytes() for k, v in arrays.items())


def _rewrite_zip(src, dst, replace) -> None:
    """Copies the zip ``src`` to ``dst`` with ``replace(name, data) -> data`` applied to every member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            zout.writestr(name, replace(name, zin.read(name)))


def test_big_endian_files_are_byteswapped(tmp_path):
    torch = oracles.torch()
    sd = collections.OrderedDict(
        w=torch.randn(3, 4),
        n=torch.tensor(5),
        h=torch.randn(6).to(torch.bfloat16),
        i=torch.arange(4, dtype=torch.int32),
    )
    torch.save(sd, tmp_path / "little.pt")
    itemsize = {str(i): t.element_size() for i, t in enumerate(sd.values())}  # storages data/0, data/1, ...

    def swap(name: str, data: bytes) -> bytes:
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, f"u{itemsize[name.rsplit('/', 1)[1]]}").byteswap().tobytes()
        return data

    _rewrite_zip(tmp_path / "little.pt", tmp_path / "big.pt", swap)
    _assert_same(load_state_dict(tmp_path / "big.pt", use_torch=True), sd)  # torch agrees the file is right
    _assert_same(load_state_dict(tmp_path / "big.pt"), sd)


# ----------------------------------------------------------------------------- bad files


@pytest.fixture()
def saved(tmp_path):
    torch = oracles.torch()
    torch.save(collections.OrderedDict(weight=torch.randn(64, 64), bias=torch.randn(64)), tmp_path / "ok.pt")
    return tmp_path / "ok.pt"


def test_truncated_file(saved):
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"ok\.pt is not a PyTorch zip checkpoint \(truncated or corrupt\)"):
        load_state_dict(saved)


def test_corrupt_member(saved):
    blob = bytearray(saved.read_bytes())
    info = next(i for i in zipfile.ZipFile(saved).infolist() if i.filename.endswith("data/0"))
    name_len, extra_len = struct.unpack("<HH", blob[info.header_offset + 26 : info.header_offset + 30])
    blob[info.header_offset + 30 + name_len + extra_len + 100] ^= 0xFF  # inside the weight's bytes
    saved.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=r"ok\.pt: corrupt checkpoint, cannot read record ok/data/0: Bad CRC"):
        load_state_dict(saved)


def test_legacy_format_is_named(tmp_path):
    torch = oracles.torch()
    sd = collections.OrderedDict(weight=torch.randn(2, 3))
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"old\.pt is in PyTorch's legacy \(pre-1\.6, non-zip\) format"):
        load_state_dict(tmp_path / "old.pt")
    _assert_same(load_state_dict(tmp_path / "old.pt", use_torch=True), sd)  # torch still reads it


class _Exploit:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_code_in_the_pickle_is_refused_not_run(saved, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(collections.OrderedDict(weight=_Exploit(marker)), protocol=2)
    _rewrite_zip(saved, tmp_path / "evil.pt", lambda name, data: payload if name.endswith("data.pkl") else data)
    refused = re.escape(f"refusing to unpickle {tmp_path / 'evil.pt'}: it references {os.system.__module__}.system")
    with pytest.raises(ValueError, match=refused):
        load_state_dict(tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil\.pt: torch\.load failed"):  # torch's weights_only refuses it too
        load_state_dict(tmp_path / "evil.pt", use_torch=True)
    assert not marker.exists()


def test_other_contents_are_refused(tmp_path):
    torch = oracles.torch()
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt holds a list, not a state_dict"):
        load_state_dict(tmp_path / "list.pt")
    torch.save({"weight": torch.zeros(2), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match=r"mixed\.pt: state_dict entries that are not tensors: \['step'\]"):
        load_state_dict(tmp_path / "mixed.pt")
    torch.save({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "complex.pt")
    with pytest.raises(ValueError, match=r"complex\.pt: unsupported tensor type torch\.ComplexFloatStorage"):
        load_state_dict(tmp_path / "complex.pt")
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(ValueError, match=r"plain\.zip is a zip file but not a PyTorch checkpoint"):
        load_state_dict(tmp_path / "plain.zip")
    with pytest.raises(FileNotFoundError, match=r"no such checkpoint file: .*absent\.pt"):
        load_state_dict(tmp_path / "absent.pt")


def test_writer_refuses_unsupported_dtypes(tmp_path):
    with pytest.raises(ValueError, match=r"cannot write .*c\.pt: unsupported dtypes \{'z': 'complex64'\}"):
        save_state_dict(tmp_path / "c.pt", {"z": np.zeros(2, np.complex64)})
    assert list(tmp_path.iterdir()) == []  # no partial file left behind
