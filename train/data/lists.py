"""WeSpeaker's data list formats → `Utterance` lists.

=====  ===========================================================================================
raw    JSON lines ``{"key", "wav", "spk"}``, optional ``"vad": [[start_s, end_s], …]`` (kept parts)
shard  a list of uncompressed tar files; members ``<key>.spk`` + ``<key>.<wav|flac|ogg|…>``
kaldi  a data directory with ``wav.scp`` and ``utt2spk``
=====  ===========================================================================================

Every malformed entry raises `DataError` (or ``KaldiIOError``) naming the file and line. WeSpeaker's
piped commands (``cmd |``) and remote paths are refused: give local files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tarfile
from collections.abc import Sequence
from urllib.parse import urlparse

from ecapa_jax.io.kaldi_io import read_utt2spk, read_wav_scp
from train.data.config import DataError

AUDIO_FORMATS = ("flac", "mp3", "m4a", "ogg", "opus", "wav", "wma")  # WeSpeaker's shard members


@dataclasses.dataclass(frozen=True, slots=True)
class Utterance:
    """One entry of a data list.

    Attributes:
      key: utterance id.
      spk: speaker name.
      wav: audio path; for shards the tar file; empty for the demo corpus.
      offset: byte offset of the audio member inside the tar (shards), else −1.
      size: byte size of that member.
      vad: (start_s, end_s) segments to keep, in seconds; empty keeps everything.
    """

    key: str
    spk: str
    wav: str = ""
    offset: int = -1
    size: int = 0
    vad: tuple[tuple[float, float], ...] = ()


def _check_path(value: str, where: str) -> str:
    """A local path from a list entry; WeSpeaker's pipes (``cmd |``) and URLs (fetched with wget) are refused."""
    if value.rstrip().endswith("|"):
        raise DataError(f"{where}: piped commands ({value!r}) are not supported; give a file path")
    scheme = urlparse(value).scheme
    if scheme not in ("", "file"):
        raise DataError(f"{where}: remote paths ({value!r}) are not supported; copy the data locally")
    return urlparse(value).path if scheme == "file" else value


def read_raw_list(path: str) -> list[Utterance]:
    """Reads a WeSpeaker raw list: one JSON object per line with "key", "wav", "spk" (and "vad").

    Raises:
      DataError: naming the file and line, for a line that is not a JSON object, a missing or
        non-string field, a bad "vad" value, a piped or remote "wav", or a repeated key.
    """
    utts, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not a JSON object ({e.msg})") from e
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object with 'key', 'wav', 'spk', got {type(obj).__name__}")
            for field in ("key", "wav", "spk"):
                if not isinstance(obj.get(field), str) or not obj[field]:
                    raise DataError(f"{where}: missing or empty string field {field!r}")
            vad = obj.get("vad", [])
            try:
                vad = tuple((float(s), float(e)) for s, e in vad)
            except (TypeError, ValueError) as e:
                raise DataError(f"{where}: 'vad' must be a list of [start_s, end_s] pairs, got {vad!r}") from e
            if any(not 0 <= s < e for s, e in vad):
                raise DataError(f"{where}: 'vad' segments need 0 <= start < end, got {list(vad)}")
            if obj["key"] in seen:
                raise DataError(f"{where}: duplicate key {obj['key']!r}")
            seen.add(obj["key"])
            utts.append(Utterance(obj["key"], obj["spk"], _check_path(obj["wav"], where), vad=vad))
    return utts


def read_kaldi_dir(directory: str) -> list[Utterance]:
    """Reads a Kaldi data directory: ``wav.scp`` (utt path) and ``utt2spk``, in ``wav.scp`` order.

    Raises:
      DataError: a missing file, or an utterance of ``wav.scp`` without a speaker in ``utt2spk``.
      ecapa_jax.io.kaldi_io.KaldiIOError: a malformed ``wav.scp`` line (file and line named).
    """
    scp, u2s = os.path.join(directory, "wav.scp"), os.path.join(directory, "utt2spk")
    for p in (scp, u2s):
        if not os.path.isfile(p):
            raise DataError(f"{directory}: not a Kaldi data directory, {os.path.basename(p)} is missing")
    utt2spk = read_utt2spk(u2s)
    utts = []
    for key, wav in read_wav_scp(scp).items():
        if key not in utt2spk:
            raise DataError(f"{scp}: utterance {key!r} has no speaker in {u2s}")
        utts.append(Utterance(key, utt2spk[key], _check_path(wav, f"{scp} ({key})")))
    return utts


def index_shard(path: str) -> list[Utterance]:
    """The utterances of one uncompressed tar shard, grouped by member prefix (before the last '.').

    Raises:
      DataError: naming the tar, for an unreadable or compressed tar, a member name without an
        extension, or an utterance without exactly one ``.spk`` and one audio member.
    """
    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                prefix, dot, ext = member.name.rpartition(".")
                if not dot or not prefix:
                    raise DataError(f"{path}: member {member.name!r} has no '<key>.<ext>' name")
                groups.setdefault(prefix, {})[ext] = member
            spk = {k: tar.extractfile(m["spk"]).read().decode("utf-8").strip() for k, m in groups.items() if "spk" in m}
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: not a readable uncompressed tar shard ({e})") from e
    utts = []
    for key, members in groups.items():
        audio = [ext for ext in members if ext in AUDIO_FORMATS]
        if key not in spk or len(audio) != 1:
            raise DataError(
                f"{path}: utterance {key!r} needs one '.spk' and one audio member ({'/'.join(AUDIO_FORMATS)}), "
                f"has {sorted(members)}"
            )
        m = members[audio[0]]
        utts.append(Utterance(key, spk[key], path, offset=m.offset_data, size=m.size))
    return utts


def read_shard_list(path: str) -> list[Utterance]:
    """Reads a WeSpeaker shard list (one tar path per line; relative to the current directory, as
    WeSpeaker) and indexes every tar.

    Raises:
      DataError: naming the list file and line for a missing, remote or unreadable tar.
    """
    utts, seen = [], set()
    with open(path, encoding="utf-8") as f:
        lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    for lineno, tar in lines:
        tar = _check_path(tar, f"{path}:{lineno}")
        if not os.path.isfile(tar):
            raise DataError(f"{path}:{lineno}: no such shard {tar!r}")
        for u in index_shard(tar):
            if u.key in seen:
                raise DataError(f"{path}:{lineno}: key {u.key!r} of {tar} already appeared in an earlier shard")
            seen.add(u.key)
            utts.append(u)
    return utts


def speaker_ids(speakers: Sequence[str]) -> dict[str, int]:
    """WeSpeaker's ``spk2id``: the sorted set of speaker names, numbered from 0."""
    return {s: i for i, s in enumerate(sorted(set(speakers)))}
