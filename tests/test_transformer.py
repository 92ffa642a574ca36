"""Transformer and Conformer: parity with torch.nn.TransformerEncoderLayer and torchaudio.models.Conformer
(max abs ≤ 1e-5, fp32, eval, random weights and BatchNorm statistics), whole speaker models against a PyTorch
composition of the same blocks, padded batches against one utterance at a time, symbolic-shape export,
dropout, configuration errors.

PyTorch runs every utterance alone (its whole length, no padding): that is what a padded, masked batch here
must reproduce. Tiny widths keep the file to a few seconds.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

from ecapa_jax.io.convert.pytorch import from_torch, module_from_torch
from ecapa_jax.models import build_model, model_config_from_dict, model_config_to_dict
from ecapa_jax.models.conformer import Conformer, ConformerConfig, SpeakerConformer
from ecapa_jax.models.transformer import (
    MultiHeadAttention,
    SpeakerTransformer,
    TransformerConfig,
    TransformerEncoderLayer,
)
from ecapa_jax.stats import lengths_to_mask

TOL = 1e-5
D, H, FF, F = 24, 4, 40, 16  # model width, heads, feed-forward width, mel bins
LENGTHS = [37, 20, 1, 29]  # one frame: attention over a single key
# Speaker models: no one-frame row, whose standard deviation is NaN in WeSpeaker's TSTP (torch.var of one value)
# and ill-conditioned in its ASTP (E[x²] − E[x]² of one frame is rounding error, clamped at 1e-7).
SPEAKER_LENGTHS = [37, 20, 2, 29]


def _padded(lengths=LENGTHS, width=D, seed=0, garbage=True):
    """(B, T, width) inputs whose padded frames hold large garbage (they must not matter), and the mask."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), max(lengths), width)).astype(np.float32)
    mask = np.asarray(lengths_to_mask(np.array(lengths), max(lengths)))
    if garbage:
        x = np.where(mask[..., None], x, 1e3 * rng.normal(size=x.shape)).astype(np.float32)
    return x, mask


def _perturb(module, seed=0):
    """Random weights (not PyTorch's init: biases and norms away from 0 and 1) and BatchNorm statistics."""
    torch = oracles.torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    oracles.randomise_batchnorm(module, seed)
    return module.eval()


def _max_error(ours, reference, lengths=LENGTHS):
    """max |ours[b, :n] − reference(b, n)| over the valid frames of each row."""
    return max(float(np.abs(np.asarray(ours)[b, :n] - reference(b, n)).max()) for b, n in enumerate(lengths))


# ----------------------------------------------------------------------------- layers


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_transformer_layer_matches_torch(norm_first, activation):
    torch = oracles.torch()
    torch.manual_seed(0)
    ref = torch.nn.TransformerEncoderLayer(
        D, H, FF, dropout=0.1, activation=activation, batch_first=True, norm_first=norm_first
    )
    _perturb(ref)
    layer = TransformerEncoderLayer(H, FF, 0.1, activation, norm_first)
    variables = module_from_torch(ref.state_dict(), layer, D)
    x, mask = _padded()
    ours = jax.jit(lambda v, x, m: layer.apply(v, x, train=False, mask=m))(variables, x, mask)

    def alone(b, n):
        with torch.no_grad():
            return ref(torch.from_numpy(x[b : b + 1, :n]))[0].numpy()

    with torch.no_grad():  # PyTorch's own padded batch, keys masked: equal on the valid frames
        padded = ref(torch.from_numpy(x), src_key_padding_mask=torch.from_numpy(~mask)).numpy()
    assert _max_error(ours, alone) <= TOL
    assert _max_error(ours, lambda b, n: padded[b, :n]) <= TOL


@pytest.mark.parametrize("convolution_first", [False, True])
def test_conformer_matches_torchaudio(convolution_first):
    torch = oracles.torch()
    models = pytest.importorskip("torchaudio.models")
    torch.manual_seed(1)
    ref = models.Conformer(D, H, FF, 2, 7, dropout=0.1, convolution_first=convolution_first)
    _perturb(ref, seed=1)
    encoder = Conformer(2, H, FF, 7, 0.1, convolution_first)
    variables = module_from_torch(ref.state_dict(), encoder, D)
    x, mask = _padded(seed=1)
    ours = jax.jit(lambda v, x, m: encoder.apply(v, x, train=False, mask=m))(variables, x, mask)

    def alone(b, n):
        with torch.no_grad():
            return ref(torch.from_numpy(x[b : b + 1, :n]), torch.tensor([n]))[0][0].numpy()

    assert _max_error(ours, alone) <= TOL
    # Why the depthwise conv is masked here: torchaudio's padded batch lets the padding into the valid frames
    # near each row's end (its output depends on what the padding holds), so it is no reference for a batch.
    with torch.no_grad():
        padded = ref(torch.from_numpy(x), torch.tensor(LENGTHS))[0].numpy()
    assert _max_error(padded, alone) > 1e-2


def test_attention_of_one_key_is_its_value():
    """With a single valid key, softmax weights are one-hot: the output is out_proj(v of that frame)."""
    attention = MultiHeadAttention(num_heads=2)
    x, mask = _padded([5, 1], width=8, garbage=True)
    variables = attention.init(jax.random.key(0), x, train=False)
    out = attention.apply(variables, x, train=False, mask=mask)
    p = variables["params"]
    v = x[1, 0] @ np.asarray(p["in_proj"]["kernel"])[:, 16:] + np.asarray(p["in_proj"]["bias"])[16:]
    expected = v @ np.asarray(p["out_proj"]["kernel"]) + np.asarray(p["out_proj"]["bias"])
    np.testing.assert_allclose(np.asarray(out[1, 0]), expected, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- speaker models


def _torch_speaker(config, encoder, pool, pooled_dim):
    """The PyTorch composition the converter reads: prenet → encoder → pool (on (B, C, T)) → [bn →] linear."""
    torch = oracles.torch()

    class Speaker(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.prenet = torch.nn.Linear(config.feat_dim, config.d_model)
            self.encoder = encoder
            self.pool = pool
            self.bn = torch.nn.BatchNorm1d(pooled_dim) if config.pooled_bn else torch.nn.Identity()
            self.linear = torch.nn.Linear(pooled_dim, config.embed_dim)

        def forward(self, feats):  # (1, T, F): one whole utterance
            h = self.prenet(feats)
            if isinstance(self.encoder, torch.nn.TransformerEncoder):
                h = self.encoder(h)
            else:  # torchaudio's Conformer takes the lengths
                h = self.encoder(h, torch.tensor([h.shape[1]]))[0]
            return self.linear(self.bn(self.pool(h.transpose(1, 2))))

    return Speaker()


def _torch_sap(channels, bottleneck):
    """Our SAP written in PyTorch: w = softmax_t(tanh(linear(x)) · attention), Σ_t w_t x_t. (B, C, T) → (B, C)."""
    torch = oracles.torch()

    class SAP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = torch.nn.Parameter(torch.randn(bottleneck))
            self.linear = torch.nn.Conv1d(channels, bottleneck, 1)

        def forward(self, x):
            scores = torch.einsum("bnt,n->bt", torch.tanh(self.linear(x)), self.attention)
            return torch.einsum("bct,bt->bc", x, torch.softmax(scores, dim=-1))

    return SAP()


TRANSFORMER = TransformerConfig(feat_dim=F, d_model=D, num_layers=2, num_heads=H, ff_dim=FF, embed_dim=12)
CONFORMER = ConformerConfig(feat_dim=F, d_model=D, num_layers=2, num_heads=H, ff_dim=FF, embed_dim=12)
SPEAKER_MODELS = {
    "transformer-TAP-no-bn": TRANSFORMER.replace(pooled_bn=False),
    "transformer-ASTP-prenorm-gelu": TRANSFORMER.replace(pooling="ASTP", norm_first=True, activation="gelu"),
    "conformer-TSTP": CONFORMER.replace(pooling="TSTP", depthwise_conv_kernel_size=5),
    "conformer-SAP": CONFORMER.replace(pooling="SAP", depthwise_conv_kernel_size=9),
}


@pytest.mark.parametrize("name", sorted(SPEAKER_MODELS))
def test_speaker_model_matches_torch(name):
    """The whole chain through ``from_torch``: the same parameter count, embeddings ≤ 1e-5 of PyTorch's."""
    torch = oracles.torch()
    cfg = SPEAKER_MODELS[name]
    torch.manual_seed(2)
    if isinstance(cfg, TransformerConfig):
        layer = torch.nn.TransformerEncoderLayer(
            D, H, FF, activation=cfg.activation, batch_first=True, norm_first=cfg.norm_first
        )
        encoder = torch.nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
    else:
        models = pytest.importorskip("torchaudio.models")
        encoder = models.Conformer(D, H, FF, cfg.num_layers, cfg.depthwise_conv_kernel_size)
    pooling = oracles.wespeaker("models.pooling_layers")
    pool, pooled = {
        "TAP": (pooling.TAP(D), D),
        "TSTP": (pooling.TSTP(D), 2 * D),
        "ASTP": (pooling.ASTP(D), 2 * D),
        "SAP": (_torch_sap(D, 128), D),
    }[cfg.pooling]
    ref = _perturb(_torch_speaker(cfg, encoder, pool, pooled), seed=2)
    variables = from_torch(cfg, ref.state_dict())
    model = build_model(cfg)
    assert isinstance(model, SpeakerConformer if isinstance(cfg, ConformerConfig) else SpeakerTransformer)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    assert n_params == sum(p.numel() for p in ref.parameters())

    x, mask = _padded(SPEAKER_LENGTHS, width=F, seed=2)
    emb, out = jax.jit(lambda v, x, m: model.apply(v, x, mask=m))(variables, x, mask)
    with torch.no_grad():
        rows = [ref(torch.from_numpy(x[b : b + 1, :n])).numpy() for b, n in enumerate(SPEAKER_LENGTHS)]
    alone = np.concatenate(rows)
    err = float(np.abs(np.asarray(emb) - alone).max())
    assert err <= TOL, err
    assert out["frame_features"].shape == (4, 37, D) and out["pooled"].shape == (4, pooled)


@pytest.mark.parametrize("cfg", [TRANSFORMER, CONFORMER.replace(pooling="SAP")], ids=["transformer", "conformer"])
def test_padded_batch_equals_one_at_a_time(cfg):
    """Ours against ours: each row of a padded batch (garbage in the padding) equals its utterance alone."""
    model = build_model(cfg)
    x, mask = _padded(SPEAKER_LENGTHS, width=F, seed=3)
    variables = model.init(jax.random.key(0), x)
    apply = jax.jit(lambda v, x, m: model.apply(v, x, mask=m)[0])
    batch = np.asarray(apply(variables, x, mask))
    for b, n in enumerate(SPEAKER_LENGTHS):
        alone = np.asarray(apply(variables, x[b : b + 1, :n], None))
        np.testing.assert_allclose(batch[b : b + 1], alone, atol=TOL, rtol=0)


@pytest.mark.parametrize("cfg", [TRANSFORMER, CONFORMER], ids=["transformer", "conformer"])
def test_export_with_symbolic_batch_and_time(cfg):
    """jax.export with symbolic B and T (F concrete); the exported call equals the direct one at a new shape."""
    from jax import export

    model = build_model(cfg)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 20, F)))

    def embed(feats, lengths):
        return model.apply(variables, feats, mask=lengths_to_mask(lengths, feats.shape[1]))[0]

    b, t = export.symbolic_shape("B, T")
    exported = export.export(jax.jit(embed))(
        jax.ShapeDtypeStruct((b, t, F), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32)
    )
    x, _ = _padded([33, 10, 21], width=F, seed=4)
    lengths = np.array([33, 10, 21], np.int32)
    np.testing.assert_allclose(np.asarray(exported.call(x, lengths)), np.asarray(embed(x, lengths)), atol=TOL, rtol=0)


@pytest.mark.parametrize("cfg", [TRANSFORMER, CONFORMER.replace(pooling="SAP")], ids=["transformer", "conformer"])
def test_bfloat16_compute_stays_close_to_float32(cfg):
    """Same float32 parameters, bf16 compute (softmax, norms' statistics and pooling in float32): cosine ≥ 0.999."""
    x, mask = _padded(SPEAKER_LENGTHS, width=F, seed=6)
    variables = build_model(cfg).init(jax.random.key(0), x)
    full = build_model(cfg).apply(variables, x, mask=mask)[0]
    half = build_model(cfg.replace(dtype="bfloat16")).apply(variables, x, mask=mask)[0]
    assert half.dtype == jnp.float32  # the embedding head runs in float32
    cosine = jnp.sum(full * half, -1) / (jnp.linalg.norm(full, axis=-1) * jnp.linalg.norm(half, axis=-1))
    assert float(cosine.min()) >= 0.999, cosine


# ----------------------------------------------------------------------------- training mode


def test_dropout_acts_only_in_training():
    model = build_model(TRANSFORMER.replace(dropout=0.5, pooled_bn=False))  # no BN: train mode differs by dropout only
    x, _ = _padded(width=F, garbage=False)
    variables = model.init(jax.random.key(0), x)
    apply = jax.jit(
        lambda key, train: model.apply(variables, x, train=train, rngs={"dropout": key})[0], static_argnums=1
    )
    eval_a, eval_b = apply(jax.random.key(1), False), apply(jax.random.key(2), False)
    train_a, train_b = apply(jax.random.key(1), True), apply(jax.random.key(2), True)
    np.testing.assert_array_equal(eval_a, eval_b)
    assert float(jnp.abs(train_a - train_b).max()) > 1e-2 and float(jnp.abs(train_a - eval_a).max()) > 1e-2
    no_dropout = build_model(TRANSFORMER.replace(dropout=0.0, pooled_bn=False))  # same leaves: train == eval
    np.testing.assert_allclose(no_dropout.apply(variables, x, train=True)[0], eval_a, atol=TOL, rtol=0)


def test_conformer_batchnorm_counts_valid_frames_only_in_training():
    """Train mode: the running statistics after a padded batch equal those after the unpadded frames."""
    model = build_model(CONFORMER.replace(num_layers=1, dropout=0.0))
    x, mask = _padded(width=F, seed=5)
    variables = model.init(jax.random.key(0), x)
    _, padded = model.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])
    # The same frames without padding: the rows concatenated along time would mix attention, so compare the
    # BatchNorm's input-independent check instead: shorter padding (T = max length) vs longer (T + 11).
    x_long = np.concatenate([x, 1e3 * np.ones((4, 11, F), np.float32)], axis=1)
    mask_long = np.concatenate([mask, np.zeros((4, 11), bool)], axis=1)
    _, longer = model.apply(variables, x_long, train=True, mask=mask_long, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(longer), strict=True):
        np.testing.assert_allclose(a, b, atol=TOL, rtol=0)


# ----------------------------------------------------------------------------- configs and errors


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: TransformerConfig(d_model=80, num_heads=3), r"TransformerConfig: num_heads=3 .* d_model=80"),
        (lambda: ConformerConfig(d_model=120, num_heads=7), r"ConformerConfig: num_heads=7 .* d_model=120"),
        (lambda: ConformerConfig(depthwise_conv_kernel_size=4), r"depthwise_conv_kernel_size must be odd.*got 4"),
        (lambda: TransformerConfig(activation="swish"), r"TransformerConfig.activation must be one of"),
        (lambda: ConformerConfig(pooling="XI"), r"ConformerConfig.pooling: unknown pooling 'XI'"),
        (lambda: TransformerConfig(num_layers=0), r"TransformerConfig.num_layers must be >= 1"),
        (lambda: ConformerConfig(dropout=1.0), r"ConformerConfig.dropout must be in \[0, 1\)"),
    ],
)
def test_bad_configs_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"MultiHeadAttention: num_heads=3 .* d_model=8"):
        MultiHeadAttention(3).init(jax.random.key(0), jnp.zeros((1, 4, 8)), train=False)
    with pytest.raises(ValueError, match=r"SpeakerConformer expects features of shape \(B, T, 40\)"):
        SpeakerConformer(ConformerConfig()).init(jax.random.key(0), jnp.zeros((1, 4, 80)))


def test_converter_lists_every_offending_key():
    torch = oracles.torch()
    ref = torch.nn.TransformerEncoderLayer(D, H, FF, batch_first=True)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    state["linear1.weight"] = state["linear1.weight"][:, :-1]  # mis-shaped
    del state["norm2.bias"]  # missing
    state["extra.weight"] = np.zeros(3)  # unexpected
    with pytest.raises(ValueError, match="does not match TransformerEncoderLayer: 3 offending keys") as e:
        module_from_torch(state, TransformerEncoderLayer(H, FF), D)
    message = str(e.value)
    assert f"linear1.weight has shape ({FF}, {D - 1}), expected ({FF}, {D})" in message
    assert f"leaf params/norm2/bias missing (expected ({D},))" in message
    assert "extra.weight is unexpected" in message


@pytest.mark.parametrize("cfg", [TransformerConfig.medium(), ConformerConfig.boss()], ids=["transformer", "conformer"])
def test_configs_round_trip_as_json(cfg):
    d = model_config_to_dict(cfg)
    assert d["family"] == ("conformer" if isinstance(cfg, ConformerConfig) else "transformer")
    assert model_config_from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown .* keys"):
        model_config_from_dict({**d, "channels": 3})


def test_presets_are_the_issue_baselines():
    assert dataclasses.astuple(TransformerConfig.simple())[:5] == (40, 80, 1, 2, 256)  # F, D, layers, heads, ff
    assert dataclasses.astuple(TransformerConfig.medium())[:5] == (40, 120, 4, 4, 256)
    assert ConformerConfig.strong().pooling == "TAP" and ConformerConfig.boss().pooling == "SAP"
