"""ecapa_jax: WeSpeaker's ECAPA-TDNN in JAX/Flax, channels-last, exact against the PyTorch code."""

from ecapa_jax.model import ECAPA_TDNN, PRESETS, EcapaConfig

__all__ = ["ECAPA_TDNN", "EcapaConfig", "PRESETS"]
__version__ = "0.1.0"
