"""Model cost per sample: MACs at 200 frames from the architecture, cross-checked with XLA's cost analysis.

    python -m benchmarks.flops [--frames 200] [--models glob_c512 light_c512 transformer_simple conformer_boss]

Two exact counts and one estimate:

- ``analytic_macs``, the convolutional architecture's (WeSpeaker's) cost, from every kernel of the model: a
  convolution kernel (K, I/groups, O) costs T · K · (I/groups) · O multiply-accumulates per sample (all
  convolutions are 'same'-padded, stride 1, so they keep T frames; a depthwise kernel (K, 1, C) costs
  T · K · C), a dense kernel (I, O) on a pooled vector costs I · O. ECAPA's nominal count.
- ``forward_macs`` (``ecapa_jax.models.costs``), every matrix product and convolution of the traced eval
  forward pass (its jaxpr): the count for models with attention, whose q·k and α·v products have no kernel
  and grow as T². For ECAPA it is what runs: with global context the attention's mean/std rows of its
  first conv are applied once per utterance rather than at every frame (~7 % below ``analytic_macs`` at
  200 frames).
- XLA's cost analysis of the compiled forward pass (``xla_flops``): 2 FLOPs per multiply-accumulate plus
  the element-wise work (norms, activations, softmax, pooling statistics), so flops / 2 lies a little
  above ``forward_macs``.

``model_macs(config, frames)`` is the architecture's count of any family: ``analytic_macs`` for ECAPA
(WeSpeaker's convention, which ``benchmarks.embed`` and ``benchmarks.train_step`` use as nominal FLOPs),
``forward_macs`` for the families with attention.

MFU (model FLOPs utilisation) would be samples/s × 3 · 2 · MACs (forward + backward ≈ 3 forward
passes) / the device's peak FLOP/s; it is only meaningful against an accelerator's published peak
and is not computed on CPU.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ecapa_jax.models import build_model
from ecapa_jax.models.conformer import ConformerConfig
from ecapa_jax.models.costs import forward_macs, num_params
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.models.transformer import TransformerConfig

MODELS: dict[str, Callable[[], Any]] = {  # name → config, for --models
    **{name: lambda name=name: EcapaConfig.preset(name) for name in ("c512", "c1024", "glob_c512", "glob_c1024")},
    "light_c512": EcapaConfig.light_c512,
    "transformer_simple": TransformerConfig.simple,
    "transformer_medium": TransformerConfig.medium,
    "conformer_strong": ConformerConfig.strong,
    "conformer_boss": ConformerConfig.boss,
}


def analytic_macs(params: dict, frames: int) -> int:
    """Σ over convolution kernels (K, I, O) of T · K · I · O, plus Σ over dense kernels (I, O) of I · O."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if getattr(path[-1], "key", None) != "kernel":
            continue
        size = int(np.prod(leaf.shape))
        total += frames * size if leaf.ndim == 3 else size
    return total


def model_macs(config: Any, frames: int) -> int:
    """The architecture's MACs per sample at ``frames`` frames: ``analytic_macs`` for ECAPA, else
    ``forward_macs``."""
    if not isinstance(config, EcapaConfig):
        return forward_macs(config, frames)
    feats = jax.ShapeDtypeStruct((1, frames, config.feat_dim), jnp.float32)
    shapes = jax.eval_shape(lambda x: build_model(config).init(jax.random.key(0), x, train=False), feats)
    return analytic_macs(shapes["params"], frames)


def xla_flops(model, variables: dict, frames: int) -> float:
    """FLOPs per sample of the jitted eval-mode forward pass, batch 1, from XLA's cost analysis."""
    feats = jnp.zeros((1, frames, model.config.feat_dim), jnp.float32)
    compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)[0]).lower(variables, feats).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # a list per program in some jaxlib versions
    return float(cost["flops"])


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[int, float]]:
    """Prints and returns {model: (model_macs, XLA flops / 2)} per sample."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--models", nargs="+", default=["glob_c512", "glob_c1024"], choices=sorted(MODELS))
    p.add_argument("--channels", type=int, default=0, help="override ECAPA's channels (tiny smoke runs)")
    args = p.parse_args(argv)
    if args.frames < 1:
        p.error(f"--frames must be >= 1, got {args.frames}")

    out = {}
    print(f"MACs per sample at {args.frames} frames (eval forward, batch 1)")
    for name in args.models:
        config = MODELS[name]()
        if args.channels and isinstance(config, EcapaConfig):
            config = config.replace(channels=args.channels)
        model = build_model(config)
        variables = model.init(jax.random.key(0), jnp.zeros((1, args.frames, config.feat_dim), jnp.float32))
        params = num_params(variables["params"])
        macs = model_macs(config, args.frames)
        xla_macs = xla_flops(model, variables, args.frames) / 2
        out[name] = (macs, xla_macs)
        kind = "analytic" if isinstance(config, EcapaConfig) else "traced"
        print(
            f"  {name:18s} ({params / 1e6:.3f} M parameters): {kind} {macs / 1e9:.4f} G MACs, "
            f"XLA flops / 2 {xla_macs / 1e9:.4f} G; ratio XLA / {kind}: {xla_macs / macs:.3f}x"
        )
    print("MFU = samples/s x 3 x 2 x MACs / peak FLOP/s (forward + backward); skipped: no accelerator peak on CPU")
    return out


if __name__ == "__main__":
    main()
