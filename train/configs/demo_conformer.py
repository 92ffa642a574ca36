"""The "boss" set-up on the demo corpus: Conformer + self-attentive pooling (SAP) + AM-softmax.

``ConformerConfig.boss()`` (40 mel bins, d_model 120, 4 Conformer layers, 4 heads, feed-forward 256,
depthwise kernel 15, SAP) trained with the additive-margin softmax head (``add_margin``, CosFace/AM-softmax:
s · (cos θ − m), s = 32), the margin ramped 0 → 0.2 over epochs 3–6 as the demo ramps ECAPA's AAM margin.
Corpus, batch and chunks are the ``demo`` preset's; the learning rate is 5× lower (peak 0.04 × 32/64 = 0.02,
decaying to 5e-4): with ECAPA's 0.2 the cosine head never lifted the training accuracy of the Transformer or
the Conformer above chance, while 0.005–0.02 trained both (replayed batches, 20 speakers, 60 steps).
"""

from ecapa_jax.models.conformer import ConformerConfig
from train.config import SchedulerArgs, TrainConfig, load_config


def get_config() -> TrainConfig:
    return load_config("demo").replace(
        model=ConformerConfig.boss(),
        projection_args={"project_type": "add_margin", "scale": 32.0},
        scheduler_args=SchedulerArgs(initial_lr=0.04, final_lr=0.001, warm_up_epoch=1, warm_from_zero=True),
    )
