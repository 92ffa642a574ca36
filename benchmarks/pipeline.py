"""Input pipeline vs train step: samples/s the `train.data.Loader` sustains against samples/s the step consumes.

    python -m benchmarks.pipeline [--threads 2] [--repeats 3] [--batch 16] [--batches 4] [--workers 4]

Measured in one process, in interleaved rounds: the loader on the demo corpus (waveforms synthesised
on the fly, uncached: the trainer's first epoch), the loader on a Kaldi data directory of demo
utterances written to disk as 16-bit WAV (read with soundfile), both with speed perturbation and
200-frame chunks; our jitted train step (`benchmarks.train_step.ours_step`) on a fixed batch of the
same shape; and the two together, the step fed by each loader as the trainer runs (loader threads
and XLA share the CPUs, so this is below the step alone by the CPU time the loader takes). The
target is loader ≥ 1.5 × step, so the step never waits for data. Every loader starts fresh each
round (its pool start and first batch are the warm-up), so prefetched batches never count twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Sequence

from benchmarks import common
from benchmarks.train_step import CLASSES, ours_step
from ecapa_jax.models.ecapa import EcapaConfig
from train.data import DataConfig, Loader, demo_corpus, make_source, measure_throughput
from train.demo_corpus import write_dataset


def write_kaldi_dir(directory: str, num_utts: int, config: DataConfig) -> str:
    """Writes ``num_utts`` utterances of the demo corpus as a Kaldi data directory; returns its path."""
    corpus = demo_corpus(config)
    return write_dataset(corpus, directory, corpus.utterances[:num_utts])["dir"]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Returns {'demo' | 'kaldi' | 'demo -> step' | 'kaldi -> step': samples/s over the step alone's}."""
    p = common.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), repeats=3)
    p.add_argument("--batch", type=int, default=16, help="samples per batch, loader and step")
    p.add_argument("--frames", type=int, default=200, help="frames per chunk")
    p.add_argument("--batches", type=int, default=4, help="timed batches per measurement")
    p.add_argument("--workers", type=int, default=4, help="loader threads")
    p.add_argument("--channels", type=int, default=0, help="override GLOB_c512's channels (tiny smoke runs)")
    p.add_argument("--classes", type=int, default=CLASSES)
    args = common.parse(p, argv)

    pinned = common.pin_threads(args.threads)
    base = DataConfig(
        data_type="demo",
        num_frms=args.frames,
        global_batch_size=args.batch,
        num_workers=args.workers,
        speed_perturb=True,
        aug_prob=0.0,  # no MUSAN / RIR data offline
    )
    config = EcapaConfig.glob_c512()
    config = config.replace(channels=args.channels) if args.channels else config
    print(
        common.banner(
            {
                "loader": f"batch {args.batch} x {args.frames} frames, speed perturbation, {args.workers} "
                f"{base.worker_type} workers, prefetch {base.prefetch_batches}, {args.batches} timed batches",
                "step": f"glob_c512 (channels {config.channels}) + AAM {args.classes} classes, fbank inside",
                **pinned,
            }
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        kaldi_dir = write_kaldi_dir(tmp, max(4 * args.batch, (args.batches + 1) * args.batch), base)
        configs = {
            "loader demo": base,
            "loader kaldi": DataConfig(**{**vars(base), "data_type": "kaldi", "train_data": kaldi_dir}),
        }
        sources = {name: make_source(c) for name, c in configs.items()}
        # Every round synthesises its utterances again, as the trainer's first epoch does (later epochs read
        # the corpus's cache and are faster): the worst case is the one to compare with the step.
        sources["loader demo"].demo = dataclasses.replace(sources["loader demo"].demo, cache=False)
        run_step = ours_step(config, args.classes, Loader(sources["loader demo"], base).chunk_len)
        batch = next(iter(Loader(sources["loader demo"], base)))
        run_step(batch)  # compiles

        def step_rate() -> float:
            start = time.perf_counter()
            for _ in range(args.batches):
                run_step(batch)
            return args.batches * args.batch / (time.perf_counter() - start)

        def end_to_end_rate(name: str) -> float:
            it = iter(Loader(sources[name], configs[name]))
            run_step(next(it))
            start = time.perf_counter()
            for _ in range(args.batches):
                run_step(next(it))
            rate = args.batches * args.batch / (time.perf_counter() - start)
            it.close()
            return rate

        rates: dict[str, list[float]] = {name: [] for name in [*configs, "train step", "demo -> step", "kaldi -> step"]}
        for _ in range(args.repeats):
            for name, c in configs.items():
                rates[name].append(measure_throughput(Loader(sources[name], c), args.batches, warmup=1))
            rates["train step"].append(step_rate())
            rates["demo -> step"].append(end_to_end_rate("loader demo"))
            rates["kaldi -> step"].append(end_to_end_rate("loader kaldi"))

    print("-- samples/s, median (min-max) over interleaved rounds")
    med = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"   {name:16s} {med[name]:9.1f}  ({min(r):.1f}-{max(r):.1f}, n={len(r)})")
    step = med["train step"]
    ratios = {
        "demo": med["loader demo"] / step,
        "kaldi": med["loader kaldi"] / step,
        "demo -> step": med["demo -> step"] / step,
        "kaldi -> step": med["kaldi -> step"] / step,
    }
    for name, ratio in ratios.items():
        print(f"   ratio {name} / train step alone: {ratio:.2f}x")
    return ratios


if __name__ == "__main__":
    main()
