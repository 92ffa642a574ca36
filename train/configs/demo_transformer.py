"""The Transformer baseline on the demo corpus: 40 mel bins → linear pre-net → Transformer → mean → embedding.

``TransformerConfig.medium()`` (d_model 120, 4 layers, 4 heads, feed-forward 256, dropout 0.1) trained as the
``demo`` preset trains ECAPA (same corpus, batch, chunks and SGD schedule), with the baselines' plain
softmax classifier as the head (WeSpeaker's ``softmax`` projection: BN → ReLU → Linear).
"""

from ecapa_jax.models.transformer import TransformerConfig
from train.config import TrainConfig, load_config


def get_config() -> TrainConfig:
    return load_config("demo").replace(
        model=TransformerConfig.medium(),
        projection_args={"project_type": "softmax"},
    )
