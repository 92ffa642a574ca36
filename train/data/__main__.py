"""``python -m train.data [--config NAME|FILE.py] [--batches N] [--repeats R] [key=value ...]``: loader speed.

Builds the `Loader` that ``python -m train`` would build from the same preset and overrides (e.g.
``data.data_type=kaldi data.train_data=DIR data.noise_data=DIR data.reverb_data=DIR data.aug_prob=0.6
data.speed_perturb=True data.num_workers=0``), times ``--repeats`` runs of ``--batches`` batches each
(after one warm-up batch per run) and prints one line per run, then, as its last line, a JSON object
with ``samples_per_s`` (the median, this process, host side), the runs, the set-up time (listing,
indexing and packing the audio) and the loader's counts.
Exit status (``ecapa_jax.cli``): 0, or 2 for a bad config or data set (one line naming the key or file).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence

from ecapa_jax.cli import EXIT_OK, ArgumentParser, command
from train.config import apply_overrides, load_config, preset_names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m train.data", description=__doc__.split("\n\n")[1])
    p.add_argument("--config", default="demo", help=f"a preset ({', '.join(preset_names())}) or a .py file")
    p.add_argument("--batches", type=int, default=20, help="timed batches per run")
    p.add_argument("--repeats", type=int, default=5, help="runs; the median is reported")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as python -m train")
    args = p.parse_args(argv)
    if args.batches < 1 or args.repeats < 1:
        p.error(f"--batches and --repeats must be >= 1, got {args.batches} and {args.repeats}")
    return args


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = apply_overrides(load_config(args.config), args.overrides).data
    from train.data.loader import Loader, measure_throughput
    from train.data.source import make_source

    start = time.perf_counter()
    loader = Loader(make_source(data), data)
    setup = time.perf_counter() - start
    print(
        f"{len(loader.source)} utterances, {len(loader.reader.usable)} usable, batch {loader.local_batch} x "
        f"{loader.reader.input_len} samples, {data.num_workers} workers; set-up {setup:.1f} s",
        flush=True,
    )
    rates = []
    for run in range(args.repeats):
        rates.append(measure_throughput(loader, args.batches, warmup=1))
        print(f"run {run + 1}: {rates[-1]:.1f} samples/s", flush=True)
    result = {
        "samples_per_s": statistics.median(rates),
        "runs": rates,
        "batch": loader.local_batch,
        "batches": args.batches,
        "num_workers": data.num_workers,
        "setup_s": setup,
        "counts": loader.counts,
    }
    print(json.dumps(result))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
