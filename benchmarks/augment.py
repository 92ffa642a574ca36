"""The device-side augmentation's share of the training step: the step with and without it, side by side.

    python -m benchmarks.augment [--threads 2] [--repeats 5] [--batch 16] [--frames 200]

Both are `train.step` as the trainer runs it (GLOB_c512, AAM head over 17,982 classes, nesterov SGD,
fbank with dither inside), jitted and donated, timed interleaved in one process. "step" takes the
chunks as the front-end sees them; "step + augmentation" takes what `train.data.Loader` hands over for
the recipe — int16 windows of ≈ 1.1 × the chunk, noise windows, RIRs of 1.5 s, reverb/noise drawn with
p 0.6 — and runs `train.augment.DeviceAugment` first (speed perturbation by polyphase resampling at
every speed, FFT reverberation, noise at the drawn SNR, peak normalisation, label mapping). The
augmentation alone is timed too. Target: the augmentation adds ≤ 10 % to the step.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import numpy as np

from benchmarks import common
from benchmarks.train_step import CLASSES, ours_step
from ecapa_jax.models.ecapa import EcapaConfig
from train import augment
from train.data import chunk_samples


def loader_batch(rng: np.random.Generator, batch: int, length: int, speakers: int, rir_len: int) -> dict:
    """A batch shaped as `train.data.Loader` hands it over for the recipe (speed, reverb/noise at p 0.6)."""
    aug = np.where(rng.random(batch) < 0.6, rng.integers(1, 3, batch), 0).astype(np.int32)
    pcm = lambda shape, scale: (scale * rng.standard_normal(shape) * 32768).astype(np.int16)  # noqa: E731
    rir = pcm((batch, rir_len), 0.1) * (aug == augment.AUG_REVERB)[:, None]
    return {
        "wav": pcm((batch, augment.input_length(length, True)), 0.1),
        "label": rng.integers(0, speakers, batch).astype(np.int32),
        "aug": aug,
        "noise": pcm((batch, length), 0.05) * (aug == augment.AUG_NOISE)[:, None],
        "noise_type": rng.integers(0, len(augment.NOISE_TYPES), batch).astype(np.int32),
        "rir": rir.astype(np.int16),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Returns time ratios: {'step + augmentation / step' (medians), 'fastest step + augmentation / fastest step',
    'augmentation / step' (the augmentation alone)}."""
    p = common.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), repeats=5)
    p.add_argument("--batch", type=int, default=16, help="samples per step (recipe: 128 per GPU)")
    p.add_argument("--frames", type=int, default=200, help="frames per chunk (recipe: 200)")
    p.add_argument("--classes", type=int, default=CLASSES, help="AAM classes (VoxCeleb2 x 3 speeds)")
    p.add_argument("--channels", type=int, default=0, help="override GLOB_c512's channels (tiny smoke runs)")
    args = common.parse(p, argv)
    pinned = common.pin_threads(args.threads)
    config = EcapaConfig.glob_c512()
    config = config.replace(channels=args.channels) if args.channels else config
    length = chunk_samples(args.frames)
    aug = augment.DeviceAugment(length, num_speakers=args.classes // 3, speed_perturb=True)
    rir_len = min(24000, length)  # RIRS_NOISES' longest simulated RIR is 1.5 s (capped at the chunk)
    print(
        common.banner(
            {
                "model": f"glob_c512 (channels {config.channels}) + AAM head, {args.classes} classes, float32",
                "step": f"batch {args.batch} x {args.frames} frames ({length} samples), nesterov SGD wd 1e-4",
                "augmentation": f"windows of {aug.input_length} samples, RIRs of {rir_len}, reverb/noise p 0.6",
                **pinned,
            }
        )
    )
    rng = np.random.default_rng(0)
    loaded = loader_batch(rng, args.batch, length, args.classes // 3, rir_len)
    plain = {"wav": (0.1 * rng.standard_normal((args.batch, length))).astype(np.float32), "label": loaded["label"]}
    step = ours_step(config, args.classes, length)
    step_aug = ours_step(config, args.classes, length, aug)
    alone = jax.jit(aug)
    key = jax.random.key(0)
    timings = common.interleaved(
        {
            "step": lambda: step(plain),
            "step + augmentation": lambda: step_aug(loaded),
            "augmentation alone": lambda: alone(loaded, key)[0].block_until_ready(),
        },
        args.repeats,
        args.warmup,
    )
    common.report("train step with the device augmentation / without", timings, args.batch, "samples/s",
                  "step", "step + augmentation")  # fmt: skip
    base = timings["step"].median
    ratios = {
        "step + augmentation / step": timings["step + augmentation"].median / base,
        # On a shared machine the fastest run of each is the least disturbed estimate of its cost.
        "fastest step + augmentation / fastest step": min(timings["step + augmentation"].wall)
        / min(timings["step"].wall),
        "augmentation / step": timings["augmentation alone"].median / base,
    }
    print(f"   the augmentation adds {100 * (ratios['step + augmentation / step'] - 1):+.1f} % to the step (medians), "
          f"{100 * (ratios['fastest step + augmentation / fastest step'] - 1):+.1f} % (fastest runs); alone it takes "
          f"{100 * ratios['augmentation / step']:.1f} % of the step's time; target <= 10 %")  # fmt: skip
    return ratios


if __name__ == "__main__":
    main()
