"""The trainer: `python -m train` (WeSpeaker's ECAPA recipe in JAX)."""
