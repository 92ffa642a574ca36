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
as in WeSpeaker since PR #68. Submodule names are WeSpeaker's state_dict prefixes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecapa_jax.layers import BatchNorm, Conv1dReluBn, SERes2Block, conv1d, stat_dtype
from ecapa_jax.pooling import POOLINGS, make_pooling

Array = jnp.ndarray


def config_from_dict(cls, d: dict[str, Any]):
    """``cls(**d)`` for a flat config dataclass, naming any key that is not one of its fields."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected a subset of {sorted(fields)}")
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class EcapaConfig:
    """Hyper-parameters of an ECAPA-TDNN; the presets are WeSpeaker's registered variants.

    Attributes:
      channels: C, the width of the three SE-Res2 blocks (512 or 1024 in WeSpeaker).
      feat_dim: F, mel bins of the input features.
      embed_dim: E, size of the speaker embedding.
      pooling: one of ``ecapa_jax.pooling.POOLINGS`` (WeSpeaker's ``pooling_func``).
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
    def wespeaker_name(self) -> str:
        """The WeSpeaker factory that builds this architecture, e.g. ``ECAPA_TDNN_GLOB_c512``."""
        return f"ECAPA_TDNN_{'GLOB_' if self.global_context_att else ''}c{self.channels}"

    def replace(self, **changes) -> EcapaConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EcapaConfig:
        return config_from_dict(cls, d)


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
