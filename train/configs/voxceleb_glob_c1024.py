"""WeSpeaker's VoxCeleb ECAPA recipe with the GLOB_c1024 model; everything else as ``voxceleb_glob_c512``."""

from ecapa_jax.models.ecapa import EcapaConfig
from train.config import TrainConfig, load_config


def get_config() -> TrainConfig:
    return load_config("voxceleb_glob_c512").replace(model=EcapaConfig.glob_c1024())
