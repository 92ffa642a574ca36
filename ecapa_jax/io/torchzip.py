"""PyTorch ``.pt`` checkpoints (the zip format of ``torch.save`` since 1.6) without torch.

A ``.pt`` file is a zip archive ``<prefix>/data.pkl`` + ``<prefix>/data/<key>`` + a few small records
(``byteorder``, ``version``, ``.format_version``, ``.storage_alignment``). ``data.pkl`` is a pickle whose
tensors are calls of ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and whose
storages are *persistent ids* ``('storage', torch.FloatStorage, '<key>', 'cpu', numel)`` naming the raw
little- (or big-) endian bytes in ``data/<key>``.

Reading never executes code from the file: the unpickler resolves only an allow-list of globals, each to
a function of ours that builds a NumPy array; anything else is refused with an error naming the file and
the global. Writing emits the pickle opcodes directly, so torch is not needed there either, and
``torch.load(weights_only=True)`` accepts the result.

Reference: ``torch/serialization.py`` (``_save``, ``_load``) and ``torch/_weights_only_unpickler.py``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

# torch's typed-storage class names and the element types they hold.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_DTYPE_STORAGES = {dtype: name for name, dtype in STORAGE_DTYPES.items()}
_ALIGNMENT = 64  # torch aligns every data record to 64 bytes so that it can be memory-mapped


# ----------------------------------------------------------------------------- reading


class _FileError(ValueError):
    """An error whose message already names the file."""


class _StorageType:
    """Stands for ``torch.<Dtype>Storage`` inside the pickle: only its element type matters."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    """``torch._utils._rebuild_tensor_v2``: the view ``storage[offset + Σ index·stride]`` as a new array."""
    del requires_grad, backward_hooks, metadata  # autograd state means nothing to an array
    size, stride = tuple(size), tuple(stride)
    if 0 in size:
        return np.empty(size, storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if storage_offset < 0 or min(stride, default=0) < 0 or last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor view at {storage_offset} of size {size}, stride {stride} overflows its storage"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=[s * storage.itemsize for s in stride]
    )
    return np.array(view, order="C")  # a writable, contiguous copy


def _rebuild_parameter(data, requires_grad, backward_hooks):
    """``torch._utils._rebuild_parameter``: a Parameter is its data here."""
    del requires_grad, backward_hooks
    return data


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    # torch reads an untyped storage as bytes (torch.serialization._load); tensors on it are uint8.
    ("torch.storage", "UntypedStorage"): _StorageType(np.dtype(np.uint8)),
    **{("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only ``_SAFE_GLOBALS``; storages come from the zip's ``data/<key>`` records."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: Path):
        super().__init__(io.BytesIO(data))
        self._archive, self._prefix, self._byteorder, self._path = archive, prefix, byteorder, path
        self._storages: dict[str, np.ndarray] = {}  # tensors may share a storage

    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[module, name]
        if module == "torch" and name.endswith("Storage"):
            supported = ", ".join(STORAGE_DTYPES)
            raise _FileError(f"{self._path}: unsupported tensor type torch.{name}; supported: {supported}")
        raise _FileError(f"refusing to unpickle {self._path}: it references {module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"persistent id {pid!r} names no storage type")
        if key not in self._storages:
            self._storages[key] = self._read_storage(str(key), storage_type.dtype, int(numel))
        return self._storages[key]

    def _read_storage(self, key: str, dtype: np.dtype, numel: int) -> np.ndarray:
        record = f"{self._prefix}data/{key}"
        buf = _read_record(self._archive, record, self._path)
        if len(buf) < numel * dtype.itemsize:
            raise _FileError(f"{self._path}: record {record} holds {len(buf)} bytes, expected {numel * dtype.itemsize}")
        storage = np.frombuffer(buf, dtype, count=numel)
        return storage.byteswap() if self._byteorder != sys.byteorder else storage


def _read_record(archive: zipfile.ZipFile, name: str, path: Path) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise _FileError(f"{path}: corrupt checkpoint, record {name} is missing") from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:  # bad CRC, truncated member
        raise _FileError(f"{path}: corrupt checkpoint, cannot read record {name}: {e}") from e


def _read_zip(path: Path) -> object:
    """The object pickled in ``path``, with tensors as NumPy arrays (no torch, no foreign code)."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == pickle.PROTO:  # the pre-1.6 format starts with a pickled magic number
            raise ValueError(
                f"{path} is in PyTorch's legacy (pre-1.6, non-zip) format, which is not supported; re-save it with "
                "a recent torch (torch.save(torch.load(f), f)) or pass use_torch=True"
            ) from None
        raise ValueError(f"{path} is not a PyTorch zip checkpoint (truncated or corrupt)") from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint: no <prefix>/data.pkl record")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in archive.namelist():
            byteorder = _read_record(archive, f"{prefix}byteorder", path).decode()
            if byteorder not in ("little", "big"):
                raise ValueError(f"{path}: unknown byteorder {byteorder!r}")
        data = _read_record(archive, pickles[0], path)
        try:
            return _RestrictedUnpickler(data, archive, prefix, byteorder, path).load()
        except _FileError:
            raise
        except Exception as e:  # malformed opcodes or arguments: UnpicklingError, EOFError, TypeError, ...
            raise ValueError(f"{path}: corrupt checkpoint pickle: {e}") from e


def _read_with_torch(path: Path) -> object:
    """``torch.load(weights_only=True)`` (torch's own safe unpickler), tensors converted to NumPy."""
    try:
        import torch
    except ImportError:
        raise ImportError(f"use_torch=True needs torch to read {path}; it is not installed") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, ... with its own message
        raise ValueError(f"{path}: torch.load failed: {e}") from e

    def to_numpy(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().contiguous()
            if x.dtype == torch.bfloat16:  # NumPy has no bfloat16; ml_dtypes does
                return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            return x.numpy()
        if isinstance(x, Mapping):
            return {k: to_numpy(v) for k, v in x.items()}
        return x

    return to_numpy(obj)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _as_state_dict(
    obj: object,
    path: Path,
    key: str | None = None,
    pick: Callable[[Mapping], bool] | None = None,
    describe: Callable[[Mapping], str] | None = None,
) -> dict[str, np.ndarray]:
    """Unwraps ``{'state_dict': sd}``, ``obj[key]`` or the one nested state_dict ``pick`` accepts, and DDP's
    ``module.`` prefix; checks every value is a tensor."""
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            entries = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{path} has no entry {key!r}; its top-level entries: {entries}")
        obj = obj[key]
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and not _is_state_dict(obj):
        nested = {k: v for k, v in obj.items() if _is_state_dict(v) and v}
        chosen = [k for k, v in nested.items() if pick is not None and pick(v)]
        if len(chosen) == 1:
            obj = nested[chosen[0]]
        elif nested:
            found = ", ".join(
                f"{k} ({len(v)} tensors{': ' + describe(v) if describe is not None and describe(v) else ''})"
                for k, v in nested.items()
            )
            raise ValueError(f"{path} holds several state_dicts: {found}; choose one with key= (--key NAME)")
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise ValueError(f"{path}: state_dict entries that are not tensors: {bad}")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        return {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_checkpoint(path: str | os.PathLike, *, use_torch: bool = False) -> object:
    """The object a ``torch.save`` file holds, tensors as NumPy arrays (dicts, lists, numbers as pickled).

    Raises:
      FileNotFoundError: no such file.
      ValueError: see ``load_state_dict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    return _read_with_torch(path) if use_torch else _read_zip(path)


def load_state_dict(
    path: str | os.PathLike,
    *,
    use_torch: bool = False,
    key: str | None = None,
    pick: Callable[[Mapping], bool] | None = None,
    describe: Callable[[Mapping], str] | None = None,
) -> dict[str, np.ndarray]:
    """Reads a PyTorch state_dict checkpoint into NumPy arrays.

    Accepts a plain state_dict, a ``{'state_dict': ...}`` wrapper and keys prefixed with ``module.``
    (stripped). Tensor views are materialised; dtypes keep their width (bfloat16 via ml_dtypes).

    Args:
      path: a ``.pt`` file written by ``torch.save`` (zip format, torch ≥ 1.6).
      use_torch: read with ``torch.load(weights_only=True, map_location='cpu')`` instead of the torch-free
        reader (needs torch; also reads the legacy format). Both give identical arrays.
      key: the top-level entry that holds the state_dict (e.g. ``'ecapa_state_dict'``).
      pick: for a file holding several state_dicts and no ``key``: the one this predicate accepts, when
        exactly one is.
      describe: names what each state_dict is in the error listing them.

    Returns:
      ``{key: array}`` in the file's order.

    Raises:
      FileNotFoundError: no such file.
      ValueError: truncated/corrupt/legacy files, a pickle referencing anything but tensors (named in
        the message), an object that is not a state_dict, or several state_dicts to choose from (listed).
    """
    path = Path(path)
    return _as_state_dict(load_checkpoint(path, use_torch=use_torch), path, key, pick, describe)


# ----------------------------------------------------------------------------- writing


class _PickleWriter:
    """Protocol-2 pickle opcodes for the few objects a state_dict needs."""

    def __init__(self):
        self.out = bytearray(pickle.PROTO + b"\x02")

    def global_(self, module: str, name: str) -> None:
        self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode()

    def str_(self, s: str) -> None:
        b = s.encode()
        self.out += pickle.BINUNICODE + struct.pack("<I", len(b)) + b

    def int_(self, i: int) -> None:
        if -(2**31) <= i < 2**31:
            self.out += pickle.BININT + struct.pack("<i", i)
        else:
            b = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
            self.out += pickle.LONG1 + bytes([len(b)]) + b

    def ints(self, values: tuple[int, ...]) -> None:
        self.out += pickle.MARK
        for v in values:
            self.int_(v)
        self.out += pickle.TUPLE

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += pickle.EMPTY_TUPLE + pickle.REDUCE

    def tensor(self, key: str, x: np.ndarray) -> None:
        """``_rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, OrderedDict())``."""
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.out += pickle.MARK + pickle.MARK
        self.str_("storage")
        self.global_("torch", _DTYPE_STORAGES[x.dtype])
        self.str_(key)
        self.str_("cpu")
        self.int_(x.size)
        self.out += pickle.TUPLE + pickle.BINPERSID
        self.int_(0)
        self.ints(x.shape)
        self.ints(tuple(int(np.prod(x.shape[i + 1 :])) for i in range(x.ndim)))
        self.out += pickle.NEWFALSE
        self.empty_ordered_dict()
        self.out += pickle.TUPLE + pickle.REDUCE


def _state_dict_pickle(tensors: Mapping[str, np.ndarray]) -> bytes:
    """``OrderedDict((key, tensor) ...)`` whose i-th tensor's storage is ``data/<i>``."""
    w = _PickleWriter()
    w.empty_ordered_dict()
    w.out += pickle.MARK
    for i, (key, x) in enumerate(tensors.items()):
        w.str_(key)
        w.tensor(str(i), x)
    w.out += pickle.SETITEMS + pickle.STOP
    return bytes(w.out)


def _write_aligned(archive: zipfile.ZipFile, fileobj, name: str, data: bytes) -> None:
    """A stored member whose data starts on a 64-byte boundary (padding in a local-header extra field)."""
    info = zipfile.ZipInfo(name)
    header = 30 + len(name.encode())  # fixed local header + file name
    pad = -(fileobj.tell() + header + 4) % _ALIGNMENT
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad  # the 'FB' padding field torch writes
    archive.writestr(info, data, compress_type=zipfile.ZIP_STORED)


def save_state_dict(path: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
    """Writes ``tensors`` as a PyTorch zip checkpoint, without torch.

    ``torch.load(path, weights_only=True)`` returns an ``OrderedDict`` of contiguous CPU tensors with the
    same keys (in order), shapes, dtypes and values. The file is written to a temporary sibling and
    renamed into place, so ``path`` is never left half-written.

    Args:
      path: destination ``.pt`` file (replaced if it exists).
      tensors: ``{key: array}``; dtypes from ``STORAGE_DTYPES`` (float32/64/16, bfloat16, int64/32/16/8,
        uint8, bool); 0-d arrays are 0-d tensors.

    Raises:
      ValueError: a value of another dtype.
    """
    path = Path(path)
    arrays = {k: np.asarray(v, order="C") for k, v in tensors.items()}  # keeps 0-d arrays 0-d
    unsupported = {k: str(v.dtype) for k, v in arrays.items() if v.dtype not in _DTYPE_STORAGES}
    if unsupported:
        raise ValueError(f"cannot write {path}: unsupported dtypes {unsupported}")
    prefix = "archive/"
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"  # same file system: atomic rename
    try:
        with open(tmp, "xb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            _write_aligned(archive, f, f"{prefix}data.pkl", _state_dict_pickle(arrays))
            _write_aligned(archive, f, f"{prefix}.format_version", b"1")
            _write_aligned(archive, f, f"{prefix}.storage_alignment", str(_ALIGNMENT).encode())
            _write_aligned(archive, f, f"{prefix}byteorder", sys.byteorder.encode())
            for i, x in enumerate(arrays.values()):
                _write_aligned(archive, f, f"{prefix}data/{i}", x.tobytes())
            _write_aligned(archive, f, f"{prefix}version", b"3\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["STORAGE_DTYPES", "load_checkpoint", "load_state_dict", "save_state_dict"]
