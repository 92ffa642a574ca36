"""WeSpeaker's VoxCeleb ECAPA recipe (``voxceleb_glob_c512``) with light ECAPA: depthwise-separable Res2 convs.

``EcapaConfig.light_c512()``: GLOB_c512 whose k=3 dilated Res2 convs are depthwise-separable (6.02 M
parameters instead of 6.19 M, 1.004 G MACs per 2 s instead of 1.037 G); everything else is the recipe's.
Not run here (no VoxCeleb, no GPU): no EER is claimed.
"""

from ecapa_jax.models.ecapa import EcapaConfig
from train.config import TrainConfig, load_config


def get_config() -> TrainConfig:
    return load_config("voxceleb_glob_c512").replace(model=EcapaConfig.light_c512())
