"""Command line: speaker embeddings of audio files, one vector per utterance or per sliding window.

    python -m ecapa_jax.embed --model DIR (FILES... | --wav-scp wav.scp) --out emb.npz
                              [--format npz|ark] [--batch-size N] [--normalize] [--workers N]
                              [--chunk-frames N] [--bucket-ratio R] [--window SECONDS [--shift SECONDS]]

Utterance ids are the ``wav.scp`` keys, or the file names without their extension for FILES (two
files with one name are an error). Embeddings are the source toolkit's inference ones
(``Encoder.embed_files`` with the front-end the model directory records: whole utterances, 16 kHz, no
mean subtraction; ``--normalize`` applies SpeechBrain's recorded embedding normalisation,
``Encoder.normalize``) and are written as ``.npz`` (id → (E,) float32) or as a Kaldi archive with its
index beside it (``emb.ark`` + ``emb.scp``, as WeSpeaker's ``xvector.ark/scp``); ``python -m
ecapa_jax.score`` reads either. Batches are padded to lengths growing by ``--bucket-ratio`` (``Buckets``).
Files are read on ``--workers`` threads while the device embeds; files longer than ``--chunk-frames``
frames (30 s) are streamed and embedded whole in chunks, with the same result and memory that does not grow
with their length (``ecapa_jax.models.long_form``). A progress bar runs on stderr; the last line reports
files/s and the real-time factor (wall time / audio time).

With ``--window`` (and ``--shift``, default half the window; WeSpeaker's diarization uses 1.5 / 0.75) every
file gives one embedding per sliding window (``Encoder.embed_file_windows``, streamed: memory does not grow
with the file's length), with ids ``<utt>-<start ms>-<end ms>`` (8 digits each), and a Kaldi ``segments``
file beside the output (``emb.segments``: ``<id> <utt> <start s> <end s>``).

A file that cannot be used (unreadable, too short, ...) is reported on stderr with its reason and the
others are still written. Exit status (``ecapa_jax.cli``): 0, 1 when some file failed, 2 for usage and
input errors (arguments, model directory, ``wav.scp``, duplicate ids, an output location that cannot be
written), found before any embedding is computed, with nothing written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ecapa_jax.cli import EXIT_OK, EXIT_PARTIAL, ArgumentParser, command, error
from ecapa_jax.encoder import Buckets, Encoder, duration, load
from ecapa_jax.frontend.audio import AudioError
from ecapa_jax.io import kaldi_io
from ecapa_jax.io.files import check_output_file

FORMATS = {".npz": "npz", ".ark": "ark"}


def file_ids(paths: Sequence[str | os.PathLike]) -> dict[str, str]:
    """``{file name without extension: path}`` in the given order.

    Raises:
      ValueError: naming both files when two paths give the same id, or a path that is a directory.
    """
    table: dict[str, str] = {}
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            raise ValueError(f"{path} is a directory, not an audio file (give the files, or a --wav-scp)")
        utt = Path(path).stem
        if utt in table:
            raise ValueError(f"duplicate utterance id {utt!r}: {table[utt]} and {path} (use --wav-scp to name them)")
        table[utt] = path
    return table


def write_npz(path: str | os.PathLike, vectors: Mapping[str, np.ndarray]) -> None:
    """Writes ``{id: vector}`` as an uncompressed ``.npz`` that ``np.load`` reads back.

    ``np.savez(path, **vectors)`` would reject the ids ``file`` and ``allow_pickle`` (its own
    argument names), so the members are written directly, in the same format.
    """
    with zipfile.ZipFile(path, "w") as npz:
        for key, vector in vectors.items():
            with npz.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array(member, np.asarray(vector), allow_pickle=False)


def write_embeddings(path: str | os.PathLike, vectors: Mapping[str, np.ndarray], fmt: str) -> list[str]:
    """Writes the embeddings as ``fmt`` ('npz', or 'ark' with a ``.scp`` beside it); returns the files written.

    The ``.scp`` names the archive by its absolute path, so it can be read from any directory.
    """
    if fmt == "npz":
        write_npz(path, vectors)
        return [os.fspath(path)]
    scp = os.fspath(Path(path).with_suffix(".scp"))
    kaldi_io.write_vectors(os.path.abspath(path), vectors, scp)
    return [os.fspath(path), scp]


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m ecapa_jax.embed", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="ecapa_jax model directory (python -m ecapa_jax.convert)")
    parser.add_argument("files", nargs="*", help="audio files; their names without extension are the ids")
    parser.add_argument("--wav-scp", help="Kaldi wav.scp ('id path' per line) instead of FILES")
    parser.add_argument("--out", required=True, help="embeddings to write: .npz, or .ark (+ .scp beside it)")
    parser.add_argument("--format", choices=sorted(FORMATS.values()), help="default: from the --out extension")
    parser.add_argument("--batch-size", type=int, default=16, help="utterances per device batch (default 16)")
    parser.add_argument(
        "--normalize", action="store_true", help="apply the model's embedding normalisation (SpeechBrain's)"
    )
    parser.add_argument("--workers", type=int, default=4, help="threads reading and decoding files (default 4)")
    parser.add_argument(
        "--chunk-frames",
        type=int,
        default=3000,
        help="longer files are embedded whole in chunks of this many frames (default 3000 = 30 s); 0: never",
    )
    parser.add_argument(
        "--bucket-ratio",
        type=float,
        default=math.sqrt(2),
        help="growth between padded lengths (default √2: few compilations; 1.09 pads a large corpus ~6%% instead "
        "of ~22%% for ~3x the compilations, worth it on a CPU)",
    )
    parser.add_argument("--window", type=float, help="seconds per sliding window: one embedding per window")
    parser.add_argument("--shift", type=float, help="seconds between sliding windows (default: half the window)")
    return parser


def window_embeddings(
    encoder: Encoder, table: Mapping[str, str], window: float, shift: float, batch_size: int
) -> tuple[dict[str, np.ndarray], dict[str, str], list[tuple[str, str, float, float]]]:
    """Per-window embeddings of every file: ``({window id: (E,)}, {utt: reason}, segments (id, utt, start, end))``."""
    embeddings, failures, segments = {}, {}, []
    for utt, path in tqdm(table.items(), unit="file", desc="embedding windows"):
        try:
            times, vectors = encoder.embed_file_windows(path, window, shift, batch_size)
        except AudioError as e:
            failures[utt] = str(e)
            continue
        for (start, end), vector in zip(times, vectors, strict=True):
            key = f"{utt}-{round(start * 1000):08d}-{round(end * 1000):08d}"
            embeddings[key] = vector
            segments.append((key, utt, start, end))
    return embeddings, failures, segments


def write_segments(path: str | os.PathLike, segments: Sequence[tuple[str, str, float, float]]) -> None:
    """A Kaldi ``segments`` file: ``<segment id> <recording id> <start s> <end s>`` per line."""
    Path(path).write_text("".join(f"{key} {utt} {start:.3f} {end:.3f}\n" for key, utt, start, end in segments))


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.files) == bool(args.wav_scp):
        parser.error("give audio FILES or --wav-scp, not both and not neither")
    for name in ("batch_size", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.bucket_ratio > 1:
        parser.error(f"--bucket-ratio must be > 1, got {args.bucket_ratio:g}")
    if args.chunk_frames < 0:
        parser.error(f"--chunk-frames must be >= 0 (0: embed every file in one piece), got {args.chunk_frames}")
    if args.shift is not None and args.window is None:
        parser.error("--shift needs --window")
    if args.window is not None:
        args.shift = args.window / 2 if args.shift is None else args.shift
        if not (args.window > 0 and args.shift > 0):
            parser.error(f"--window and --shift must be positive seconds, got {args.window:g} and {args.shift:g}")
    suffix = Path(args.out).suffix
    if suffix not in FORMATS or args.format not in (None, FORMATS[suffix]):
        parser.error(f"--out {args.out}: expected a .npz or .ark file matching --format ({args.format or 'any'})")
    check_output_file(args.out)
    if suffix == ".ark":
        check_output_file(Path(args.out).with_suffix(".scp"))
    if args.window is not None:
        check_output_file(Path(args.out).with_suffix(".segments"))
    table = kaldi_io.read_wav_scp(args.wav_scp) if args.wav_scp else file_ids(args.files)
    buckets = Buckets(ratio=args.bucket_ratio)
    encoder = dataclasses.replace(load(args.model), chunk_frames=args.chunk_frames or None, buckets=buckets)
    if args.normalize and encoder.embedding_norm is None:
        raise ValueError(f"--normalize: {args.model} records no embedding normalisation (see --embedding-norm)")

    start = time.perf_counter()
    if args.window is None:
        embeddings, failures = encoder.embed_files(table, args.batch_size, progress=True, workers=args.workers)
        done = embeddings
    else:
        embeddings, failures, segments = window_embeddings(encoder, table, args.window, args.shift, args.batch_size)
        done = {utt for _, utt, _, _ in segments}
    wall = time.perf_counter() - start
    if args.normalize:
        embeddings = {key: encoder.normalize(e) for key, e in embeddings.items()}
    for utt, reason in failures.items():
        error(f"{utt}: {reason}")
    written = write_embeddings(args.out, embeddings, FORMATS[suffix])
    if args.window is not None:
        write_segments(Path(args.out).with_suffix(".segments"), segments)
        written.append(os.fspath(Path(args.out).with_suffix(".segments")))
    audio = sum(duration(table[u]) for u in done)
    print(
        f"{len(embeddings)} embeddings -> {', '.join(written)}; {len(failures)} of {len(table)} files failed; "
        f"{audio:.1f} s of audio in {wall:.1f} s: {len(done) / wall:.3g} files/s, real-time factor "
        f"{wall / max(audio, 1e-9):.3g}"
    )
    return EXIT_PARTIAL if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
