"""Exported artifacts (``python -m ecapa_jax.export``), each run for real in a fresh process: a ``.jax`` artifact in
one that imports neither ecapa_jax nor flax (the three documented lines), an ``.onnx`` one in an onnxruntime-only
process; their embeddings against the library's at batch/length pairs not used at export.

A new model family is one more entry in ``FAMILIES``: a small config of it, its front-end, and whether jax2onnx
converts it (when it does not, the export must say so in one error).
"""

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from test_long_form import random_variables

from ecapa_jax.encoder import embed_waveforms
from ecapa_jax.export import main
from ecapa_jax.frontend import frontend_to_dict
from ecapa_jax.frontend.kaldi import KaldiFrontEnd
from ecapa_jax.frontend.speechbrain import SpeechBrainFbank
from ecapa_jax.io.checkpoint import join_variables, save_model_dir
from ecapa_jax.io.export import export, load_artifact
from ecapa_jax.models import build_model, model_config_to_dict
from ecapa_jax.models.campplus import CamPPConfig
from ecapa_jax.models.conformer import ConformerConfig
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.models.transformer import TransformerConfig

JAX_ATOL, ONNX_ATOL = 1e-5, 1e-4  # acceptance bounds; measured ≤ 3e-7 (jax) and ≤ 2e-6 (onnx)
# The waveform artifact includes the front-end, whose fbank rounds differently in the padded batch's shape (≤ 8e-6
# on features); padded vs alone, the models themselves are ≤ 2e-7 apart on the same features. The attention models'
# LayerNorms on narrow frames (d_model 16) amplify that rounding: measured 1.2e-5 (Transformer), 1.1e-5 (Conformer),
# 2.3e-6 (ECAPA).
WAVE_ATOL = {"transformer": 3e-5, "conformer": 3e-5}  # by family; JAX_ATOL for the others
SHAPES = [(3, 317), (1, 1999)]  # (B, T) pairs, none used at export (B and T are symbolic there)
FAMILIES = {  # name: (config, front-end, why jax2onnx 0.17.1 cannot convert it, or None)
    "ecapa_glob_astp": (EcapaConfig(channels=32, embed_dim=16, global_context_att=True), KaldiFrontEnd(), None),
    "ecapa_tstp_emb_bn": (EcapaConfig(channels=32, embed_dim=16, pooling="TSTP", emb_bn=True), KaldiFrontEnd(), None),
    # Its reflect padding (layers.reflect_pad) fills a (B, 1) array with T: jax2onnx's `full` wants a constant shape.
    "speechbrain_ecapa": (
        EcapaConfig.speechbrain(32, 96, embed_dim=16),
        SpeechBrainFbank(),
        "InconclusiveDimensionOperation",
    ),
    # Its segment pooling pads T up to a multiple of seg_len: jax2onnx's Pad takes constant widths only.
    "campplus": (
        CamPPConfig(
            embed_dim=16,
            m_channels=8,
            fcm_blocks=(1, 1),
            init_channels=16,
            growth_rate=8,
            bn_size=2,
            block_layers=(2, 2, 2),
            seg_len=20,
        ),
        KaldiFrontEnd(),
        "InconclusiveDimensionOperation",
    ),  # fmt: skip
    "light_ecapa": (
        EcapaConfig(channels=32, embed_dim=16, global_context_att=True, separable_res2=True, separable_layer1=True),
        KaldiFrontEnd(),
        None,
    ),
    "transformer": (
        TransformerConfig(feat_dim=80, d_model=16, num_layers=2, num_heads=2, ff_dim=32, embed_dim=16),
        KaldiFrontEnd(),
        None,
    ),
    "conformer_sap": (  # the boss's layout: self-attentive pooling
        ConformerConfig(
            feat_dim=80,
            d_model=16,
            num_layers=2,
            num_heads=2,
            ff_dim=32,
            embed_dim=16,
            depthwise_conv_kernel_size=7,
            pooling="SAP",
        ),
        KaldiFrontEnd(),
        None,
    ),  # fmt: skip
}

# The three lines of the README, and nothing of ecapa_jax or flax: argv = artifact, inputs .npz, outputs .npz.
RUN_JAX = """
import sys
import jax, numpy as np
exported = jax.export.deserialize(open(sys.argv[1], "rb").read())
inputs = np.load(sys.argv[2])
outputs = {}
for key in sorted({k.split(".")[0] for k in inputs.files}):
    args = [inputs[f"{key}.{i}"] for i in range(sum(k.startswith(key + ".") for k in inputs.files))]
    outputs[key] = np.asarray(exported.call(*args))
assert not any(m.split(".")[0] in ("ecapa_jax", "flax") for m in sys.modules), "imported ecapa_jax or flax"
np.savez(sys.argv[3], **outputs)
"""
RUN_ONNX = """
import sys
import numpy as np, onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
assert [i.name for i in session.get_inputs()] == ["feats"] and [o.name for o in session.get_outputs()] == ["embs"]
inputs = np.load(sys.argv[2])
outputs = {key[: -len(".0")]: session.run(["embs"], {"feats": inputs[key]})[0] for key in inputs.files}
assert not any(m.split(".")[0] in ("ecapa_jax", "flax", "jax") for m in sys.modules), "imported jax"
np.savez(sys.argv[3], **outputs)
"""


def run_fresh(script: str, artifact, inputs: dict[str, tuple], tmp_path) -> dict[str, np.ndarray]:
    """Runs ``script`` in a new Python process on ``inputs`` ({name: args}); returns {name: output}."""
    np.savez(tmp_path / "in.npz", **{f"{k}.{i}": a for k, args in inputs.items() for i, a in enumerate(args)})
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
    subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(script),
            str(artifact),
            str(tmp_path / "in.npz"),
            str(tmp_path / "out.npz"),
        ],
        check=True,
        env=env,
        cwd=tmp_path,  # not the repository: ecapa_jax must not be importable by accident
    )
    with np.load(tmp_path / "out.npz") as out:
        return {k: out[k] for k in out.files}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(config, front-end, model variables, model directory, ONNX failure or None): random weights and BatchNorm."""
    config, frontend, onnx_failure = FAMILIES[request.param]
    variables = random_variables(config)
    directory = tmp_path_factory.mktemp(request.param) / "model"
    save_model_dir(directory, config, join_variables(variables), frontend, {"source": "test"})
    return config, frontend, variables, directory, onnx_failure


def library_embed(config, variables, feats: np.ndarray) -> np.ndarray:
    """(B, E) embeddings of (B, T, F) features by the library (jitted: compiled once per shape)."""
    return np.asarray(_apply(build_model(config), variables, feats))


@functools.partial(jax.jit, static_argnames="module")
def _apply(module, variables, feats):
    return module.apply(variables, feats, train=False)[0]


def features(batch: int, frames: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, 80)).astype(np.float32)


@pytest.fixture(scope="module")
def exported(family, tmp_path_factory):
    """{'model.jax': features in, 'wave.jax': waveforms in, 'model.onnx'} of the family's model, with their specs."""
    directory, onnx_failure = family[3:]
    out = tmp_path_factory.mktemp("artifacts")
    specs = {
        "model.jax": export(directory, out / "model.jax"),
        "wave.jax": export(directory, out / "wave.jax", waveform=True),
    }
    if importlib.util.find_spec("jax2onnx") is not None and onnx_failure is None:  # the onnx extra (make test)
        specs["model.onnx"] = export(directory, out / "model.onnx")
    return out, specs


def test_specs_say_what_the_artifacts_expect(family, exported):
    config, frontend = family[:2]
    out, specs = exported
    spec = specs["model.jax"]
    assert spec["kind"] == "features" and spec["runtime"] == "jax.export" and spec["platforms"] == ["cpu"]
    assert spec["inputs"] == [{"name": "feats", "shape": ["B", "T", 80], "dtype": "float32"}]
    assert spec["outputs"] == [{"name": "embs", "shape": ["B", 16], "dtype": "float32"}]
    assert spec["model"] == model_config_to_dict(config) and spec["frontend"] == frontend_to_dict(frontend)
    assert spec["sample_rate"] == 16000 and spec["metadata"] == {"source": "test"}
    wave = specs["wave.jax"]
    assert wave["kind"] == "waveform" and [i["name"] for i in wave["inputs"]] == ["waveforms", "lengths"]
    assert wave["inputs"][1]["min"] == 400
    for name, spec in specs.items():
        assert json.loads((out / f"{name}.json").read_text()) == json.loads(json.dumps(spec))  # tuples → lists


def test_jax_artifact_runs_without_ecapa_jax(family, exported, tmp_path):
    config, _, variables = family[:3]
    inputs = {f"b{b}t{t}": (features(b, t, seed=t),) for b, t in SHAPES}
    got = run_fresh(RUN_JAX, exported[0] / "model.jax", inputs, tmp_path)
    for key, (feats,) in inputs.items():
        want = library_embed(config, variables, feats)
        assert got[key].shape == want.shape
        np.testing.assert_allclose(got[key], want, rtol=0, atol=JAX_ATOL, err_msg=key)


def test_onnx_artifact_has_wespeakers_convention(family, exported, tmp_path):
    pytest.importorskip("jax2onnx", reason="the onnx extra (make test installs it)")
    config, _, variables, directory, onnx_failure = family
    if onnx_failure is not None:  # what jax2onnx cannot express is one error naming it, and nothing written
        family_name = model_config_to_dict(config)["family"]
        with pytest.raises(ValueError, match=rf"jax2onnx cannot convert this {family_name} model .*\({onnx_failure}"):
            export(directory, tmp_path / "model.onnx")
        assert not list(tmp_path.iterdir())
        return
    assert exported[1]["model.onnx"]["runtime"] == "onnx" and exported[1]["model.onnx"]["opset"] == 18
    inputs = {f"b{b}t{t}": (features(b, t, seed=t),) for b, t in SHAPES}
    got = run_fresh(RUN_ONNX, exported[0] / "model.onnx", inputs, tmp_path)
    for key, (feats,) in inputs.items():
        want = library_embed(config, variables, feats)
        np.testing.assert_allclose(got[key], want, rtol=0, atol=ONNX_ATOL, err_msg=key)


def test_waveform_artifact_includes_the_front_end_and_masks(family, exported, tmp_path):
    """(B, N) + lengths in: each padded row equals the library's embedding of that row alone."""
    config, frontend, variables = family[:3]
    rng = np.random.default_rng(2)
    lengths = np.array([16000, 5123, 400], np.int32)  # 1 s, 0.32 s, one frame
    waves = (0.1 * rng.standard_normal((3, 16000))).astype(np.float32)
    waves[1, 5123:] = 7.0  # junk past a row's length must not matter
    inputs = {"batch": (waves, lengths), "row1": (waves[1:2, :5123], lengths[1:2])}  # any N: row 1 alone
    got = run_fresh(RUN_JAX, exported[0] / "wave.jax", inputs, tmp_path)
    atol = WAVE_ATOL.get(model_config_to_dict(config)["family"], JAX_ATOL)
    for b, n in enumerate(lengths):
        want = np.asarray(embed_waveforms(variables, waves[b : b + 1, :n], lengths[b : b + 1], config, frontend))
        np.testing.assert_allclose(got["batch"][b : b + 1], want, rtol=0, atol=atol, err_msg=f"row {b}")
        if b == 1:
            np.testing.assert_allclose(got["row1"], want, rtol=0, atol=JAX_ATOL)  # the same shapes: same rounding


def test_loaded_artifacts_check_their_input(exported, tmp_path):
    out, specs = exported
    artifacts = {name: load_artifact(out / name) for name in specs}
    for name in ("model.jax", "model.onnx"):
        if name not in artifacts:
            continue
        assert artifacts[name].embed(features(2, 30)).shape == (2, 16)
        with pytest.raises(ValueError, match=rf"{name} takes float features of shape \(B, T, 80\) .* \(2, 30, 79\)"):
            artifacts[name].embed(np.zeros((2, 30, 79), np.float32))
    wave = artifacts["wave.jax"]
    assert wave.embed_waveforms(np.zeros((1, 800), np.float32), 16000).shape == (1, 16)
    with pytest.raises(ValueError, match=r"wave\.jax takes 16000 Hz audio, got 8000 Hz: resample it first"):
        wave.embed_waveforms(np.zeros((1, 800), np.float32), 8000)
    with pytest.raises(ValueError, match=r"lengths must be 1 sample counts in \[400, 800\] .* got \[300\]"):
        wave.embed_waveforms(np.zeros((1, 800), np.float32), 16000, [300])
    with pytest.raises(ValueError, match=r"wave\.jax takes waveforms and lengths"):
        wave.embed(features(1, 5))
    (tmp_path / "bad.jax").write_bytes(b"not a flatbuffer")
    (tmp_path / "bad.jax.json").write_text((out / "model.jax.json").read_text())
    with pytest.raises(ValueError, match=r"bad\.jax is not a serialized jax\.export artifact"):
        load_artifact(tmp_path / "bad.jax")
    with pytest.raises(OSError, match=r"missing\.jax\.json"):
        load_artifact(tmp_path / "missing.jax")


def test_cli_exports_and_checks(tmp_path, capsys):
    config, frontend, _ = next(iter(FAMILIES.values()))
    directory = tmp_path / "model"
    save_model_dir(directory, config, join_variables(random_variables(config)), frontend)
    assert main([str(directory), str(tmp_path / "m.jax")]) == 0
    out = capsys.readouterr().out
    assert "feats (B, T, 80) float32 → embs (B, 16) float32" in out
    assert float(out.rsplit("max |difference| = ", 1)[1]) <= JAX_ATOL


@pytest.mark.parametrize(
    "args,message",
    [
        (["m.pt"], r"m\.pt: the artifact's suffix must be one of \('\.jax', '\.onnx'\)"),
        (["m.onnx", "--waveform"], r"the waveform variant is a \.jax artifact; ONNX takes features"),
        (
            ["m.onnx", "--opset", "14"],
            r"opset 14: jax2onnx writes ReduceMean with its axes as an input, which needs >= 18",
        ),
        (["m.jax", "--platforms", "cpu,gpu"], r"platforms \['cpu', 'gpu'\]: expected one or more of \['cpu', 'cuda'"),
        (["nowhere/m.jax"], r"nowhere/m\.jax: the directory nowhere does not exist"),
    ],
)
def test_cli_errors_exit_2_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    assert main(["model", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_cli_names_a_missing_model_directory(tmp_path, capsys):
    assert main([str(tmp_path / "none"), str(tmp_path / "m.jax")]) == 2
    assert "none is not an ecapa_jax model directory: no such directory" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
