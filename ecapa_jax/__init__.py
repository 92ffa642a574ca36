"""ecapa_jax: speaker-embedding models in JAX/Flax, channels-last, exact against the PyTorch code.

The package follows the pipeline, front to back (each module documents its own):

  frontend/   audio files → waveforms → features: load_audio, resample, Kaldi fbank + CMN (KaldiFrontEnd),
              SpeechBrain's Fbank (SpeechBrainFbank)
  models/     features → embeddings: shared layers, the pooling family, ECAPA-TDNN, CAM++ (FAMILIES)
  training/   embeddings → loss: margin heads, learning-rate and margin schedules
  backend/    embeddings → scores → EER/minDCF, plots
  io/         model directories and checkpoints, Kaldi tables, torch-free .pt files, converters
  encoder.py  load(model_dir) → an Encoder that embeds waveforms, files or features
  stats.py, config.py   the masks/statistics and the config helper everything above shares

Command lines (one shape, one exit-code rule: ``ecapa_jax.cli``): ``python -m ecapa_jax.embed``,
``ecapa_jax.score``, ``ecapa_jax.metrics``, ``ecapa_jax.convert``. Training is the ``train`` package.
"""

from ecapa_jax.backend.metrics import compute_eer, compute_min_dcf, det_curve
from ecapa_jax.backend.scoring import as_norm, cohort_stats, cosine_scores, score_trials
from ecapa_jax.encoder import Encoder, load
from ecapa_jax.frontend.audio import AudioError, load_audio, resample
from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd, cmn, fbank, num_frames, wespeaker_features
from ecapa_jax.frontend.speechbrain import SpeechBrainFbank
from ecapa_jax.models import FAMILIES, build_model
from ecapa_jax.models.campplus import CamPPConfig, CAMPPlus
from ecapa_jax.models.ecapa import ECAPA_TDNN, PRESETS, EcapaConfig
from ecapa_jax.training.heads import HEADS, HeadConfig, make_head, margin_loss
from ecapa_jax.training.schedules import exponential_decrease, margin_schedule

__all__ = [
    "CAMPPlus",
    "ECAPA_TDNN",
    "FAMILIES",
    "HEADS",
    "PRESETS",
    "AudioError",
    "CamPPConfig",
    "EcapaConfig",
    "Encoder",
    "FbankConfig",
    "HeadConfig",
    "KaldiFrontEnd",
    "as_norm",
    "build_model",
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
    "SpeechBrainFbank",
    "wespeaker_features",
]
__version__ = "0.1.0"
