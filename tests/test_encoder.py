"""``ecapa_jax.load`` / ``Encoder`` and the model directory, against WeSpeaker's ECAPA_TDNN."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest
from test_convert import TINY, assert_embeddings_close, features, random_wespeaker_model, torch_embed

from ecapa_jax.encoder import load
from ecapa_jax.frontend.kaldi import KaldiFrontEnd
from ecapa_jax.io import checkpoint
from ecapa_jax.io.checkpoint import join_variables, load_model_dir, save_model_dir, split_variables
from ecapa_jax.io.convert.wespeaker import from_wespeaker, wespeaker_to_dir
from ecapa_jax.models.ecapa import ECAPA_TDNN

F = TINY["feat_dim"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(WeSpeaker model with a projection head, its converted model directory)."""
    torch = oracles.torch()
    model = random_wespeaker_model(global_context_att=True, **TINY)
    model.add_module("projection", oracles.wespeaker("models.projections").ArcMarginProduct(TINY["embed_dim"], 10))
    workdir = tmp_path_factory.mktemp("encoder")
    torch.save(model.state_dict(), workdir / "model.pt")
    wespeaker_to_dir(workdir / "model.pt", workdir / "model")
    return model, workdir / "model"


@pytest.fixture(scope="module")
def encoder(converted):
    return load(converted[1])


def test_load_gives_the_model_and_its_metadata(converted):
    model, directory = converted
    encoder = load(directory)
    assert isinstance(encoder.module, ECAPA_TDNN) and encoder.module.config == encoder.config
    assert encoder.config.global_context_att and encoder.config.feat_dim == F
    assert encoder.projection["params"]["weight"].shape == (TINY["embed_dim"], 10)
    np.testing.assert_array_equal(encoder.projection["params"]["weight"], model.projection.weight.detach().numpy().T)
    assert encoder.metadata["source"].endswith("model.pt") and encoder.metadata["source_format"] == "wespeaker"


def test_padded_batch_gives_each_utterance_alone(converted, encoder):
    model, _ = converted
    lengths = np.array([5, 37, 20])
    feats = features(3, 37, F, seed=1)  # frames past each length are junk that must not matter
    got = encoder.embed_features(feats, lengths)
    want = np.concatenate([torch_embed(model, feats[b : b + 1, :n]) for b, n in enumerate(lengths)])
    assert_embeddings_close(got, want)


def test_single_utterance_is_a_batch_of_one(converted, encoder):
    model, _ = converted
    feats = features(1, 9, F, seed=2)
    got = encoder.embed_features(feats[0])  # (T, F)
    assert got.shape == (1, TINY["embed_dim"]) and got.dtype == np.float32
    assert_embeddings_close(got, torch_embed(model, feats))


@pytest.mark.parametrize(
    "feats,lengths,message",
    [
        (
            np.zeros((2, 10, F + 1)),
            None,
            rf"features must have shape \(B, T, {F}\) or \(T, {F}\) .* got \(2, 10, {F + 1}\)",
        ),
        (np.zeros((10,)), None, r"features must have shape .* got \(10,\)"),
        (np.zeros((2, 0, F)), None, rf"with T ≥ 1, got \(2, 0, {F}\)"),
        (np.zeros((2, 10, F)), [10], r"lengths must be 2 integers \(one per row\), got int64 \(1,\)"),
        (np.zeros((2, 10, F)), [1.0, 2.0], r"lengths must be 2 integers .* got float64"),
        (np.zeros((2, 10, F)), [0, 10], r"lengths must lie in \[1, 10\] \(the padded T\), got \[0, 10\]"),
        (np.zeros((2, 10, F)), [3, 11], r"lengths must lie in \[1, 10\] .* got \[3, 11\]"),
    ],
)
def test_bad_features_are_named(encoder, feats, lengths, message):
    with pytest.raises(ValueError, match=message):
        encoder.embed_features(feats, lengths)


def test_model_jits_vmaps_and_grads():
    torch = oracles.torch()
    model = random_wespeaker_model(**TINY)
    config, variables, _ = from_wespeaker({k: v.numpy() for k, v in model.state_dict().items()})
    module = ECAPA_TDNN(config)
    feats = features(3, 8, F, seed=3)

    def embed_one(x):  # (T, F) → (E,)
        return module.apply(variables, x[None])[0][0]

    assert_embeddings_close(np.asarray(jax.jit(jax.vmap(embed_one))(feats)), torch_embed(model, feats))

    probe = np.random.default_rng(4).standard_normal((3, TINY["embed_dim"]), dtype=np.float32)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(module.apply(variables, x)[0] * probe)))(feats)
    x = torch.from_numpy(feats).requires_grad_()
    torch.sum(model(x)[-1] * torch.from_numpy(probe)).backward()
    want = x.grad.numpy()
    assert np.all(np.isfinite(grad))
    assert np.max(np.abs(np.asarray(grad) - want)) <= 1e-4 * np.max(np.abs(want))  # relative to the largest


# ----------------------------------------------------------------------------- the model directory


def test_model_dir_errors_name_the_path(tmp_path, converted):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not an ecapa_jax model directory: no such directory"):
        load_model_dir(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is not an ecapa_jax model directory: no config\.json of"):
        load_model_dir(tmp_path / "empty")
    (tmp_path / "model.pt").write_bytes(b"PK")
    with pytest.raises(FileNotFoundError, match=r"model\.pt is a file, not an ecapa_jax model directory; convert"):
        load(tmp_path / "model.pt")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken/config\.json: not valid JSON \(Expecting property name"):
        load_model_dir(broken)
    (broken / "config.json").write_text(json.dumps({"format": "other", "format_version": 1}))
    with pytest.raises(FileNotFoundError, match=r"broken is not an ecapa_jax model directory: no config\.json of"):
        load_model_dir(broken)
    for meta, reason in [
        ({"format_version": 1, "config": {"chanels": 8}}, r"unknown EcapaConfig keys \['chanels'\]"),
        ({"format_version": 3}, r"format version 3; this ecapa_jax reads versions 1 and 2"),
        ({"format_version": 2, "model": {"family": "lstm"}, "frontend": {}}, r"model\.family must be one of"),
        ({"format_version": 2, "model": {"family": "ecapa"}, "frontend": {"type": "x"}}, r"frontend\.type must be"),
    ]:
        (broken / "config.json").write_text(json.dumps({"format": checkpoint.FORMAT, **meta}))
        with pytest.raises(ValueError, match=rf"broken/config\.json is not a valid ecapa_jax model config: {reason}"):
            load_model_dir(broken)

    (broken / "config.json").write_text((converted[1] / "config.json").read_text())
    with pytest.raises(
        FileNotFoundError, match=r"broken is not a complete ecapa_jax model directory: state/ is missing"
    ):
        load_model_dir(broken)


def test_a_training_run_is_not_a_model_dir_but_points_to_one(tmp_path, converted):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {}, "data": {}}))
    with pytest.raises(FileNotFoundError, match=r"run is a training run directory, not a model directory; export"):
        load_model_dir(run)
    (run / "model").symlink_to(converted[1])
    with pytest.raises(FileNotFoundError, match=r"run is a training run directory.*its exported model is .*run/model"):
        load_model_dir(run)


def test_version_1_model_dirs_are_still_read(tmp_path, converted):
    """The layout before the shared variable layout: state {'variables', 'projection'}, config at the top."""
    model = load_model_dir(converted[1])
    old = tmp_path / "v1"
    old.mkdir()
    variables, projection = split_variables(model.variables)
    checkpoint.save_pytree(old / "state", {"variables": variables, "projection": projection})
    meta = {"format": checkpoint.FORMAT, "format_version": 1, "config": model.config.to_dict(), "metadata": {}}
    (old / "config.json").write_text(json.dumps(meta))
    again = load_model_dir(old)
    assert again.config == model.config and again.frontend == KaldiFrontEnd()
    assert jax.tree.all(jax.tree.map(np.array_equal, again.variables, model.variables))


def test_variable_layout_round_trips(converted):
    model = load_model_dir(converted[1])
    variables, projection = split_variables(model.variables)
    assert set(variables) == {"params", "batch_stats"} and set(projection) == {"params"}  # AAM: no head BN
    assert jax.tree.all(jax.tree.map(np.array_equal, join_variables(variables, projection), model.variables))
    no_head = join_variables(variables)
    assert split_variables(no_head) == (variables, None) and set(no_head["params"]) == {"model"}


def test_failed_save_leaves_the_destination_as_it_was(tmp_path, converted, monkeypatch):
    model = load_model_dir(converted[1])
    config, variables, frontend = model.config, model.variables, model.frontend

    def fail(path, tree):
        path.mkdir()
        (path / "half-written").write_bytes(b"x")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_pytree", fail)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(tmp_path / "new", config, variables, frontend)
    assert list(tmp_path.iterdir()) == []  # neither the destination nor a temporary directory

    monkeypatch.undo()
    save_model_dir(tmp_path / "old", config, variables, frontend, metadata={"note": "kept"})
    monkeypatch.setattr(checkpoint, "save_pytree", fail)
    with pytest.raises(OSError, match="disk full"):
        save_model_dir(tmp_path / "old", config, variables, frontend, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert load_model_dir(tmp_path / "old").metadata == {"note": "kept"}

    with pytest.raises(ValueError, match=r"metadata for .*old is not JSON-serialisable"):
        save_model_dir(tmp_path / "old", config, variables, frontend, metadata={"when": object()}, overwrite=True)
