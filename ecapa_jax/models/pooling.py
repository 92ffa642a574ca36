"""Temporal pooling: frame-level features (B, T, C) → one utterance vector (B, D).

The family surveyed for speaker recognition, from plain statistics to multi-query multi-head
attentive statistics pooling (Zhao et al., arXiv:2110.05042), with WeSpeaker's epsilons and its
unbiased-variance quirks so converted checkpoints give the same numbers:

=========  ====================================================  =============
module     statistic                                             D
=========  ====================================================  =============
TAP        mean_t x                                              C
TSDP       sqrt(var_t x + 1e-7), unbiased var                    C
TSTP       [TAP, TSDP]                                           2C
ASTP       attention-weighted [mean, std] (± global context)     2C
MHASTP     ASTP per channel group (head)                         2C
MQMHASTP   MHASTP per query, concatenated                        2C·query_num
SAP        attention-weighted mean, one score per frame          C
=========  ====================================================  =============

The statistics are pure functions (``ecapa_jax.stats.temporal_mean``/``temporal_std``, and here
``attention_weights``, ``attentive_statistics``) computed in at least float32 (``stats.stat_dtype``:
float32 for bf16/fp32 compute, float64 for a float64 run). Every pooling takes an optional ``(B, T)`` mask of
valid frames, so a padded batch pools exactly like its unpadded utterances.

Leaf names follow WeSpeaker (``linear1``, ``linear2``, ``heads_att_trans_0/att_1``, ``n_query_0``).
Attention projections are 1×1 convolutions, as WeSpeaker's ``Conv1d(k=1)``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecapa_jax.models.layers import BatchNorm
from ecapa_jax.stats import STD_EPS, stat_dtype, temporal_mean, temporal_std

Array = jnp.ndarray
Dtype = Any

SPEECHBRAIN_STD_EPS = 1e-12  # SpeechBrain's AttentiveStatisticsPooling.eps (a clamp of the variance)
ASTP_VARIANTS = ("wespeaker", "speechbrain")

# ----------------------------------------------------------------------------- pure statistics


def attention_weights(scores: Array, mask: Array | None = None) -> Array:
    """Softmax over time. scores: (B, T, D); mask: (B, T). Returns (B, T, D) in ``stat_dtype``."""
    scores = scores.astype(stat_dtype(scores.dtype))
    if mask is not None:
        scores = jnp.where(mask[..., None], scores, -jnp.inf)
    return nn.softmax(scores, axis=1)


def attentive_statistics(x: Array, alpha: Array, eps: float = STD_EPS, centered: bool = False) -> Array:
    """Attention-weighted mean and standard deviation (Okabe et al., arXiv:1803.10963).

    mu = Σ_t α_t x_t,  sigma = sqrt(max(Σ_t α_t x_t² − mu², eps)): the biased, weighted E[x²] − E[x]² form
    that WeSpeaker uses, clamped (not offset) by ``eps``. With ``centered``, sigma = sqrt(max(Σ_t α_t
    (x_t − mu)², eps)) as SpeechBrain writes it (equal in exact arithmetic; it does not cancel when
    |mu| ≫ sigma).

    Args:
      x: (B, T, C).
      alpha: (B, T, C) or (B, T, 1) weights summing to one over T (zero on padded frames).
      eps: lower clamp of the variance (WeSpeaker 1e-7, SpeechBrain 1e-12).
      centered: SpeechBrain's centred form of the variance.

    Returns:
      (B, 2C) in ``stat_dtype``: [mu, sigma].
    """
    x = x.astype(stat_dtype(x.dtype))
    mean = jnp.sum(alpha * x, axis=1)  # (B, C)
    if centered:
        var = jnp.sum(alpha * jnp.square(x - mean[:, None, :]), axis=1)
    else:
        var = jnp.sum(alpha * jnp.square(x), axis=1) - jnp.square(mean)
    return jnp.concatenate([mean, jnp.sqrt(jnp.maximum(var, eps))], axis=-1)


def _conv1x1(features: int, dtype: Dtype, name: str) -> nn.Conv:
    return nn.Conv(features, kernel_size=(1,), dtype=dtype, param_dtype=jnp.float32, name=name)


# ----------------------------------------------------------------------------- modules


class _GlobalContextConv1x1(nn.Module):
    """The 1×1 conv of [x, context broadcast over time]: (B, T, C), (B, D) → (B, T, features).

    Same leaves as ``nn.Conv`` on the concatenation (``kernel`` (1, C + D, features), ``bias``), but the
    context rows of the kernel are applied once per utterance rather than at every frame: WeSpeaker's
    concatenation materialises (B, T, 3C) and spends 2/3 of this conv's multiply-adds on a constant.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, context: Array) -> Array:
        channels = x.shape[-1]
        shape = (1, channels + context.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32).astype(self.dtype)
        per_utt = context.astype(self.dtype) @ kernel[0, channels:] + bias  # (B, features)
        return x.astype(self.dtype) @ kernel[0, :channels] + per_utt[:, None, :]  # (B, T, features)


class _AttentionScorer(nn.Module):
    """1×1 convs ``att_0`` … ``att_{n-1}`` of the given widths with tanh between. (B, T, d) → (B, T, widths[-1])."""

    widths: tuple[int, ...]
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        for i, width in enumerate(self.widths):
            x = _conv1x1(width, self.dtype, f"att_{i}")(x)
            if i < len(self.widths) - 1:
                x = jnp.tanh(x)
        return x


class TAP(nn.Module):
    """Temporal average pooling. (B, T, C) → (B, C)."""

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        del train  # no batch statistics
        return temporal_mean(x, mask)

    def out_dim(self, in_dim: int) -> int:
        return in_dim


class TSDP(nn.Module):
    """Temporal standard-deviation pooling. (B, T, C) → (B, C)."""

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        del train  # no batch statistics
        return temporal_std(x, mask)

    def out_dim(self, in_dim: int) -> int:
        return in_dim


class TSTP(nn.Module):
    """Temporal statistics pooling, [mean, std] as in the x-vector. (B, T, C) → (B, 2C)."""

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        del train  # no batch statistics
        return jnp.concatenate([temporal_mean(x, mask), temporal_std(x, mask)], axis=-1)

    def out_dim(self, in_dim: int) -> int:
        return 2 * in_dim


class ASTP(nn.Module):
    """Attentive statistics pooling (Desplanques et al., arXiv:2005.07143), channel-wise attention.

    α = softmax_t(linear2(tanh(linear1(x_in)))), where x_in is x or, with ``global_context_att``,
    [x, mean_t x, std_t x] broadcast over time (computed without materialising the (B, T, 3C)
    concatenation, see ``_GlobalContextConv1x1``). The statistics are always taken of x itself.

    ``variant`` selects whose numerics:

    - ``'wespeaker'``: no ReLU/BN in the attention; the context std uses the unbiased variance + 1e-7;
      the pooled std is sqrt(max(E_α[x²] − E_α[x]², 1e-7)).
    - ``'speechbrain'`` (``AttentiveStatisticsPooling``): linear1 is a TDNN block, linear1 → ReLU → BN
      (leaf ``bn``) before the tanh; the context mean/std are the uniform-weight case of the pooled
      statistics; every std is the centred, biased sqrt(max(Σ α (x − mu)², 1e-12)).

    (B, T, C) → (B, 2C).
    """

    bottleneck_dim: int = 128
    global_context_att: bool = False
    dtype: Dtype = jnp.float32
    variant: str = "wespeaker"

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        if self.variant not in ASTP_VARIANTS:
            raise ValueError(f"ASTP variant {self.variant!r} is not one of {ASTP_VARIANTS}")
        speechbrain = self.variant == "speechbrain"
        eps = SPEECHBRAIN_STD_EPS if speechbrain else STD_EPS
        channels = x.shape[-1]
        if self.global_context_att:
            if speechbrain:
                m = jnp.ones(x.shape[:2], jnp.float32) if mask is None else mask.astype(jnp.float32)  # (B, T)
                uniform = (m / jnp.sum(m, axis=1, keepdims=True))[..., None]  # (B, T, 1)
                context = attentive_statistics(x, uniform, eps, centered=True)  # (B, 2C)
            else:
                context = jnp.concatenate([temporal_mean(x, mask), temporal_std(x, mask)], axis=-1)  # (B, 2C)
            h = _GlobalContextConv1x1(self.bottleneck_dim, self.dtype, name="linear1")(x, context)
        else:
            h = _conv1x1(self.bottleneck_dim, self.dtype, "linear1")(x)  # (B, T, bottleneck)
        if speechbrain:
            h = BatchNorm(dtype=self.dtype, name="bn")(nn.relu(h), train=train, mask=mask)
        scores = _conv1x1(channels, self.dtype, "linear2")(jnp.tanh(h))  # (B, T, C)
        return attentive_statistics(x, attention_weights(scores, mask), eps, centered=speechbrain)

    def out_dim(self, in_dim: int) -> int:
        return 2 * in_dim


class MHASTP(nn.Module):
    """Multi-head attentive statistics pooling (India et al., arXiv:1906.09890).

    The channels are split into ``head_num`` groups of d = C/head_num. Each head scores frames with
    ``layer_num`` 1×1 convs (tanh between them; widths d → bottleneck … → d_s) and pools its group
    with ``attentive_statistics``. ``d_s > 1`` means one score per channel (d_s = d), else one
    score per frame. Leaves ``heads_att_trans_{h}/att_{i}``. (B, T, C) → (B, 2C).
    """

    layer_num: int = 2
    head_num: int = 2
    d_s: int = 1
    bottleneck_dim: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        del train  # no batch statistics
        channels = x.shape[-1]
        if channels % self.head_num:
            raise ValueError(f"MHASTP input channels {channels} are not divisible by head_num {self.head_num}")
        d_model = channels // self.head_num
        widths = [self.bottleneck_dim] * (self.layer_num - 1) + [d_model if self.d_s > 1 else 1]
        out = []
        for h, chunk in enumerate(jnp.split(x, self.head_num, axis=-1)):  # (B, T, d_model)
            scores = _AttentionScorer(tuple(widths), self.dtype, name=f"heads_att_trans_{h}")(chunk)
            out.append(attentive_statistics(chunk, attention_weights(scores, mask)))  # (B, 2·d_model)
        return jnp.concatenate(out, axis=-1)

    def out_dim(self, in_dim: int) -> int:
        return 2 * in_dim


class MQMHASTP(nn.Module):
    """Multi-query multi-head attentive statistics pooling (Zhao et al., arXiv:2110.05042).

    ``query_num`` independent MHASTPs over the same input, concatenated. Leaves ``n_query_{q}``.
    (B, T, C) → (B, 2C·query_num).
    """

    layer_num: int = 2
    query_num: int = 2
    head_num: int = 8
    d_s: int = 2
    bottleneck_dim: int = 64
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        del train  # no batch statistics
        queries = [
            MHASTP(self.layer_num, self.head_num, self.d_s, self.bottleneck_dim, self.dtype, name=f"n_query_{q}")(
                x, mask
            )
            for q in range(self.query_num)
        ]
        return jnp.concatenate(queries, axis=-1)

    def out_dim(self, in_dim: int) -> int:
        return 2 * in_dim * self.query_num


class SAP(nn.Module):
    """Self-attentive pooling (Cai et al., arXiv:1804.05160): a weighted mean over frames.

    h_t = tanh(linear(x_t)), w = softmax_t(h_t · attention), output Σ_t w_t x_t. One scalar weight
    per frame, shared by all channels. Leaves ``linear`` (1×1 conv C → bottleneck) and
    ``attention`` (the learned context vector, shape (bottleneck,)). (B, T, C) → (B, C).
    """

    bottleneck_dim: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None = None, *, train: bool = False) -> Array:
        del train  # no batch statistics
        h = jnp.tanh(_conv1x1(self.bottleneck_dim, self.dtype, "linear")(x))  # (B, T, bottleneck)
        u = self.param("attention", nn.initializers.normal(stddev=0.1), (self.bottleneck_dim,), jnp.float32)
        w = attention_weights(h.astype(stat_dtype(h.dtype)) @ u[:, None], mask)  # (B, T, 1)
        return jnp.sum(w * x.astype(stat_dtype(x.dtype)), axis=1)

    def out_dim(self, in_dim: int) -> int:
        return in_dim


POOLINGS: dict[str, type[nn.Module]] = {
    "TAP": TAP,
    "TSDP": TSDP,
    "TSTP": TSTP,
    "ASTP": ASTP,
    "MHASTP": MHASTP,
    "MQMHASTP": MQMHASTP,
    "SAP": SAP,
}


def make_pooling(
    kind: str,
    *,
    global_context_att: bool = False,
    dtype: Dtype = jnp.float32,
    variant: str = "wespeaker",
    bottleneck_dim: int = 128,
    **kwargs,
) -> nn.Module:
    """The pooling ``kind`` (a key of ``POOLINGS``) with WeSpeaker's defaults, as ECAPA builds it.

    ``global_context_att``, ``variant`` and ``bottleneck_dim`` only affect ASTP (WeSpeaker's other poolings
    ignore the first too). Other keyword arguments (``name``, hyper-parameters) go to the module. Every
    pooling is called as ``pool(x (B, T, C), mask (B, T) or None, train=...)``.
    """
    if kind not in POOLINGS:
        raise ValueError(f"unknown pooling {kind!r}; expected one of {sorted(POOLINGS)}")
    cls = POOLINGS[kind]
    if cls is ASTP:
        kwargs |= {"global_context_att": global_context_att, "variant": variant, "bottleneck_dim": bottleneck_dim}
    if cls in (ASTP, MHASTP, MQMHASTP, SAP):
        kwargs["dtype"] = dtype
    return cls(**kwargs)
