"""The "boss" set-up at VoxCeleb scale: Conformer + self-attentive pooling + AM-softmax, on WeSpeaker's recipe.

The model is the demo's ``ConformerConfig.boss()`` widened to MFA-Conformer's encoder sizes (Zhang et al.,
arXiv:2203.15249: d_model 256, 6 layers, 4 heads, feed-forward 1024, depthwise kernel 15) on 80 mel bins with
a 192-dim embedding; the head is AM-softmax (``add_margin``, scale 32) with the recipe's margin ramp 0 → 0.2.
Data, augmentation, epochs and the schedule's shape are ``voxceleb_glob_c512``'s (WeSpeaker's ECAPA recipe);
the SGD learning rate is 20× lower (peak 0.005 × 256/64 = 0.02), the peak that trained the demo's Conformer and
Transformer with a cosine head where ECAPA's 0.1 did not (``demo_conformer``).
Not run here (no VoxCeleb, no GPU): no EER is claimed, and the learning rate is a transfer from the demo corpus,
untested at this scale (Conformers are usually trained with Adam, which the trainer does not offer yet).
"""

import dataclasses

from ecapa_jax.models.conformer import ConformerConfig
from train.config import TrainConfig, load_config


def get_config() -> TrainConfig:
    model = ConformerConfig.boss(feat_dim=80, d_model=256, num_layers=6, ff_dim=1024, embed_dim=192)
    base = load_config("voxceleb_glob_c512")
    return base.replace(
        model=model,
        projection_args={**base.projection_args, "project_type": "add_margin"},
        scheduler_args=dataclasses.replace(base.scheduler_args, initial_lr=0.005, final_lr=2.5e-6),
    )
