"""ECAPA-TDNN as in WeSpeaker and SpeechBrain (Desplanques et al., arXiv:2005.07143), channels-last.

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
as in WeSpeaker since PR #68. That is the default ``EcapaConfig``; kernel sizes and dilations of
layer1, the blocks and the MFA conv are the ``kernel_sizes`` / ``dilations`` tuples (their length sets
the number of blocks).

SpeechBrain's ``ECAPA_TDNN`` (``speechbrain.lobes.models.ECAPA_TDNN``) is the same network with other
choices, each an ``EcapaConfig`` option (``EcapaConfig.speechbrain_c1024()`` is ``spkrec-ecapa-voxceleb``):

    =========================  ============================  ==================================
    option                     WeSpeaker (default)           SpeechBrain
    =========================  ============================  ==================================
    ``padding``                'zeros'                       'reflect' ('same', per valid row)
    ``res2_identity``          'last' chunk passes through   'first' chunk passes through
    ``mfa_bn``                 conv → ReLU                   conv → ReLU → BN (leaf ``mfa_bn``)
    ``attention``              'wespeaker' ASTP              'speechbrain': ReLU → BN in the
                                                             attention, centred biased std, 1e-12
    ``mfa_dim``                1536                          channels[-1] (3072 in spkrec-ecapa)
    =========================  ============================  ==================================

SpeechBrain masks by *relative* lengths rounded to frames; here the masks are exact ``(B, T)`` frame
masks (a padded batch equals one-at-a-time inference, which is what SpeechBrain's ``encode_batch`` gives
for a single utterance).

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
from ecapa_jax.models.layers import PADDINGS, BatchNorm, conv1d, conv_input
from ecapa_jax.models.pooling import ASTP_VARIANTS, POOLINGS, make_pooling
from ecapa_jax.stats import stat_dtype, temporal_mean

Array = jnp.ndarray
Dtype = Any


# ----------------------------------------------------------------------------- blocks


RES2_IDENTITIES = ("last", "first")


def res2_cascade(x: Array, branch: Callable[[int, Array], Array], scale: int, identity: str = "last") -> Array:
    """The Res2Net hierarchical split, with the pass-through chunk last (WeSpeaker) or first (SpeechBrain).

    The channels are split into ``scale`` chunks. With ``identity='last'`` (WeSpeaker): sp_0 = f_0(x_0),
    sp_i = f_i(sp_{i-1} + x_i) for i < s-1, and the *last* chunk passes through unchanged. With
    ``identity='first'`` (SpeechBrain's ``Res2NetBlock``, and the Res2Net paper) the first chunk passes
    through and the same cascade runs on x_1..x_{s-1}. With ``scale == 1`` the output is f_0(x).

    Args:
      x: (B, T, C) with C divisible by ``scale``.
      branch: ``branch(i, h)`` applies the i-th conv→ReLU→BN to h: (B, T, C/scale).
      scale: number of chunks.
      identity: which chunk passes through, 'last' or 'first'.

    Returns:
      (B, T, C) for ``scale > 1``; (B, T, C') for ``scale == 1``.
    """
    chunks = jnp.split(x, scale, axis=-1)  # scale × (B, T, C/scale)
    passed = []
    if scale != 1:
        passed = [chunks.pop(-1 if identity == "last" else 0)]
    outs = []
    sp = None
    for i, chunk in enumerate(chunks):
        sp = branch(i, chunk if i == 0 else sp + chunk)
        outs.append(sp)
    return jnp.concatenate(outs + passed if identity == "last" else passed + outs, axis=-1)


def squeeze_excitation(x: Array, excite: Callable[[Array], Array], mask: Array | None = None) -> Array:
    """Squeeze-and-excitation: x · excite(mean_t x), channel-wise (Hu et al., arXiv:1709.01507).

    Args:
      x: (B, T, C).
      excite: maps the (B, C) time-average to (B, C) gates in [0, 1].
      mask: (B, T) valid frames, or None.

    Returns:
      (B, T, C).
    """
    gates = excite(temporal_mean(x, mask))  # (B, C)
    return x * gates[:, None, :]


class Conv1dReluBn(nn.Module):
    """conv → ReLU → bn (WeSpeaker's and SpeechBrain's TDNN order, not conv → BN → ReLU).

    (B, T, C_in) → (B, T, features); ``padding`` is the conv's 'same' padding ('zeros' or 'reflect').
    """

    features: int
    kernel_size: int = 1
    dilation: int = 1
    dtype: Dtype = jnp.float32
    padding: str = "zeros"

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        conv = conv1d(self.features, self.kernel_size, self.dilation, self.dtype, "conv", padding=self.padding)
        x = conv(conv_input(x, mask, self.kernel_size, self.dilation, self.padding))
        x = nn.relu(x)  # (B, T, features)
        return BatchNorm(dtype=self.dtype, name="bn")(x, train=train, mask=mask)


class Res2Conv1dReluBn(nn.Module):
    """Res2 dilated conv: ``scale − 1`` chained conv→ReLU→BN branches of width C/scale (``res2_cascade``).

    Leaves ``convs_i`` and ``bns_i``. (B, T, C) → (B, T, C).
    """

    kernel_size: int = 3
    dilation: int = 1
    scale: int = 8
    dtype: Dtype = jnp.float32
    padding: str = "zeros"
    identity: str = "last"

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        channels = x.shape[-1]
        if channels % self.scale:
            raise ValueError(f"Res2 channels {channels} are not divisible by scale {self.scale}")
        width = channels // self.scale

        def branch(i: int, h: Array) -> Array:  # (B, T, width) → (B, T, width)
            conv = conv1d(width, self.kernel_size, self.dilation, self.dtype, f"convs_{i}", padding=self.padding)
            h = nn.relu(conv(conv_input(h, mask, self.kernel_size, self.dilation, self.padding)))
            return BatchNorm(dtype=self.dtype, name=f"bns_{i}")(h, train=train, mask=mask)

        return res2_cascade(x, branch, self.scale, self.identity)


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
    padding: str = "zeros"
    res2_identity: str = "last"

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        channels = x.shape[-1]
        h = Conv1dReluBn(channels, 1, dtype=self.dtype, name="se_res2block_0")(x, train=train, mask=mask)
        res2 = Res2Conv1dReluBn(
            self.kernel_size,
            self.dilation,
            self.scale,
            self.dtype,
            self.padding,
            self.res2_identity,
            name="se_res2block_1",
        )
        h = res2(h, train=train, mask=mask)
        h = Conv1dReluBn(channels, 1, dtype=self.dtype, name="se_res2block_2")(h, train=train, mask=mask)
        h = SEConnect(self.se_bottleneck, self.dtype, name="se_res2block_3")(h, mask=mask)
        return x + h  # (B, T, C)


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class EcapaConfig:
    """Hyper-parameters of an ECAPA-TDNN; the presets are WeSpeaker's registered variants and SpeechBrain's.

    Attributes:
      channels: C, the width of layer1 and the SE-Res2 blocks (512 or 1024 in WeSpeaker).
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
      kernel_sizes: kernel of layer1, of each SE-Res2 block's Res2 convs, and of the MFA conv; its length
        minus 2 is the number of blocks (SpeechBrain's ``kernel_sizes``).
      dilations: the same layers' dilations (SpeechBrain's ``dilations``).
      padding: 'zeros' (WeSpeaker) or 'reflect' (SpeechBrain): the 'same' padding of every conv.
      res2_identity: which Res2 chunk passes through, 'last' (WeSpeaker) or 'first' (SpeechBrain).
      mfa_bn: BatchNorm after the MFA conv's ReLU (SpeechBrain's ``mfa`` TDNN block; leaf ``mfa_bn``).
      attention: the ASTP variant, 'wespeaker' or 'speechbrain' (see ``ecapa_jax.models.pooling.ASTP``).
      attention_dim: the attention bottleneck (SpeechBrain's ``attention_channels``; 128 in WeSpeaker).
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
    kernel_sizes: tuple[int, ...] = (5, 3, 3, 3, 1)
    dilations: tuple[int, ...] = (1, 2, 3, 4, 1)
    padding: str = "zeros"
    res2_identity: str = "last"
    mfa_bn: bool = False
    attention: str = "wespeaker"
    attention_dim: int = 128

    def __post_init__(self):
        # JSON gives lists: keep the config hashable (it is a static argument of jitted functions).
        object.__setattr__(self, "kernel_sizes", tuple(self.kernel_sizes))
        object.__setattr__(self, "dilations", tuple(self.dilations))
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; expected one of {sorted(POOLINGS)}")
        if self.channels % self.scale:
            raise ValueError(f"channels={self.channels} must be divisible by scale={self.scale}")
        if len(self.kernel_sizes) != len(self.dilations) or len(self.kernel_sizes) < 3:
            raise ValueError(
                f"kernel_sizes {self.kernel_sizes} and dilations {self.dilations} must have one entry per layer "
                "(layer1, each SE-Res2 block, the MFA conv): the same length, at least 3"
            )
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes) or any(d < 1 for d in self.dilations):
            raise ValueError(f"kernel_sizes must be odd and dilations >= 1, got {self.kernel_sizes}, {self.dilations}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding {self.padding!r} is not one of {PADDINGS}")
        if self.res2_identity not in RES2_IDENTITIES:
            raise ValueError(f"res2_identity {self.res2_identity!r} is not one of {RES2_IDENTITIES}")
        if self.attention not in ASTP_VARIANTS:
            raise ValueError(f"attention {self.attention!r} is not one of {ASTP_VARIANTS}")
        if self.attention != "wespeaker" and self.pooling != "ASTP":
            raise ValueError(f"attention={self.attention!r} is an ASTP variant; pooling is {self.pooling!r}")

    @property
    def num_blocks(self) -> int:
        """The number of SE-Res2 blocks (3 in WeSpeaker and spkrec-ecapa-voxceleb)."""
        return len(self.kernel_sizes) - 2

    @property
    def is_wespeaker(self) -> bool:
        """True when WeSpeaker's ``ECAPA_TDNN`` class can hold this architecture (its fixed layer choices)."""
        wespeaker = EcapaConfig()
        fixed = ("kernel_sizes", "dilations", "padding", "res2_identity", "mfa_bn", "attention", "attention_dim")
        return all(getattr(self, f) == getattr(wespeaker, f) for f in fixed)

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
    def speechbrain(cls, channels: int = 512, mfa_dim: int = 1536, **overrides) -> EcapaConfig:
        """SpeechBrain's ``ECAPA_TDNN(input_size=80, channels=[C, C, C, C, mfa_dim])`` with its other defaults.

        Reflect padding, first Res2 chunk passed through, BN after the MFA conv, SpeechBrain's attentive
        statistics with global context, kernel sizes (5, 3, 3, 3, 1), dilations (1, 2, 3, 4, 1).
        """
        fields = dict(
            channels=channels,
            mfa_dim=mfa_dim,
            global_context_att=True,
            padding="reflect",
            res2_identity="first",
            mfa_bn=True,
            attention="speechbrain",
        )
        return cls(**(fields | overrides))

    @classmethod
    def speechbrain_c512(cls, **overrides) -> EcapaConfig:
        """SpeechBrain's ``ECAPA_TDNN`` class defaults: channels [512, 512, 512, 512, 1536]."""
        return cls.speechbrain(512, 1536, **overrides)

    @classmethod
    def speechbrain_c1024(cls, **overrides) -> EcapaConfig:
        """``spkrec-ecapa-voxceleb``: channels [1024, 1024, 1024, 1024, 3072], 192-d embeddings (20.8 M parameters)."""
        return cls.speechbrain(1024, 3072, **overrides)

    @classmethod
    def preset(cls, name: str, **overrides) -> EcapaConfig:
        """A preset by name: a key of ``PRESETS`` (WeSpeaker's four variants, SpeechBrain's two)."""
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
        return from_dict(cls, d)


PRESETS = {
    "c512": EcapaConfig.c512,
    "c1024": EcapaConfig.c1024,
    "glob_c512": EcapaConfig.glob_c512,
    "glob_c1024": EcapaConfig.glob_c1024,
    "speechbrain_c512": EcapaConfig.speechbrain_c512,
    "speechbrain_c1024": EcapaConfig.speechbrain_c1024,
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
      of WeSpeaker's forward tuple; named after WeSpeaker's three blocks whatever their number);
      ``pooled`` (B, D), the pooling output.
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

        kernels, dilations, padding = cfg.kernel_sizes, cfg.dilations, cfg.padding

        layer1 = Conv1dReluBn(cfg.channels, kernels[0], dilations[0], dtype, padding, name="layer1")
        out = layer1(x, train=train, mask=mask)  # (B, T, C)
        blocks = []
        for i in range(1, cfg.num_blocks + 1):  # layer2, layer3, layer4 in WeSpeaker
            block = SERes2Block(
                kernels[i], dilations[i], cfg.scale, cfg.se_bottleneck, dtype, padding, cfg.res2_identity,
                name=f"layer{i + 1}",
            )  # fmt: skip
            out = block(out, train=train, mask=mask)  # (B, T, C)
            blocks.append(out)

        mfa = jnp.concatenate(blocks, axis=-1)  # (B, T, num_blocks·C)
        mfa_conv = conv1d(cfg.mfa_dim, kernels[-1], dilations[-1], dtype, "conv", padding=padding)
        frames = mfa_conv(conv_input(mfa, mask, kernels[-1], dilations[-1], padding))  # (B, T, mfa_dim)
        x = nn.relu(frames)
        if cfg.mfa_bn:
            x = BatchNorm(dtype=dtype, name="mfa_bn")(x, train=train, mask=mask)
        pool = make_pooling(
            cfg.pooling,
            global_context_att=cfg.global_context_att,
            dtype=dtype,
            variant=cfg.attention,
            bottleneck_dim=cfg.attention_dim,
            name="pool",
        )
        pooled = pool(x, mask, train=train)  # (B, D)

        head_dtype = stat_dtype(dtype)  # float32, or float64 for a float64 oracle run
        x = BatchNorm(dtype=head_dtype, name="bn")(pooled, train=train)
        emb = nn.Dense(cfg.embed_dim, dtype=head_dtype, param_dtype=jnp.float32, name="linear")(x)  # (B, E)
        if cfg.emb_bn:
            emb = BatchNorm(dtype=head_dtype, name="bn2")(emb, train=train)
        return emb, {"frame_features": frames, "out4": out, "pooled": pooled}


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
