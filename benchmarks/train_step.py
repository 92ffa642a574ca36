"""One training step (forward + backward + SGD update): ecapa_jax vs WeSpeaker's PyTorch, samples per second.

    python -m benchmarks.train_step [--threads 2] [--repeats 5] [--batch 16] [--frames 200] [--compile]

Ours is `train.step` jitted over a one-device mesh with the state donated, exactly as the trainer
runs it: waveform chunks in, fbank (dither 1.0) + CMN + ECAPA + AAM head + nesterov SGD with weight
decay inside one program. Theirs is WeSpeaker's training iteration in eager PyTorch: the model,
``ArcMarginProduct``, ``cross_entropy``, ``SGD(momentum 0.9, nesterov, weight_decay 1e-4)``, on
features computed beforehand (as its dataloader workers do), and again with the per-utterance
``torchaudio`` fbank inside the timed step; with ``--compile``, also the model under ``torch.compile``.

Both sides use GLOB_c512 (192-d embedding) and the recipe's VoxCeleb2 head, 5,994 speakers × 3
speeds = 17,982 classes, margin 0.2, scale 32. The recipe's 128 samples per device are too slow
for repeated runs on a 2-core CPU; the batch is a flag (16 by default). Each side's model GFLOP/s
(3 × the forward pass's 2 × multiply-adds, the same count for both) is shown as a fraction of the
float32 GEMM rate measured first (`benchmarks.common.gemm_rate`).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks.embed import torch_features
from benchmarks.flops import model_macs
from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd
from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig
from ecapa_jax.training.heads import ArcMarginHead
from train import step as train_step
from train.data import chunk_samples

CLASSES = 5994 * 3  # VoxCeleb2 dev speakers × speed perturbation
TRAIN_FRONT_END = KaldiFrontEnd(FbankConfig.wespeaker(dither=1.0))  # the recipe trains with dither 1.0
MARGIN, SCALE, LR = 0.2, 32.0, 0.1


@functools.cache
def _jitted_step(config: EcapaConfig, classes: int, augment=None):
    """(model, head, tx, mesh, jitted step) for a config (and optional `train.augment.DeviceAugment`); cached,
    so repeated benchmarks compile once."""
    model, head = ECAPA_TDNN(config), ArcMarginHead(classes)
    lr = lambda step: jnp.float32(LR)  # noqa: E731 - constant: the schedule's cost is not what is measured
    margin = lambda step: jnp.float32(MARGIN)  # noqa: E731
    tx = train_step.sgd(lr)
    mesh = train_step.data_mesh(jax.devices()[:1])
    step = train_step.jit_train_step(
        train_step.make_train_step(model, head, tx, lr, margin, scale=SCALE, frontend=TRAIN_FRONT_END, augment=augment),
        mesh,
    )
    return model, head, tx, mesh, step


def fresh_state(model, head, tx, mesh, samples: int) -> train_step.TrainState:
    """A new train state on ``mesh``, initialised by one compiled program (as the trainer does; op by op is slow)."""
    init = functools.partial(train_step.init_state, model, head, tx, num_samples=samples, frontend=TRAIN_FRONT_END)
    return train_step.replicate(jax.jit(init)(jax.random.key(0)), mesh)


def ours_step(config: EcapaConfig, classes: int, samples: int, augment=None) -> Callable[[dict], jax.Array]:
    """Our jitted, donated train step with fresh state; returns ``run(batch) -> loss`` (blocks).

    Args:
      config: the model.
      classes: N of the AAM head.
      samples: L, the waveform chunk length the front-end sees.
      augment: the step's waveform augmentation (`train.augment.DeviceAugment`), or None.
    """
    model, head, tx, mesh, step = _jitted_step(config, classes, augment)
    state = fresh_state(model, head, tx, mesh, samples)
    holder = {"state": state, "rng": jax.random.key(1)}

    def run(host_batch: dict) -> jax.Array:
        placed = train_step.shard_batch(host_batch, mesh)
        holder["state"], metrics = step(holder["state"], placed, holder["rng"])
        return metrics["loss"].block_until_ready()

    return run


def theirs_step(torch, projections, config: EcapaConfig, classes: int, compile_model: bool = False):
    """WeSpeaker's eager training iteration; returns ``run(feats (B, T, F) tensor, labels (B,)) -> loss``."""
    model = common.wespeaker_model(config).train()
    proj = projections.ArcMarginProduct(config.embed_dim, classes, scale=SCALE, margin=MARGIN, easy_margin=False)
    opt = torch.optim.SGD(
        list(model.parameters()) + list(proj.parameters()), lr=LR, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    forward = torch.compile(model) if compile_model else model

    def run(feats, labels):
        logits = proj(forward(feats)[-1], labels)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return run


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Times the step; returns {'features outside' | 'fbank inside' | 'torch.compile': ratio ours / theirs}."""
    p = common.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]), repeats=5)
    p.add_argument("--batch", type=int, default=16, help="samples per step (recipe: 128 per GPU)")
    p.add_argument("--frames", type=int, default=200, help="frames per chunk (recipe: 200)")
    p.add_argument("--classes", type=int, default=CLASSES, help="AAM classes (VoxCeleb2 x 3 speeds)")
    p.add_argument("--channels", type=int, default=0, help="override GLOB_c512's channels (tiny smoke runs)")
    p.add_argument("--compile", action="store_true", help="also time WeSpeaker's model under torch.compile")
    args = common.parse(p, argv)

    projections = common.wespeaker("models.projections")  # imports torch, which pin_threads then sets
    from torchaudio.compliance import kaldi

    torch = common.import_torch()
    pinned = common.pin_threads(args.threads)
    config = EcapaConfig.glob_c512()
    config = config.replace(channels=args.channels) if args.channels else config
    samples = chunk_samples(args.frames)
    print(
        common.banner(
            {
                "model": f"glob_c512 (channels {config.channels}) + AAM head, {args.classes} classes, float32",
                "step": f"batch {args.batch} x {args.frames} frames ({samples} samples), nesterov SGD wd 1e-4",
                **pinned,
            }
        )
    )
    rng = np.random.default_rng(0)
    wavs = (0.1 * rng.standard_normal((args.batch, samples))).astype(np.float32)  # (B, L)
    labels = rng.integers(0, args.classes, args.batch).astype(np.int32)
    host_batch = {"wav": wavs, "label": labels}
    labels_t = torch.from_numpy(labels).long()

    ours = ours_step(config, args.classes, samples)
    torch.manual_seed(0)
    theirs = theirs_step(torch, projections, config, args.classes)
    feats_t = torch_features(torch, kaldi, wavs)  # dither 0 here; the cost is the same with dither

    peak = max(common.gemm_rate(args.repeats).values())
    # Forward + backward ≈ 3 forward passes of the model and of the head's (E, classes) matmul.
    flops = 3 * 2 * args.batch * (model_macs(config, args.frames) + config.embed_dim * args.classes)

    def compare(title: str, name: str, theirs_fn) -> float:
        """Our step against one WeSpeaker variant, interleaved; prints both and returns the ratio."""
        fns = {"ecapa_jax": lambda: ours(host_batch), name: theirs_fn}
        timings = common.interleaved(fns, args.repeats, args.warmup)
        return common.report(title, timings, args.batch, "samples/s", "ecapa_jax", name, flops=flops, peak=peak)

    ratios = {
        "features outside": compare(
            "train step; WeSpeaker's features computed outside the step", "wespeaker", lambda: theirs(feats_t, labels_t)
        ),
        "fbank inside": compare(
            "train step; WeSpeaker's fbank + CMN inside the step",
            "wespeaker+fbank",
            lambda: theirs(torch_features(torch, kaldi, wavs), labels_t),
        ),
    }
    if args.compile:
        torch.manual_seed(0)
        try:
            compiled = theirs_step(torch, projections, config, args.classes, compile_model=True)
            start = time.perf_counter()
            compiled(feats_t, labels_t)
            print(f"\ntorch.compile: first step (compilation) {time.perf_counter() - start:.1f} s")
        except Exception as e:  # noqa: BLE001 - report any compiler failure and keep the other results
            print(f"\ntorch.compile: does not work here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        else:
            ratios["torch.compile"] = compare(
                "train step; WeSpeaker's model under torch.compile, features outside",
                "wespeaker.compile",
                lambda: compiled(feats_t, labels_t),
            )
    return ratios


if __name__ == "__main__":
    main()
