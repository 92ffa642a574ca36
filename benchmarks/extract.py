"""Corpus-scale extraction: ``Encoder.embed_files`` (what ``python -m ecapa_jax.embed`` runs) vs WeSpeaker's
per-file extraction, files per second and real-time factor.

    python -m benchmarks.extract [--threads 2] [--files 200] [--seconds 2 20] [--model glob_c512]
                                 [--batch-size 8] [--bucket-ratio 1.09] [--workers 2]

The corpus is ``--files`` synthetic utterances (the demo corpus's voices, durations uniform in ``--seconds``)
written as 16-bit WAV files. Both sides hold the same weights (WeSpeaker's random initialisation, seed 0)
and use the same ``--threads`` CPUs:

- ecapa_jax: ``Encoder.embed_files`` over the whole table: files read and decoded on ``--workers`` threads up
  to two batches ahead, batched by length buckets, front-end and model in one jitted program per bucket,
  dispatched asynchronously. Timed on a second pass, after one that compiles every bucket's program (its time
  is printed too). The defaults are the CPU settings (``python -m ecapa_jax.embed --batch-size 8 --bucket-ratio
  1.09``): a finer ladder of padded lengths pads ~7 % instead of ~25 % here, for ~2.5× the compilations;
  ``--batch-size 16 --bucket-ratio 1.414`` are the library's defaults;
- WeSpeaker: its CLI's extraction (``cli/speaker.py::extract_embedding``) file by file in eager PyTorch: the
  file read (int16 scale; soundfile, as torchaudio's native loader is absent here), ``kaldi.fbank`` (80 bins,
  25/10 ms, hamming), mean CMN, the model on the whole utterance under ``inference_mode``.

Each side runs over the corpus once (the corpus is the repetition). The embeddings are compared first.
``extraction_throughput`` is the measuring function, for any device (``benchmarks/gpu.py`` calls it).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from benchmarks import common
from ecapa_jax.encoder import Buckets, Encoder, duration


def make_corpus(directory: str | Path, files: int, seconds: tuple[float, float], seed: int = 0) -> dict[str, str]:
    """Writes ``files`` synthetic utterances (16 kHz, 16-bit WAV) into ``directory``; returns ``{id: path}``."""
    from train.demo_corpus import DemoCorpus

    speakers = max(1, files // 10)
    corpus = DemoCorpus(
        num_speakers=speakers, utts_per_speaker=-(-files // speakers), seed=seed, min_duration=seconds[0],
        max_duration=seconds[1],
    )  # fmt: skip
    table = {}
    for utt, _ in corpus.utterances[:files]:
        path = Path(directory) / f"{utt}.wav"
        sf.write(path, corpus.waveform(utt), corpus.sample_rate, subtype="PCM_16")
        table[utt] = str(path)
    return table


def extraction_throughput(
    encoder: Encoder, table: Mapping[str, str], batch_size: int = 16, workers: int = 2, warmup: bool = True
) -> dict[str, Any]:
    """Times ``encoder.embed_files(table)`` (reading included), after an untimed pass that compiles its programs.

    Returns:
      ``{"files", "audio_s", "wall_s", "files_per_s", "rtf", "compile_pass_s", "embeddings"}``; rtf is wall
      time / audio time, ``compile_pass_s`` the warm-up pass's wall time (None without it).
    """
    compile_pass = None
    if warmup:
        start = time.perf_counter()
        encoder.embed_files(table, batch_size, workers=workers)
        compile_pass = time.perf_counter() - start
    start = time.perf_counter()
    embeddings, failures = encoder.embed_files(table, batch_size, workers=workers)
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"extraction failed for {failures}")
    audio = sum(duration(path) for path in table.values())
    return {
        "files": len(table),
        "audio_s": audio,
        "wall_s": wall,
        "files_per_s": len(table) / wall,
        "rtf": wall / audio,
        "compile_pass_s": compile_pass,
        "embeddings": embeddings,
    }


def wespeaker_extraction(model, table: Mapping[str, str]) -> dict[str, Any]:
    """WeSpeaker's per-file extraction (module docstring) over the table, timed; same keys as ours."""
    torch = common.import_torch()
    from torchaudio.compliance import kaldi

    def embed(path: str) -> np.ndarray:
        samples, rate = sf.read(path, dtype="int16")  # int16 scale, as torchaudio.load(normalize=False)
        wave = torch.from_numpy(samples.astype(np.float32))[None]
        with torch.inference_mode():
            feats = kaldi.fbank(
                wave, num_mel_bins=80, frame_length=25, frame_shift=10, sample_frequency=rate, window_type="hamming"
            )
            return model((feats - feats.mean(dim=0))[None])[-1][0].numpy()

    embed(next(iter(table.values())))  # warm-up
    start = time.perf_counter()
    embeddings = {utt: embed(path) for utt, path in table.items()}
    wall = time.perf_counter() - start
    audio = sum(duration(path) for path in table.values())
    return {"files": len(table), "audio_s": audio, "wall_s": wall, "files_per_s": len(table) / wall,
            "rtf": wall / audio, "compile_pass_s": None, "embeddings": embeddings}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Runs both sides; returns {'ratio': files/s ours / theirs, 'ours': files/s, 'theirs': files/s, 'min cosine'}."""
    p = common.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), repeats=1)
    p.add_argument("--files", type=int, default=200, help="utterances in the corpus")
    p.add_argument("--seconds", type=float, nargs=2, default=(2.0, 20.0), help="utterance durations, uniform")
    common.add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=8, help="our utterances per device batch")
    p.add_argument("--bucket-ratio", type=float, default=1.09, help="our growth between padded lengths")
    p.add_argument("--workers", type=int, default=2, help="our reading threads")
    args = common.parse(p, argv)
    pinned, config, theirs = common.side_by_side(args)
    encoder = Encoder(config, common.wespeaker_variables(theirs), buckets=Buckets(ratio=args.bucket_ratio))
    settings = {"batch size": args.batch_size, "bucket ratio": args.bucket_ratio, "reading threads": args.workers}
    print(common.banner({"model": f"{args.model} (channels {config.channels}), eval, float32", **settings, **pinned}))

    with tempfile.TemporaryDirectory(prefix="ecapa_extract_") as tmp:
        table = make_corpus(tmp, args.files, tuple(args.seconds))
        ours = extraction_throughput(encoder, table, args.batch_size, args.workers)
        them = wespeaker_extraction(theirs, table)
    cosines = [
        float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in ((ours["embeddings"][u], them["embeddings"][u]) for u in table)
    ]
    print(
        f"\ncorpus: {args.files} files, {ours['audio_s']:.0f} s of audio ({args.seconds[0]:g}-{args.seconds[1]:g} s "
        f"each); min cosine ours vs theirs {min(cosines):.7f}"
    )
    print(f"-- extraction, files -> embeddings, {args.threads} threads each")
    for name, r in (("ecapa_jax", ours), ("wespeaker", them)):
        extra = f"  (compile pass {r['compile_pass_s']:.1f} s)" if r["compile_pass_s"] is not None else ""
        print(
            f"   {name:10s} {r['wall_s']:8.1f} s  {r['files_per_s']:7.2f} files/s  {r['audio_s'] / r['wall_s']:7.1f} "
            f"audio s/s  RTF {r['rtf']:.4f}{extra}"
        )
    ratio = ours["files_per_s"] / them["files_per_s"]
    print(f"   ratio ecapa_jax / wespeaker: {ratio:.2f}x")
    return {"ratio": ratio, "ours": ours["files_per_s"], "theirs": them["files_per_s"], "min cosine": min(cosines)}


if __name__ == "__main__":
    main()
