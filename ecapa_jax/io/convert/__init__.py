"""Checkpoint converters: one module per source, each between its state_dicts and ecapa_jax variables.

wespeaker.py   WeSpeaker's ECAPA-TDNN (``python -m ecapa_jax.convert wespeaker``)
"""
