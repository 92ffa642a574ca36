"""ECAPA-TDNN as in WeSpeaker (Desplanques et al., arXiv:2005.07143), channels-last.

Shape letters: B batch, T frames, F mel bins, C channels, E embedding size.

    feats (B, T, F)
      layer1   conv k5 → ReLU → BN                         (B, T, C)
      layer2   SE-Res2 block, k3, dilation 2               (B, T, C)
      layer3   SE-Res2 block, k3, dilation 3               (B, T, C)
      layer4   SE-Res2 block, k3, dilation 4               (B, T, C)
      MFA      [out2, out3, out4]                          (B, T, 3C)
      conv     1×1 conv to 1536, then ReLU (no BN)         (B, T, 1536)
      pool     ASTP (± global context) or another pooling  (B, D)
      bn       BatchNorm                                   (B, D)
      linear   dense to E                                  (B, E)
      bn2      BatchNorm if ``emb_bn``                     (B, E)

The blocks run sequentially (no dense connections between them) and 1536 is fixed whatever C,
as in WeSpeaker since PR #68.

Every module is named after the WeSpeaker checkpoint leaf it holds (``conv``, ``bn``, ``convs_3``,
``se_res2block_1``, ``linear1``), so the converter is a table: the PyTorch key
``layer2.se_res2block.1.convs.3.weight`` is the Flax leaf ``layer2/se_res2block_1/convs_3/kernel``.

``mask`` arguments are ``(B, T)`` booleans marking the valid frames of a padded batch. WeSpeaker has no
masks (it embeds one whole utterance at a time); with a mask, every time-mixing operation (dilated convs,
means over time, batch statistics, pooling) sees exactly what it would see for the unpadded utterance, so
a padded batch gives the embeddings of one-at-a-time inference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecapa_jax.config import from_dict
from ecapa_jax.models.layers import BatchNorm, conv1d
from ecapa_jax.models.pooling import POOLINGS, UtteranceStats, make_pooling
from ecapa_jax.stats import apply_mask, stat_dtype

Array = jnp.ndarray
Dtype = Any


# ----------------------------------------------------------------------------- blocks


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


def squeeze_excitation(x: Array, excite: Callable[[Array], Array], squeezed: Array) -> Array:
    """Squeeze-and-excitation: x · excite(mean_t x), channel-wise (Hu et al., arXiv:1709.01507).

    Args:
      x: (B, T, C).
      excite: maps the (B, C) time-average to (B, C) gates in [0, 1].
      squeezed: (B, C), mean_t x over the valid frames (``SEConnect`` takes it from ``UtteranceStats``).

    Returns:
      (B, T, C).
    """
    gates = excite(squeezed)  # (B, C)
    return x * gates[:, None, :]


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
    """Squeeze-excitation with a ``bottleneck`` hidden layer: leaves ``linear1``, ``linear2``.

    The squeeze is the one reduction over time inside the frame-level layers (``UtteranceStats``).
    """

    bottleneck: int = 128
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        channels = x.shape[-1]
        dense = lambda n, name: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32, name=name)  # noqa: E731

        def excite(s: Array) -> Array:  # (B, C) → (B, C)
            return nn.sigmoid(dense(channels, "linear2")(nn.relu(dense(self.bottleneck, "linear1")(s))))

        return squeeze_excitation(x, excite, UtteranceStats("mean", name="squeeze")(x, mask))


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


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class EcapaConfig:
    """Hyper-parameters of an ECAPA-TDNN; the presets are WeSpeaker's registered variants.

    Attributes:
      channels: C, the width of the three SE-Res2 blocks (512 or 1024 in WeSpeaker).
      feat_dim: F, mel bins of the input features.
      embed_dim: E, size of the speaker embedding.
      pooling: one of ``ecapa_jax.models.pooling.POOLINGS`` (WeSpeaker's ``pooling_func``).
      global_context_att: ASTP attention sees [x, mean, std] (WeSpeaker's ``GLOB`` variants).
      emb_bn: BatchNorm on the embedding (``bn2``); WeSpeaker's default is off (DINO turns it on).
      mfa_dim: channels of the multi-layer feature aggregation conv (1536 in WeSpeaker).
      scale: Res2 split count.
      se_bottleneck: hidden width of the squeeze-excitation.
      dtype: compute dtype name ('float32', 'bfloat16'; 'float64' with x64 for oracle runs); parameters
        are stored in float32 and BN statistics, pooling and the embedding head run in at least float32.
    """

    channels: int = 512
    feat_dim: int = 80
    embed_dim: int = 192
    pooling: str = "ASTP"
    global_context_att: bool = False
    emb_bn: bool = False
    mfa_dim: int = 1536
    scale: int = 8
    se_bottleneck: int = 128
    dtype: str = "float32"

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {sorted(POOLINGS)}")
        if self.channels % self.scale:
            raise ValueError(f"channels={self.channels} must be divisible by scale={self.scale}")

    @classmethod
    def c512(cls, **overrides) -> EcapaConfig:
        return cls(channels=512, global_context_att=False, **overrides)

    @classmethod
    def c1024(cls, **overrides) -> EcapaConfig:
        return cls(channels=1024, global_context_att=False, **overrides)

    @classmethod
    def glob_c512(cls, **overrides) -> EcapaConfig:
        return cls(channels=512, global_context_att=True, **overrides)

    @classmethod
    def glob_c1024(cls, **overrides) -> EcapaConfig:
        return cls(channels=1024, global_context_att=True, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> EcapaConfig:
        """A preset by name: ``c512``, ``c1024``, ``glob_c512``, ``glob_c1024``."""
        if name not in PRESETS:
            raise ValueError(f"unknown ECAPA preset {name!r}; expected one of {sorted(PRESETS)}")
        return PRESETS[name](**overrides)

    @property
    def context_frames(self) -> int:
        """Frames on each side of a frame that its frame-level features depend on (half the receptive field).

        layer1's k = 5 conv reaches 2 frames; each SE-Res2 block chains max(scale − 1, 1) k = 3 convs of its
        dilation d (the Res2 cascade), reaching that many times d; the 1×1 convs and the pooling's attention
        reach none. 2 + 7 · (2 + 3 + 4) = 65 for WeSpeaker's ECAPAs. Long-form evaluation
        (``ecapa_jax.models.long_form``) reads chunks with this many frames of halo.
        """
        return 2 + max(self.scale - 1, 1) * (2 + 3 + 4)

    @property
    def wespeaker_name(self) -> str:
        """The WeSpeaker factory that builds this architecture, e.g. ``ECAPA_TDNN_GLOB_c512``."""
        return f"ECAPA_TDNN_{'GLOB_' if self.global_context_att else ''}c{self.channels}"

    def replace(self, **changes) -> EcapaConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EcapaConfig:
        return from_dict(cls, d)


PRESETS = {
    "c512": EcapaConfig.c512,
    "c1024": EcapaConfig.c1024,
    "glob_c512": EcapaConfig.glob_c512,
    "glob_c1024": EcapaConfig.glob_c1024,
}


class ECAPA_TDNN(nn.Module):  # noqa: N801 - WeSpeaker's class name, kept for recognisability
    """ECAPA-TDNN speaker encoder. ``(B, T, F) → (B, E)``.

    Call with ``train=True`` to normalise with batch statistics and update the running averages
    (pass ``mutable=['batch_stats']`` to ``apply``); ``train=False`` uses the running averages.

    Returns:
      ``(embedding, out)``: the (B, E) embedding (float32, or float64 in a float64 run) and a dict of
      named intermediates:
      ``frame_features`` (B, T, mfa_dim), the MFA conv output before its ReLU (WeSpeaker's
      ``get_frame_level_feat``); ``out4`` (B, T, C), the last block's output (the first element
      of WeSpeaker's forward tuple); ``pooled`` (B, D), the pooling output.
    """

    config: EcapaConfig = EcapaConfig()

    @nn.compact
    def __call__(self, feats: Array, *, train: bool = False, mask: Array | None = None) -> tuple[Array, dict]:
        """Args: feats (B, T, F) mean-normalised fbank; mask (B, T) valid frames or None."""
        cfg = self.config
        if feats.ndim != 3 or feats.shape[-1] != cfg.feat_dim:
            raise ValueError(f"ECAPA_TDNN expects features of shape (B, T, {cfg.feat_dim}), got {feats.shape}")
        dtype = jnp.dtype(cfg.dtype)
        x = feats.astype(dtype)

        def block(dilation: int, name: str) -> SERes2Block:
            return SERes2Block(3, dilation, cfg.scale, cfg.se_bottleneck, dtype, name=name)

        out1 = Conv1dReluBn(cfg.channels, 5, dtype=dtype, name="layer1")(x, train=train, mask=mask)  # (B, T, C)
        out2 = block(2, "layer2")(out1, train=train, mask=mask)
        out3 = block(3, "layer3")(out2, train=train, mask=mask)
        out4 = block(4, "layer4")(out3, train=train, mask=mask)  # (B, T, C)

        mfa = jnp.concatenate([out2, out3, out4], axis=-1)  # (B, T, 3C)
        frames = conv1d(cfg.mfa_dim, 1, 1, dtype, "conv")(mfa)  # (B, T, 1536)
        pool = make_pooling(cfg.pooling, global_context_att=cfg.global_context_att, dtype=dtype, name="pool")
        pooled = pool(nn.relu(frames), mask)  # (B, D)

        head_dtype = stat_dtype(dtype)  # float32, or float64 for a float64 oracle run
        x = BatchNorm(dtype=head_dtype, name="bn")(pooled, train=train)
        emb = nn.Dense(cfg.embed_dim, dtype=head_dtype, param_dtype=jnp.float32, name="linear")(x)  # (B, E)
        if cfg.emb_bn:
            emb = BatchNorm(dtype=head_dtype, name="bn2")(emb, train=train)
        return emb, {"frame_features": frames, "out4": out4, "pooled": pooled}


__all__ = [
    "ECAPA_TDNN",
    "PRESETS",
    "Conv1dReluBn",
    "EcapaConfig",
    "Res2Conv1dReluBn",
    "SEConnect",
    "SERes2Block",
    "res2_cascade",
    "squeeze_excitation",
]
