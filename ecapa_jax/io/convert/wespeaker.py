"""WeSpeaker ECAPA-TDNN state_dicts ↔ ecapa_jax variables, both ways, exactly.

The Flax module paths are WeSpeaker's state_dict prefixes with list indices merged by ``_``
(``layer2.se_res2block.1.convs.3`` ↔ ``layer2/se_res2block_1/convs_3``), so the conversion is this rule
plus the leaf table of ``ecapa_jax.io.convert.common``.

The expected keys come from ``wespeaker_keys`` (WeSpeaker's registration order) and the expected shapes
from the Flax template, so every key lands on exactly one template leaf of the right shape.

``projection.*`` keys (the training head WeSpeaker saves with the model, e.g. ``projection.weight``
(17982, 192) for VoxCeleb2) go to a separate ``projection`` pytree of Flax variables by the same rule,
except that the margin heads' own 2-D ``weight`` (N, E) stays ``weight``, stored (E, N) as the heads in
``ecapa_jax.training.heads`` use it. ``split_projection`` / ``convert_projection`` / ``projection_to_torch``
do this for any family's WeSpeaker checkpoint (CAM++ too).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd
from ecapa_jax.io.checkpoint import join_variables, save_model_dir
from ecapa_jax.io.convert.common import (
    AFFINE,
    BN_LEAVES,
    Location,
    check_leaves,
    checked_variables,
    convert_keys,
    dir_to_state_dict,
    flax_location,
    listing,
    load_source,
    module_keys,
    not_this_format,
    template,
    to_torch,
    torch_shape,
)
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.models.pooling import POOLINGS

# ----------------------------------------------------------------------------- keys and locations


def _pooling_keys(config: EcapaConfig) -> list[str]:
    """``pool.*`` keys of WeSpeaker's pooling layers with their default hyper-parameters."""
    mhastp = [f"heads_att_trans.{h}.att_{i}.{leaf}" for h in range(2) for i in range(2) for leaf in AFFINE]
    return {
        "TAP": [],
        "TSDP": [],
        "TSTP": [],
        "ASTP": module_keys("pool.linear1", AFFINE) + module_keys("pool.linear2", AFFINE),
        "MHASTP": [f"pool.{k}" for k in mhastp],
        "MQMHASTP": [
            f"pool.n_query.{q}.heads_att_trans.{h}.att_{i}.{leaf}"
            for q in range(2)
            for h in range(8)
            for i in range(2)
            for leaf in AFFINE
        ],
        # Ours (WeSpeaker has no SAP for ECAPA): a module's own parameters precede its children's.
        "SAP": ["pool.attention"] + module_keys("pool.linear", AFFINE),
    }[config.pooling]


def wespeaker_keys(config: EcapaConfig) -> list[str]:
    """The encoder's state_dict keys in WeSpeaker's registration order (``ECAPA_TDNN.state_dict()``).

    Args:
      config: the architecture.

    Returns:
      Keys such as ``layer2.se_res2block.1.convs.3.weight``; no ``projection.*`` keys.
    """
    keys = module_keys("layer1.conv", AFFINE) + module_keys("layer1.bn", BN_LEAVES)
    nums = max(config.scale - 1, 1)  # Res2: scale − 1 convs (the last chunk passes through)
    for layer in ("layer2", "layer3", "layer4"):
        block = f"{layer}.se_res2block"
        keys += module_keys(f"{block}.0.conv", AFFINE) + module_keys(f"{block}.0.bn", BN_LEAVES)
        keys += [k for i in range(nums) for k in module_keys(f"{block}.1.convs.{i}", AFFINE)]
        keys += [k for i in range(nums) for k in module_keys(f"{block}.1.bns.{i}", BN_LEAVES)]
        keys += module_keys(f"{block}.2.conv", AFFINE) + module_keys(f"{block}.2.bn", BN_LEAVES)
        keys += module_keys(f"{block}.3.linear1", AFFINE) + module_keys(f"{block}.3.linear2", AFFINE)
    keys += module_keys("conv", AFFINE) + _pooling_keys(config)
    keys += module_keys("bn", BN_LEAVES) + module_keys("linear", AFFINE)
    if config.emb_bn:
        keys += module_keys("bn2", BN_LEAVES)
    return keys


# ----------------------------------------------------------------------------- architecture detection


def _ecapa_patterns() -> set[str]:
    """Every ECAPA key with list indices replaced by ``#``, over all poolings."""
    configs = [EcapaConfig(pooling=p, emb_bn=True) for p in POOLINGS]
    return {_pattern(k) for cfg in configs for k in wespeaker_keys(cfg)}


def _pattern(key: str) -> str:
    return re.sub(r"(?<=\.)\d+(?=\.)", "#", key)


_ANCHORS = {  # key → rank; what detect_config reads
    "layer1.conv.weight": 3,
    "layer2.se_res2block.1.convs.0.weight": 3,
    "layer2.se_res2block.3.linear1.weight": 2,
    "conv.weight": 3,
    "bn.weight": 1,
    "linear.weight": 2,
}


def detect_config(state_dict: Mapping[str, Any], pooling: str | None = None) -> EcapaConfig:
    """The ``EcapaConfig`` of a WeSpeaker ECAPA-TDNN state_dict, read from its shapes.

    channels C and feat_dim F from ``layer1.conv.weight`` (C, F, 5); Res2 ``scale`` from the sub-conv
    width; ``mfa_dim`` from ``conv.weight`` (1536 since WeSpeaker PR #68, 3C before); embed_dim from
    ``linear.weight``; ``emb_bn`` from ``bn2.*``; pooling from the ``pool.*`` keys (ASTP, MHASTP,
    MQMHASTP, SAP) or, without any, from ``bn.weight``'s size (2·mfa_dim: TSTP); GLOB when ASTP's
    ``linear1`` sees 3·mfa_dim channels.

    Args:
      state_dict: ``{key: array}``; ``projection.*`` keys are ignored.
      pooling: a key of ``ecapa_jax.models.pooling.POOLINGS`` to use instead of detecting it. Required for
        TAP and TSDP, which have no parameters and the same output size.

    Returns:
      The config; ``from_wespeaker`` then checks every key against it.

    Raises:
      ValueError: not an ECAPA-TDNN (names the unmatched keys), or an ambiguous/unknown pooling.
    """
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items() if not k.startswith("projection.")}
    bad_anchors = [k for k, rank in _ANCHORS.items() if len(shapes.get(k, ())) != rank]
    other = not_this_format(shapes, "a WeSpeaker ECAPA-TDNN", "wespeaker")
    if other:
        raise ValueError(other)
    if bad_anchors:
        patterns = _ecapa_patterns()
        unmatched = [k for k in shapes if _pattern(k) not in patterns]
        raise ValueError(
            f"not an ECAPA-TDNN checkpoint: unmatched keys [{listing(unmatched)}]; "
            f"missing or mis-shaped ECAPA keys [{listing(bad_anchors)}]"
        )
    channels, feat_dim, _ = shapes["layer1.conv.weight"]
    width = shapes["layer2.se_res2block.1.convs.0.weight"][0]
    if width == 0 or channels % width:
        raise ValueError(
            f"Res2 sub-conv width {width} (layer2.se_res2block.1.convs.0.weight) does not divide {channels}"
        )
    mfa_dim = shapes["conv.weight"][0]
    if pooling is None:
        pooling = _detect_pooling(shapes, mfa_dim)
    linear1 = shapes.get("pool.linear1.weight", (0, 0))
    return EcapaConfig(
        channels=channels,
        feat_dim=feat_dim,
        embed_dim=shapes["linear.weight"][0],
        pooling=pooling,
        global_context_att=pooling == "ASTP" and linear1[1] == 3 * mfa_dim,
        emb_bn="bn2.weight" in shapes,
        mfa_dim=mfa_dim,
        scale=channels // width,
        se_bottleneck=shapes["layer2.se_res2block.3.linear1.weight"][0],
    )


def _detect_pooling(shapes: Mapping[str, tuple[int, ...]], mfa_dim: int) -> str:
    pool_keys = [k for k in shapes if k.startswith("pool.")]
    if "pool.linear1.weight" in shapes:
        return "ASTP"
    if any(k.startswith("pool.heads_att_trans.") for k in pool_keys):
        return "MHASTP"
    if any(k.startswith("pool.n_query.") for k in pool_keys):
        return "MQMHASTP"
    if "pool.attention" in shapes:
        return "SAP"
    if pool_keys:
        raise ValueError(f"unsupported pooling layer with keys [{listing(pool_keys)}]; supported: {sorted(POOLINGS)}")
    pooled = shapes["bn.weight"][0]
    if pooled == 2 * mfa_dim:
        return "TSTP"
    if pooled == mfa_dim:
        raise ValueError(
            f"ambiguous pooling: no pool.* parameters and bn.weight of size {pooled} fit both TAP and TSDP; "
            "pass pooling='TAP' or 'TSDP' (--pooling on the command line)"
        )
    raise ValueError(f"cannot tell the pooling: bn.weight has size {pooled}, the MFA conv {mfa_dim} channels")


# ----------------------------------------------------------------------------- the training head


def _head_layouts(num_classes: int, embed_dim: int) -> list[dict[str, tuple[int, ...]]]:
    """WeSpeaker's projection heads: ``{key (prefix stripped): torch shape}`` in registration order.

    The margin heads hold ``weight`` (N, E) (N·K rows for sub-centres), SphereFace2 also ``bias`` (1, 1),
    and the softmax head is ``trans`` = [BatchNorm(E), ReLU, Linear(E → N)].
    """
    n, e = num_classes, embed_dim
    softmax = {**{k: (e,) for k in module_keys("trans.0", BN_LEAVES[:4])}, "trans.0.num_batches_tracked": ()}
    softmax |= {"trans.2.weight": (n, e), "trans.2.bias": (n,)}
    return [{"weight": (n, e)}, {"weight": (n, e), "bias": (1, 1)}, softmax]


def _head_location(key: str, layout: Mapping[str, Any]) -> Location:
    if key in ("weight", "bias"):  # a margin head's own class weights: ``weight`` (E, N), not ``kernel``
        return ("params", key)
    return flax_location(key, layout)


def _pick_head(layouts: Sequence[dict], present: set, locate: Callable[[str, dict], Any]) -> dict:
    """The layout whose keys, as ``locate`` names them, are exactly ``present``; else the one sharing most."""

    def score(layout: dict) -> tuple[bool, int]:
        names = {locate(key, layout) for key in layout}
        return names == present, len(names & present)

    return max(layouts, key=score)  # the first (the plain margin head) on ties


def split_projection(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(encoder keys, projection keys with the ``projection.`` prefix stripped)`` of a WeSpeaker state_dict."""
    encoder = {k: v for k, v in state_dict.items() if not k.startswith("projection.")}
    head = {k[len("projection.") :]: v for k, v in state_dict.items() if k.startswith("projection.")}
    return encoder, head


def convert_projection(head_sd: Mapping[str, Any], embed_dim: int) -> tuple[dict[str, Any] | None, list[str]]:
    """WeSpeaker's training head (keys without ``projection.``) as Flax variables, and the offending keys.

    Returns:
      ``(projection, problems)``: ``{'params': {'weight': (E, N)}}`` for margin heads (the layout of
      ``ecapa_jax.training.heads``), the softmax head's ``trans_0``/``trans_2`` variables, or None for an
      empty ``head_sd``; problems name keys with ``projection.`` and both shapes.
    """
    if not head_sd:
        return None, []
    rows = [np.shape(head_sd[k])[0] for k in ("weight", "trans.2.weight") if np.ndim(head_sd.get(k)) == 2]
    layout = _pick_head(_head_layouts(rows[0] if rows else 0, embed_dim), set(head_sd), lambda key, _: key)
    head, problems = convert_keys(head_sd, layout, lambda k: _head_location(k, layout), prefix="projection.")
    return traverse_util.unflatten_dict(head) if head else None, problems


def projection_to_torch(
    projection: Mapping[str, Any] | None, embed_dim: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The inverse of ``convert_projection``: ``({projection.key: tensor}, problems)``; empty for None."""
    if projection is None:
        return {}, []
    head = traverse_util.flatten_dict(dict(projection))
    kernel = head.get(("params", "weight"), head.get(("params", "trans_2", "kernel")))
    layouts = _head_layouts(np.shape(kernel)[-1] if np.ndim(kernel) == 2 else 0, embed_dim)
    layout = _pick_head(layouts, set(head), _head_location)
    shapes = {_head_location(k, layout): torch_shape(s) for k, s in layout.items()}
    problems = check_leaves("projection", head, shapes)
    if problems:
        return {}, problems
    return {f"projection.{k}": to_torch(head[_head_location(k, layout)]) for k in layout}, []


# ----------------------------------------------------------------------------- conversion


def from_wespeaker(
    state_dict: Mapping[str, Any], pooling: str | None = None
) -> tuple[EcapaConfig, dict[str, Any], dict[str, Any] | None]:
    """Converts a WeSpeaker ECAPA-TDNN state_dict to ecapa_jax variables.

    Args:
      state_dict: ``{key: array}`` (NumPy or anything ``np.asarray`` takes), e.g. from
        ``torchzip.load_state_dict``; may include ``projection.*`` keys.
      pooling: see ``detect_config``.

    Returns:
      ``(config, variables, projection)``: ``variables`` = ``{'params', 'batch_stats'}`` for
      ``ECAPA_TDNN(config)`` (float32, int32 ``num_batches_tracked``); ``projection`` the head's
      variables (``{'params': {'weight': (E, N)}}`` for margin heads) or None without ``projection.*``.

    Raises:
      ValueError: another architecture, or keys that are missing, unexpected or mis-shaped: one error
        listing every such key with its torch shape and the expected one.
    """
    encoder_sd, head_sd = split_projection(state_dict)
    config = detect_config(encoder_sd, pooling)
    shapes = template(config)
    keys = wespeaker_keys(config)
    layout = {k: torch_shape(shapes[flax_location(k, keys)].shape) for k in keys}
    flat, problems = convert_keys(encoder_sd, layout, lambda k: flax_location(k, keys))
    projection, head_problems = convert_projection(head_sd, config.embed_dim)
    problems += head_problems
    what = f"{config.wespeaker_name} ({config.pooling}, emb_bn={config.emb_bn})"
    return config, checked_variables(flat, problems, shapes, what), projection


def to_wespeaker(
    config: EcapaConfig, variables: Mapping[str, Any], projection: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Converts ecapa_jax variables back to a WeSpeaker state_dict; the exact inverse of ``from_wespeaker``.

    Args:
      config: the architecture.
      variables: ``{'params', 'batch_stats'}`` of ``ECAPA_TDNN(config)``.
      projection: the head's variables as ``from_wespeaker`` returns them, or None.

    Returns:
      ``{key: array}`` in WeSpeaker's registration order (``projection.*`` last): float32 tensors and
      int64 0-d ``num_batches_tracked``, ready for ``torchzip.save_state_dict`` and
      ``ECAPA_TDNN.load_state_dict(strict=True)``.

    Raises:
      ValueError: variables missing, unexpected or of the wrong shape for ``config`` (all listed).
    """
    if config.separable_res2 or config.separable_layer1:
        raise ValueError("this is a light ECAPA (depthwise-separable convs): WeSpeaker has no such model")
    if not config.is_wespeaker:
        raise ValueError(
            f"WeSpeaker's ECAPA_TDNN cannot hold this architecture (padding {config.padding!r}, Res2 identity "
            f"{config.res2_identity!r}, kernel sizes {config.kernel_sizes}, ...); convert a SpeechBrain model back "
            "with `python -m ecapa_jax.convert to-speechbrain`"
        )
    flat = traverse_util.flatten_dict(dict(variables))
    problems = check_leaves("variable", flat, {loc: t.shape for loc, t in template(config).items()})
    head, head_problems = projection_to_torch(projection, config.embed_dim)
    problems += head_problems
    if problems:
        raise ValueError(f"variables do not match {config.wespeaker_name}: {'; '.join(problems)}")
    keys = wespeaker_keys(config)
    return {k: to_torch(flat[flax_location(k, keys)]) for k in keys} | head


# ----------------------------------------------------------------------------- files


def wespeaker_to_dir(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    pooling: str | None = None,
    overwrite: bool = False,
    use_torch: bool = False,
) -> tuple[EcapaConfig, dict[str, Any], dict[str, Any] | None]:
    """Converts WeSpeaker's ``SRC.pt`` into the ecapa_jax model directory ``DST`` (see ``ecapa_jax.io.checkpoint``).

    The directory records WeSpeaker's inference front-end (``KaldiFrontEnd``: 16 kHz, ``feat_dim`` bins).

    Args:
      src: a WeSpeaker checkpoint (``model_N.pt``, ``avg_model.pt``).
      dst: the model directory to write; an existing one is refused unless ``overwrite``.
      pooling: see ``detect_config``.
      overwrite: replace an existing model directory.
      use_torch: read ``src`` with torch (see ``torchzip.load_state_dict``).

    Returns:
      ``(config, variables, projection)`` as written.
    """
    state_dict = load_source(src, "wespeaker", use_torch=use_torch)
    try:
        config, variables, projection = from_wespeaker(state_dict, pooling)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None
    metadata = {"source": str(Path(src).resolve()), "source_format": "wespeaker"}
    frontend = KaldiFrontEnd(FbankConfig.wespeaker(num_mel_bins=config.feat_dim))
    save_model_dir(dst, config, join_variables(variables, projection), frontend, metadata, overwrite)
    return config, variables, projection


def dir_to_wespeaker(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, np.ndarray]:
    """Writes the ecapa_jax model directory ``SRC`` as a WeSpeaker ``DST.pt`` (torch-free writer).

    Args:
      src: a model directory written by ``save_model_dir``.
      dst: the ``.pt`` file; an existing file is refused unless ``overwrite``.
      overwrite: replace an existing file.

    Returns:
      The state_dict written.
    """
    return dir_to_state_dict(src, dst, EcapaConfig, "WeSpeaker's ECAPA-TDNN", to_wespeaker, overwrite)


__all__ = [
    "convert_projection",
    "detect_config",
    "dir_to_wespeaker",
    "flax_location",
    "from_wespeaker",
    "projection_to_torch",
    "split_projection",
    "to_wespeaker",
    "wespeaker_keys",
    "wespeaker_to_dir",
]
