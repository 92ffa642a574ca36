"""ECAPA-TDNN building blocks, channels-last.

Shape letters: B batch, T frames, C channels. Every block maps ``(B, T, C_in)`` to
``(B, T, C_out)``; time is never transposed.

Each module is named after the WeSpeaker checkpoint leaf it holds (``conv``, ``bn``,
``convs_3``, ``se_res2block_1``, ``linear1``), so the converter is a table: the PyTorch key
``layer2.se_res2block.1.convs.3.weight`` is the Flax leaf ``layer2/se_res2block_1/convs_3/kernel``.

``mask`` arguments are ``(B, T)`` booleans marking the valid frames of a padded batch. WeSpeaker
has no masks (it embeds one whole utterance at a time); with a mask, every time-mixing operation
(dilated convs, means over time, batch statistics) sees exactly what it would see for the unpadded
utterance, so a padded batch gives the embeddings of one-at-a-time inference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Array = jnp.ndarray
Dtype = Any


# ----------------------------------------------------------------------------- pure math


def apply_mask(x: Array, mask: Array | None) -> Array:
    """Zeroes padded frames. x: (B, T, C); mask: (B, T) or None. Returns (B, T, C)."""
    if mask is None:
        return x
    return x * mask[..., None].astype(x.dtype)


def time_mean(x: Array, mask: Array | None = None) -> Array:
    """Mean over valid frames. x: (B, T, C); mask: (B, T) or None. Returns (B, C)."""
    if mask is None:
        return jnp.mean(x, axis=1)
    m = mask[..., None].astype(x.dtype)
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1)


def stat_dtype(dtype: Dtype) -> jnp.dtype:
    """The dtype statistics are computed in: float32 for bfloat16/float16/float32, float64 for float64.

    Lets an x64 float64 run be a genuine float64 oracle instead of silently computing in float32.
    """
    return jnp.promote_types(dtype, jnp.float32)


def moments(x: Array, mask: Array | None = None) -> tuple[Array, Array, Array]:
    """Per-channel mean and biased variance over every axis but the last.

    Args:
      x: (..., C), computed in ``stat_dtype(x.dtype)`` (at least float32).
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


def batch_norm(x: Array, mean: Array, var: Array, scale: Array, bias: Array, eps: float) -> Array:
    """y = (x - mean) / sqrt(var + eps) * scale + bias, broadcast over the last axis."""
    inv = jnp.reciprocal(jnp.sqrt(var + eps)) * scale
    return (x - mean) * inv + bias


def res2_cascade(x: Array, branch: Callable[[int, Array], Array], scale: int) -> Array:
    """The Res2Net hierarchical split as WeSpeaker writes it.

    The channels are split into ``scale`` chunks x_0..x_{s-1}; sp_0 = f_0(x_0),
    sp_i = f_i(sp_{i-1} + x_i) for i < s-1, and the *last* chunk passes through unchanged
    (the Res2Net paper passes the first). With ``scale == 1`` the output is f_0(x).

    Args:
      x: (B, T, C) with C divisible by ``scale``.
      branch: ``branch(i, h)`` applies the i-th conv→ReLU→BN to h: (B, T, C/scale).
      scale: number of chunks.

    Returns:
      (B, T, C) for ``scale > 1``; (B, T, C') for ``scale == 1``.
    """
    chunks = jnp.split(x, scale, axis=-1)  # scale × (B, T, C/scale)
    nums = max(scale - 1, 1)
    outs = []
    sp = None
    for i in range(nums):
        sp = chunks[i] if i == 0 else sp + chunks[i]
        sp = branch(i, sp)
        outs.append(sp)
    if scale != 1:
        outs.append(chunks[nums])
    return jnp.concatenate(outs, axis=-1)


def squeeze_excitation(x: Array, excite: Callable[[Array], Array], mask: Array | None = None) -> Array:
    """Squeeze-and-excitation: x · excite(mean_t x), channel-wise (Hu et al., arXiv:1709.01507).

    Args:
      x: (B, T, C).
      excite: maps the (B, C) time-average to (B, C) gates in [0, 1].
      mask: (B, T) valid frames, or None.

    Returns:
      (B, T, C).
    """
    gates = excite(time_mean(x, mask))  # (B, C)
    return x * gates[:, None, :]


# ----------------------------------------------------------------------------- modules


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last, with PyTorch's ``BatchNorm1d`` semantics.

    Train mode normalises with the biased batch variance and updates the running variance with
    the *unbiased* one (as PyTorch does; Flax's own BatchNorm stores the biased one), with
    ``running = (1 - momentum) · running + momentum · batch``. ``num_batches_tracked`` is kept so
    that a converted checkpoint round-trips exactly. Statistics are at least float32 (``stat_dtype``)
    in any compute dtype.
    Under ``jit`` with a batch sharded over a ``('data',)`` mesh the batch moments are global
    (synchronised BatchNorm), unlike PyTorch DDP's per-device statistics.

    Leaves: params ``scale``, ``bias``; batch_stats ``mean``, ``var``, ``num_batches_tracked``.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        """x: (..., C); mask: boolean of shape x.shape[:-1] or None. Returns x's shape."""
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        count = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)
        if train:
            mean, var, n = moments(x, mask)
            if not self.is_initializing():
                m = self.momentum
                unbiased = var * n / jnp.maximum(n - 1, 1)
                ra_mean.value = (1 - m) * ra_mean.value + m * mean
                ra_var.value = (1 - m) * ra_var.value + m * unbiased
                count.value = count.value + 1
        else:
            mean, var = ra_mean.value, ra_var.value
        y = batch_norm(x.astype(stat_dtype(x.dtype)), mean, var, scale, bias, self.epsilon)
        return y.astype(self.dtype)


def conv1d(features: int, kernel: int, dilation: int, dtype: Dtype, name: str) -> nn.Conv:
    """A PyTorch-style Conv1d (zero 'same' padding of dilation·(kernel−1)/2, bias) on (B, T, C)."""
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        kernel_size=(kernel,),
        kernel_dilation=(dilation,),
        padding=[(pad, pad)],
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class Conv1dReluBn(nn.Module):
    """conv → ReLU → bn (WeSpeaker's order, not conv → BN → ReLU). (B, T, C_in) → (B, T, features)."""

    features: int
    kernel_size: int = 1
    dilation: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        x = conv1d(self.features, self.kernel_size, self.dilation, self.dtype, "conv")(apply_mask(x, mask))
        x = nn.relu(x)  # (B, T, features)
        return BatchNorm(dtype=self.dtype, name="bn")(x, train=train, mask=mask)


class Res2Conv1dReluBn(nn.Module):
    """Res2 dilated conv: ``scale − 1`` chained conv→ReLU→BN branches of width C/scale.

    Leaves ``convs_i`` and ``bns_i``. (B, T, C) → (B, T, C).
    """

    kernel_size: int = 3
    dilation: int = 1
    scale: int = 8
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        channels = x.shape[-1]
        if channels % self.scale:
            raise ValueError(f"Res2 channels {channels} are not divisible by scale {self.scale}")
        width = channels // self.scale

        def branch(i: int, h: Array) -> Array:  # (B, T, width) → (B, T, width)
            conv = conv1d(width, self.kernel_size, self.dilation, self.dtype, f"convs_{i}")
            h = nn.relu(conv(apply_mask(h, mask)))
            return BatchNorm(dtype=self.dtype, name=f"bns_{i}")(h, train=train, mask=mask)

        return res2_cascade(x, branch, self.scale)


class SEConnect(nn.Module):
    """Squeeze-excitation with a ``bottleneck`` hidden layer: leaves ``linear1``, ``linear2``."""

    bottleneck: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        channels = x.shape[-1]
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)  # noqa: E731

        def excite(s: Array) -> Array:  # (B, C) → (B, C)
            return nn.sigmoid(dense(channels, "linear2")(nn.relu(dense(self.bottleneck, "linear1")(s))))

        return squeeze_excitation(x, excite, mask)


class SERes2Block(nn.Module):
    """x + SE(conv1x1(Res2(conv1x1(x)))), no activation after the sum. (B, T, C) → (B, T, C).

    Leaves ``se_res2block_0`` … ``se_res2block_3`` after WeSpeaker's ``nn.Sequential``.
    """

    kernel_size: int = 3
    dilation: int = 1
    scale: int = 8
    se_bottleneck: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        channels = x.shape[-1]
        h = Conv1dReluBn(channels, 1, dtype=self.dtype, name="se_res2block_0")(x, train=train, mask=mask)
        h = Res2Conv1dReluBn(self.kernel_size, self.dilation, self.scale, self.dtype, name="se_res2block_1")(
            h, train=train, mask=mask
        )
        h = Conv1dReluBn(channels, 1, dtype=self.dtype, name="se_res2block_2")(h, train=train, mask=mask)
        h = SEConnect(self.se_bottleneck, self.dtype, name="se_res2block_3")(h, mask=mask)
        return x + h  # (B, T, C)


__all__ = [
    "BatchNorm",
    "Conv1dReluBn",
    "Res2Conv1dReluBn",
    "SEConnect",
    "SERes2Block",
    "apply_mask",
    "conv1d",
    "batch_norm",
    "moments",
    "res2_cascade",
    "stat_dtype",
    "squeeze_excitation",
    "time_mean",
]
