"""CAM++ checkpoints (3D-Speaker's and WeSpeaker's) ↔ ecapa_jax variables, both ways, exactly.

Both sources save ``CAMPPlus.state_dict()`` with the same keys (``head.layer1.0.conv1.weight``,
``xvector.block2.tdnnd7.cam_layer.linear_local.weight``, ..., 937 for the 80-bin model); WeSpeaker's may add
its training head (``projection.*``, kept as for ECAPA). ``ecapa_jax.models.campplus`` names its modules
after these keys, so the conversion is the generic rule of ``ecapa_jax.io.convert.common`` (2-D kernels
(O, I, kF, kT) → (kT, kF, I, O)) plus one layout change: the FCM output is flattened (frequency, channel)
here and (channel, frequency) in PyTorch, so the input axis of ``xvector.tdnn.linear.weight`` is permuted.

The two sources compute the same network except for the statistics pooling's epsilon (3D-Speaker: none,
WeSpeaker: 1e-7 on the variance) and their front-ends; nothing in the file tells them apart, so
``flavour`` says which: 'speakerlab' (3D-Speaker, the default: Kaldi fbank with a povey window on the
waveform in [−1, 1], 80 bins, mean normalisation) or 'wespeaker' (WeSpeaker's front-end: hamming window,
waveform × 32768).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd
from ecapa_jax.io.checkpoint import join_variables, save_model_dir
from ecapa_jax.io.convert.common import (
    AFFINE,
    BN_LEAVES,
    check_leaves,
    checked_variables,
    convert_keys,
    dir_to_state_dict,
    flax_location,
    listing,
    load_source,
    module_keys,
    not_this_format,
    template_shapes,
    to_torch,
    torch_shape,
)
from ecapa_jax.io.convert.wespeaker import convert_projection, projection_to_torch, split_projection
from ecapa_jax.models.campplus import CamPPConfig

FLAVOURS = ("speakerlab", "wespeaker")
TDNN_WEIGHT = "xvector.tdnn.linear.weight"
_ANCHORS = ("head.conv1.weight", TDNN_WEIGHT, "xvector.block1.tdnnd1.cam_layer.linear_local.weight")
_ANCHORS += ("xvector.dense.linear.weight",)


def campplus_keys(config: CamPPConfig) -> list[str]:
    """The encoder's state_dict keys in PyTorch's registration order (``CAMPPlus.state_dict()``)."""
    keys = ["head.conv1.weight"] + module_keys("head.bn1", BN_LEAVES)
    for layer, blocks in enumerate(config.fcm_blocks, start=1):
        for i in range(blocks):
            block = f"head.layer{layer}.{i}"
            keys += [f"{block}.conv1.weight", *module_keys(f"{block}.bn1", BN_LEAVES)]
            keys += [f"{block}.conv2.weight", *module_keys(f"{block}.bn2", BN_LEAVES)]
            if i == 0:  # stride 2: a projection shortcut
                keys += [f"{block}.shortcut.0.weight", *module_keys(f"{block}.shortcut.1", BN_LEAVES)]
    keys += ["head.conv2.weight", *module_keys("head.bn2", BN_LEAVES)]
    keys += [TDNN_WEIGHT, *module_keys("xvector.tdnn.nonlinear.batchnorm", BN_LEAVES)]
    for b, layers in enumerate(config.block_layers, start=1):
        for j in range(1, layers + 1):
            layer = f"xvector.block{b}.tdnnd{j}"
            keys += module_keys(f"{layer}.nonlinear1.batchnorm", BN_LEAVES) + [f"{layer}.linear1.weight"]
            keys += module_keys(f"{layer}.nonlinear2.batchnorm", BN_LEAVES)
            keys += [f"{layer}.cam_layer.linear_local.weight"]
            keys += module_keys(f"{layer}.cam_layer.linear1", AFFINE)
            keys += module_keys(f"{layer}.cam_layer.linear2", AFFINE)
        transit = f"xvector.transit{b}"
        keys += module_keys(f"{transit}.nonlinear.batchnorm", BN_LEAVES) + [f"{transit}.linear.weight"]
    keys += module_keys("xvector.out_nonlinear.batchnorm", BN_LEAVES)
    return keys + ["xvector.dense.linear.weight", *module_keys("xvector.dense.nonlinear.batchnorm", BN_LEAVES[2:])]


# ----------------------------------------------------------------------------- the one layout change


def _tdnn_to_ours(w: np.ndarray, m_channels: int) -> np.ndarray:
    """(O, C·F', K), input index c·F' + f (PyTorch) → (O, F'·C, K), input index f·C + c (ours)."""
    out, d, k = w.shape
    return w.reshape(out, m_channels, d // m_channels, k).transpose(0, 2, 1, 3).reshape(out, d, k)


def _tdnn_to_torch(w: np.ndarray, m_channels: int) -> np.ndarray:
    out, d, k = w.shape
    return w.reshape(out, d // m_channels, m_channels, k).transpose(0, 2, 1, 3).reshape(out, d, k)


# ----------------------------------------------------------------------------- architecture


def detect_config(
    state_dict: Mapping[str, Any], flavour: str = "speakerlab", dilations: Sequence[int] | None = None
) -> CamPPConfig:
    """The ``CamPPConfig`` of a CAM++ state_dict, read from its shapes.

    m_channels from ``head.conv1.weight``; FCM blocks per layer from ``head.layerL.i``; init_channels and
    feat_dim (= 8 · FCM width / m_channels) from ``xvector.tdnn.linear.weight``; growth rate, bottleneck,
    layers and kernel size per block from ``xvector.blockB.tdnndJ``; embed_dim from the dense layer. The
    dilations cannot be read from shapes: (1, 2, 2) for three blocks (both sources), else ``dilations``.

    Raises:
      ValueError: not a CAM++ (what it is, when known), an unknown flavour, or unknown dilations.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour {flavour!r} is not one of {FLAVOURS}")
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    other = not_this_format(shapes, "a CAM++", "campplus")
    if other:
        raise ValueError(other)
    missing = [k for k in _ANCHORS if k not in shapes]
    if missing:
        raise ValueError(
            f"not a CAM++ checkpoint: missing [{listing(missing)}]; its keys: [{listing([k for k in shapes])}]"
        )
    m_channels = shapes["head.conv1.weight"][0]
    fcm = tuple(
        len({m.group(1) for k in shapes if (m := re.match(rf"head\.layer{layer}\.(\d+)\.", k))})
        for layer in (1, 2)
    )  # fmt: skip
    init_channels, fcm_dim, _ = shapes[TDNN_WEIGHT]
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"xvector\.block(\d+)\.", k))})
    layers = tuple(
        len({m.group(1) for k in shapes if (m := re.match(rf"xvector\.block{b}\.tdnnd(\d+)\.", k))}) for b in blocks
    )
    local = [shapes.get(f"xvector.block{b}.tdnnd1.cam_layer.linear_local.weight", (0, 0, 1)) for b in blocks]
    growth = local[0][0]
    bn_channels = shapes.get("xvector.block1.tdnnd1.linear1.weight", (0,))[0]
    if dilations is None:
        if len(blocks) != 3:
            raise ValueError(f"{len(blocks)} CAM blocks: their dilations cannot be read from the tensor shapes")
        dilations = (1, 2, 2)
    if len(dilations) != len(blocks) or not growth or bn_channels % growth:
        raise ValueError(f"inconsistent CAM blocks: dilations {tuple(dilations)}, growth {growth}, width {bn_channels}")
    overrides = {"stats_eps": 0.0 if flavour == "speakerlab" else 1e-7}
    return CamPPConfig(
        feat_dim=8 * fcm_dim // m_channels,
        embed_dim=shapes["xvector.dense.linear.weight"][0],
        m_channels=m_channels,
        fcm_blocks=fcm,
        init_channels=init_channels,
        growth_rate=growth,
        bn_size=bn_channels // growth,
        block_layers=layers,
        block_kernels=tuple(s[2] for s in local),
        block_dilations=tuple(int(d) for d in dilations),
        **overrides,
    )


def _locations(config: CamPPConfig) -> dict[str, tuple[str, ...]]:
    keys = campplus_keys(config)
    return {k: flax_location(k, keys) for k in keys}


def from_campplus(
    state_dict: Mapping[str, Any], flavour: str = "speakerlab", dilations: Sequence[int] | None = None
) -> tuple[CamPPConfig, dict[str, Any], dict[str, Any] | None]:
    """Converts a CAM++ state_dict (3D-Speaker's or WeSpeaker's) to ecapa_jax variables.

    Returns:
      ``(config, variables, projection)``: ``{'params', 'batch_stats'}`` for ``CAMPPlus(config)`` and
      WeSpeaker's training head (None without ``projection.*`` keys).

    Raises:
      ValueError: another architecture, or keys missing, unexpected or mis-shaped (all listed with shapes).
    """
    encoder_sd, head_sd = split_projection(state_dict)
    config = detect_config(encoder_sd, flavour, dilations)
    shapes = template_shapes(config)
    locations = _locations(config)
    layout = {k: torch_shape(shapes[loc]) for k, loc in locations.items()}

    def permute(key: str, value: np.ndarray) -> np.ndarray:
        return _tdnn_to_ours(value, config.m_channels) if key == TDNN_WEIGHT else value

    flat, problems = convert_keys(encoder_sd, layout, locations.__getitem__, transform=permute)
    projection, head_problems = convert_projection(head_sd, config.embed_dim)
    problems += head_problems
    return config, checked_variables(flat, problems, shapes, f"CAM++ {config}"), projection


def to_campplus(
    config: CamPPConfig, variables: Mapping[str, Any], projection: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The inverse of ``from_campplus``: a state_dict ``CAMPPlus.load_state_dict(strict=True)`` takes (both sources).

    Raises:
      ValueError: variables missing, unexpected or of the wrong shape (all listed).
    """
    flat = traverse_util.flatten_dict(dict(variables))
    problems = check_leaves("variable", flat, template_shapes(config))
    head, head_problems = projection_to_torch(projection, config.embed_dim)
    problems += head_problems
    if problems:
        raise ValueError(f"variables do not match CAM++ {config}: {'; '.join(problems)}")
    out = {k: to_torch(flat[loc]) for k, loc in _locations(config).items()}
    out[TDNN_WEIGHT] = _tdnn_to_torch(out[TDNN_WEIGHT], config.m_channels)
    return out | head


def frontend_for(config: CamPPConfig, flavour: str) -> KaldiFrontEnd:
    """The source's inference front-end: 3D-Speaker's ``FBank(mean_nor=True)`` or WeSpeaker's."""
    if flavour == "speakerlab":
        return KaldiFrontEnd(FbankConfig.speakerlab(num_mel_bins=config.feat_dim))
    return KaldiFrontEnd(FbankConfig.wespeaker(num_mel_bins=config.feat_dim))


# ----------------------------------------------------------------------------- files


def campplus_to_dir(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    flavour: str = "speakerlab",
    key: str | None = None,
    overwrite: bool = False,
) -> tuple[CamPPConfig, dict[str, Any], dict[str, Any] | None]:
    """Converts a CAM++ ``.pt`` into the ecapa_jax model directory ``DST`` with the source's front-end.

    Args:
      src: ``CAMPPlus.state_dict()`` saved by ``torch.save`` (3D-Speaker's ``campplus_*.pt``, WeSpeaker's
        ``avg_model.pt``), or a file holding it under ``key``.
      dst: the model directory to write; an existing one is refused unless ``overwrite``.
      flavour: 'speakerlab' or 'wespeaker' (see the module docstring).
      key: the entry of ``src`` that holds the state_dict.
      overwrite: replace an existing model directory.

    Returns:
      ``(config, variables, projection)`` as written.
    """
    state_dict = load_source(src, "campplus", key)
    try:
        config, variables, projection = from_campplus(state_dict, flavour)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None
    metadata = {"source": str(Path(src).resolve()), "source_format": f"campplus-{flavour}"}
    frontend = frontend_for(config, flavour)
    save_model_dir(dst, config, join_variables(variables, projection), frontend, metadata, overwrite)
    return config, variables, projection


def dir_to_campplus(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, np.ndarray]:
    """Writes the ecapa_jax model directory ``SRC`` as a CAM++ ``DST.pt`` (torch-free writer)."""
    return dir_to_state_dict(src, dst, CamPPConfig, "CAM++", to_campplus, overwrite)


__all__ = [
    "FLAVOURS",
    "campplus_keys",
    "campplus_to_dir",
    "detect_config",
    "dir_to_campplus",
    "from_campplus",
    "frontend_for",
    "to_campplus",
]
