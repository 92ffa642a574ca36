"""Margin heads: speaker-classification logits and losses for training, as WeSpeaker computes them.

Shape letters: B batch, E embedding size, N classes (speakers), K sub-centres per class.

Class weights are ``(E, N)``, the Dense-kernel convention: WeSpeaker's ``projection.weight``
``(N, E)`` transposed (the sub-centre head's ``(K·N, E)`` likewise, column c·K + j being
sub-centre j of class c). The math is in pure functions of (embeddings, weight, labels, margin,
scale); the margin is an array that a schedule can drive under ``jit`` — WeSpeaker's constants
cos m, sin m, th = cos(π − m) and mmm = 1 + cos(π − m), which its ``update(margin)`` recomputes
in Python, are recomputed from it with ``jnp`` on every call.

Every head module is called as ``head(embeddings, labels, *, margin, scale, step, train)`` and
returns ``(logits, loss)``, so a training step can use any of them through ``make_head``; arguments
a head has no use for are ignored, as WeSpeaker's ``sphere`` head ignores the margin scheduler.

=================================  =======================================================
project_type                       target logit (non-target: s · cos θ_j unless noted)
=================================  =======================================================
softmax                            Dense(ReLU(BN(x))) for every class, no margin
arc_margin (AAM, ArcFace)          s · cos(θ + m)
add_margin (AM, CosFace)           s · (cos θ − m)
sphere (A-softmax)                 ‖x‖ · (cos θ + (ψ(θ) − cos θ) / (1 + λ)), ψ = (−1)^k cos(mθ) − 2k
arc_margin_intertopk_subcenter     AAM on the best of K sub-centres; top-k non-targets s · cos(θ − m')
sphereface2                        binary (one-vs-all) loss; logits s · (cos θ − m · onehot)
=================================  =======================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from ecapa_jax.config import from_dict
from ecapa_jax.models.layers import BatchNorm
from ecapa_jax.stats import l2_normalize
from ecapa_jax.training.schedules import sphere_lambda

Array = jnp.ndarray

# ----------------------------------------------------------------------------- shared pieces


def cosine_similarity(embeddings: Array, weight: Array) -> Array:
    """cos θ between each embedding and each class weight column.

    Args:
      embeddings: (B, E).
      weight: (E, N).

    Returns:
      (B, N) cosines.
    """
    return l2_normalize(embeddings, axis=-1) @ l2_normalize(weight, axis=0)


def _check_inputs(head: str, embeddings: Array, weight: Array, labels: Array) -> None:
    """Shape and dtype checks that turn a silent broadcast into an error naming the input."""
    if embeddings.ndim != 2:
        raise ValueError(f"{head}: embeddings must be (B, E), got shape {embeddings.shape}")
    b, e = embeddings.shape
    if weight.ndim != 2 or weight.shape[0] != e:
        raise ValueError(f"{head}: weight must be (E={e}, N) (WeSpeaker's (N, E) transposed), got {weight.shape}")
    if labels.shape != (b,):
        raise ValueError(f"{head}: labels must be ({b},) class indices, got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{head}: labels must be integers, got dtype {labels.dtype}")


def _is_target(labels: Array, num_classes: int) -> Array:
    """(B,) labels → (B, N) bool, True at each row's label."""
    return labels[:, None] == jnp.arange(num_classes)


def sine(cosine: Array) -> Array:
    """sin θ = sqrt(1 − cos²θ), with 1 − cos² clamped at 0.

    WeSpeaker has no clamp; float32 rounding can push |cos| just above 1 (normalised vectors that
    are nearly parallel), where its sqrt gives NaN. The clamp changes nothing elsewhere.
    """
    return jnp.sqrt(jnp.maximum(1.0 - jnp.square(cosine), 0.0))


def arc_margin_phi(cosine: Array, margin: Array | float, easy_margin: bool = False) -> Array:
    """The additive angular margin target cos(θ + m), with WeSpeaker's fallbacks.

    φ = cos θ · cos m − sin θ · sin m = cos(θ + m). It is non-monotonic beyond θ = π − m, so:
    easy margin: φ ← cos θ where cos θ ≤ 0; otherwise φ ← cos θ − (1 + cos(π − m)) where
    cos θ ≤ cos(π − m), which joins cos(θ + m) continuously at θ = π − m.

    Args:
      cosine: (B, N) cos θ.
      margin: scalar m in radians (may be traced).
      easy_margin: use the cos θ > 0 fallback.

    Returns:
      (B, N) φ.

    Reference: Deng et al., ArcFace, arXiv:1801.07698; wespeaker/models/projections.py.
    """
    phi = cosine * jnp.cos(margin) - sine(cosine) * jnp.sin(margin)
    if easy_margin:
        return jnp.where(cosine > 0, phi, cosine)
    th = jnp.cos(jnp.pi - margin)
    mmm = 1.0 + jnp.cos(jnp.pi - margin)
    return jnp.where(cosine > th, phi, cosine - mmm)


# ----------------------------------------------------------------------------- pure heads


def arc_margin(
    embeddings: Array,
    weight: Array,
    labels: Array,
    margin: Array | float,
    scale: Array | float,
    easy_margin: bool = False,
) -> Array:
    """Additive angular margin (AAM-softmax, ArcFace) logits.

    logits_j = s · φ(θ_y) for j = y (see ``arc_margin_phi``), s · cos θ_j otherwise.

    Args:
      embeddings: (B, E).
      weight: (E, N) class weights.
      labels: (B,) int class indices.
      margin: scalar m (radians).
      scale: scalar s.
      easy_margin: WeSpeaker's ``easy_margin`` flag.

    Returns:
      (B, N) logits for ``margin_loss``.

    Reference: Deng et al., ArcFace, arXiv:1801.07698; WeSpeaker ``ArcMarginProduct``.
    """
    _check_inputs("arc_margin", embeddings, weight, labels)
    cosine = cosine_similarity(embeddings, weight)  # (B, N)
    phi = arc_margin_phi(cosine, margin, easy_margin)
    return scale * jnp.where(_is_target(labels, cosine.shape[-1]), phi, cosine)


def add_margin(embeddings: Array, weight: Array, labels: Array, margin: Array | float, scale: Array | float) -> Array:
    """Additive cosine margin (AM-softmax, CosFace) logits.

    logits_j = s · (cos θ_y − m) for j = y, s · cos θ_j otherwise.

    Args:
      embeddings: (B, E).
      weight: (E, N) class weights.
      labels: (B,) int class indices.
      margin: scalar m.
      scale: scalar s.

    Returns:
      (B, N) logits for ``margin_loss``.

    Reference: Wang et al., CosFace, arXiv:1801.09414; WeSpeaker ``AddMarginProduct``.
    """
    _check_inputs("add_margin", embeddings, weight, labels)
    cosine = cosine_similarity(embeddings, weight)  # (B, N)
    return scale * jnp.where(_is_target(labels, cosine.shape[-1]), cosine - margin, cosine)


# cos(mθ) as a polynomial in cos θ (Chebyshev T_m), written out as WeSpeaker's ``mlambda`` table.
CHEBYSHEV: tuple[Callable[[Array], Array], ...] = (
    lambda x: x**0,
    lambda x: x**1,
    lambda x: 2 * x**2 - 1,
    lambda x: 4 * x**3 - 3 * x,
    lambda x: 8 * x**4 - 8 * x**2 + 1,
    lambda x: 16 * x**5 - 20 * x**3 + 5 * x,
)


def sphere_product(embeddings: Array, weight: Array, labels: Array, step: Array | int, m: int = 4) -> Array:
    """Multiplicative angular margin (A-softmax, SphereFace) logits, annealed by λ(step).

    ψ(θ) = (−1)^k · cos(mθ) − 2k with k = floor(mθ / 3.14159265), which extends cos(mθ)
    monotonically to [0, π]. The target logit blends it with cos θ:
    logits_j = ‖x‖ · (cos θ_y + (ψ(θ_y) − cos θ_y) / (1 + λ)) for j = y, ‖x‖ · cos θ_j otherwise,
    with λ = ``sphere_lambda(step)`` decaying from ~900 to 5. k carries no gradient (WeSpeaker takes
    θ from ``cos.data``).

    Args:
      embeddings: (B, E), not normalised (the logits scale with ‖x‖).
      weight: (E, N) class weights.
      labels: (B,) int class indices.
      step: 0-based training step (WeSpeaker's forward counter minus one).
      m: integer angular multiplier 0..5 (WeSpeaker fixes 4; it has no margin schedule).

    Returns:
      (B, N) logits for ``margin_loss``.

    Reference: Liu et al., SphereFace, arXiv:1704.08063; WeSpeaker ``SphereProduct``.
    """
    _check_inputs("sphere", embeddings, weight, labels)
    if m not in range(len(CHEBYSHEV)):
        raise ValueError(f"sphere: margin m must be an integer in 0..{len(CHEBYSHEV) - 1}, got {m!r}")
    cosine = jnp.clip(cosine_similarity(embeddings, weight), -1.0, 1.0)  # (B, N)
    theta = jax.lax.stop_gradient(jnp.arccos(cosine))
    k = jnp.floor(m * theta / 3.14159265)  # WeSpeaker's truncated π
    psi = jnp.where(k % 2 == 0, 1.0, -1.0) * CHEBYSHEV[m](cosine) - 2 * k
    lamb = sphere_lambda(step)
    target = jnp.where(_is_target(labels, cosine.shape[-1]), (psi - cosine) / (1 + lamb), 0.0)
    return (target + cosine) * jnp.linalg.norm(embeddings, axis=-1, keepdims=True)


def arc_margin_intertopk_subcenter(
    embeddings: Array,
    weight: Array,
    labels: Array,
    margin: Array | float,
    scale: Array | float,
    easy_margin: bool = False,
    K: int = 3,  # noqa: N803 - WeSpeaker's config key
    mp: float = 0.06,
    k_top: int = 5,
    do_lm: bool = False,
) -> Array:
    """AAM with K sub-centres per class and an inter-top-k penalty on the hardest non-targets.

    cos θ_c = max_j cos(x, w_{c·K+j}) over the class's K sub-centres (columns c·K..c·K+K−1).
    The target gets the AAM φ (``arc_margin_phi``); the k_top non-target classes with the largest
    cos θ get cos(θ − m') = cos θ · cos m' + sin θ · sin m', raising them, with
    m' = mp · m / 0.2 if m > 0.001 else 0 (the penalty grows with the scheduled margin). The rest
    keep cos θ; all are multiplied by s. ``do_lm`` (large-margin fine-tuning) turns the penalty
    off (mp = 0, k_top = 0) as WeSpeaker does.

    Args:
      embeddings: (B, E).
      weight: (E, K·N) sub-centre weights.
      labels: (B,) int class indices.
      margin: scalar m (radians).
      scale: scalar s.
      easy_margin: WeSpeaker's ``easy_margin`` flag.
      K: sub-centres per class.
      mp: penalty margin at m = 0.2.
      k_top: number of penalised non-target classes (must be < N).
      do_lm: disable the inter-top-k penalty.

    Returns:
      (B, N) logits for ``margin_loss``.

    Reference: Deng et al., Sub-center ArcFace, ECCV 2020; Zhao et al., inter-top-k penalty,
    arXiv:2110.05042; WeSpeaker ``ArcMarginProduct_intertopk_subcenter``.
    """
    _check_inputs("arc_margin_intertopk_subcenter", embeddings, weight, labels)
    if weight.shape[1] % K:
        raise ValueError(f"arc_margin_intertopk_subcenter: weight columns {weight.shape[1]} not divisible by K={K}")
    num_classes = weight.shape[1] // K
    if do_lm:
        k_top = 0
    if not 0 <= k_top < num_classes:
        raise ValueError(f"arc_margin_intertopk_subcenter: k_top={k_top} must be in [0, N={num_classes})")
    cosine = cosine_similarity(embeddings, weight)  # (B, K·N)
    cosine = jnp.max(cosine.reshape(-1, num_classes, K), axis=-1)  # (B, N)
    is_target = _is_target(labels, num_classes)
    out = jnp.where(is_target, arc_margin_phi(cosine, margin, easy_margin), cosine)
    if k_top > 0:
        m_p = jnp.where(margin > 0.001, mp * (margin / 0.2), 0.0)
        phi_mp = cosine * jnp.cos(m_p) + sine(cosine) * jnp.sin(m_p)
        _, hardest = jax.lax.top_k(cosine - 2.0 * is_target, k_top)  # (B, k_top), never the target
        is_hard = jnp.any(hardest[:, :, None] == jnp.arange(num_classes), axis=1)  # (B, N)
        out = jnp.where(is_hard, phi_mp, out)
    return scale * out


def sphereface2(
    embeddings: Array,
    weight: Array,
    bias: Array,
    labels: Array,
    margin: Array | float,
    scale: Array | float,
    lanbuda: float = 0.7,
    t: int = 3,
    margin_type: str = "C",
) -> tuple[Array, Array]:
    """SphereFace2: N one-vs-all binary classifications instead of one softmax.

    With g(z) = 2 · ((z + 1) / 2)^t − 1 and b the learned bias:
    'C' (cosine margin): pos = s · (g(cos θ) − m) + b, neg = s · (g(cos θ) + m) + b;
    'A' (angular margin): pos = s · g(φ) + b with φ the AAM target (``arc_margin_phi``, non-easy),
    neg = s · g(cos(θ − m)) + b.
    loss = mean_B Σ_c [λ · log(1 + e^−pos) if c = y else (1 − λ) · log(1 + e^neg)], with
    log(1 + e^z) as ``softplus`` (WeSpeaker's literal form overflows to inf for z > 88; the values
    agree elsewhere). The logits, s · (cos θ − m · onehot), only serve accuracy.

    Args:
      embeddings: (B, E).
      weight: (E, N) class weights.
      bias: (1, 1) learned bias b.
      labels: (B,) int class indices.
      margin: scalar m.
      scale: scalar s.
      lanbuda: weight λ of the positive term (WeSpeaker's spelling).
      t: exponent of g.
      margin_type: 'C' or 'A'.

    Returns:
      ``(logits (B, N), loss ())``.

    Reference: Wen et al., SphereFace2, arXiv:2108.01513; Han et al., binary classification loss
    for speaker verification, ICASSP 2023; WeSpeaker ``SphereFace2``.
    """
    _check_inputs("sphereface2", embeddings, weight, labels)
    if margin_type not in ("A", "C"):
        raise ValueError(f"sphereface2: margin_type must be 'A' or 'C', got {margin_type!r}")
    cosine = cosine_similarity(embeddings, weight)  # (B, N)
    g = lambda z: 2 * ((z + 1) / 2) ** t - 1
    b = bias.reshape(())
    if margin_type == "A":
        pos = scale * g(arc_margin_phi(cosine, margin)) + b
        neg = scale * g(cosine * jnp.cos(margin) + sine(cosine) * jnp.sin(margin)) + b
    else:
        pos = scale * (g(cosine) - margin) + b
        neg = scale * (g(cosine) + margin) + b
    is_target = _is_target(labels, cosine.shape[-1])
    per_class = jnp.where(is_target, lanbuda * jax.nn.softplus(-pos), (1 - lanbuda) * jax.nn.softplus(neg))
    loss = jnp.mean(jnp.sum(per_class, axis=-1))
    logits = scale * jnp.where(is_target, cosine - margin, cosine)
    return logits, loss


# ----------------------------------------------------------------------------- losses and metrics


def margin_loss(logits: Array, labels: Array) -> Array:
    """Mean softmax cross-entropy, −mean_B log softmax(logits)_y (WeSpeaker's ``CrossEntropyLoss``).

    Args:
      logits: (B, N).
      labels: (B,) int class indices.

    Returns:
      () loss.
    """
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of rows whose arg-max logit is the label. logits (B, N), labels (B,) → ()."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


# ----------------------------------------------------------------------------- modules


def _class_weight(module: nn.Module, embed_dim: int, columns: int) -> Array:
    """The ``weight`` param (E, columns), xavier-uniform: U(±sqrt(6 / (E + columns))) as torch's init
    of the transposed (columns, E) matrix (the bound is symmetric in fan-in and fan-out)."""
    return module.param("weight", nn.initializers.xavier_uniform(), (embed_dim, columns), jnp.float32)


class SoftmaxHead(nn.Module):
    """Plain softmax classifier: Dense(ReLU(BN(x))), WeSpeaker's ``Linear`` projection.

    Leaves ``trans_0`` (BatchNorm) and ``trans_2`` (Dense) are the ``projection.trans.0`` and
    ``projection.trans.2`` of WeSpeaker's ``nn.Sequential``. With ``train=True`` pass
    ``mutable=['batch_stats']``.
    """

    num_classes: int

    @nn.compact
    def __call__(self, embeddings, labels, *, margin=0.0, scale=32.0, step=0, train=False):
        """embeddings (B, E), labels (B,) → (logits (B, N), loss ()); margin, scale, step unused."""
        x = BatchNorm(name="trans_0")(embeddings, train=train)
        logits = nn.Dense(self.num_classes, param_dtype=jnp.float32, name="trans_2")(nn.relu(x))  # (B, N)
        return logits, margin_loss(logits, labels)


class ArcMarginHead(nn.Module):
    """AAM-softmax (``arc_margin``): ``arc_margin`` logits, cross-entropy loss. Leaf ``weight`` (E, N)."""

    num_classes: int
    easy_margin: bool = False

    @nn.compact
    def __call__(self, embeddings, labels, *, margin=0.0, scale=32.0, step=0, train=False):
        """embeddings (B, E), labels (B,) → (logits (B, N), loss ()); step and train unused."""
        weight = _class_weight(self, embeddings.shape[-1], self.num_classes)
        logits = arc_margin(embeddings, weight, labels, margin, scale, self.easy_margin)
        return logits, margin_loss(logits, labels)


class AddMarginHead(nn.Module):
    """AM-softmax (``add_margin``): ``add_margin`` logits, cross-entropy loss. Leaf ``weight`` (E, N)."""

    num_classes: int

    @nn.compact
    def __call__(self, embeddings, labels, *, margin=0.0, scale=32.0, step=0, train=False):
        """embeddings (B, E), labels (B,) → (logits (B, N), loss ()); step and train unused."""
        weight = _class_weight(self, embeddings.shape[-1], self.num_classes)
        logits = add_margin(embeddings, weight, labels, margin, scale)
        return logits, margin_loss(logits, labels)


class SphereHead(nn.Module):
    """A-softmax (``sphere``): ``sphere_product`` logits, cross-entropy loss. Leaf ``weight`` (E, N).

    ``m`` is the fixed integer multiplier; the scheduled ``margin`` and ``scale`` are ignored, as
    WeSpeaker's ``SphereProduct`` has no ``update``. ``step`` drives λ.
    """

    num_classes: int
    m: int = 4

    @nn.compact
    def __call__(self, embeddings, labels, *, margin=0.0, scale=32.0, step=0, train=False):
        """embeddings (B, E), labels (B,) → (logits (B, N), loss ())."""
        weight = _class_weight(self, embeddings.shape[-1], self.num_classes)
        logits = sphere_product(embeddings, weight, labels, step, self.m)
        return logits, margin_loss(logits, labels)


class SubcenterHead(nn.Module):
    """Sub-centre AAM with inter-top-k penalty (``arc_margin_intertopk_subcenter``).

    Leaf ``weight`` (E, K·N), column c·K + j for sub-centre j of class c.
    """

    num_classes: int
    easy_margin: bool = False
    K: int = 3  # noqa: N815 - WeSpeaker's config key
    mp: float = 0.06
    k_top: int = 5
    do_lm: bool = False

    @nn.compact
    def __call__(self, embeddings, labels, *, margin=0.0, scale=32.0, step=0, train=False):
        """embeddings (B, E), labels (B,) → (logits (B, N), loss ()); step and train unused."""
        weight = _class_weight(self, embeddings.shape[-1], self.K * self.num_classes)
        logits = arc_margin_intertopk_subcenter(
            embeddings, weight, labels, margin, scale, self.easy_margin, self.K, self.mp, self.k_top, self.do_lm
        )
        return logits, margin_loss(logits, labels)


class SphereFace2Head(nn.Module):
    """SphereFace2 (``sphereface2``): its binary loss. Leaves ``weight`` (E, N) and ``bias`` (1, 1)."""

    num_classes: int
    lanbuda: float = 0.7
    t: int = 3
    margin_type: str = "C"

    @nn.compact
    def __call__(self, embeddings, labels, *, margin=0.0, scale=32.0, step=0, train=False):
        """embeddings (B, E), labels (B,) → (logits (B, N), loss ()); step and train unused."""
        weight = _class_weight(self, embeddings.shape[-1], self.num_classes)
        bias = self.param("bias", nn.initializers.zeros, (1, 1), jnp.float32)
        return sphereface2(embeddings, weight, bias, labels, margin, scale, self.lanbuda, self.t, self.margin_type)


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """Which head to train with and its fixed hyper-parameters; field names are WeSpeaker's
    ``projection_args`` keys (plus ``num_classes``, its ``num_class``).

    The margin is not here: it comes from a schedule (``ecapa_jax.training.schedules.margin_schedule``) at
    each step, and ``scale`` is passed with it at call time.

    Attributes:
      num_classes: N, number of training speakers (×3 with WeSpeaker's speed perturbation).
      project_type: a key of ``HEADS``.
      scale: s of the cosine heads (WeSpeaker's recipe: 32).
      easy_margin: AAM fallback variant (arc_margin, arc_margin_intertopk_subcenter).
      K, mp, k_top, do_lm: sub-centre / inter-top-k settings.
      lanbuda, t, margin_type: SphereFace2 settings.
      sphere_m: SphereProduct's integer multiplier (WeSpeaker hard-codes 4).
    """

    num_classes: int
    project_type: str = "arc_margin"
    scale: float = 32.0
    easy_margin: bool = False
    K: int = 3  # noqa: N815 - WeSpeaker's config key
    mp: float = 0.06
    k_top: int = 5
    do_lm: bool = False
    lanbuda: float = 0.7
    t: int = 3
    margin_type: str = "C"
    sphere_m: int = 4

    def __post_init__(self):
        if self.project_type not in HEADS:
            raise ValueError(f"unknown project_type {self.project_type!r}; expected one of {sorted(HEADS)}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.margin_type not in ("A", "C"):
            raise ValueError(f"margin_type must be 'A' or 'C', got {self.margin_type!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HeadConfig:
        return from_dict(cls, d)


HEADS: dict[str, Callable[..., nn.Module]] = {
    "softmax": lambda c, **kw: SoftmaxHead(c.num_classes, **kw),
    "arc_margin": lambda c, **kw: ArcMarginHead(c.num_classes, c.easy_margin, **kw),
    "add_margin": lambda c, **kw: AddMarginHead(c.num_classes, **kw),
    "sphere": lambda c, **kw: SphereHead(c.num_classes, c.sphere_m, **kw),
    "arc_margin_intertopk_subcenter": lambda c, **kw: SubcenterHead(
        c.num_classes, c.easy_margin, c.K, c.mp, c.k_top, c.do_lm, **kw
    ),
    "sphereface2": lambda c, **kw: SphereFace2Head(c.num_classes, c.lanbuda, c.t, c.margin_type, **kw),
}


def make_head(config: HeadConfig, **kwargs) -> nn.Module:
    """The head module for ``config.project_type``; ``kwargs`` (e.g. ``name='projection'``) go to it.

    Call the result as ``head(embeddings, labels, margin=..., scale=config.scale, step=..., train=...)``.
    """
    return HEADS[config.project_type](config, **kwargs)


__all__ = [
    "CHEBYSHEV",
    "HEADS",
    "AddMarginHead",
    "ArcMarginHead",
    "HeadConfig",
    "SoftmaxHead",
    "SphereFace2Head",
    "SphereHead",
    "SubcenterHead",
    "accuracy",
    "add_margin",
    "arc_margin",
    "arc_margin_intertopk_subcenter",
    "arc_margin_phi",
    "cosine_similarity",
    "make_head",
    "margin_loss",
    "sine",
    "sphere_product",
    "sphereface2",
]
