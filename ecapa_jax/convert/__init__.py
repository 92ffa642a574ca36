"""Checkpoint converters: WeSpeaker ``.pt`` ↔ ecapa_jax model directories (``python -m ecapa_jax.convert``)."""

from ecapa_jax.convert.torchzip import load_state_dict, save_state_dict
from ecapa_jax.convert.wespeaker import (
    detect_config,
    dir_to_wespeaker,
    from_wespeaker,
    to_wespeaker,
    wespeaker_keys,
    wespeaker_to_dir,
)

__all__ = [
    "detect_config",
    "dir_to_wespeaker",
    "from_wespeaker",
    "load_state_dict",
    "save_state_dict",
    "to_wespeaker",
    "wespeaker_keys",
    "wespeaker_to_dir",
]
