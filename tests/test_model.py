"""ECAPA_TDNN: parameter counts, named intermediates vs WeSpeaker, masking, bf16, config errors.

End-to-end embedding parity for every preset (through the converter) lives in test_convert.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

from ecapa_jax import ECAPA_TDNN, EcapaConfig


def _param_count(cfg: EcapaConfig) -> int:
    shapes = jax.eval_shape(lambda: ECAPA_TDNN(cfg).init(jax.random.key(0), jnp.zeros((1, 8, cfg.feat_dim))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


# WeSpeaker's counts (confirmed by running its model code; README: 6.19M / 14.65M).
@pytest.mark.parametrize(
    "preset,count",
    [("c512", 5_797_504), ("glob_c512", 6_190_720), ("c1024", 14_263_872), ("glob_c1024", 14_657_088)],
)
def test_parameter_counts_equal_wespeaker(preset, count):
    assert _param_count(EcapaConfig.preset(preset)) == count
    assert _param_count(EcapaConfig.preset(preset, emb_bn=True)) == count + 2 * 192


@pytest.fixture(scope="module")
def glob_c512():
    """WeSpeaker's GLOB_c512 with random weights and BN statistics, and our variables for it."""
    torch = oracles.torch()
    module = oracles.wespeaker("models.ecapa_tdnn").ECAPA_TDNN_GLOB_c512(feat_dim=80, embed_dim=192)
    torch.manual_seed(0)
    oracles.randomise_batchnorm(module, seed=3)
    return module.eval(), oracles.wespeaker_variables(module)


def test_intermediates_match_wespeaker(glob_c512):
    """`out4` is WeSpeaker's forward()[0]; `frame_features` its get_frame_level_feat (pre-ReLU)."""
    torch = oracles.torch()
    ref, variables = glob_c512
    x = np.random.default_rng(0).normal(size=(2, 37, 80)).astype(np.float32)
    with torch.no_grad():
        out4, emb = ref(torch.from_numpy(x))
        frames = ref.get_frame_level_feat(torch.from_numpy(x))
    ours, out = jax.jit(ECAPA_TDNN(EcapaConfig.glob_c512()).apply)(variables, x)
    np.testing.assert_allclose(np.asarray(ours), emb.numpy(), atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["out4"]), out4.numpy().transpose(0, 2, 1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(out["frame_features"]), frames.numpy(), atol=1e-4)
    assert out["pooled"].shape == (2, 3072)


def test_padded_batch_equals_one_at_a_time():
    """With a mask, a padded batch gives the embeddings of whole-utterance inference."""
    cfg = EcapaConfig(channels=64, global_context_att=True)
    model = ECAPA_TDNN(cfg)
    lengths = [40, 9, 23]
    x = np.random.default_rng(1).normal(size=(3, 40, 80)).astype(np.float32)
    x[1, 9:] = 7.0  # padding content must not leak
    variables = model.init(jax.random.key(0), x)
    mask = np.arange(40)[None, :] < np.array(lengths)[:, None]
    batched, _ = model.apply(variables, x, mask=mask)
    for b, n in enumerate(lengths):
        alone, _ = model.apply(variables, x[b : b + 1, :n])
        np.testing.assert_allclose(np.asarray(batched[b]), np.asarray(alone[0]), atol=1e-5)


def test_bfloat16_compute_stays_close_to_float32():
    cfg = EcapaConfig(channels=64)
    x = np.random.default_rng(2).normal(size=(4, 50, 80)).astype(np.float32)
    variables = ECAPA_TDNN(cfg).init(jax.random.key(0), x)
    f32, _ = ECAPA_TDNN(cfg).apply(variables, x)
    bf16, out = ECAPA_TDNN(cfg.replace(dtype="bfloat16")).apply(variables, x)
    assert bf16.dtype == jnp.float32 and out["out4"].dtype == jnp.bfloat16
    cos = np.sum(f32 * bf16, -1) / np.linalg.norm(f32, axis=-1) / np.linalg.norm(bf16, axis=-1)
    assert cos.min() > 0.99, cos


def test_train_mode_updates_batch_stats_only_when_mutable():
    cfg = EcapaConfig(channels=32, emb_bn=True)
    x = np.random.default_rng(3).normal(size=(4, 20, 80)).astype(np.float32)
    variables = ECAPA_TDNN(cfg).init(jax.random.key(0), x)
    (_, _), updates = ECAPA_TDNN(cfg).apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["bn2"]
    after = updates["batch_stats"]["bn2"]
    assert int(after["num_batches_tracked"]) == 1
    assert not np.allclose(after["mean"], before["mean"])


def test_config_errors_are_named():
    with pytest.raises(ValueError, match="unknown pooling 'XAP'"):
        EcapaConfig(pooling="XAP")
    with pytest.raises(ValueError, match="unknown ECAPA preset 'c256'"):
        EcapaConfig.preset("c256")
    with pytest.raises(ValueError, match=r"expects features of shape \(B, T, 80\), got \(2, 10, 40\)"):
        ECAPA_TDNN().init(jax.random.key(0), jnp.zeros((2, 10, 40)))
    assert EcapaConfig.from_dict(EcapaConfig.glob_c1024().to_dict()) == EcapaConfig.glob_c1024()
    assert EcapaConfig.glob_c1024().wespeaker_name == "ECAPA_TDNN_GLOB_c1024"
