"""Layers shared by the model families, channels-last: PyTorch-semantics BatchNorm and Conv1d.

Shape letters: B batch, T frames, C channels. ``mask`` arguments are ``(B, T)`` booleans marking the
valid frames of a padded batch (``ecapa_jax.stats``); with a mask, BatchNorm's batch statistics count
valid frames only, and a 'same' convolution pads each row at its own end (zeros, or SpeechBrain's
reflection of the row's valid frames), so a padded row convolves exactly like the utterance alone.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecapa_jax.stats import apply_mask, moments, stat_dtype

Array = jnp.ndarray
Dtype = Any


def batch_norm(x: Array, mean: Array, var: Array, scale: Array, bias: Array, eps: float) -> Array:
    """y = (x - mean) / sqrt(var + eps) * scale + bias, broadcast over the last axis."""
    inv = jnp.reciprocal(jnp.sqrt(var + eps)) * scale
    return (x - mean) * inv + bias


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
    affine: bool = True  # False: no ``scale``/``bias`` (PyTorch's ``affine=False``, e.g. CAM++'s last BN)

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        """x: (..., C); mask: boolean of shape x.shape[:-1] (or broadcastable to it) or None. Returns x's shape."""
        c = x.shape[-1]
        scale, bias = 1.0, 0.0
        if self.affine:
            scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
            bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        count = self.variable("batch_stats", "num_batches_tracked", jnp.zeros, (), jnp.int32)
        if train:
            if mask is not None:
                mask = jnp.broadcast_to(mask, x.shape[:-1])
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


PADDINGS = ("zeros", "reflect")


def conv1d(
    features: int,
    kernel: int,
    dilation: int,
    dtype: Dtype,
    name: str,
    *,
    stride: int = 1,
    use_bias: bool = True,
    padding: str = "zeros",
) -> nn.Conv:
    """A PyTorch-style Conv1d on (B, T, C) with 'same' padding of p = dilation·(kernel−1)/2 frames per side.

    With ``padding='zeros'`` the module pads with zeros itself (PyTorch's ``padding=p``); feed it
    ``apply_mask(x, mask)`` so that a padded row sees zeros after its end. With ``padding='reflect'``
    (SpeechBrain's Conv1d) the module pads nothing: feed it ``reflect_pad(x, p, mask)``. ``conv_input``
    does whichever the padding needs. Leaves ``kernel`` (K, C_in, features) and ``bias`` as PyTorch's
    ``weight`` (features, C_in, K) and ``bias``.
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r} is not one of {PADDINGS}")
    pad = dilation * (kernel - 1) // 2
    return nn.Conv(
        features,
        kernel_size=(kernel,),
        strides=(stride,),
        kernel_dilation=(dilation,),
        padding=[(pad, pad)] if padding == "zeros" else "VALID",
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


def conv_input(x: Array, mask: Array | None, kernel: int, dilation: int, padding: str) -> Array:
    """What a ``conv1d(..., padding=padding)`` of this kernel and dilation takes for (B, T, C) x with its mask.

    Returns ``apply_mask(x, mask)`` (B, T, C) for zero padding, ``reflect_pad`` (B, T + 2p, C) for reflection,
    and x itself for a 1×1 conv (no time mixing: padded frames cannot reach valid ones).
    """
    if kernel == 1:
        return x
    if padding == "zeros":
        return apply_mask(x, mask)
    return reflect_pad(x, dilation * (kernel - 1) // 2, mask)


def reflect_pad(x: Array, pad: int, mask: Array | None = None) -> Array:
    """Pads the time axis by ``pad`` frames per side, reflecting each row's *valid* frames (no edge repeat).

    As ``torch.nn.functional.pad(mode='reflect')`` on the unpadded utterance: for n valid frames, index i
    outside [0, n) reads frame −i before the start and 2(n − 1) − i after the end. PyTorch refuses
    pad ≥ n; here the reflection continues periodically (period 2(n − 1), NumPy's 'reflect'), and a
    one-frame row repeats its frame. Frames past a row's end in the output read valid frames too; they are
    garbage that the mask keeps out of every statistic.

    Args:
      x: (B, T, C).
      pad: frames added on each side, ≥ 0.
      mask: (B, T) valid frames (a prefix of each row), or None for all T.

    Returns:
      (B, T + 2·pad, C).
    """
    if pad == 0:
        return x
    batch, frames = x.shape[:2]
    n = jnp.full((batch, 1), frames) if mask is None else jnp.sum(mask, axis=1, keepdims=True)  # (B, 1)
    i = jnp.arange(-pad, frames + pad)[None, :]  # (1, T + 2p)
    period = jnp.maximum(2 * (n - 1), 1)
    r = jnp.mod(i, period)  # in [0, period)
    idx = jnp.clip(jnp.where(r >= n, period - r, r), 0, frames - 1)  # (B, T + 2p)
    return jnp.take_along_axis(x, idx[..., None], axis=1)


__all__ = ["PADDINGS", "BatchNorm", "batch_norm", "conv1d", "conv_input", "reflect_pad"]
