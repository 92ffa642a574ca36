"""Kaldi vector archives (``ark``/``scp``) and ``wav.scp`` tables, without Kaldi or kaldiio.

Only what speaker-embedding pipelines exchange: one float vector per utterance, as WeSpeaker's
``xvector.ark``/``xvector.scp`` (written by kaldiio). A record in an archive is ``key`` + a space
+ the object; an ``scp`` line ``key path.ark:offset`` points at the object's first byte.

Binary vector (Kaldi ``Vector<Real>::Write``, little-endian)::

    b"\\0B" + b"FV " + b"\\x04" + int32 dim + float32[dim]      (b"DV " and float64 for doubles)

Text vector: ``key  [ v0 v1 ... ]`` on one line. Matrices (FM/DM/CM), pipes, and ``scp`` ranges
are not supported and raise :class:`KaldiIOError` naming the file.
Reference: https://kaldi-asr.org/doc/io.html (Kaldi I/O mechanisms, table formats).
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from ecapa_jax.io.files import text_lines

_BINARY = b"\0B"
_TOKENS = {b"FV ": np.dtype("<f4"), b"DV ": np.dtype("<f8")}
_SPACE = re.compile(rb"\s*")
_NON_SPACE = re.compile(rb"\S*")


class KaldiIOError(ValueError):
    """A Kaldi table or archive that this reader cannot parse; the message names the file."""


# ----------------------------------------------------------------------------- writing


def write_vectors(
    ark_path: str | os.PathLike,
    vectors: Mapping[str, np.ndarray] | Iterable[tuple[str, np.ndarray]],
    scp_path: str | os.PathLike | None = None,
    binary: bool = True,
) -> None:
    """Writes 1-D vectors to a Kaldi archive, and optionally its ``scp`` index.

    float64 vectors are stored as double (``DV``), all others as float (``FV``). Text archives
    print float32 with 9 and float64 with 17 significant digits, so they round-trip exactly.

    Args:
      ark_path: archive to write.
      vectors: ``{key: (D,) array}`` or ``(key, array)`` pairs, written in the given order.
      scp_path: where to write ``key ark_path:offset`` lines, or None.
      binary: Kaldi binary (default, as kaldiio and WeSpeaker) or text format.
    """
    items = vectors.items() if isinstance(vectors, Mapping) else vectors
    scp_lines = []
    with open(ark_path, "wb") as ark:
        for key, vector in items:
            if not key or any(c.isspace() for c in key):
                raise KaldiIOError(f"{ark_path}: key {key!r} is empty or contains whitespace")
            vector = np.asarray(vector)
            if vector.ndim != 1:
                raise KaldiIOError(f"{ark_path}: {key}: expected a 1-D vector, got shape {vector.shape}")
            dtype = np.dtype("<f8") if vector.dtype == np.float64 else np.dtype("<f4")
            ark.write(key.encode() + b" ")
            scp_lines.append(f"{key} {os.fspath(ark_path)}:{ark.tell()}\n")
            ark.write(_encode_vector(vector.astype(dtype), binary))
    if scp_path is not None:
        with open(scp_path, "w", encoding="utf-8") as scp:
            scp.writelines(scp_lines)


def _encode_vector(vector: np.ndarray, binary: bool) -> bytes:
    if binary:
        token = b"DV " if vector.dtype == np.float64 else b"FV "
        return _BINARY + token + b"\x04" + struct.pack("<i", vector.size) + vector.tobytes()
    digits = 17 if vector.dtype == np.float64 else 9
    return (" [ " + "".join(f"{v:.{digits}g} " for v in vector.tolist()) + "]\n").encode()


# ----------------------------------------------------------------------------- reading


def read_ark(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every vector of a Kaldi archive (binary and text records may be mixed).

    Returns:
      ``{key: (D,) array}`` in file order: float32 for ``FV``/text, float64 for ``DV``.
    """
    buf = _read_bytes(path)
    out: dict[str, np.ndarray] = {}
    pos = _skip_space(buf, 0)
    while pos < len(buf):
        end = _find_space(buf, pos)
        key = buf[pos:end].decode()
        if end >= len(buf):
            raise KaldiIOError(f"{path}: {key}: record ends after its key")
        if key in out:
            raise KaldiIOError(f"{path}: duplicate key {key!r}")
        out[key], pos = _parse_vector(buf, end + 1, f"{path}: {key}")
        pos = _skip_space(buf, pos)
    return out


def read_scp(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the vectors an ``scp`` index points to (``key path.ark:offset`` per line).

    Each archive is read once. Relative archive paths are resolved against the current
    directory, as Kaldi does.

    Returns:
      ``{key: (D,) array}`` in ``scp`` order.
    """
    locations = {}
    for lineno, key, value in _read_table(path):
        ark, sep, offset = value.rpartition(":")
        if value.endswith("]"):
            raise KaldiIOError(f"{path}:{lineno}: scp ranges ('{value}') are not supported")
        if not sep or not offset.isdigit():
            raise KaldiIOError(f"{path}:{lineno}: expected 'key path.ark:offset', got '{key} {value}'")
        locations[key] = (ark, int(offset))
    buffers = {ark: _read_bytes(ark) for ark in dict.fromkeys(ark for ark, _ in locations.values())}
    return {
        key: _parse_vector(buffers[ark], offset, f"{ark}:{offset} ({key} in {path})")[0]
        for key, (ark, offset) in locations.items()
    }


def read_wav_scp(path: str | os.PathLike) -> dict[str, str]:
    """Reads a Kaldi ``wav.scp`` (``utt path`` per line) into ``{utt: path}``.

    Raises:
      KaldiIOError: on piped commands (``cmd |``), a line without a path, or a repeated utterance.
    """
    out = {}
    for lineno, key, value in _read_table(path):
        if value.endswith("|"):
            raise KaldiIOError(f"{path}:{lineno}: piped commands ('{value}') are not supported; give a file path")
        out[key] = value
    return out


def read_utt2spk(path: str | os.PathLike) -> dict[str, str]:
    """Reads a Kaldi ``utt2spk`` (``utt spk`` per line) into ``{utt: spk}``.

    Raises:
      KaldiIOError: naming the file and line, for a line that is not two fields or a repeated utterance.
    """
    out = {}
    for lineno, key, value in _read_table(path):
        if len(value.split()) != 1:
            raise KaldiIOError(f"{path}:{lineno}: expected 'utt spk', got '{key} {value.strip()}'")
        out[key] = value.strip()
    return out


def _read_table(path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    """(line number, key, rest of line) for each non-blank line of a Kaldi table (``scp``)."""
    seen = set()
    for lineno, line in text_lines(path):
        fields = line.strip().split(maxsplit=1)
        if not fields:
            continue
        if len(fields) < 2:
            raise KaldiIOError(f"{path}:{lineno}: expected 'key value', got '{line.strip()}'")
        if fields[0] in seen:
            raise KaldiIOError(f"{path}:{lineno}: duplicate key {fields[0]!r}")
        seen.add(fields[0])
        yield lineno, fields[0], fields[1]


def _read_bytes(path: str | os.PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise KaldiIOError(f"{path}: cannot read archive ({e.strerror})") from e


def _skip_space(buf: bytes, pos: int) -> int:
    return _SPACE.match(buf, pos).end()


def _find_space(buf: bytes, pos: int) -> int:
    return _NON_SPACE.match(buf, pos).end()


def _parse_vector(buf: bytes, pos: int, where: str) -> tuple[np.ndarray, int]:
    """Parses the vector object starting at ``buf[pos]``; returns it and the position after it."""
    if buf[pos : pos + 2] == _BINARY:
        token = buf[pos + 2 : pos + 5]
        if token not in _TOKENS:
            raise KaldiIOError(f"{where}: object {token!r} is not a float vector (only FV/DV are supported)")
        if buf[pos + 5 : pos + 6] != b"\x04" or pos + 10 > len(buf):
            raise KaldiIOError(f"{where}: bad vector header (expected size byte 4 and an int32 dim)")
        (dim,) = struct.unpack("<i", buf[pos + 6 : pos + 10])
        dtype = _TOKENS[token]
        start, end = pos + 10, pos + 10 + dim * dtype.itemsize
        if dim < 0 or end > len(buf):
            raise KaldiIOError(f"{where}: truncated vector (dim {dim}, {len(buf) - start} bytes left)")
        return np.frombuffer(buf, dtype, dim, start).astype(dtype.newbyteorder("=")), end
    pos = _skip_space(buf, pos)
    close = buf.find(b"]", pos)
    if buf[pos : pos + 1] != b"[" or close < 0:
        raise KaldiIOError(f"{where}: expected binary '\\0B' or a text vector '[ ... ]'")
    body = buf[pos + 1 : close]
    if b"\n" in body:
        raise KaldiIOError(f"{where}: multi-line text object (a matrix?); only vectors are supported")
    try:
        vector = np.array([float(v) for v in body.split()], np.float32)
    except ValueError as e:
        raise KaldiIOError(f"{where}: bad number in text vector ({e})") from e
    return vector, close + 1
