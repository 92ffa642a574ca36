"""Long recordings embedded whole in chunks (``ecapa_jax.models.long_form``): the merged statistics against
NumPy, the receptive field against ``context_frames``, chunked embeddings against the whole-file pass and
WeSpeaker's PyTorch model, and the encoder's streamed path for long files.

A new model family is one more entry in ``FAMILIES`` below (a small config of it).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
from test_convert import TINY, numpy_state_dict, random_wespeaker_model, torch_embed
from test_embed import speech_like

from ecapa_jax.encoder import Encoder
from ecapa_jax.frontend.audio import load_audio, stream_audio
from ecapa_jax.frontend.kaldi import KaldiFrontEnd
from ecapa_jax.io.convert.wespeaker import from_wespeaker
from ecapa_jax.models import build_model
from ecapa_jax.models.campplus import CamPPConfig
from ecapa_jax.models.conformer import ConformerConfig
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.models.long_form import chunk_input, chunk_starts, embed_long
from ecapa_jax.models.pooling import FRAMES, STATS
from ecapa_jax.models.transformer import TransformerConfig
from ecapa_jax.stats import merge_moments, weighted_moments

EMB_ATOL = 1e-5  # chunked vs whole file: measured ≤ 1e-6 on embeddings of magnitude ~1
MIN_COSINE = 0.99999
F = TINY["feat_dim"]
FAMILIES = {  # one small model per family that supports long-form evaluation
    "ecapa_glob_astp_emb_bn": EcapaConfig(channels=32, feat_dim=F, embed_dim=16, global_context_att=True, emb_bn=True),
    "ecapa_tstp": EcapaConfig(channels=32, feat_dim=F, embed_dim=16, pooling="TSTP"),
    "speechbrain_ecapa": EcapaConfig.speechbrain(32, 96, feat_dim=F, embed_dim=16),  # reflect padding, BN in ASP
    # Depthwise-separable convs reach as far as the full ones they replace: the same context_frames.
    "light_ecapa": EcapaConfig(
        channels=32, feat_dim=F, embed_dim=16, global_context_att=True, separable_res2=True, separable_layer1=True
    ),
}
# CAM++ is not local between reductions that long-form can supply: each of its CAM layers gates by the
# utterance mean and by means over 100-frame segments counted from the file's start (dozens of reductions).
WHOLE_ONLY = CamPPConfig(
    feat_dim=F, embed_dim=16, m_channels=8, fcm_blocks=(1, 1), init_channels=16, growth_rate=8, bn_size=2,
    block_layers=(2, 2, 2), seg_len=20,
)  # fmt: skip
# Self-attention is global: every frame of every layer depends on every frame of the file, so no halo makes a
# chunk exact. These families have no context_frames: refused in chunks, evaluated whole by the encoder.
WHOLE_ONLY_FAMILIES = {
    "campplus": WHOLE_ONLY,
    "transformer": TransformerConfig(feat_dim=F, d_model=16, num_layers=1, num_heads=2, ff_dim=32, embed_dim=16),
    "conformer": ConformerConfig(
        feat_dim=F, d_model=16, num_layers=1, num_heads=2, ff_dim=32, embed_dim=16, depthwise_conv_kernel_size=7
    ),
}


def random_variables(config, seed: int = 0) -> dict:
    """A family's variables: random weights (its init), random BatchNorm statistics (mean ~ N(0, 0.1),
    var ~ U(0.5, 1.5)) so that BatchNorm is really exercised."""
    module = build_model(config)
    variables = jax.jit(module.init)(jax.random.key(seed), jnp.zeros((1, 50, config.feat_dim)))
    rng = np.random.default_rng(seed + 1)
    draw = {"mean": lambda s: rng.normal(0, 0.1, s), "var": lambda s: rng.uniform(0.5, 1.5, s)}
    stats = jax.tree_util.tree_map_with_path(
        lambda path, x: draw[path[-1].key](x.shape).astype(x.dtype) if path[-1].key in draw else x,
        variables["batch_stats"],
    )
    return {**variables, "batch_stats": stats}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    """(module, variables) of a small model of the family."""
    return build_model(FAMILIES[request.param]), random_variables(FAMILIES[request.param])


def cosine(a, b):
    return float(np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------- the statistics


@pytest.mark.parametrize("channels_per_score", [None, 1, 5])
def test_merged_moments_are_the_whole_sets(channels_per_score):
    """Moments merged over a random split of the frames = those of all frames, against float64 NumPy."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 50, 5)) * 3 + 7  # far from zero: E[x²] − E[x]² would lose digits here
    scores = None if channels_per_score is None else rng.standard_normal((2, 50, channels_per_score)) * 4
    mask = rng.uniform(size=(2, 50)) < 0.8
    cuts = [0, 7, 8, 31, 50]
    merged = None
    for a, b in zip(cuts, cuts[1:], strict=False):
        part_mask = np.zeros_like(mask)
        part_mask[:, a:b] = mask[:, a:b]
        part_mask[:, a] = True  # every part summarises at least one frame
        mask[:, a] = True
        part = weighted_moments(jnp.float32(x), part_mask, None if scores is None else jnp.float32(scores))
        merged = part if merged is None else merge_moments(merged, part)
    weights = np.ones((2, 50, 1)) if scores is None else np.exp(scores - scores.max(axis=1, keepdims=True))
    weights = weights * mask[..., None]
    alpha = weights / weights.sum(axis=1, keepdims=True)
    mean = np.sum(alpha * x, axis=1)
    var = np.sum(alpha * (x - mean[:, None]) ** 2, axis=1)
    np.testing.assert_allclose(merged["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(merged["m2"] / merged["w"], var, rtol=1e-5)
    if scores is None:
        np.testing.assert_array_equal(merged["w"][:, 0], mask.sum(axis=1))


def test_chunks_cover_the_file_once_with_halo():
    feats = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    assert chunk_starts(23, 10) == [0, 10, 20]
    owned = []
    for start in chunk_starts(23, 10):
        x, valid, own = chunk_input(feats, start, 10, halo=3)
        assert x.shape == (1, 16, 2) and valid.shape == own.shape == (1, 16)
        first, last = max(start - 3, 0), min(start + 13, 23)  # the frames read: own ± halo, inside the file
        np.testing.assert_array_equal(valid[0], np.arange(16) < last - first)  # a prefix, as lengths give
        np.testing.assert_array_equal(x[0, : last - first], feats[first:last])
        assert not x[0][~valid[0]].any()  # past them: zeros, masked
        owned.extend(np.flatnonzero(own[0]) + first)
    assert owned == list(range(23))
    with pytest.raises(ValueError, match="chunk_frames must be >= 1, got 0"):
        chunk_starts(5, 0)


# ----------------------------------------------------------------------------- the model, chunked


def test_context_frames_is_the_receptive_field(family):
    """With every reduction supplied, frame t of the frame-level features depends on input frames t ± context_frames
    and on no others: the halo is exactly enough.

    Positive weights, inputs and BatchNorm shifts keep every ReLU open, so no path through the network is cut
    by chance and the dependence is structural (random weights close some paths at the field's edge).
    """
    module, variables = family
    context = module.config.context_frames
    assert context == 65  # 2 + 7 · (2 + 3 + 4)
    positive = {
        "params": jax.tree.map(jnp.abs, variables["params"]),
        "batch_stats": jax.tree_util.tree_map_with_path(
            lambda path, x: jnp.zeros_like(x) if path[-1].key == "mean" else x, variables["batch_stats"]
        ),
    }
    x = jnp.abs(jnp.asarray(np.random.default_rng(2).standard_normal((1, 2 * context + 3, F)), jnp.float32))
    seen = jax.eval_shape(lambda v, x: module.apply(v, x, mutable=[FRAMES]), positive, x)[1][FRAMES]

    def supply(seen):  # any statistics do: what matters is that no reduction depends on the input any more
        if "frames" not in seen:
            return {name: supply(child) for name, child in seen.items()}
        c, d = seen["frames"][0]["x"].shape[-1], seen["frames"][0].get("scores", np.zeros((1, 1, 1))).shape[-1]
        ones = jnp.ones((1, d))
        return {
            "moments": {"shift": 0 * ones, "w": 9 * ones, "mean": jnp.full((1, c), 0.1), "m2": jnp.full((1, c), 3.0)}
        }

    supplied = supply(seen)
    centre = context + 1

    def frame(x):  # (1, T, F) → the sum of the frame-level features at `centre`
        return module.apply({**positive, STATS: supplied}, x)[1]["frame_features"][0, centre].sum()

    reach = np.abs(np.asarray(jax.jit(jax.grad(frame))(x))).sum(axis=(0, 2))  # (T,)
    assert np.flatnonzero(reach).tolist() == list(range(centre - context, centre + context + 1))


def test_chunked_equals_whole_file(family):
    module, variables = family
    feats = np.random.default_rng(3).standard_normal((700, F)).astype(np.float32)
    whole = np.asarray(module.apply(variables, feats[None])[0][0])
    got = embed_long(module, variables, feats, 128)  # six chunks of 128 + 2 · 65 frames, the last short
    assert got.shape == whole.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, whole, rtol=0, atol=EMB_ATOL)
    assert cosine(got, whole) >= MIN_COSINE
    # The halo matters: without it the frames near each chunk's edge are wrong (same chunk shape: no compilation).
    assert np.max(np.abs(embed_long(module, variables, feats, 128 + 130, halo=0) - whole)) > 100 * EMB_ATOL


def test_chunked_equals_wespeakers_whole_file():
    """GLOB ECAPA as WeSpeaker runs it on one whole utterance, against ours in chunks of 128 frames."""
    config = FAMILIES["ecapa_glob_astp_emb_bn"]  # the same module as above: its programs are compiled already
    model = random_wespeaker_model(
        channels=config.channels, feat_dim=F, embed_dim=config.embed_dim, global_context_att=True, emb_bn=True
    )
    converted, variables, _ = from_wespeaker(numpy_state_dict(model))
    assert converted == config
    feats = np.random.default_rng(4).standard_normal((1, 999, F)).astype(np.float32)
    got = embed_long(build_model(config), variables, feats[0], 128)
    want = torch_embed(model, feats)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=EMB_ATOL)
    assert cosine(got, want) >= MIN_COSINE


def test_bad_long_form_inputs_are_named(family):
    module, variables = family
    with pytest.raises(ValueError, match=rf"features must have shape \(T, {F}\) with T ≥ 1, got \(5, {F + 1}\)"):
        embed_long(module, variables, np.zeros((5, F + 1)), 4)


@pytest.mark.parametrize("name", list(WHOLE_ONLY_FAMILIES))
def test_families_without_context_frames_are_refused_in_chunks(name):
    module = build_model(WHOLE_ONLY_FAMILIES[name])
    with pytest.raises(ValueError, match=rf"^{type(module).__name__} does not support long-form evaluation"):
        embed_long(module, {}, np.zeros((5, F)), 4)


# ----------------------------------------------------------------------------- front-end and audio, streamed


def test_features_in_chunks_equal_the_whole_front_end():
    wave = speech_like(7.3, 16000, seed=5)
    blocks = [wave[i : i + 5000] for i in range(0, len(wave), 5000)]
    front_end = KaldiFrontEnd()
    whole = np.asarray(front_end(wave[None])[0][0])  # (T, 80)
    got = front_end.features_in_chunks(blocks, chunk_frames=100)
    assert got.shape == whole.shape == (728, 80)
    # fbank rounds differently with the padded shape (FFT/matmul blocking); CMN mean in float64 here.
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match=r"399 samples are fewer than one frame \(400 samples\)"):
        front_end.features_in_chunks([np.zeros(399, np.float32)])


def test_streamed_audio_is_load_audio(tmp_path):
    path = tmp_path / "stereo8k.wav"
    sf.write(path, speech_like(3.1, 8000, seed=6, channels=2), 8000, subtype="PCM_16")
    blocks = list(stream_audio(path, 16000, block_seconds=0.7))
    assert len(blocks) > 4
    np.testing.assert_array_equal(np.concatenate(blocks), load_audio(path, 16000))  # soxr streams exactly


# ----------------------------------------------------------------------------- the encoder


@pytest.fixture(scope="module")
def encoder():
    config, variables, _ = from_wespeaker(numpy_state_dict(random_wespeaker_model(**{**TINY, "feat_dim": 80})))
    return Encoder(config, variables, chunk_frames=200)


def test_encoder_embeds_long_utterances_in_chunks(encoder, tmp_path):
    """Waveforms and files over chunk_frames (2 s here) go to long-form evaluation: same embedding as one
    whole-file program; files are streamed."""
    whole = Encoder(encoder.config, encoder.variables, chunk_frames=None)
    waves = [speech_like(s, 16000, seed=7 + i) for i, s in enumerate([1.2, 5.5])]  # 118 and 548 frames
    got, want = encoder.embed_batch(waves), whole.embed_batch(waves)
    np.testing.assert_allclose(got, want, rtol=0, atol=EMB_ATOL)
    sf.write(tmp_path / "long.wav", waves[1], 16000, subtype="FLOAT")
    sf.write(tmp_path / "short.wav", waves[0], 16000, subtype="FLOAT")
    table, failures = encoder.embed_files({"long": tmp_path / "long.wav", "short": tmp_path / "short.wav"})
    assert not failures and list(table) == ["long", "short"]
    np.testing.assert_allclose(np.stack([table["short"], table["long"]]), want, rtol=0, atol=EMB_ATOL)
    with pytest.raises(ValueError, match="chunk_frames must be >= 1 or None, got 0"):
        Encoder(encoder.config, encoder.variables, chunk_frames=0)


@pytest.mark.parametrize("name", list(WHOLE_ONLY_FAMILIES))
def test_families_without_long_form_embed_long_utterances_whole(name):
    """CAM++, the Transformer and the Conformer have no context_frames: a long utterance takes the one-program
    path instead of raising."""
    config = dataclasses.replace(WHOLE_ONLY_FAMILIES[name], feat_dim=80)
    variables = random_variables(config)
    wave = speech_like(2.5, 16000, seed=9)  # 248 frames, over chunk_frames
    got = Encoder(config, variables, chunk_frames=100).embed_batch([wave])
    np.testing.assert_array_equal(got, Encoder(config, variables, chunk_frames=None).embed_batch([wave]))
