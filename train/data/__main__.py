"""``python -m train.data``: the loader's throughput."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from train.data.config import DATA_TYPES, WORKER_TYPES, DataConfig
from train.data.loader import Loader, measure_throughput
from train.data.source import make_source


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m train.data``: loader throughput on the demo corpus (or a list) for a worker setup."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--data_type", default="demo", choices=DATA_TYPES)
    p.add_argument("--train_data", default="")
    p.add_argument("--num_frms", type=int, default=200)
    p.add_argument("--batch", type=int, default=64, help="global batch size")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--worker_type", nargs="+", default=list(WORKER_TYPES), choices=WORKER_TYPES)
    p.add_argument("--batches", type=int, default=5)
    args = p.parse_args(argv)
    for kind in args.worker_type:
        for workers in args.workers:
            config = DataConfig(
                data_type=args.data_type,
                train_data=args.train_data,
                num_frms=args.num_frms,
                global_batch_size=args.batch,
                num_workers=workers,
                worker_type=kind,
            )
            rate = measure_throughput(Loader(make_source(config), config), args.batches, warmup=1)
            print(f"{kind:7s} workers={workers}: {rate:8.1f} samples/s")


if __name__ == "__main__":
    main()
