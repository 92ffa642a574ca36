"""Audio tables: where every recording's samples lie, so that a window is read without decoding the file.

The host reads windows only (a 2.2 s crop of an utterance, a chunk of a minutes-long noise file, a
RIR). An `AudioTable` holds, per recording, a file, the byte offset of its first sample and its
length, all int16 PCM at the pipeline's sample rate:

- a plain PCM WAV (16-bit, mono, at the sample rate) — a file of a Kaldi dir or raw list, or a WAV
  member of an uncompressed tar shard — is read in place: one ``os.preadv`` of the window's bytes,
  straight into the batch array (its header is parsed once, when the table is built);
- anything else (FLAC/OGG/MP3/... members or files, another sample rate, several channels, float or
  24-bit samples, VAD segments of a raw list) is decoded once with `ecapa_jax.frontend.audio.load_audio`
  (channels averaged, resampled) and packed into one int16 file in the cache directory
  (``data.cache_dir``), memory-mapped from then on. The pack's name is a hash of the recordings'
  paths, sizes, modification times, tar offsets, VAD segments and the sample rate: a changed file is
  packed again, an unchanged data set never. Packing rounds to int16 (an error ≤ 2⁻¹⁶, below the
  16-bit audio VoxCeleb and MUSAN come as); plain 16-bit WAV data is read bit-exactly.

A recording that cannot be indexed or decoded (missing, not audio, empty, NaN samples) is kept out
of the table's usable entries and reported with its reason in `AudioTable.bad`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import struct
from collections.abc import Sequence

import numpy as np

from ecapa_jax.frontend.audio import AudioError, load_audio
from train.augment import PCM_SCALE

PACK_VERSION = 1  # bump when the pack layout changes
_PCM, _EXTENSIBLE = 1, 0xFFFE
_PCM16 = np.dtype("<i2")


@dataclasses.dataclass(frozen=True)
class AudioRef:
    """Where a recording is: a file, or a member of a tar (byte ``offset`` and ``size``); ``vad`` segments to keep."""

    name: str  # for messages: the path, or ``tar:key``
    path: str
    offset: int = 0
    size: int = -1  # -1: to the end of the file
    vad: tuple[tuple[float, float], ...] = ()


def pcm16_layout(path: str, offset: int = 0, size: int = -1) -> tuple[int, int, int, int] | None:
    """(byte offset of the samples, frames, channels, sample rate) of a 16-bit PCM WAV, or None for anything else.

    Walks the RIFF chunks (``fmt `` then ``data``; others skipped), within [offset, offset + size) of the
    file. The frame count is what the file really holds (a truncated or streamed WAV's header overstates it).
    """
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size if size < 0 else offset + size
        f.seek(offset)
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos, fmt = offset + 12, None
        while pos + 8 <= end:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"fmt " and length >= 16:
                tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", f.read(16))
                if tag == _EXTENSIBLE and length >= 26:  # cbSize, valid bits, channel mask, then the sub-format GUID
                    f.read(8)
                    (tag,) = struct.unpack("<H", f.read(2))
                fmt = (tag, channels, rate, bits)
            elif chunk == b"data":
                if fmt is None or fmt[0] != _PCM or fmt[3] != 16:
                    return None
                frames = min(length, end - pos - 8) // (2 * fmt[1])
                return pos + 8, frames, fmt[1], fmt[2]
            pos += 8 + length + (length & 1)
    return None


@dataclasses.dataclass
class AudioTable:
    """int16 PCM recordings at one sample rate, read by window.

    Attributes:
      names: per entry, for messages.
      lengths: (N,) samples per entry (0 for a bad one).
      bad: entry → why it cannot be used.
      files: the files the entries lie in (recordings and packs).
      file: per entry, index into ``files``.
      offset: per entry, byte offset of its first sample.
    """

    names: list[str]
    lengths: np.ndarray
    bad: dict[int, str]
    files: list[str]
    file: list[int]
    offset: list[int]
    dtype = _PCM16

    def __post_init__(self):
        self._lengths = self.lengths.tolist()  # Python ints: the read path is per sample, in Python
        self._maps = {i: np.memmap(f, _PCM16, mode="r") for i, f in enumerate(self.files) if f.endswith(".pack")}

    def __len__(self) -> int:
        return len(self.names)

    def read(self, i: int, start: int, out: np.ndarray) -> None:
        """Fills ``out`` (int16, contiguous) with the samples [start, start + len(out)) of entry ``i``.

        Raises:
          OSError: the file cannot be read, or holds fewer samples than its header said (naming it).
        """
        n = len(out)
        if start < 0 or start + n > self._lengths[i]:
            raise ValueError(
                f"{self.names[i]}: window [{start}, {start + n}) is outside its {self._lengths[i]} samples"
            )
        f = self.file[i]
        pack = self._maps.get(f)
        if pack is not None:
            first = self.offset[i] // 2 + start
            out[:] = pack[first : first + n]
            return
        fd = os.open(self.files[f], os.O_RDONLY)
        try:
            got = os.preadv(fd, [out], self.offset[i] + 2 * start)
        finally:
            os.close(fd)
        if got != 2 * n:
            raise OSError(f"{self.names[i]}: truncated, {got // 2} of {n} samples read at sample {start}")


def build_table(refs: Sequence[AudioRef], sample_rate: int, cache_dir: str, num_threads: int = 8) -> AudioTable:
    """Indexes recordings: plain 16-bit mono WAVs at ``sample_rate`` in place, the rest packed (see the module doc).

    Args:
      refs: the recordings.
      sample_rate: Hz of the table.
      cache_dir: where packs are written (created when one is needed); two processes packing the same
        recordings take turns (a lock file), the second finds the first's pack.
      num_threads: threads reading headers and decoding.

    Returns:
      the table, with unusable recordings in ``bad``.
    """
    n = len(refs)
    lengths = np.zeros(n, np.int64)
    file_of, offset, bad = [0] * n, [0] * n, {}
    files, file_index = [], {}

    def layout(ref: AudioRef):
        if ref.vad:
            return None
        try:
            return pcm16_layout(ref.path, ref.offset, ref.size)
        except (OSError, struct.error):
            return None

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        layouts = list(pool.map(layout, refs, chunksize=256))
    to_pack = []
    for i, (ref, lay) in enumerate(zip(refs, layouts, strict=True)):
        if lay is not None and lay[2] == 1 and lay[3] == sample_rate and lay[1] > 0:
            if ref.path not in file_index:
                file_index[ref.path] = len(files)
                files.append(ref.path)
            file_of[i], offset[i], lengths[i] = file_index[ref.path], lay[0], lay[1]
        else:
            to_pack.append(i)
    if to_pack:
        pack, entries = _pack([refs[i] for i in to_pack], sample_rate, cache_dir, num_threads)
        files.append(pack)
        for i, (start, length, reason) in zip(to_pack, entries, strict=True):
            if reason:
                bad[i] = reason
            file_of[i], offset[i], lengths[i] = len(files) - 1, 2 * start, length
    return AudioTable([r.name for r in refs], lengths, bad, files, file_of, offset)


def _fingerprint(refs: Sequence[AudioRef], sample_rate: int) -> str:
    h = hashlib.sha256(f"{PACK_VERSION} {sample_rate}".encode())
    for r in refs:
        try:
            st = os.stat(r.path)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = (-1, -1)
        h.update(json.dumps([r.name, os.path.abspath(r.path), r.offset, r.size, r.vad, stamp]).encode())
    return h.hexdigest()[:24]


def _decode(ref: AudioRef, sample_rate: int) -> np.ndarray:
    """The recording as int16 at ``sample_rate`` (VAD segments cut and joined); AudioError/OSError if unusable."""
    if ref.size >= 0:
        with open(ref.path, "rb") as f:  # the member's bytes only: a shard holds ~1000 utterances
            f.seek(ref.offset)
            x = load_audio(io.BytesIO(f.read(ref.size)), sample_rate, min_samples=1, name=ref.name)
    else:
        x = load_audio(ref.path, sample_rate, min_samples=1, name=ref.name)
    if ref.vad:
        x = np.concatenate([x[int(s * sample_rate) : int(e * sample_rate)] for s, e in ref.vad])
        if not len(x):
            raise AudioError(f"{ref.name}: its 'vad' segments select no samples")
    return np.clip(np.round(x * PCM_SCALE), -32768, 32767).astype(_PCM16)


def _pack(
    refs: Sequence[AudioRef], sample_rate: int, cache_dir: str, num_threads: int
) -> tuple[str, list[tuple[int, int, str]]]:
    """Decodes ``refs`` into one int16 pack (or finds it in the cache). Returns its path and, per ref,
    (first sample, length, reason it is unusable or '')."""
    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.join(cache_dir, f"audio-{_fingerprint(refs, sample_rate)}")
    with open(stem + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process packing the same data: wait for its pack
        if os.path.isfile(stem + ".json") and os.path.isfile(stem + ".pack"):
            with open(stem + ".json", encoding="utf-8") as f:
                return stem + ".pack", [tuple(e) for e in json.load(f)["entries"]]
        entries, start = [], 0
        tmp = f"{stem}.pack.tmp{os.getpid()}"
        with open(tmp, "wb") as out, concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:

            def decode(ref):
                try:
                    return _decode(ref, sample_rate), ""
                except (AudioError, OSError, EOFError) as e:
                    return None, str(e)

            for x, reason in pool.map(decode, refs):  # in order, a few ahead
                if x is None:
                    entries.append((start, 0, reason))
                    continue
                out.write(x.tobytes())
                entries.append((start, len(x), ""))
                start += len(x)
            if start == 0:
                out.write(bytes(2))  # an empty file cannot be memory-mapped
        os.replace(tmp, stem + ".pack")
        with open(stem + ".json.tmp", "w", encoding="utf-8") as f:
            json.dump({"version": PACK_VERSION, "sample_rate": sample_rate, "entries": entries}, f)
        os.replace(stem + ".json.tmp", stem + ".json")  # last: its presence says the pack is complete
    return stem + ".pack", entries


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/ecapa_jax/audio`` (``~/.cache/ecapa_jax/audio``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ecapa_jax", "audio")


@dataclasses.dataclass
class DemoTable:
    """The generated demo corpus as a table: float32 waveforms, generated on first read (and kept: `DemoCorpus`)."""

    corpus: object  # train.demo_corpus.DemoCorpus
    keys: list[str]
    dtype = np.dtype(np.float32)

    def __post_init__(self):
        self.names = list(self.keys)
        self.lengths = np.array([self.corpus.num_samples(k) for k in self.keys], np.int64)
        self.bad: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, i: int, start: int, out: np.ndarray) -> None:
        out[:] = self.corpus.waveform(self.keys[i])[start : start + len(out)]


__all__ = ["AudioRef", "AudioTable", "DemoTable", "build_table", "default_cache_dir", "pcm16_layout"]
