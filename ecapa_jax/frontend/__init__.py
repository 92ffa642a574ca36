"""Front-ends: audio files → waveforms → features, the first stage of the pipeline.

    audio.py   load_audio (any libsndfile format → mono float32 at the wanted rate), resample
    kaldi.py   Kaldi-exact fbank + CMN in jnp (WeSpeaker's and 3D-Speaker's): FbankConfig, fbank, cmn, KaldiFrontEnd
    speechbrain.py   SpeechBrain's Fbank + sentence mean normalisation in jnp: SpeechBrainFbank

A front-end object is a frozen config that is also the function: ``frontend(waveforms (B, N), lengths (B,),
key=...) -> (feats (B, T, F), frames (B,))``, with ``sample_rate``, ``feature_dim``, ``min_samples``,
``num_frames(n)`` and ``max_samples(frames)``. Model directories record theirs (``frontend_to_dict``), so
an encoder always computes the features its model was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ecapa_jax.config import from_tagged_dict, to_tagged_dict
from ecapa_jax.frontend.kaldi import KaldiFrontEnd
from ecapa_jax.frontend.speechbrain import SpeechBrainFbank

FRONTENDS: dict[str, type] = {"kaldi": KaldiFrontEnd, "speechbrain": SpeechBrainFbank}


def frontend_to_dict(frontend: Any) -> dict[str, Any]:
    """``{"type": name, **fields}``: a front-end as JSON."""
    return to_tagged_dict(frontend, FRONTENDS, "type")


def frontend_from_dict(d: Mapping[str, Any], where: str = "") -> Any:
    """The front-end a ``frontend_to_dict`` dict describes."""
    return from_tagged_dict(d, FRONTENDS, "type", where)


__all__ = ["FRONTENDS", "frontend_from_dict", "frontend_to_dict"]
