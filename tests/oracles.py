"""Imports of the PyTorch oracles (WeSpeaker's model code, torchaudio's kaldi fbank, SpeechBrain 1.1.2,
3D-Speaker's speakerlab-slim 0.1.0) and of the real weights and speech fetched from the registries.

Each getter skips the calling test when the oracle is absent (``pytest.importorskip``); `make test`
installs them, so CI runs every parity test. WeSpeaker's package ``__init__`` imports modules we do
not install, so its submodules are imported under an empty parent package. ``fetched`` skips only when
a download is impossible (no registry or no pip/apt-get), saying why.
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


def wespeaker_variables(module) -> dict:
    """A WeSpeaker module's state_dict as our Flax variables, written independently of the converter.

    Index rule: ``convs.3`` → ``convs_3``. Conv1d weight (O, I, K) → kernel (K, I, O); Linear (O, I) →
    kernel (I, O); BatchNorm weight → scale, running_mean/var → batch_stats mean/var.
    """
    import numpy as np

    variables: dict = {}
    for key, value in module.state_dict().items():
        parts: list[str] = []
        for p in key.split("."):
            if p.isdigit():
                parts[-1] += f"_{p}"
            else:
                parts.append(p)
        *path, leaf = parts
        value = value.detach().numpy().copy()  # .numpy() is a view that torch updates in place
        collection, leaf = {
            "weight": ("params", "kernel" if value.ndim > 1 else "scale"),
            "bias": ("params", "bias"),
            "running_mean": ("batch_stats", "mean"),
            "running_var": ("batch_stats", "var"),
            "num_batches_tracked": ("batch_stats", "num_batches_tracked"),
        }[leaf]
        if value.ndim > 1:
            value = value.transpose(tuple(reversed(range(value.ndim))))
        if leaf == "num_batches_tracked":
            value = value.astype(np.int32)
        node = variables.setdefault(collection, {})
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = value
    return variables


def randomise_batchnorm(module, seed: int = 0) -> None:
    """Random running statistics and affine parameters for every BatchNorm1d/2d, so BN is exercised."""
    t = torch()
    g = t.Generator().manual_seed(seed)
    with t.no_grad():
        for m in module.modules():
            if isinstance(m, t.nn.BatchNorm1d | t.nn.BatchNorm2d):
                m.running_mean.copy_(t.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(t.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(t.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(t.randn(m.bias.shape, generator=g) * 0.1)


def speechbrain(module: str):
    """``speechbrain.<module>`` (1.1.2, its code only: e.g. ``lobes.models.ECAPA_TDNN``, ``lobes.features``)."""
    torch()
    pytest.importorskip("speechbrain", reason="speechbrain 1.1.2 is not installed (make oracles)")
    return importlib.import_module(f"speechbrain.{module}")


def speakerlab(module: str):
    """``speakerlab.<module>`` (speakerlab-slim 0.1.0, 3D-Speaker's code: ``models.campplus.DTDNN``, ...)."""
    torch()
    pytest.importorskip("speakerlab", reason="speakerlab-slim 0.1.0 is not installed (make oracles)")
    return importlib.import_module(f"speakerlab.{module}")


def fetched(fn, *args, **kwargs):
    """``fn(*args)`` from ``ecapa_jax.io.realdata``; the test is skipped, with the reason, only when a download
    is impossible."""
    from ecapa_jax.io.realdata import FetchError

    pytest.importorskip("G722", reason="the PyPI package G722 (G.722 decoder) is not installed")
    try:
        return fn(*args, **kwargs)
    except FetchError as e:
        pytest.skip(f"download impossible here: {e}")


def cosines(a, b):
    """Row-wise cosine of (B, E) arrays, in float64."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def wespeaker_fbank(samples):
    """WeSpeaker's inference fbank (torchaudio kaldi.fbank: 80 bins, 25/10 ms, dither 0, hamming, no
    energy, 16 kHz) of (N,) samples already in int16 scale. Returns a (T, 80) torch tensor."""
    import numpy as np

    t = torch()
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    waveform = t.from_numpy(np.asarray(samples, np.float32))[None]  # (1, N)
    return kaldi.fbank(
        waveform,
        num_mel_bins=80,
        frame_length=25,
        frame_shift=10,
        dither=0.0,
        sample_frequency=16000,
        window_type="hamming",
        use_energy=False,
    )
