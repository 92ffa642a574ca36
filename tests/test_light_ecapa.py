"""Light ECAPA (depthwise-separable convs): parameter and MAC counts against MobileNet's formula, the
separable conv against a NumPy loop, padded batches, symbolic export, no WeSpeaker export; and the MAC
counter (``ecapa_jax.models.costs``, ``benchmarks.flops``) against hand-written formulas for ECAPA, the
Transformer and the Conformer."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import flops
from ecapa_jax.io.convert.wespeaker import to_wespeaker
from ecapa_jax.models import build_model
from ecapa_jax.models.conformer import ConformerConfig
from ecapa_jax.models.costs import forward_macs, num_params
from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig
from ecapa_jax.models.layers import DepthwiseConv1d, SeparableConv1d, reflect_pad
from ecapa_jax.models.transformer import TransformerConfig
from ecapa_jax.stats import lengths_to_mask

TOL = 1e-5


def _params(cfg) -> int:
    shapes = jax.eval_shape(lambda: build_model(cfg).init(jax.random.key(0), jnp.zeros((1, 8, cfg.feat_dim))))
    return num_params(shapes["params"])


def _savings(cfg: EcapaConfig) -> int:
    """Weights (= MACs per frame) a depthwise-separable conv saves: D_k·M·N − (D_k·M + M·N), summed over the
    separable convs (biases are unchanged: the depthwise conv has none, the 1×1 conv keeps the N)."""
    separable = lambda k, m, n: k * m * n - (k * m + m * n)  # noqa: E731
    w = cfg.channels // cfg.scale
    saved = 3 * (cfg.scale - 1) * separable(3, w, w) if cfg.separable_res2 else 0  # 3 blocks × 7 Res2 convs
    return saved + (separable(5, cfg.feat_dim, cfg.channels) if cfg.separable_layer1 else 0)


@pytest.mark.parametrize("preset", ["glob_c512", "c1024"])
@pytest.mark.parametrize("layer1", [False, True])
def test_parameters_and_macs_follow_the_formula(preset, layer1):
    full = EcapaConfig.preset(preset)
    light = full.replace(separable_res2=True, separable_layer1=layer1)
    saved = _savings(light)
    assert _params(light) == _params(full) - saved
    t = 200
    assert flops.model_macs(light, t) == flops.model_macs(full, t) - t * saved
    assert forward_macs(light, t) == forward_macs(full, t) - t * saved  # what runs saves as much


def test_light_c512_numbers():
    """The preset's figures as quoted in the README: 6,022,720 parameters, 1.0037 G MACs at 200 frames."""
    assert _params(EcapaConfig.light_c512()) == 6_190_720 - 21 * (3 * 64 * 64 - 3 * 64 - 64 * 64) == 6_022_720
    assert flops.model_macs(EcapaConfig.light_c512(), 200) == 1_037_271_040 - 200 * 168_000


def test_separable_conv_equals_a_numpy_loop():
    """y_t = Σ_k Σ_i x_{t + (k − (K−1)/2)·d, i} · w_dw[k, i] · w_pw[i, o] + b_o, zero-padded, dilation d."""
    k, d, m, n, t = 3, 2, 5, 4, 11
    x = np.random.default_rng(0).normal(size=(2, t, m)).astype(np.float32)
    conv = SeparableConv1d(n, k, d)
    variables = conv.init(jax.random.key(1), x)
    p = variables["params"]
    dw = np.asarray(p["depthwise"]["kernel"])[:, 0, :]  # (K, M)
    pw, bias = np.asarray(p["pointwise"]["kernel"])[0], np.asarray(p["pointwise"]["bias"])  # (M, N), (N,)
    assert "bias" not in p["depthwise"] and dw.shape == (k, m)
    padded = np.pad(x, ((0, 0), (d, d), (0, 0)))
    expected = np.zeros((2, t, n), np.float64)
    for step in range(t):
        for tap in range(k):
            expected[:, step] += (padded[:, step + tap * d] * dw[tap]) @ pw
    np.testing.assert_allclose(np.asarray(conv.apply(variables, x)), expected + bias, atol=TOL, rtol=0)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 3), (15, 1)])
def test_depthwise_conv_equals_the_grouped_convolution(kernel, dilation):
    """Shifted multiply-adds against ``nn.Conv(feature_group_count=C)`` with the same leaves (PyTorch's groups=C)."""
    x = np.random.default_rng(4).normal(size=(2, 13, 6)).astype(np.float32)
    ours = DepthwiseConv1d(kernel, dilation)
    variables = ours.init(jax.random.key(0), x)
    variables = {"params": {**variables["params"], "bias": np.linspace(-1, 1, 6).astype(np.float32)}}
    pad = dilation * (kernel - 1) // 2
    grouped = nn.Conv(6, (kernel,), kernel_dilation=(dilation,), padding=[(pad, pad)], feature_group_count=6)
    assert jax.tree.map(np.shape, grouped.init(jax.random.key(0), x)) == jax.tree.map(np.shape, variables)
    np.testing.assert_allclose(ours.apply(variables, x), grouped.apply(variables, x), atol=TOL, rtol=0)
    # padding='reflect' (SpeechBrain's layout) takes reflect_pad's (B, T + 2p, C) input and keeps T frames.
    padded = reflect_pad(x, pad)
    reflect = DepthwiseConv1d(kernel, dilation, padding="reflect")
    valid = nn.Conv(6, (kernel,), kernel_dilation=(dilation,), padding="VALID", feature_group_count=6)
    got = reflect.apply(variables, padded)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, valid.apply(variables, padded), atol=TOL, rtol=0)


LIGHT = EcapaConfig(channels=32, mfa_dim=64, embed_dim=16, global_context_att=True).replace(
    separable_res2=True, separable_layer1=True
)


@pytest.mark.parametrize(
    "config",
    [LIGHT, EcapaConfig.speechbrain(32, 64, embed_dim=16, separable_res2=True, separable_layer1=True)],
    ids=["wespeaker_layout", "speechbrain_layout"],  # zero padding; reflect padding of each row's valid frames
)
def test_padded_batch_equals_one_at_a_time(config):
    model = ECAPA_TDNN(config)
    lengths = [30, 7]
    x = np.random.default_rng(2).normal(size=(2, 30, 80)).astype(np.float32)
    variables = model.init(jax.random.key(0), x)
    apply = jax.jit(lambda v, x, m: model.apply(v, x, mask=m)[0])
    batch = np.asarray(apply(variables, x, lengths_to_mask(np.array(lengths), 30)))
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(batch[b : b + 1], apply(variables, x[b : b + 1, :n], None), atol=TOL, rtol=0)


def test_export_with_symbolic_batch_and_time():
    from jax import export

    model = ECAPA_TDNN(LIGHT)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 20, 80)))

    def embed(feats, lengths):
        return model.apply(variables, feats, mask=lengths_to_mask(lengths, feats.shape[1]))[0]

    b, t = export.symbolic_shape("B, T")
    exported = export.export(jax.jit(embed))(
        jax.ShapeDtypeStruct((b, t, 80), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32)
    )
    x = np.random.default_rng(3).normal(size=(3, 27, 80)).astype(np.float32)
    lengths = np.array([27, 5, 16], np.int32)
    np.testing.assert_allclose(exported.call(x, lengths), embed(x, lengths), atol=TOL, rtol=0)


def test_wespeaker_export_is_refused():
    variables = ECAPA_TDNN(LIGHT).init(jax.random.key(0), jnp.zeros((1, 8, 80)))
    with pytest.raises(ValueError, match="light ECAPA .*WeSpeaker has no such model"):
        to_wespeaker(LIGHT, variables)
    assert not LIGHT.is_wespeaker and EcapaConfig.glob_c512().is_wespeaker


# ----------------------------------------------------------------------------- the MAC counter


def test_traced_count_of_ecapa_is_the_executed_formula():
    """ECAPA's traced count: the analytic one minus the global-context rows applied once per utterance."""
    t, c, f, m, e, s, b, a = 20, 16, 80, 1536, 192, 8, 128, 128  # as test_benchmarks.test_flops_match_hand_count
    w = c // s
    block = 2 * t * c * c + (s - 1) * t * 3 * w * w + 2 * c * b
    analytic = t * 5 * f * c + 3 * block + t * 3 * c * m + t * 3 * m * a + t * a * m + 2 * m * e
    cfg = EcapaConfig.glob_c512().replace(channels=c)
    assert flops.model_macs(cfg, t) == analytic
    assert forward_macs(cfg, t) == analytic - t * 2 * m * a + 2 * m * a


@pytest.mark.parametrize("t", [20, 200])
def test_transformer_and_conformer_macs_follow_their_formulas(t):
    """Per frame and layer: projections 4D², attention 2TD (q·k and α·v), feed-forward 2·D·ff (Conformer: two
    halves, 4·D·ff, and the convolution module 2D² + K·D + D²); pre-net T·F·D; SAP T·D·128 + T·128; linear D·E."""
    cfg = TransformerConfig.medium()
    f, d, ff, layers, e = cfg.feat_dim, cfg.d_model, cfg.ff_dim, cfg.num_layers, cfg.embed_dim
    layer = 4 * t * d * d + 2 * t * t * d + 2 * t * d * ff
    assert flops.model_macs(cfg, t) == t * f * d + layers * layer + d * e
    cfg = ConformerConfig.boss()
    f, d, ff, layers, e, k = cfg.feat_dim, cfg.d_model, cfg.ff_dim, cfg.num_layers, cfg.embed_dim, 15
    layer = 4 * t * d * ff + 4 * t * d * d + 2 * t * t * d + 3 * t * d * d + t * k * d
    assert flops.model_macs(cfg, t) == t * f * d + layers * layer + t * d * 128 + t * 128 + d * e
