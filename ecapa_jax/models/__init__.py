"""Speaker-embedding models, channels-last: ``(B, T, F)`` features (+ a ``(B, T)`` mask) → ``(B, E)``.

A model family is a frozen config dataclass and the Flax module it builds, registered in ``FAMILIES``.
Every family's module is called as ``module.apply(variables, feats, train=..., mask=...)`` and returns
``(embedding (B, E), intermediates: dict)``; its config has ``feat_dim`` (F) and ``embed_dim`` (E). That is
all the encoder, the trainer, the model directory and the exporter need, so a new family is one module here
plus its entry below (and a converter in ``ecapa_jax.io.convert`` for checkpoints from elsewhere).

A family whose layers are local in time apart from reductions over the utterance that all go through
``pooling.UtteranceStats``, and whose config says how far they reach (``context_frames``), also gets exact
long-form evaluation of recordings of any length in bounded memory (``long_form.py``).

    layers.py       BatchNorm with PyTorch's semantics, Conv1d (shared by the families)
    pooling.py      the temporal pooling family (TAP ... MQMHASTP, SAP) and UtteranceStats
    ecapa.py        ECAPA-TDNN (WeSpeaker's and SpeechBrain's), its blocks and presets (light ECAPA:
                    depthwise-separable convs)
    campplus.py     CAM++ (3D-Speaker's and WeSpeaker's), channels-last
    transformer.py  the Transformer speaker model (pre-net → encoder → pooling → embedding), PyTorch's
                    TransformerEncoderLayer and MultiheadAttention
    conformer.py    torchaudio's Conformer layers and the Conformer speaker model
    costs.py        parameters and multiply-accumulates of any family (counted from the traced forward pass)
    long_form.py    whole-utterance embeddings of long recordings, in chunks
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from ecapa_jax.config import from_tagged_dict, to_tagged_dict
from ecapa_jax.models.campplus import CamPPConfig, CAMPPlus
from ecapa_jax.models.conformer import ConformerConfig, SpeakerConformer
from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig
from ecapa_jax.models.transformer import SpeakerTransformer, TransformerConfig

FAMILIES: dict[str, tuple[type, type[nn.Module]]] = {
    "ecapa": (EcapaConfig, ECAPA_TDNN),
    "campplus": (CamPPConfig, CAMPPlus),
    "transformer": (TransformerConfig, SpeakerTransformer),
    "conformer": (ConformerConfig, SpeakerConformer),
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
