"""The Transformer baseline at VoxCeleb scale, on WeSpeaker's recipe (``voxceleb_glob_c512``'s data and schedule).

``TransformerConfig.medium()`` widened like ``voxceleb_conformer`` (80 mel bins, d_model 256, 6 layers, 4
heads, feed-forward 1024, 192-dim embedding), mean pooling, the recipe's AAM head, and ``voxceleb_conformer``'s
20× lower learning rate (peak 0.02; see there). Not run here (no VoxCeleb, no GPU): no EER is claimed.
"""

from ecapa_jax.models.transformer import TransformerConfig
from train.config import TrainConfig, load_config


def get_config() -> TrainConfig:
    model = TransformerConfig.medium(feat_dim=80, d_model=256, num_layers=6, ff_dim=1024, embed_dim=192)
    base = load_config("voxceleb_glob_c512")
    return base.replace(model=model, scheduler_args=load_config("voxceleb_conformer").scheduler_args)
