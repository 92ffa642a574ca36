"""WeSpeaker's VoxCeleb ECAPA recipe (``examples/voxceleb/v2/conf/ecapa_tdnn.yaml``), GLOB_c512.

Every value is the recipe's (`train.config.TrainConfig`'s defaults): 150 epochs, 2 GPUs × 128 = a
global batch of 256 (lr scale ratio 4), SGD 0.1 → 5e-5 with a 6-epoch warm-up from zero, AAM
margin 0 → 0.2 over epochs 20–40, 200-frame chunks, speed perturbation, reverb/noise with p 0.6,
no SpecAugment; the last 10 epoch checkpoints are kept for averaging (``num_avg``).
Paths follow WeSpeaker's ``run.sh`` layout; point them at your data with overrides, e.g.
``data.train_data=/data/vox2_dev/shard.list``.
"""

from ecapa_jax.models.ecapa import EcapaConfig
from train.config import TrainConfig
from train.data import DataConfig


def get_config() -> TrainConfig:
    return TrainConfig(
        model=EcapaConfig.glob_c512(),
        data=DataConfig(
            data_type="shard",
            train_data="data/vox2_dev/shard.list",
            train_label="data/vox2_dev/utt2spk",
            noise_data="data/musan",
            reverb_data="data/rirs",
            global_batch_size=256,
            num_workers=16,
            seed=42,
        ),
        checkpoint_interval=0,  # every epoch end
        keep_checkpoints=10,
        log_interval=100,
        eval_data="data/vox1",
        eval_trials="data/vox1/trials/vox1_O_cleaned.kaldi",
        eval_interval=0,
    )
