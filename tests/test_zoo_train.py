"""`python -m train --config NAME` for the model-zoo presets: each learns (held-out EER clearly down) and exports
a model directory that `ecapa_jax.load` embeds with, equal to the final checkpoint.

CI-sized runs: the preset's own model family, head and schedule, on a smaller demo corpus (16 speakers × 12
utterances, 1 s chunks) with a narrower model; the full presets' figures are in the README. Only the Conformer
"boss" runs here (CI time): ``demo_transformer`` shares its speaker chain (measured 37.6 % → 8.0 % in this
CI-sized form, 108 steps), and ``demo_light`` is ECAPA with separable convs, whose learning `test_train.py`
checks for ECAPA (its parity and costs: `test_light_ecapa.py`); notebooks/05 runs all four presets end to end
in CI.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import ecapa_jax
from ecapa_jax.io.checkpoint import CheckpointManager
from ecapa_jax.models.conformer import ConformerConfig
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.models.transformer import TransformerConfig
from train.config import apply_overrides, load_config

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, STEPS = 18, 108  # 18 epochs of ⌊192 / 32⌋ steps
CORPUS = [
    "data.demo_speakers=16",
    "data.demo_utts_per_speaker=12",
    "data.demo_held_out=6",
    "data.num_frms=100",
    f"num_epochs={EPOCHS}",
    "log_interval=10",
    f"eval_interval={STEPS}",
    "num_eval_trials=1000",
]
NARROW = {  # per preset: a narrower model of the same family
    "demo_conformer": ["model.d_model=48", "model.num_layers=2", "model.ff_dim=96", "model.embed_dim=48"],
}
FAMILY = {"demo_conformer": ConformerConfig}


@pytest.mark.parametrize("preset", sorted(NARROW))
def test_preset_learns_and_exports(preset, tmp_path):
    overrides = CORPUS + NARROW[preset]
    assert isinstance(apply_overrides(load_config(preset), overrides).model, FAMILY[preset])
    cmd = [sys.executable, "-m", "train", f"--config={preset}", f"--workdir={tmp_path}", *overrides]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    init, end = evals[0]["eer"], evals[-1]["eer"]
    print(f"{preset}: held-out EER {100 * init:.1f}% at init -> {100 * end:.1f}% after {evals[-1]['step']} steps")
    assert [e["step"] for e in evals] == [0, STEPS] and end < init - 0.10, f"EER {init:.3f} -> {end:.3f}"

    encoder = ecapa_jax.load(tmp_path / "model")
    assert isinstance(encoder.config, FAMILY[preset]) and encoder.frontend.feature_dim == encoder.config.feat_dim
    final, _ = CheckpointManager(tmp_path / "checkpoints").restore(STEPS)
    saved = {"params": final["params"]["model"], "batch_stats": final["batch_stats"]["model"]}
    jax.tree.map(np.testing.assert_array_equal, dict(encoder.variables), saved)
    wave = np.random.default_rng(0).normal(scale=0.1, size=24000).astype(np.float32)
    emb = encoder.embed(wave)
    assert emb.shape == (encoder.config.embed_dim,) and np.all(np.isfinite(emb))
    # WeSpeaker's .pt exists for its own ECAPA only, not for these.
    assert not (tmp_path / "model.pt").exists()


def test_a_kernel_longer_than_the_chunks_is_refused():
    with pytest.raises(
        ValueError, match=r"model.depthwise_conv_kernel_size=15 is larger than the input: data.num_frms=10"
    ):
        apply_overrides(load_config("demo_conformer"), ["data.num_frms=10"])
    with pytest.raises(ValueError, match=r"ConformerConfig: num_heads=7 must be >= 1 and divide d_model=120"):
        apply_overrides(load_config("demo_conformer"), ["model.num_heads=7"])


def test_recipe_presets_build():
    """The VoxCeleb-scale presets: WeSpeaker's data and schedule with the new models (no run here)."""
    base = load_config("voxceleb_glob_c512")
    for name, family in [
        ("voxceleb_light_c512", EcapaConfig),
        ("voxceleb_transformer", TransformerConfig),
        ("voxceleb_conformer", ConformerConfig),
    ]:
        config = load_config(name)
        assert isinstance(config.model, family) and config.model.feat_dim == 80 == config.frontend.feature_dim
        assert (config.data, config.num_epochs, config.scheduler_args.warm_up_epoch) == (base.data, 150, 6)
    assert load_config("voxceleb_light_c512").model == EcapaConfig.light_c512()
    assert load_config("voxceleb_conformer").projection_args["project_type"] == "add_margin"
    assert load_config("voxceleb_light_c512").scheduler_args == base.scheduler_args  # ECAPA's own recipe
    for name in ("voxceleb_transformer", "voxceleb_conformer"):  # peak 0.005 × 256/64: see demo_conformer
        assert load_config(name).scheduler_args.initial_lr == 0.005
