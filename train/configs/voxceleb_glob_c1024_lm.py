"""WeSpeaker's large-margin fine-tune of the averaged GLOB_c1024 model (see ``voxceleb_glob_c512_lm``)."""

from train.config import TrainConfig, load_config


def get_config() -> TrainConfig:
    lm = load_config("voxceleb_glob_c512_lm")
    return lm.replace(model=load_config("voxceleb_glob_c1024").model, model_init="runs/voxceleb_glob_c1024/avg_model")
