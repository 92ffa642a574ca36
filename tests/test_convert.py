"""WeSpeaker ↔ ecapa_jax conversion against WeSpeaker's own ECAPA_TDNN (random weights, randomised BN).

Parity goes through the real path: torch.save → ``wespeaker_to_dir`` → orbax model directory →
``ecapa_jax.load`` → ``embed_features``.
"""

import collections
import copy
import re

import jax
import numpy as np
import oracles
import pytest

from ecapa_jax.convert import main
from ecapa_jax.encoder import load
from ecapa_jax.io.checkpoint import load_model_dir
from ecapa_jax.io.convert.wespeaker import (
    dir_to_wespeaker,
    from_wespeaker,
    to_wespeaker,
    wespeaker_keys,
    wespeaker_to_dir,
)
from ecapa_jax.io.torchzip import load_state_dict
from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig

TINY = {"channels": 64, "feat_dim": 24, "embed_dim": 32}  # WeSpeaker's ECAPA_TDNN class, narrow and fast
EMB_ATOL = 1e-4
MIN_COSINE = 0.99999


def randomise_batchnorm(module, seed: int) -> None:
    """Random affine parameters and running statistics in every BatchNorm1d, so BN is really exercised."""
    torch = oracles.torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 1.5, generator=g)
                m.num_batches_tracked.fill_(1000 + 2 * seed)


def random_wespeaker_model(factory: str = "ECAPA_TDNN", seed: int = 0, **kwargs):
    """``wespeaker.models.ecapa_tdnn.<factory>(**kwargs)`` in eval mode, random weights, randomised BN."""
    torch = oracles.torch()
    torch.manual_seed(seed)
    model = getattr(oracles.wespeaker("models.ecapa_tdnn"), factory)(**kwargs)
    randomise_batchnorm(model, seed)
    return model.eval()


def torch_embed(model, feats: np.ndarray) -> np.ndarray:
    """WeSpeaker's embedding (the last element of its forward tuple) of (B, T, F) features."""
    torch = oracles.torch()
    with torch.no_grad():
        return model(torch.from_numpy(feats))[-1].numpy()


def numpy_state_dict(model) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def features(batch: int, frames: int, feat_dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, frames, feat_dim), dtype=np.float32)


def assert_embeddings_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=EMB_ATOL)
    cosine = np.sum(got * want, -1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert np.all(cosine >= MIN_COSINE), cosine


# ----------------------------------------------------------------------------- key table


@pytest.mark.parametrize("emb_bn", [False, True])
@pytest.mark.parametrize("preset", ["c512", "c1024", "glob_c512", "glob_c1024"])
def test_presets_convert_both_ways_exactly(preset, emb_bn):
    model = random_wespeaker_model(EcapaConfig.preset(preset).wespeaker_name, feat_dim=80, embed_dim=192, emb_bn=emb_bn)
    state_dict = numpy_state_dict(model)
    config, variables, projection = from_wespeaker(state_dict)
    assert config == EcapaConfig.preset(preset, emb_bn=emb_bn)
    assert projection is None
    assert wespeaker_keys(config) == list(state_dict)  # registration order
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == sum(p.numel() for p in model.parameters())
    back = to_wespeaker(config, variables)
    assert list(back) == list(state_dict)
    for key, want in state_dict.items():
        assert back[key].dtype == want.dtype and back[key].shape == want.shape and np.array_equal(back[key], want), key


@pytest.mark.parametrize(
    "pooling,glob",
    [("TAP", False), ("TSDP", False), ("TSTP", False), ("ASTP", False), ("ASTP", True), ("MHASTP", False),
     ("MQMHASTP", False)],
)  # fmt: skip
def test_key_table_covers_every_pooling(pooling, glob):
    emb_bn = pooling == "TSTP"  # the embedding BatchNorm is independent of the pooling (presets test both)
    model = random_wespeaker_model(pooling_func=pooling, global_context_att=glob, emb_bn=emb_bn, **TINY)
    state_dict = numpy_state_dict(model)
    config, variables, _ = from_wespeaker(state_dict, pooling=pooling if pooling in ("TAP", "TSDP") else None)
    assert config == EcapaConfig(pooling=pooling, global_context_att=glob, emb_bn=emb_bn, **TINY)
    assert wespeaker_keys(config) == list(state_dict)
    back = to_wespeaker(config, variables)
    assert all(np.array_equal(back[k], v) for k, v in state_dict.items())


def test_our_sap_pooling_round_trips():
    # WeSpeaker's ECAPA has no SAP, so its keys (pool.attention, pool.linear.*) are ours: both directions must agree.
    config = EcapaConfig(pooling="SAP", **TINY)
    shapes = jax.eval_shape(lambda: ECAPA_TDNN(config).init(jax.random.key(0), np.zeros((1, 8, TINY["feat_dim"]))))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: (rng.standard_normal(s.shape) * 100).astype(s.dtype), shapes)
    state_dict = to_wespeaker(config, variables)
    assert state_dict["pool.attention"].shape == (128,) and state_dict["pool.linear.weight"].shape == (128, 1536, 1)
    back_config, back, _ = from_wespeaker(state_dict)
    assert back_config == config
    for ours, theirs in zip(jax.tree.leaves(back), jax.tree.leaves(variables), strict=True):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs)


# ----------------------------------------------------------------------------- parity through the model directory


@pytest.fixture(scope="module")
def preset_models(tmp_path_factory):
    """``get(preset, emb_bn) -> (WeSpeaker model, Encoder loaded from its converted directory)``, built once."""
    torch = oracles.torch()
    cache = {}

    def get(preset: str, emb_bn: bool):
        if (preset, emb_bn) not in cache:
            name = EcapaConfig.preset(preset).wespeaker_name
            model = random_wespeaker_model(name, feat_dim=80, embed_dim=192, emb_bn=emb_bn)
            workdir = tmp_path_factory.mktemp(f"{preset}_{emb_bn}")
            torch.save(model.state_dict(), workdir / "avg_model.pt")
            wespeaker_to_dir(workdir / "avg_model.pt", workdir / "model")
            cache[preset, emb_bn] = model, load(workdir / "model")
        return cache[preset, emb_bn]

    return get


# The published variant (GLOB_c512) at every length, each other variant at one (every program compiles
# anew, a few seconds on CPU), c1024 at short lengths (slow).
PARITY_CASES = [("glob_c512", False, t) for t in (2, 37, 200, 1001)] + [
    ("c512", True, 1001),  # all of c512, plus the embedding BatchNorm
    ("glob_c1024", False, 37),
    ("c1024", False, 2),
]


@pytest.mark.parametrize("preset,emb_bn,frames", PARITY_CASES)
def test_embeddings_match_wespeaker(preset_models, preset, emb_bn, frames):
    model, encoder = preset_models(preset, emb_bn)
    feats = features(2, frames, 80, seed=frames)
    assert_embeddings_close(encoder.embed_features(feats), torch_embed(model, feats))


def test_train_mode_matches_wespeaker():
    # Every kind of BatchNorm (layer convs, Res2 branches, pooled, embedding) in training mode. BatchNorm
    # over few samples amplifies rounding, hence B = 8 (the final BNs see B samples per channel).
    model = random_wespeaker_model(global_context_att=True, emb_bn=True, **TINY)
    config, variables, _ = from_wespeaker(numpy_state_dict(model))
    feats = features(8, 12, TINY["feat_dim"])
    trained = copy.deepcopy(model).train()
    want = torch_embed(trained, feats)
    train_step = jax.jit(lambda v, x: ECAPA_TDNN(config).apply(v, x, train=True, mutable=["batch_stats"]))
    (got, _), updates = train_step(variables, feats)
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=5e-5)  # measured 6.5e-6, |emb| ≤ 3.3
    after = to_wespeaker(config, {"params": variables["params"], **updates})
    for key, value in trained.state_dict().items():  # momentum 0.1, unbiased running variance, count + 1
        if key.endswith("num_batches_tracked"):
            assert after[key] == value.item() == 1001, key
        elif key.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(after[key], value.numpy(), rtol=0, atol=1e-6, err_msg=key)  # measured 1.2e-7


# ----------------------------------------------------------------------------- round trips and checkpoint variants


def _heads():
    projections = oracles.wespeaker("models.projections")
    e = TINY["embed_dim"]
    return {
        "arc_margin": projections.ArcMarginProduct(e, 10),  # projection.weight (N, E)
        "sphereface2": projections.SphereFace2(e, 10),  # + projection.bias (1, 1)
        "softmax": projections.Linear(e, 10),  # projection.trans.0.* (BatchNorm), trans.2.* (Linear)
    }


@pytest.mark.parametrize("head", ["arc_margin", "sphereface2", "softmax"])
def test_round_trip_through_model_dir(tmp_path, head):
    torch = oracles.torch()
    model = random_wespeaker_model(emb_bn=True, **TINY)
    model.add_module("projection", _heads()[head])  # as WeSpeaker's train.py does before saving
    randomise_batchnorm(model.projection, seed=3)
    original = model.state_dict()
    torch.save(original, tmp_path / "model.pt")

    config, variables, projection = wespeaker_to_dir(tmp_path / "model.pt", tmp_path / "dir")
    with_torch = wespeaker_to_dir(tmp_path / "model.pt", tmp_path / "dir_torch", use_torch=True)
    assert with_torch[0] == config
    for ours, theirs in zip(jax.tree.leaves((variables, projection)), jax.tree.leaves(with_torch[1:]), strict=True):
        assert ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes()  # bitwise
    if head != "softmax":
        assert projection["params"]["weight"].shape == (TINY["embed_dim"], 10)  # (E, N), the heads' layout

    dir_to_wespeaker(tmp_path / "dir", tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert list(back) == list(original)
    for key, want in original.items():
        assert back[key].dtype == want.dtype and back[key].shape == want.shape and torch.equal(back[key], want), key
    fresh = oracles.wespeaker("models.ecapa_tdnn").ECAPA_TDNN(emb_bn=True, **TINY)
    fresh.add_module("projection", _heads()[head])
    fresh.load_state_dict(back, strict=True)
    feats = features(2, 20, TINY["feat_dim"])
    np.testing.assert_allclose(torch_embed(fresh.eval(), feats), torch_embed(model, feats), rtol=0, atol=1e-6)


def test_averaged_wrapped_and_ddp_checkpoints_load(tmp_path):
    torch = oracles.torch()
    a, b = (random_wespeaker_model(seed=s, **TINY).state_dict() for s in (0, 1))
    # WeSpeaker's average_model.py: sum, then torch.true_divide, which turns num_batches_tracked into a float.
    averaged = collections.OrderedDict((k, torch.true_divide(a[k] + b[k], 2)) for k in a)
    assert averaged["bn.num_batches_tracked"].dtype == torch.float32
    variants = {
        "avg_model.pt": averaged,
        "wrapped.pt": {"state_dict": averaged, "epoch": 150},
        "ddp.pt": collections.OrderedDict((f"module.{k}", v) for k, v in averaged.items()),
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        config, variables, _ = from_wespeaker(load_state_dict(tmp_path / name))
        back = to_wespeaker(config, variables)
        assert list(back) == list(averaged), name
        for key, want in averaged.items():
            if key.endswith("num_batches_tracked"):
                assert back[key].dtype == np.int64 and back[key] == 1001 == want.item(), (name, key)
            else:
                assert np.array_equal(back[key], want.numpy()), (name, key)


# ----------------------------------------------------------------------------- bad checkpoints


def _resnet_like_state_dict() -> dict[str, np.ndarray]:
    """Keys and shapes of a small WeSpeaker ResNet: another architecture."""
    sd = {"conv1.weight": np.zeros((32, 1, 3, 3), np.float32)}
    for prefix in ("bn1", "layer1.0.bn1"):
        sd |= {
            f"{prefix}.{leaf}": np.ones(32, np.float32) for leaf in ("weight", "bias", "running_mean", "running_var")
        }
    sd |= {"layer1.0.conv1.weight": np.zeros((32, 32, 3, 3), np.float32), "seg_1.weight": np.zeros((256, 5120))}
    return sd


def _save_numpy(state_dict, path):
    torch = oracles.torch()
    torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)


def test_another_architecture_is_refused():
    with pytest.raises(ValueError, match=r"not an ECAPA-TDNN checkpoint: unmatched keys \[conv1\.weight, bn1") as e:
        from_wespeaker(_resnet_like_state_dict())
    assert "seg_1.weight" in str(e.value) and "layer1.0.conv1.weight" in str(e.value)


def test_every_offending_key_is_listed_with_shapes():
    state_dict = numpy_state_dict(random_wespeaker_model(**TINY))
    state_dict["layer3.se_res2block.1.convs.2.weight"] = np.zeros((8, 8, 5), np.float32)
    del state_dict["layer4.se_res2block.2.bn.running_var"]
    state_dict["decoder.weight"] = np.zeros((3, 4), np.float32)
    state_dict["projection.weight"] = np.zeros((10, 31), np.float32)
    state_dict["projection.centers"] = np.zeros((10,), np.float32)
    with pytest.raises(ValueError, match="5 offending keys") as e:
        from_wespeaker(state_dict)
    message = str(e.value)
    for part in [
        "layer3.se_res2block.1.convs.2.weight has shape (8, 8, 5), expected (8, 8, 3)",
        "layer4.se_res2block.2.bn.running_var missing (expected (64,))",
        "decoder.weight is unexpected (shape (3, 4))",
        "projection.weight has shape (10, 31), expected (10, 32)",
        "projection.centers is unexpected (shape (10,))",
    ]:
        assert part in message, part


def test_parameter_free_pooling_must_be_named():
    state_dict = numpy_state_dict(random_wespeaker_model(pooling_func="TSDP", **TINY))
    with pytest.raises(ValueError, match=r"ambiguous pooling: .* TAP and TSDP; pass pooling="):
        from_wespeaker(state_dict)
    assert from_wespeaker(state_dict, pooling="TSDP")[0].pooling == "TSDP"


def test_to_wespeaker_refuses_mismatched_variables():
    config, variables, _ = from_wespeaker(numpy_state_dict(random_wespeaker_model(**TINY)))
    del variables["params"]["linear"]["bias"]
    with pytest.raises(ValueError, match=re.escape("variable params/linear/bias missing (expected (32,))")):
        to_wespeaker(config, variables)


# ----------------------------------------------------------------------------- command line


@pytest.fixture()
def tiny_checkpoint(tmp_path):
    torch = oracles.torch()
    model = random_wespeaker_model(global_context_att=True, **TINY)
    model.add_module("projection", _heads()["arc_margin"])
    torch.save(model.state_dict(), tmp_path / "model.pt")
    return model, tmp_path / "model.pt"


def _snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_cli_converts_and_guards_the_destination(tmp_path, tiny_checkpoint, capsys):
    torch = oracles.torch()
    model, src = tiny_checkpoint
    dst = tmp_path / "model_dir"
    assert main(["wespeaker", str(src), str(dst)]) == 0
    n_params = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("projection."))
    out = capsys.readouterr().out
    assert (
        f"ECAPA_TDNN_GLOB_c64 (pooling ASTP, emb_bn False, feat_dim 24, embed_dim 32): {n_params:,} parameters" in out
    )
    assert "params/weight (32, 10)" in out

    before = _snapshot(dst)
    assert main(["wespeaker", str(src), str(dst)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(r"error: .*model_dir already exists; pass .*--overwrite", err)
    assert _snapshot(dst) == before  # left untouched

    other = random_wespeaker_model(seed=1, **TINY)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    assert main(["wespeaker", str(tmp_path / "other.pt"), str(dst), "--overwrite"]) == 0
    converted = load_model_dir(dst)
    assert not converted.config.global_context_att and converted.projection is None
    assert converted.metadata["source"].endswith("other.pt")
    linear_bias = converted.model_variables["params"]["linear"]["bias"]
    assert np.array_equal(linear_bias, other.linear.bias.detach().numpy())

    not_a_model = tmp_path / "photos"
    not_a_model.mkdir()
    (not_a_model / "keep.jpg").write_bytes(b"x")
    assert main(["wespeaker", str(src), str(not_a_model), "--overwrite"]) == 2
    assert "is not an ecapa_jax model directory; refusing to replace it" in capsys.readouterr().err
    assert (not_a_model / "keep.jpg").read_bytes() == b"x"

    pt = tmp_path / "back.pt"
    assert main(["to-wespeaker", str(dst), str(pt)]) == 0
    assert main(["to-wespeaker", str(dst), str(pt)]) == 2
    assert "back.pt already exists" in capsys.readouterr().err
    assert main(["to-wespeaker", str(dst), str(pt), "--overwrite"]) == 0
    assert list(torch.load(pt, weights_only=True)) == list(other.state_dict())


@pytest.mark.parametrize(
    "make_src,message",
    [
        (lambda p: p.write_bytes(p.with_name("model.pt").read_bytes()[:1000]), "not a PyTorch zip checkpoint"),
        (lambda p: _save_numpy(_resnet_like_state_dict(), p), "not an ECAPA-TDNN checkpoint"),
        (lambda p: None, "no such checkpoint file"),
    ],
    ids=["truncated", "resnet", "missing"],
)
def test_cli_errors_are_one_line_and_exit_2(tmp_path, tiny_checkpoint, capsys, make_src, message):
    src = tmp_path / "bad.pt"
    make_src(src)
    assert main(["wespeaker", str(src), str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "out").exists()
