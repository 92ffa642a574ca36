"""Imports of the PyTorch oracles (WeSpeaker's model code, torchaudio's kaldi fbank).

Each getter skips the calling test when the oracle is absent (``pytest.importorskip``); `make test`
installs them, so CI runs every parity test. WeSpeaker's package ``__init__`` imports modules we do
not install, so its submodules are imported under an empty parent package.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest


def torch():
    t = pytest.importorskip("torch")
    t.set_num_threads(1)  # two torch threads thrash on a busy 2-core machine
    return t


def wespeaker(submodule: str):
    """``wespeaker.<submodule>``, e.g. ``models.ecapa_tdnn`` or ``utils.schedulers``."""
    torch()
    if "wespeaker" not in sys.modules:
        spec = importlib.util.find_spec("wespeaker")
        if spec is None:
            pytest.skip("wespeaker-unofficial is not installed")
        pkg = types.ModuleType("wespeaker")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["wespeaker"] = pkg
    return importlib.import_module(f"wespeaker.{submodule}")
