"""The pooling family against WeSpeaker's classes (max abs ≤ 1e-5) and SAP against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

from ecapa_jax.models import pooling

B, C, T = 3, 64, 50
TOL = 1e-5


def _frames(seed=0, b=B, t=T, c=C):
    return np.random.default_rng(seed).normal(size=(b, t, c)).astype(np.float32)  # (B, T, C)


def _wespeaker_pool(name, **kwargs):
    torch = oracles.torch()
    layers = oracles.wespeaker("models.pooling_layers")
    torch.manual_seed(0)
    return getattr(layers, name)(in_dim=C, **kwargs).eval()


CASES = [
    ("TAP", {}),
    ("TSDP", {}),
    ("TSTP", {}),
    ("ASTP", {"global_context_att": False}),
    ("ASTP", {"global_context_att": True}),
    ("MHASTP", {}),
    ("MHASTP", {"layer_num": 3, "head_num": 4, "d_s": 2}),
    ("MQMHASTP", {}),
    ("MQMHASTP", {"layer_num": 1, "query_num": 3, "head_num": 2, "d_s": 1}),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_matches_wespeaker(name, kwargs):
    torch = oracles.torch()
    ref_module = _wespeaker_pool(name, **kwargs)
    x = _frames()
    with torch.no_grad():
        ref = ref_module(torch.from_numpy(x.transpose(0, 2, 1))).numpy()
    ours = pooling.make_pooling(name, **kwargs)
    variables = oracles.wespeaker_variables(ref_module)
    out = np.asarray(jax.jit(ours.apply)(variables, x))
    assert out.shape == ref.shape == (B, ours.out_dim(C))
    np.testing.assert_allclose(out, ref, atol=TOL, rtol=0)


def test_initialised_shapes_match_wespeaker():
    """Our `init` creates exactly WeSpeaker's parameter set, shape for shape."""
    for name, kwargs in CASES:
        ref = oracles.wespeaker_variables(_wespeaker_pool(name, **kwargs)).get("params", {})
        ours = pooling.make_pooling(name, **kwargs).init(jax.random.key(0), _frames())
        ref_shapes = jax.tree.map(np.shape, ref)
        assert jax.tree.map(np.shape, ours.get("params", {})) == ref_shapes, name


def _sap_reference(x, kernel, bias, u):
    """Self-attentive pooling written out in NumPy: h = tanh(xW + b); w = softmax_t(h·u); Σ_t w_t x_t."""
    out = []
    for xb in x.astype(np.float64):  # (T, C)
        h = np.tanh(xb @ kernel + bias)  # (T, bottleneck)
        s = h @ u
        w = np.exp(s - s.max())
        w /= w.sum()
        out.append((w[:, None] * xb).sum(0))
    return np.stack(out)


def test_sap_matches_numpy():
    x = _frames(1)
    sap = pooling.SAP(bottleneck_dim=16)
    variables = sap.init(jax.random.key(3), x)
    p = variables["params"]
    ref = _sap_reference(
        x, np.asarray(p["linear"]["kernel"][0]), np.asarray(p["linear"]["bias"]), np.asarray(p["attention"])
    )
    np.testing.assert_allclose(np.asarray(sap.apply(variables, x)), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(pooling.POOLINGS))
def test_masked_batch_equals_each_utterance_alone(name):
    """A padded batch pools exactly like its unpadded utterances (pads filled with garbage)."""
    module = pooling.make_pooling(name, global_context_att=True)
    lengths = [T, 7, 23]
    x = _frames(2)
    x[1, 7:] = 1e3  # padding content must not matter
    x[2, 23:] = -5.0
    mask = jnp.arange(T)[None, :] < jnp.asarray(lengths)[:, None]  # (B, T)
    variables = module.init(jax.random.key(0), x)
    batched = np.asarray(module.apply(variables, x, mask))
    for b, n in enumerate(lengths):
        alone = np.asarray(module.apply(variables, x[b : b + 1, :n]))
        np.testing.assert_allclose(batched[b : b + 1], alone, atol=TOL, rtol=0)


def test_statistics_match_numpy_formulas():
    """The pure statistics: unbiased std + 1e-7, attentive mean/std with the clamped E[x²]−μ² form."""
    x32 = _frames(4)
    x = x32.astype(np.float64)  # the references in float64; ours in float32
    std_ref = np.sqrt(x.var(axis=1, ddof=1) + 1e-7)
    np.testing.assert_allclose(np.asarray(pooling.temporal_std(x32)), std_ref, rtol=1e-5)
    logits = np.random.default_rng(5).normal(size=x.shape).astype(np.float32)
    alpha = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    mu = (alpha * x).sum(1)
    sigma = np.sqrt(np.maximum((alpha * x**2).sum(1) - mu**2, 1e-7))
    ours = np.asarray(pooling.attentive_statistics(x32, pooling.attention_weights(logits)))
    np.testing.assert_allclose(ours, np.concatenate([mu, sigma], -1), atol=TOL, rtol=0)


def test_single_frame_std_is_finite():
    """WeSpeaker's unbiased var gives NaN for T=1; ours clamps the divisor and gives sqrt(eps)."""
    out = np.asarray(pooling.temporal_std(_frames(t=1)))
    np.testing.assert_allclose(out, np.sqrt(1e-7), rtol=1e-6)


def test_unknown_pooling_is_named():
    with pytest.raises(ValueError, match="unknown pooling 'XYZ'"):
        pooling.make_pooling("XYZ")
