"""Checkpoint converters: one module per source, each between its state_dicts and ecapa_jax variables.

common.py      what they share: the key → location rule, the leaf table, templates, error listings
wespeaker.py   WeSpeaker's ECAPA-TDNN (``python -m ecapa_jax.convert wespeaker``)
pytorch.py     PyTorch's nn.TransformerEncoder(Layer) and torchaudio's Conformer (Transformer/Conformer families)
"""
