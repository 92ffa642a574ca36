"""ecapa_jax: WeSpeaker's ECAPA-TDNN in JAX/Flax, channels-last, exact against the PyTorch code.

The public API at a glance (each module documents its own):
  model      ECAPA_TDNN, EcapaConfig (presets c512, c1024, glob_c512, glob_c1024)
  layers     BatchNorm, Conv1dReluBn, Res2Conv1dReluBn, SEConnect, SERes2Block
  pooling    TAP, TSDP, TSTP, ASTP, MHASTP, MQMHASTP, SAP and their statistics
  heads      margin heads (softmax, AAM, AM, A-softmax, sub-centre AAM, SphereFace2)
  schedules  WeSpeaker's LR and margin schedules as functions of the step
  features   Kaldi-exact fbank + CMN in jnp
  audio      load_audio, resample
  encoder    load(model_dir) -> Encoder
  convert    WeSpeaker .pt <-> model directory (`python -m ecapa_jax.convert`)
  score, metrics, kaldi_io   scoring back-end (`python -m ecapa_jax.score`, `python -m ecapa_jax.metrics`)
"""

from ecapa_jax.audio import AudioError, load_audio, resample
from ecapa_jax.encoder import Encoder, load
from ecapa_jax.features import FbankConfig, cmn, fbank, num_frames, wespeaker_features
from ecapa_jax.heads import HEADS, HeadConfig, make_head, margin_loss
from ecapa_jax.metrics import compute_eer, compute_min_dcf, det_curve
from ecapa_jax.model import ECAPA_TDNN, PRESETS, EcapaConfig
from ecapa_jax.schedules import exponential_decrease, margin_schedule
from ecapa_jax.score import as_norm, cohort_stats, cosine_scores, score_trials

__all__ = [
    "ECAPA_TDNN",
    "HEADS",
    "PRESETS",
    "AudioError",
    "EcapaConfig",
    "Encoder",
    "FbankConfig",
    "HeadConfig",
    "as_norm",
    "cmn",
    "cohort_stats",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "det_curve",
    "exponential_decrease",
    "fbank",
    "load",
    "load_audio",
    "make_head",
    "margin_loss",
    "margin_schedule",
    "num_frames",
    "resample",
    "score_trials",
    "wespeaker_features",
]
__version__ = "0.1.0"
