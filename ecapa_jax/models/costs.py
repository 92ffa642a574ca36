"""What a model costs: parameters, and multiply-accumulates (MACs) counted from the traced forward pass.

``traced_macs`` reads the jaxpr of a function and sums the multiply-accumulates of every matrix product
(``dot_general``: output size × contracted size) and convolution (output size × kernel taps × input channels per
group; a ``layers.DepthwiseConv1d``, computed as shifted multiply-adds, by its multiplies), sub-programs included.
It counts what the model executes, whatever the family: kernels applied at every frame, attention's q·k and α·v
products (which have no kernel and grow as T²), per-utterance work once. Element-wise work (norms, activations,
softmax, pooling statistics) is not counted; XLA's cost analysis adds it (``benchmarks.flops``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ecapa_jax.models import build_model
from ecapa_jax.models.layers import DEPTHWISE_SCOPE


def num_params(params: Any) -> int:
    """Number of scalars in a pytree of parameters (arrays or ShapeDtypeStructs)."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def _jaxpr_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("scan", "while"):  # a loop body runs many times: counting it once would be wrong
            raise NotImplementedError(f"traced_macs does not count loops ({name})")
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if name == "dot_general":
            (contracting, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(out) * math.prod(lhs[d] for d in contracting)
        elif name == "conv_general_dilated":
            rhs, spec = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"].rhs_spec  # (O, I/groups, *K)
            total += math.prod(out) * rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
        elif name == "mul" and DEPTHWISE_SCOPE in str(eqn.source_info.name_stack):  # one tap of a depthwise conv
            total += math.prod(out)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns"):
                    total += _jaxpr_macs(inner)
    return total


def traced_macs(fn: Callable, *args) -> int:
    """Multiply-accumulates of every matrix product and convolution ``fn(*args)`` traces to (shapes only).

    Args:
      fn: a JAX-traceable function.
      args: its arguments (arrays or ``jax.ShapeDtypeStruct``; nothing is computed).

    Raises:
      NotImplementedError: ``fn`` contains a loop (scan / while), whose trip count a trace does not show.
    """
    return _jaxpr_macs(jax.make_jaxpr(fn)(*args).jaxpr)


def forward_macs(config: Any, frames: int) -> int:
    """``traced_macs`` of one utterance's eval forward pass at ``frames`` frames, for any family's config."""
    model = build_model(config)
    feats = jax.ShapeDtypeStruct((1, frames, config.feat_dim), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), feats)
    return traced_macs(lambda v, x: model.apply(v, x, train=False)[0], shapes, feats)


__all__ = ["forward_macs", "num_params", "traced_macs"]
