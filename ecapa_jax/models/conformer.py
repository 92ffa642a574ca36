"""Conformer blocks (Gulati et al., arXiv:2005.08100) as torchaudio's ``Conformer``, and the Conformer speaker model.

Shape letters: B batch, T frames, D model width (``d_model``), K the depthwise kernel.

One ``ConformerLayer`` (torchaudio's ``ConformerLayer``; the Macaron feed-forward halves around attention
and convolution):

    x = x + ½ · ffn1(x)                                  LayerNorm → dense D→ff → SiLU → dense ff→D
    x = x + self_attn(self_attn_layer_norm(x))           multi-head self-attention (keys masked)
    x = x + conv_module(x)                               LayerNorm → 1×1 conv D→2D → GLU → depthwise conv K
                                                         → BatchNorm → SiLU → 1×1 conv D→D
    x = x + ½ · ffn2(x)
    x = final_layer_norm(x)                                                              (B, T, D)

(``convolution_first`` moves the convolution module before the attention.) Module names are torchaudio's,
its ``nn.Sequential`` indices merged with ``_`` (``ffn1.sequential.1`` → ``ffn1/sequential_1``,
``conv_module.sequential.2`` → ``conv_module/sequential_2``), so ``ecapa_jax.io.convert.pytorch`` converts
a ``torchaudio.models.Conformer`` state_dict with a table.

Masking. torchaudio masks only the attention's keys: the frames past an utterance's length still feed its
depthwise convolution (and its training BatchNorm statistics), so torchaudio's output for a padded batch
depends on the padding. Here padded frames are zeroed right before the depthwise convolution, which is
exactly the zero 'same' padding that the unpadded utterance sees, and BatchNorm counts valid frames only:
a padded batch equals its utterances run one at a time (through torchaudio or here).

The speaker model (``SpeakerConformer``, family ``conformer``) is ``transformer.SpeakerTransformer`` with
these layers as its encoder: pre-net → Conformer → pooling → embedding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ecapa_jax.config import from_dict
from ecapa_jax.models.layers import BatchNorm, DepthwiseConv1d, conv1d
from ecapa_jax.models.transformer import (
    LAYER_NORM_EPS,
    MultiHeadAttention,
    SpeakerTransformer,
    check_sequence_config,
)
from ecapa_jax.stats import apply_mask

Array = jnp.ndarray
Dtype = Any


def _layer_norm(dtype: Dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(LAYER_NORM_EPS, dtype=dtype, param_dtype=jnp.float32, name=name)


def glu(x: Array) -> Array:
    """Gated linear unit over channels (PyTorch's ``GLU(dim)``): a · σ(b) for x = [a, b]. (…, 2C) → (…, C)."""
    a, b = jnp.split(x, 2, axis=-1)
    return a * nn.sigmoid(b)


class FeedForwardModule(nn.Module):
    """torchaudio's ``_FeedForwardModule``: LayerNorm → dense → SiLU → dropout → dense → dropout.

    Leaves ``sequential_0`` (LayerNorm), ``sequential_1`` (dense D → ff), ``sequential_4`` (dense ff → D).
    (B, T, D) → (B, T, D).
    """

    ff_dim: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool) -> Array:
        d_model = x.shape[-1]
        h = _layer_norm(self.dtype, "sequential_0")(x)
        h = nn.silu(nn.Dense(self.ff_dim, dtype=self.dtype, param_dtype=jnp.float32, name="sequential_1")(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)  # (B, T, ff)
        h = nn.Dense(d_model, dtype=self.dtype, param_dtype=jnp.float32, name="sequential_4")(h)
        return nn.Dropout(self.dropout)(h, deterministic=not train)


class ConvolutionModule(nn.Module):
    """torchaudio's ``_ConvolutionModule`` (BatchNorm variant, biases on), masked. (B, T, D) → (B, T, D).

    Leaves ``layer_norm``; ``sequential_0`` (1×1 conv D → 2D), ``sequential_2`` (depthwise conv, kernel
    (K, 1, D)), ``sequential_3`` (BatchNorm), ``sequential_5`` (1×1 conv D → D). Padded frames are zeroed
    before the depthwise conv; BatchNorm's batch statistics count valid frames only.
    """

    kernel_size: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        d_model = x.shape[-1]
        h = _layer_norm(self.dtype, "layer_norm")(x)
        h = glu(conv1d(2 * d_model, 1, 1, self.dtype, "sequential_0")(h))  # (B, T, D)
        h = DepthwiseConv1d(self.kernel_size, dtype=self.dtype, name="sequential_2")(apply_mask(h, mask))
        h = nn.silu(BatchNorm(dtype=self.dtype, name="sequential_3")(h, train=train, mask=mask))
        h = conv1d(d_model, 1, 1, self.dtype, "sequential_5")(h)  # (B, T, D)
        return nn.Dropout(self.dropout)(h, deterministic=not train)


class ConformerLayer(nn.Module):
    """torchaudio's ``ConformerLayer``. (B, T, D) → (B, T, D).

    Leaves ``ffn1``, ``self_attn_layer_norm``, ``self_attn``, ``conv_module``, ``ffn2``, ``final_layer_norm``.
    """

    num_heads: int
    ff_dim: int
    kernel_size: int
    dropout: float = 0.0
    convolution_first: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        conv = ConvolutionModule(self.kernel_size, self.dropout, self.dtype, name="conv_module")

        x = x + 0.5 * FeedForwardModule(self.ff_dim, self.dropout, self.dtype, name="ffn1")(x, train=train)
        if self.convolution_first:
            x = x + conv(x, train=train, mask=mask)
        h = _layer_norm(self.dtype, "self_attn_layer_norm")(x)
        h = MultiHeadAttention(self.num_heads, self.dropout, self.dtype, name="self_attn")(h, train=train, mask=mask)
        x = x + nn.Dropout(self.dropout)(h, deterministic=not train)
        if not self.convolution_first:
            x = x + conv(x, train=train, mask=mask)
        x = x + 0.5 * FeedForwardModule(self.ff_dim, self.dropout, self.dtype, name="ffn2")(x, train=train)
        return _layer_norm(self.dtype, "final_layer_norm")(x)


class Conformer(nn.Module):
    """torchaudio's ``Conformer``: ``num_layers`` ConformerLayers, leaves ``conformer_layers_i``. (B, T, D) → (B, T, D).

    torchaudio takes ``(input, lengths)`` and returns ``(output, lengths)``; here the lengths are the
    ``(B, T)`` mask (``ecapa_jax.stats.lengths_to_mask``) and only the output is returned.
    """

    num_layers: int
    num_heads: int
    ff_dim: int
    kernel_size: int
    dropout: float = 0.0
    convolution_first: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
        for i in range(self.num_layers):
            layer = ConformerLayer(
                self.num_heads,
                self.ff_dim,
                self.kernel_size,
                self.dropout,
                self.convolution_first,
                self.dtype,
                name=f"conformer_layers_{i}",
            )
            x = layer(x, train=train, mask=mask)
        return x


@dataclasses.dataclass(frozen=True)
class ConformerConfig:
    """A Conformer speaker model (family ``conformer``): pre-net → Conformer → pooling → embedding.

    Attributes:
      feat_dim: F, mel bins of the input features.
      d_model: D, the width of the encoder (torchaudio's ``input_dim``).
      num_layers: Conformer layers.
      num_heads: attention heads; must divide d_model.
      ff_dim: hidden width of the feed-forward halves (torchaudio's ``ffn_dim``).
      depthwise_conv_kernel_size: K, odd (torchaudio requires it for 'same' padding).
      dropout: torchaudio's dropout (feed-forward, attention weights and output, convolution module),
        active in training only.
      convolution_first: the convolution module before the attention (torchaudio's option).
      pooling: one of ``ecapa_jax.models.pooling.POOLINGS`` (SAP: the "boss" set-up).
      pooled_bn: BatchNorm on the pooled vector before the embedding layer (``transformer.py`` says why).
      embed_dim: E, size of the speaker embedding.
      dtype: compute dtype name ('float32', 'bfloat16'); parameters stay float32.
    """

    feat_dim: int = 40
    d_model: int = 120
    num_layers: int = 4
    num_heads: int = 4
    ff_dim: int = 256
    depthwise_conv_kernel_size: int = 15
    dropout: float = 0.1
    convolution_first: bool = False
    pooling: str = "TAP"
    pooled_bn: bool = True
    embed_dim: int = 120
    dtype: str = "float32"

    def __post_init__(self):
        check_sequence_config(self)
        k = self.depthwise_conv_kernel_size
        if k < 1 or k % 2 == 0:
            raise ValueError(
                f"ConformerConfig.depthwise_conv_kernel_size must be odd and >= 1 ('same' padding), got {k}"
            )

    def check_frames(self, frames: int, where: str) -> None:
        """Raises a ValueError naming both fields when inputs of ``frames`` frames (named ``where``) are shorter
        than the depthwise kernel: zero padding would then fill most of every window."""
        if self.depthwise_conv_kernel_size > frames:
            raise ValueError(
                f"model.depthwise_conv_kernel_size={self.depthwise_conv_kernel_size} is larger than the input: "
                f"{where}={frames} frames"
            )

    @classmethod
    def strong(cls, **overrides) -> ConformerConfig:
        """The "strong" baseline: the medium Transformer's sizes (d_model 120, 4 layers, 4 heads, feed-forward
        256) with Conformer layers (depthwise kernel 15, as MFA-Conformer, arXiv:2203.15249), mean pooling."""
        return cls(**overrides)

    @classmethod
    def boss(cls, **overrides) -> ConformerConfig:
        """The "boss" set-up's model: ``strong`` with self-attentive pooling (SAP); train it with AM-softmax."""
        return cls(**{"pooling": "SAP", **overrides})

    def encoder(self, dtype: Dtype, name: str) -> nn.Module:
        """The encoder module this config describes."""
        return Conformer(
            self.num_layers,
            self.num_heads,
            self.ff_dim,
            self.depthwise_conv_kernel_size,
            self.dropout,
            self.convolution_first,
            dtype,
            name=name,
        )

    def replace(self, **changes) -> ConformerConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConformerConfig:
        return from_dict(cls, d)


class SpeakerConformer(SpeakerTransformer):
    """The Conformer speaker model: ``SpeakerTransformer`` with a ``ConformerConfig``. ``(B, T, F) → (B, E)``."""

    config: ConformerConfig = ConformerConfig()


__all__ = [
    "Conformer",
    "ConformerConfig",
    "ConformerLayer",
    "ConvolutionModule",
    "FeedForwardModule",
    "SpeakerConformer",
    "glu",
]
