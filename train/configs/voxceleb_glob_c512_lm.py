"""WeSpeaker's large-margin fine-tune (``ecapa_tdnn_lm.yaml``, run.sh stage 9) of the averaged GLOB_c512 model.

From the base recipe: 5 epochs, 600-frame chunks, 2 GPUs × 64 = a global batch of 128 (scale
ratio 2), lr 1e-4 → 2.5e-5 with a 1-epoch warm-up, margin fixed at 0.5 from the first step, no
speed perturbation (the head keeps the base run's 3 × speakers classes: the class count is taken
from ``model_init``'s projection), ``do_lm``, one checkpoint kept (``num_avg`` 1).
``model_init`` is the base run's averaged model: ``python -m train.tools average runs/voxceleb_glob_c512``.
"""

import dataclasses

from train.config import MarginUpdate, SchedulerArgs, TrainConfig, load_config


def large_margin(base: TrainConfig, model_init: str) -> TrainConfig:
    """The LM fine-tune of a base recipe config."""
    return base.replace(
        data=dataclasses.replace(base.data, num_frms=600, global_batch_size=128, speed_perturb=False),
        projection_args={**base.projection_args, "do_lm": True},
        scheduler_args=SchedulerArgs(initial_lr=1e-4, final_lr=2.5e-5, warm_up_epoch=1, warm_from_zero=True),
        margin_update=MarginUpdate(
            initial_margin=0.5, final_margin=0.5, increase_start_epoch=1, fix_start_epoch=1, increase_type="exp"
        ),
        num_epochs=5,
        keep_checkpoints=1,
        model_init=model_init,
    )


def get_config() -> TrainConfig:
    return large_margin(load_config("voxceleb_glob_c512"), "runs/voxceleb_glob_c512/avg_model")
