"""Light ECAPA on the demo corpus: the ``demo`` preset's narrow ECAPA (C = 128) with depthwise-separable convs.

Every k=3 dilated Res2 conv and the k=5 first conv are depthwise-separable (``EcapaConfig.separable_res2``,
``separable_layer1``); everything else (corpus, batch, chunks, SGD schedule, AAM margin) is the ``demo``
preset's, so the two runs compare the convolutions alone.
"""

from train.config import TrainConfig, load_config


def get_config() -> TrainConfig:
    base = load_config("demo")
    return base.replace(model=base.model.replace(separable_res2=True, separable_layer1=True))
