"""WeSpeaker's VoxCeleb recipe (`voxceleb_glob_c512`) at toy size: a run of the whole trainer in seconds.

The recipe's optimiser, schedules (150 "epochs" of one step each, so the 6-epoch warm-up and the
epoch 20–40 margin ramp all happen in 150 steps) and loss, on a 16-channel GLOB model, 16 generated
speakers × 4 utterances, a global batch of 8 and 20-frame chunks, every step logged, no evaluation.
It is what the trainer's tests and ``benchmarks/kill_soak.py`` run (with ``num_epochs`` and checkpoint
overrides), and a quick smoke test of an installation: ``python -m train --config tiny num_epochs=4``.
"""

import dataclasses

from ecapa_jax.models.ecapa import EcapaConfig
from train.config import TrainConfig, load_config
from train.data import DataConfig


def get_config() -> TrainConfig:
    return dataclasses.replace(
        load_config("voxceleb_glob_c512"),
        model=EcapaConfig(channels=16, mfa_dim=64, embed_dim=32, global_context_att=True),  # GLOB, as the recipe
        data=DataConfig(
            data_type="demo",
            demo_speakers=16,
            demo_utts_per_speaker=4,
            demo_held_out=0,
            global_batch_size=8,
            num_frms=20,
            speed_perturb=False,
            num_workers=0,
        ),
        steps_per_epoch=1,
        log_interval=1,
        eval_data="",
        eval_trials="",
    )
