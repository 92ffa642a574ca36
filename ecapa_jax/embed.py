"""Command line: speaker embeddings of audio files, one vector per utterance.

    python -m ecapa_jax.embed --model DIR (FILES... | --wav-scp wav.scp) --out emb.npz
                              [--format npz|ark] [--batch-size N] [--normalize]

Utterance ids are the ``wav.scp`` keys, or the file names without their extension for FILES (two
files with one name are an error). Embeddings are the source toolkit's inference ones
(``Encoder.embed_files`` with the front-end the model directory records: whole utterances, 16 kHz, no
mean subtraction; ``--normalize`` applies SpeechBrain's recorded embedding normalisation,
``Encoder.normalize``) and are written as ``.npz`` (id → (E,) float32) or as a Kaldi archive with its
index beside it (``emb.ark`` + ``emb.scp``, as WeSpeaker's ``xvector.ark/scp``); ``python -m
ecapa_jax.score`` reads either.

A file that cannot be used (unreadable, too short, ...) is reported on stderr with its reason and the
others are still written. Exit status (``ecapa_jax.cli``): 0, 1 when some file failed, 2 for usage and
input errors (arguments, model directory, ``wav.scp``, duplicate ids, an output location that cannot be
written), found before any embedding is computed, with nothing written.
"""

from __future__ import annotations

import argparse
import os
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ecapa_jax.cli import EXIT_OK, EXIT_PARTIAL, ArgumentParser, command, error
from ecapa_jax.encoder import load
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
    return parser


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if bool(args.files) == bool(args.wav_scp):
        parser.error("give audio FILES or --wav-scp, not both and not neither")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    suffix = Path(args.out).suffix
    if suffix not in FORMATS or args.format not in (None, FORMATS[suffix]):
        parser.error(f"--out {args.out}: expected a .npz or .ark file matching --format ({args.format or 'any'})")
    check_output_file(args.out)
    if suffix == ".ark":
        check_output_file(Path(args.out).with_suffix(".scp"))
    table = kaldi_io.read_wav_scp(args.wav_scp) if args.wav_scp else file_ids(args.files)
    encoder = load(args.model)
    if args.normalize and encoder.embedding_norm is None:
        raise ValueError(f"--normalize: {args.model} records no embedding normalisation (see --embedding-norm)")

    embeddings, failures = encoder.embed_files(table, args.batch_size, progress=True)
    if args.normalize:
        embeddings = {utt: encoder.normalize(e) for utt, e in embeddings.items()}
    for utt, reason in failures.items():
        error(f"{utt}: {reason}")
    written = write_embeddings(args.out, embeddings, FORMATS[suffix])
    print(f"{len(embeddings)} embeddings -> {', '.join(written)}; {len(failures)} of {len(table)} files failed")
    return EXIT_PARTIAL if failures else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
