"""Model cost per sample: MACs at 200 frames from XLA's cost analysis, cross-checked with an analytic count.

    python -m benchmarks.flops [--frames 200] [--models glob_c512 glob_c1024]

The analytic count is the architecture's (WeSpeaker's) cost, from every kernel of the model: a
convolution kernel (K, I, O) costs T · K · I · O multiply-accumulates per sample (all convolutions
are 'same'-padded, stride 1, so they keep T frames), a dense kernel (I, O) on a pooled vector costs
I · O. XLA counts what ecapa_jax executes: 2 FLOPs per multiply-accumulate of its convolutions and
dots plus the element-wise work (BatchNorm, activations, pooling statistics), and the global-context
attention applies the mean/std rows of its first conv once per utterance rather than at every
frame, so with global context flops / 2 comes out ~7 % below the analytic count at 200 frames.

MFU (model FLOPs utilisation) would be samples/s × 3 · 2 · MACs (forward + backward ≈ 3 forward
passes) / the device's peak FLOP/s; it is only meaningful against an accelerator's published peak
and is not computed on CPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig


def analytic_macs(params: dict, frames: int) -> int:
    """Σ over convolution kernels (K, I, O) of T · K · I · O, plus Σ over dense kernels (I, O) of I · O."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if getattr(path[-1], "key", None) != "kernel":
            continue
        size = int(np.prod(leaf.shape))
        total += frames * size if leaf.ndim == 3 else size
    return total


def model_macs(config: EcapaConfig, frames: int) -> int:
    """`analytic_macs` of a config's model at ``frames`` frames, from parameter shapes alone (no init)."""
    feats = jax.ShapeDtypeStruct((1, frames, config.feat_dim), jnp.float32)
    shapes = jax.eval_shape(lambda x: ECAPA_TDNN(config).init(jax.random.key(0), x, train=False), feats)
    return analytic_macs(shapes["params"], frames)


def xla_flops(model: ECAPA_TDNN, variables: dict, frames: int) -> float:
    """FLOPs per sample of the jitted eval-mode forward pass, batch 1, from XLA's cost analysis."""
    feats = jnp.zeros((1, frames, model.config.feat_dim), jnp.float32)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, feats).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list per program in some jaxlib versions
    return float(cost["flops"])


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[int, float]]:
    """Prints and returns {model: (analytic MACs, XLA flops / 2)} per sample."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--models", nargs="+", default=["glob_c512", "glob_c1024"])
    p.add_argument("--channels", type=int, default=0, help="override the channels (tiny smoke runs)")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")

    out = {}
    print(f"MACs per sample at {args.frames} frames (eval forward, batch 1)")
    for name in args.models:
        config = EcapaConfig.preset(name)
        config = config.replace(channels=args.channels) if args.channels else config
        model = ECAPA_TDNN(config)
        variables = model.init(jax.random.key(0), jnp.zeros((1, args.frames, config.feat_dim), jnp.float32))
        macs = analytic_macs(variables["params"], args.frames)
        xla_macs = xla_flops(model, variables, args.frames) / 2
        out[name] = (macs, xla_macs)
        print(
            f"  {name:11s} (channels {config.channels}): analytic {macs / 1e9:.3f} G MACs, "
            f"XLA flops / 2 {xla_macs / 1e9:.3f} G; ratio XLA / analytic: {xla_macs / macs:.3f}x"
        )
    print("MFU = samples/s x 3 x 2 x MACs / peak FLOP/s (forward + backward); skipped: no accelerator peak on CPU")
    return out


if __name__ == "__main__":
    main()
