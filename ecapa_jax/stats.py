"""Masks and statistics over time: the numerics the front-ends, the models and the heads share.

Shape letters: B batch, T frames, C channels.

A padded batch carries a ``(B, T)`` boolean mask of valid frames (``lengths_to_mask``). Every statistic
here takes it, so that a padded row gives the numbers of its unpadded utterance: WeSpeaker embeds one
whole utterance at a time and has no masks. Statistics are computed in ``stat_dtype``: at least float32
whatever the compute dtype (bfloat16 sums over hundreds of frames lose digits), and float64 in a float64
run, so that an x64 run of a model is a genuine float64 oracle.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray

STD_EPS = 1e-7  # WeSpeaker's variance offset (TSTP/ASTP since PR #103/#133; also its apply_cmvn)


def stat_dtype(dtype: Any) -> jnp.dtype:
    """The dtype statistics are computed in: float32 for bfloat16/float16/float32, float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def lengths_to_mask(lengths: Array, t: int) -> Array:
    """(B,) valid counts → (B, T) bool, True for the first ``lengths[b]`` frames of row b."""
    return jnp.arange(t)[None, :] < jnp.asarray(lengths)[:, None]


def apply_mask(x: Array, mask: Array | None) -> Array:
    """Zeroes padded frames. x: (B, T, C); mask: (B, T) or None. Returns (B, T, C)."""
    if mask is None:
        return x
    return x * mask[..., None].astype(x.dtype)


def temporal_mean(x: Array, mask: Array | None = None) -> Array:
    """mean_t x over the valid frames. x: (B, T, C); mask: (B, T) or None. Returns (B, C) in ``stat_dtype``."""
    x = x.astype(stat_dtype(x.dtype))
    if mask is None:
        return jnp.mean(x, axis=1)
    m = mask[..., None].astype(x.dtype)
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)


def temporal_std(x: Array, mask: Array | None = None, eps: float = STD_EPS) -> Array:
    """sqrt(var_t x + eps) with the *unbiased* (N − 1) variance, as ``torch.var``.

    A single frame has no unbiased variance (PyTorch returns NaN); here the divisor is clamped to
    1, so one frame gives sqrt(eps) rather than NaN.

    Args:
      x: (B, T, C).
      mask: (B, T) valid frames, or None.
      eps: added to the variance before the square root.

    Returns:
      (B, C) in ``stat_dtype``.
    """
    x = x.astype(stat_dtype(x.dtype))
    m = jnp.ones(x.shape[:2] + (1,), x.dtype) if mask is None else mask[..., None].astype(x.dtype)
    n = jnp.sum(m, axis=1)  # (B, 1)
    mean = jnp.sum(x * m, axis=1, keepdims=True) / jnp.maximum(n[:, None], 1)
    var = jnp.sum(jnp.square(x - mean) * m, axis=1) / jnp.maximum(n - 1, 1)
    return jnp.sqrt(var + eps)


def moments(x: Array, mask: Array | None = None) -> tuple[Array, Array, Array]:
    """Per-channel mean and biased variance over every axis but the last (BatchNorm's batch statistics).

    Args:
      x: (..., C), computed in ``stat_dtype(x.dtype)``.
      mask: None, or a boolean array of shape ``x.shape[:-1]`` selecting the entries counted.

    Returns:
      ``(mean (C,), var (C,), n)`` where ``n`` is the number of entries counted per channel.
    """
    x = x.astype(stat_dtype(x.dtype))
    axes = tuple(range(x.ndim - 1))
    if mask is None:
        n = jnp.asarray(x.size // x.shape[-1], x.dtype)
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        return mean, var, n
    m = mask[..., None].astype(x.dtype)
    n = jnp.sum(m)
    mean = jnp.sum(x * m, axis=axes) / n
    var = jnp.sum(jnp.square(x - mean) * m, axis=axes) / n
    return mean, var, n


def l2_normalize(x: Any, axis: int = -1, eps: float = 1e-12) -> Any:
    """x / max(‖x‖₂, eps) along ``axis``, as ``torch.nn.functional.normalize``.

    A zero vector stays zero (its cosine with anything is then 0) rather than becoming NaN. JAX arrays
    (and tracers) are normalised with ``jnp`` in their dtype; anything else with NumPy, so that host-side
    scoring keeps its float64.
    """
    xp = jnp if isinstance(x, jax.Array) else np
    norm = xp.linalg.norm(x, axis=axis, keepdims=True)
    return x / xp.maximum(norm, eps)


__all__ = [
    "STD_EPS",
    "apply_mask",
    "l2_normalize",
    "lengths_to_mask",
    "moments",
    "stat_dtype",
    "temporal_mean",
    "temporal_std",
]
