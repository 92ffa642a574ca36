"""Checkpoint converters: one module per source, each between its state_dicts and ecapa_jax variables.

common.py       the shared machinery: key ↔ Flax location rule, leaf table, shape checks, what a file holds
wespeaker.py    WeSpeaker's ECAPA-TDNN (``python -m ecapa_jax.convert wespeaker``), its training heads
speechbrain.py  SpeechBrain's ECAPA-TDNN (``python -m ecapa_jax.convert speechbrain``), hyperparams.yaml
campplus.py     CAM++, 3D-Speaker's and WeSpeaker's (``python -m ecapa_jax.convert campplus``)
"""
