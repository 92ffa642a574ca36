"""Every Python block of README.md runs as written.

The blocks define their own inputs; the files they name are what a reader has after ``make demo`` (the
demo's exported model, ``runs/demo/model``) plus two audio files of their own (``a.wav``, ``b.flac``). The
fixture makes those in a scratch directory: the demo preset's architecture with random weights, and two
short recordings.
"""

import re
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf
from test_embed import speech_like

from ecapa_jax.io.checkpoint import join_variables, save_model_dir
from ecapa_jax.models import build_model
from train.config import load_config

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), flags=re.S | re.M)


@pytest.fixture(scope="module")
def reader_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    config = load_config("demo")
    feats = np.zeros((1, 20, config.model.feat_dim), np.float32)
    variables = jax.device_get(build_model(config.model).init(jax.random.key(0), feats))
    save_model_dir(root / "runs" / "demo" / "model", config.model, join_variables(variables), config.frontend)
    sf.write(root / "a.wav", speech_like(1.2, 16000, seed=1), 16000, subtype="PCM_16")
    sf.write(root / "b.flac", speech_like(0.9, 22050, seed=2, channels=2), 22050)
    return root


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


# What the blocks' comments promise, checked on what they computed: (a word the block contains, check).
PROMISES = [
    ("ECAPA_TDNN(cfg)", lambda ns: ns["emb"].shape == (4, 192) and ns["out"]["frame_features"].shape == (4, 200, 1536)),
    ("TinySpeakerNet", lambda ns: ns["pooled"].shape == (2, 128)),
    ("arc_margin", lambda ns: abs(float(ns["margin"](3000)) - 0.19552) < 1e-5 and ns["grad"].shape == (8, 192)),
    (
        "ecapa_jax.load",
        lambda ns: (
            ns["e"].shape == (192,)
            and ns["embeddings"].shape == (2, 192)
            and ns["failures"] == {}
            and -1 <= ns["score"] <= 1
            and np.allclose(ns["emb"][0], ns["embeddings"][0], atol=1e-5)
        ),  # features path == waveform path
    ),
]


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_block_runs_as_written(index, reader_files, monkeypatch):
    monkeypatch.chdir(reader_files)
    namespace = {"__name__": f"readme_block_{index}"}
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    for word, promise in PROMISES:
        if word in BLOCKS[index]:
            assert promise(namespace), word


@pytest.mark.parametrize("word", [word for word, _ in PROMISES])
def test_every_promise_has_its_block(word):
    assert any(word in block for block in BLOCKS), word
