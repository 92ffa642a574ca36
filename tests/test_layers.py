"""Building blocks against WeSpeaker's PyTorch blocks and small NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

from ecapa_jax.models import ecapa, layers

TOL = 1e-5


def _x(b=2, t=29, c=32, seed=0):
    return np.random.default_rng(seed).normal(size=(b, t, c)).astype(np.float32)  # (B, T, C)


def _nct(torch, x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))  # (B, C, T)


def test_res2_cascade_matches_numpy():
    """Chunks chained f_i(sp_{i-1} + x_i), last chunk passed through (not the first, as in the paper)."""
    x = _x(c=16)
    f = lambda i, h: np.tanh(h) * (i + 2)  # noqa: E731 - distinct, nonlinear branch per index
    chunks = np.split(x, 4, axis=-1)
    sp, outs = None, []
    for i in range(3):
        sp = f(i, chunks[i] if i == 0 else sp + chunks[i])
        outs.append(sp)
    ref = np.concatenate(outs + [chunks[3]], axis=-1)
    ours = ecapa.res2_cascade(jnp.asarray(x), lambda i, h: jnp.tanh(h) * (i + 2), 4)
    np.testing.assert_allclose(np.asarray(ours), ref, atol=TOL)
    # scale 1: the single branch applied to everything
    np.testing.assert_allclose(
        np.asarray(ecapa.res2_cascade(jnp.asarray(x), lambda i, h: h * 3.0, 1)), x * 3.0, atol=1e-6
    )


@pytest.mark.parametrize("shape", [(4, 11, 8), (6, 8)])
def test_batchnorm_follows_pytorch(shape):
    """Train mode: biased batch variance to normalise, unbiased into running_var, momentum 0.1."""
    torch = oracles.torch()
    c = shape[-1]
    ref = torch.nn.BatchNorm1d(c)
    oracles.randomise_batchnorm(ref, seed=1)
    variables = oracles.wespeaker_variables(ref)
    bn = layers.BatchNorm()
    rng = np.random.default_rng(0)
    for step in range(3):
        x = (rng.normal(size=shape) * 2 + 1).astype(np.float32)
        xt = torch.from_numpy(x if x.ndim == 2 else np.ascontiguousarray(x.transpose(0, 2, 1)))
        ref.train()
        with torch.no_grad():
            y_ref = ref(xt).numpy()
        y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
        variables = {**variables, **updates}
        y_ref = y_ref if x.ndim == 2 else y_ref.transpose(0, 2, 1)
        np.testing.assert_allclose(np.asarray(y), y_ref, atol=TOL)
        stats = variables["batch_stats"]
        np.testing.assert_allclose(stats["mean"], ref.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(stats["var"], ref.running_var.numpy(), atol=1e-6)
        assert int(stats["num_batches_tracked"]) == int(ref.num_batches_tracked) == step + 1
    ref.eval()
    with torch.no_grad():
        y_ref = ref(xt).numpy()
    y_ref = y_ref if x.ndim == 2 else y_ref.transpose(0, 2, 1)
    np.testing.assert_allclose(np.asarray(bn.apply(variables, x, train=False)), y_ref, atol=TOL)


def test_masked_batchnorm_statistics_use_valid_frames_only():
    x = _x(b=2, t=10, c=4)
    mask = np.arange(10)[None, :] < np.array([[10], [6]])
    bn = layers.BatchNorm()
    variables = bn.init(jax.random.key(0), x, train=False)
    _, updates = bn.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])
    valid = x[mask]  # (16, C)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * valid.mean(0), atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * valid.var(0, ddof=1), atol=1e-6)


def test_dilated_conv_matches_torch_conv1d():
    torch = oracles.torch()
    ref = torch.nn.Conv1d(32, 24, kernel_size=3, padding=3, dilation=3)
    conv = layers.conv1d(24, 3, 3, jnp.float32, "conv")
    x = _x()
    with torch.no_grad():
        y_ref = ref(_nct(torch, x)).numpy().transpose(0, 2, 1)
    y = conv.apply(oracles.wespeaker_variables(ref), x)
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=TOL)


def _wespeaker_block(torch, name, *args, **kwargs):
    module = getattr(oracles.wespeaker("models.ecapa_tdnn"), name)(*args, **kwargs)
    oracles.randomise_batchnorm(module, seed=2)
    return module.eval()


@pytest.mark.parametrize(
    "ours,theirs,args",
    [
        (ecapa.Conv1dReluBn(48, 5), "Conv1dReluBn", dict(in_channels=32, out_channels=48, kernel_size=5, padding=2)),
        (
            ecapa.Res2Conv1dReluBn(3, 2, 8),
            "Res2Conv1dReluBn",
            dict(channels=32, kernel_size=3, padding=2, dilation=2, scale=8),
        ),
        (ecapa.SEConnect(16), "SE_Connect", dict(channels=32, se_bottleneck_dim=16)),
        (
            ecapa.SERes2Block(3, 4, 8, 128),
            "SE_Res2Block",
            dict(channels=32, kernel_size=3, stride=1, padding=4, dilation=4, scale=8),
        ),
    ],
    ids=["Conv1dReluBn", "Res2Conv1dReluBn", "SE_Connect", "SE_Res2Block"],
)
def test_blocks_match_wespeaker(ours, theirs, args):
    torch = oracles.torch()
    ref = _wespeaker_block(torch, theirs, **args)
    x = _x()
    with torch.no_grad():
        y_ref = ref(_nct(torch, x)).numpy().transpose(0, 2, 1)
    variables = oracles.wespeaker_variables(ref)
    kwargs = {} if isinstance(ours, ecapa.SEConnect) else {"train": False}
    y = jax.jit(lambda v, x: ours.apply(v, x, **kwargs))(variables, x)
    np.testing.assert_allclose(np.asarray(y), y_ref, atol=TOL)


def test_block_with_mask_equals_unpadded():
    """Padded frames never reach valid ones: dilated convs see zeros, SE averages valid frames."""
    block = ecapa.SERes2Block(3, 3, 8, 16)
    x = _x(b=2, t=30)
    x[1, 12:] = 50.0
    mask = np.arange(30)[None, :] < np.array([[30], [12]])
    variables = block.init(jax.random.key(0), x, train=False)
    batched = block.apply(variables, x, train=False, mask=mask)
    alone = block.apply(variables, x[1:, :12], train=False)
    np.testing.assert_allclose(np.asarray(batched[1, :12]), np.asarray(alone[0]), atol=TOL)


def test_res2_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="not divisible by scale 8"):
        ecapa.Res2Conv1dReluBn().init(jax.random.key(0), _x(c=20), train=False)
