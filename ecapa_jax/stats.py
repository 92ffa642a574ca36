"""Masks and statistics over time: the numerics the front-ends, the models and the heads share.

Shape letters: B batch, T frames, C channels.

A padded batch carries a ``(B, T)`` boolean mask of valid frames (``lengths_to_mask``). Every statistic
here takes it, so that a padded row gives the numbers of its unpadded utterance: WeSpeaker embeds one
whole utterance at a time and has no masks. Statistics are computed in ``stat_dtype``: at least float32
whatever the compute dtype (bfloat16 sums over hundreds of frames lose digits), and float64 in a float64
run, so that an x64 run of a model is a genuine float64 oracle.

Long recordings are reduced in chunks (``ecapa_jax.models.long_form``): ``weighted_moments`` summarises the
frames of one chunk and ``merge_moments`` combines two summaries exactly, so statistics over a whole file never
need the whole file's frames at once.
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


def weighted_moments(x: Array, mask: Array, scores: Array | None = None) -> dict[str, Array]:
    """A mergeable summary of x over the frames of ``mask``: softmax_t(scores)-weighted (or uniform) moments.

    With weights w_t = exp(s_t − m), m = max_t s_t over the masked frames (w_t = 1 without scores):

        shift = m,  w = Σ_t w_t,  mean = Σ_t w_t x_t / w,  m2 = Σ_t w_t (x_t − mean)²

    so the utterance's mean is ``mean``, its biased variance ``m2 / w`` (weighted: that of attentive
    pooling, whose softmax weights are w_t / w) and its unbiased variance ``m2 / (w − 1)`` (uniform).
    The sums are two-pass within the frames given, and ``merge_moments`` combines summaries of disjoint
    frame sets exactly, so a long file can be summarised chunk by chunk.

    Args:
      x: (B, T, C).
      mask: (B, T) bool, the frames summarised; every row needs at least one.
      scores: (B, T, D) attention logits with D = C (one weight per channel) or D = 1 (one per frame), or
        None for uniform weights (then D = 1 and ``w`` counts the frames).

    Returns:
      ``{"shift": (B, D), "w": (B, D), "mean": (B, C), "m2": (B, C)}`` in ``stat_dtype``.
    """
    x = x.astype(stat_dtype(x.dtype))
    m = mask[..., None]  # (B, T, 1)
    if scores is None:
        scores = jnp.zeros(x.shape[:2] + (1,), x.dtype)
    scores = jnp.where(m, scores.astype(x.dtype), -jnp.inf)  # (B, T, D)
    shift = jnp.max(scores, axis=1)  # (B, D)
    w = jnp.exp(scores - shift[:, None, :])  # (B, T, D), 0 outside the mask
    total = jnp.sum(w, axis=1)  # (B, D)
    mean = jnp.sum(w * x, axis=1) / total  # (B, C)
    m2 = jnp.sum(w * jnp.square(x - mean[:, None, :]), axis=1)
    return {"shift": shift, "w": total, "mean": mean, "m2": m2}


def merge_moments(a: dict[str, Array], b: dict[str, Array]) -> dict[str, Array]:
    """The ``weighted_moments`` of the union of two disjoint frame sets, from theirs.

    Both sides are rescaled to the larger shift (the running maximum of online softmax, Milakov &
    Gimelshein, arXiv:1805.02867), then combined with the pairwise update of Chan, Golub & LeVeque (1979):
    mean = mean_a + δ w_b / w, m2 = m2_a + m2_b + δ² w_a w_b / w with δ = mean_b − mean_a.
    """
    shift = jnp.maximum(a["shift"], b["shift"])
    scale_a, scale_b = jnp.exp(a["shift"] - shift), jnp.exp(b["shift"] - shift)  # (B, D)
    wa, wb = a["w"] * scale_a, b["w"] * scale_b
    w = wa + wb
    delta = b["mean"] - a["mean"]  # (B, C)
    mean = a["mean"] + delta * (wb / w)
    m2 = a["m2"] * scale_a + b["m2"] * scale_b + jnp.square(delta) * (wa * wb / w)
    return {"shift": shift, "w": w, "mean": mean, "m2": m2}


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
    "merge_moments",
    "moments",
    "stat_dtype",
    "temporal_mean",
    "temporal_std",
    "weighted_moments",
]
