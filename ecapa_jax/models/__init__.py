"""Speaker-embedding models, channels-last: ``(B, T, F)`` features (+ a ``(B, T)`` mask) → ``(B, E)``.

A model family is a frozen config dataclass and the Flax module it builds, registered in ``FAMILIES``.
Every family's module is called as ``module.apply(variables, feats, train=..., mask=...)`` and returns
``(embedding (B, E), intermediates: dict)``; its config has ``feat_dim`` (F) and ``embed_dim`` (E). That is
all the encoder, the trainer and the model directory need, so a new family is one module here plus its
entry below (and a converter in ``ecapa_jax.io.convert`` for checkpoints from elsewhere).

    layers.py    BatchNorm with PyTorch's semantics, Conv1d (shared by the families)
    pooling.py   the temporal pooling family (TAP ... MQMHASTP, SAP)
    ecapa.py     ECAPA-TDNN (WeSpeaker's and SpeechBrain's), its blocks and presets
    campplus.py  CAM++ (3D-Speaker's and WeSpeaker's), channels-last
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from ecapa_jax.config import from_tagged_dict, to_tagged_dict
from ecapa_jax.models.campplus import CamPPConfig, CAMPPlus
from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig

FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "ecapa": (EcapaConfig, ECAPA_TDNN),
    "campplus": (CamPPConfig, CAMPPlus),
}
_CONFIGS = {name: config for name, (config, _) in FAMILIES.items()}


def build_model(config: Any) -> nn.Module:
    """The Flax module of a registered family's config."""
    for config_class, module in FAMILIES.values():
        if type(config) is config_class:
            return module(config)
    raise ValueError(f"{type(config).__name__} is not the config of a model family ({sorted(FAMILIES)})")


def model_config_to_dict(config: Any) -> dict[str, Any]:
    """``{"family": name, **fields}``: a model config as JSON."""
    return to_tagged_dict(config, _CONFIGS, "family")


def model_config_from_dict(d: Mapping[str, Any], where: str = "") -> Any:
    """The config a ``model_config_to_dict`` dict describes."""
    return from_tagged_dict(d, _CONFIGS, "family", where)


__all__ = ["FAMILIES", "build_model", "model_config_from_dict", "model_config_to_dict"]
