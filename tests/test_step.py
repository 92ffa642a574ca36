"""The train step against a PyTorch WeSpeaker training loop, and 8 devices against 1."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import oracles

from ecapa_jax import ECAPA_TDNN, EcapaConfig
from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd, wespeaker_features
from ecapa_jax.training.heads import HeadConfig, make_head
from ecapa_jax.training.schedules import exponential_decrease, margin_schedule
from train import step as train_step

CHANNELS, EMBED, CLASSES, BATCH, SAMPLES = 32, 16, 6, 8, 8_160  # 8,160 samples = 50 frames
# Two steps: the warm-up step (lr 0: momentum buffer and BN statistics only), then a real nesterov +
# weight-decay update. Longer runs of this tiny BatchNorm-heavy net at batch 8 are chaotic: torch's
# own float32 and float64 runs drift 1.5% apart in 4 steps, so only short runs can be compared tightly.
STEPS = 2


TRAIN_FRONT_END = KaldiFrontEnd(FbankConfig.wespeaker(dither=1.0))  # WeSpeaker trains with dither 1.0


def _batches():
    rng = np.random.default_rng(0)
    for _ in range(STEPS):
        wav = (rng.normal(size=(BATCH, SAMPLES)) * 0.1).astype(np.float32)
        yield {"wav": wav, "label": rng.integers(0, CLASSES, BATCH).astype(np.int32)}


def _schedules():
    lr = exponential_decrease(3, 2, 0.1, 0.01, warm_up_epoch=1, scale_ratio=2.0, warm_from_zero=True)
    margin = margin_schedule(2, 1, 2, 0.0, 0.2, increase_type="linear")
    return lr, margin


def test_step_matches_wespeaker_sgd_loop():
    """WeSpeaker model + ArcMarginProduct + torch SGD(nesterov, wd) vs our jitted step, same features."""
    torch = oracles.torch()
    ecapa = oracles.wespeaker("models.ecapa_tdnn")
    projections = oracles.wespeaker("models.projections")
    torch.manual_seed(0)
    ref = ecapa.ECAPA_TDNN(channels=CHANNELS, feat_dim=80, embed_dim=EMBED, global_context_att=True)
    proj = projections.ArcMarginProduct(EMBED, CLASSES, scale=32.0, margin=0.0, easy_margin=False)
    lr, margin = _schedules()

    model = ECAPA_TDNN(EcapaConfig(channels=CHANNELS, embed_dim=EMBED, global_context_att=True))
    head = make_head(HeadConfig(num_classes=CLASSES))
    tx = train_step.sgd(lr)
    variables = oracles.wespeaker_variables(ref)
    params = {"model": variables["params"], "projection": {"weight": proj.weight.detach().numpy().T.copy()}}
    state = train_step.TrainState(
        jnp.zeros((), jnp.int32), params, {"model": variables["batch_stats"], "projection": {}}, tx.init(params)
    )
    step = jax.jit(train_step.make_train_step(model, head, tx, lr, margin, scale=32.0, frontend=KaldiFrontEnd()))

    opt = torch.optim.SGD(
        list(ref.parameters()) + list(proj.parameters()), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    ref.train()
    for i, batch in enumerate(_batches()):
        for group in opt.param_groups:  # WeSpeaker's scheduler writes the lr before each forward
            group["lr"] = float(lr(i))
        proj.update(float(margin(i)))
        feats = np.array(wespeaker_features(batch["wav"])[0])  # writable copy for torch
        labels = torch.from_numpy(batch["label"]).long()
        logits = proj(ref(torch.from_numpy(feats))[-1], labels)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

        state, metrics = step(state, batch, jax.random.key(0))
        np.testing.assert_allclose(float(metrics["loss"]), loss.item(), rtol=1e-4)
        np.testing.assert_allclose(float(metrics["lr"]), float(lr(i)), rtol=1e-6)
        np.testing.assert_allclose(float(metrics["margin"]), float(margin(i)), rtol=1e-6)

    after = oracles.wespeaker_variables(ref)
    after["params"]["projection"] = {"weight": proj.weight.detach().numpy().T}
    ours = {**state.params, **state.batch_stats["model"]}
    theirs = {"model": {k: v for k, v in after["params"].items() if k != "projection"}, **after["batch_stats"]}
    theirs["projection"] = after["params"]["projection"]
    rel = jax.tree.map(
        lambda a, b: float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)), ours, theirs
    )
    print("max relative difference", max(jax.tree.leaves(rel)))
    assert max(jax.tree.leaves(rel)) < 1e-4, rel


_MULTI_DEVICE = """
import jax, numpy as np
from ecapa_jax import ECAPA_TDNN, EcapaConfig
from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd
from ecapa_jax.training.heads import HeadConfig, make_head
from ecapa_jax.training.schedules import exponential_decrease, margin_schedule
from train import step as train_step

TRAIN_FRONT_END = KaldiFrontEnd(FbankConfig.wespeaker(dither=1.0))
assert jax.device_count() == 8, jax.devices()
model = ECAPA_TDNN(EcapaConfig(channels=32, embed_dim=16, global_context_att=True))
head = make_head(HeadConfig(num_classes=6))
# The recipe's start: warm-up from lr 0 (6 epochs, scale_ratio 4), margin 0 until epoch 20.
lr = exponential_decrease(150, 100, 0.1, 5e-5, warm_up_epoch=6, scale_ratio=4.0, warm_from_zero=True)
margin = margin_schedule(100, 20, 40, 0.0, 0.2)
tx = train_step.sgd(lr)
rng = np.random.default_rng(0)
batches = [{"wav": (rng.normal(size=(16, 8160)) * 0.1).astype(np.float32),
            "label": rng.integers(0, 6, 16).astype(np.int32)} for _ in range(3)]
runs = []
for devices in (jax.devices()[:1], jax.devices()):
    mesh = train_step.data_mesh(devices)
    state = train_step.replicate(train_step.init_state(model, head, tx, jax.random.key(0), 8160, KaldiFrontEnd()), mesh)
    step = train_step.jit_train_step(
        train_step.make_train_step(model, head, tx, lr, margin, scale=32.0, frontend=TRAIN_FRONT_END), mesh)
    losses = []
    for batch in batches:
        state, metrics = step(state, train_step.shard_batch(batch, mesh), jax.random.key(7))
        losses.append(float(metrics["loss"]))
    runs.append((losses, jax.device_get(state.params), float(metrics["grad_norm"])))
(l1, p1, g1), (l8, p8, g8) = runs
diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), p1, p8)))
print("losses", l1, l8, "grad norms", g1, g8, "max param diff", diff)
np.testing.assert_allclose(l8[0], l1[0], rtol=1e-5)
np.testing.assert_allclose(l8, l1, rtol=1e-4)
np.testing.assert_allclose(g8, g1, rtol=1e-2)
assert diff < 1e-3, diff  # measured 4.1e-4: see the docstring
print("OK")
"""


def test_eight_devices_equal_one():
    """Same global batch, seed and schedule on 1 and 8 forced CPU devices.

    The first loss must agree to float rounding (1e-5). Gradients are compared as a whole (1e-2):
    float32 rounding that differs with the reduction order can put a ReLU input within ~1e-6 of
    zero on the other side, which moves the gradient of every earlier layer by ~1e-3 (measured:
    against a true float64 reference the 8-device gradient was the accurate one). Over three steps
    at the recipe's start (warm-up from lr 0) the losses agree to 1.6e-5 relative and parameters
    to 4.1e-4 absolute; one flipped kink carried through the updates is what sets that figure, so
    1e-4 on parameters is not a well-posed bound for a float32 ReLU network across device counts.
    """
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", _MULTI_DEVICE], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout + out.stderr[-3000:]
