"""Margin heads against WeSpeaker's projections (logits, losses and gradients), plus JAX-side checks."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest
from jax.test_util import check_grads

from ecapa_jax.training import heads
from ecapa_jax.training.schedules import margin_schedule

B, E, N = 9, 16, 10
ATOL = 1e-4  # logits, losses and (relative to max(1, |g|)) gradients


def make_data(num_columns: int = N, seed: int = 0):
    """Embeddings whose targets sit on both sides of every branch point.

    Rows 0–2 point away from their class (cos θ_y ≈ −0.999, −0.9: below th = cos(π − m) for
    m = 0.2 and 0.5, and below 0 for easy margin), rows 3–5 towards it, rows 6–8 are random.
    """
    rng = np.random.default_rng(seed)
    k = num_columns // N
    centres = rng.standard_normal((E, N)).astype(np.float32)
    # sub-centres of a class near each other, so all of them are on the same side of th
    weight = np.repeat(centres, k, axis=1) + (0.1 if k > 1 else 0.0) * rng.standard_normal((E, num_columns))
    weight = weight.astype(np.float32)
    labels = rng.integers(0, N, B).astype(np.int32)
    emb = rng.standard_normal((B, E)).astype(np.float32)
    unit = centres / np.linalg.norm(centres, axis=0)
    for i, (sign, noise) in enumerate([(-1, 0.05), (-1, 0.3), (-1, 0.3), (1, 0.05), (1, 0.3), (1, 0.3)]):
        emb[i] = sign * 3.0 * unit[:, labels[i]] + noise * rng.standard_normal(E)
    return emb, weight, labels


def max_rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours), np.asarray(ref)
    return float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def torch_projection(cls, weight, **kwargs):
    """A WeSpeaker projection with its ``weight`` set to ours transposed."""
    torch = oracles.torch()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SphereProduct calls the deprecated nn.init.xavier_uniform
        proj = cls(E, N, **kwargs)
    with torch.no_grad():
        proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight.T)))
    return proj


def torch_forward(proj, emb, labels, own_loss=False):
    """(logits, loss, d loss/d emb, d loss/d W as (E, ·)) from WeSpeaker, CE loss unless ``own_loss``.

    Runs in the projection's dtype (float64 for SphereFace2, whose log(1 + e^z) overflows float32).
    """
    torch = oracles.torch()
    x = torch.tensor(emb, dtype=proj.weight.dtype, requires_grad=True)
    y = torch.from_numpy(labels).long()
    out = proj(x, y)
    logits, loss = out if own_loss else (out, torch.nn.functional.cross_entropy(out, y))
    loss.backward()
    return logits.detach().numpy(), loss.item(), x.grad.numpy(), proj.weight.grad.numpy().T


def check_against_torch(logits_fn, proj, emb, weight, labels, own_loss=False):
    """logits_fn(emb, weight) → logits, or (logits, loss) with ``own_loss``; compares all with WeSpeaker."""

    def loss_fn(x, w):
        out = logits_fn(x, w)
        logits, loss = out if own_loss else (out, heads.margin_loss(out, labels))
        return loss, logits

    (loss, logits), (g_emb, g_w) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        jnp.asarray(emb), jnp.asarray(weight)
    )
    t_logits, t_loss, t_g_emb, t_g_w = torch_forward(proj, emb, labels, own_loss)
    assert np.max(np.abs(np.asarray(logits) - t_logits)) <= ATOL
    assert abs(float(loss) - t_loss) <= ATOL
    assert max_rel_err(g_emb, t_g_emb) <= ATOL
    assert max_rel_err(g_w, t_g_w) <= ATOL
    return np.asarray(logits)


def target_cos(emb, weight, labels, k=1):
    cos = np.asarray(heads.cosine_similarity(jnp.asarray(emb), jnp.asarray(weight)))
    cos = cos.reshape(B, N, k).max(-1)
    return cos[np.arange(B), labels]


# ----------------------------------------------------------------------------- parity with WeSpeaker


@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("scale", [16.0, 32.0, 64.0])
def test_arc_margin_matches_wespeaker(margin, scale, easy_margin):
    projections = oracles.wespeaker("models.projections")
    emb, weight, labels = make_data()
    cos_y = target_cos(emb, weight, labels)
    th = np.cos(np.pi - margin)
    if margin:  # both branches run (with m = 0, th = −1 and the fallback is never taken)
        assert (cos_y <= (0.0 if easy_margin else th)).any() and (cos_y > 0.5).any()
    proj = torch_projection(projections.ArcMarginProduct, weight, scale=scale, margin=0.0, easy_margin=easy_margin)
    proj.update(margin)
    fn = lambda x, w: heads.arc_margin(x, w, labels, margin, scale, easy_margin)
    check_against_torch(fn, proj, emb, weight, labels)


@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("scale", [16.0, 32.0, 64.0])
def test_add_margin_matches_wespeaker(margin, scale):
    projections = oracles.wespeaker("models.projections")
    emb, weight, labels = make_data()
    proj = torch_projection(projections.AddMarginProduct, weight, scale=scale, margin=0.0)
    proj.update(margin)
    check_against_torch(lambda x, w: heads.add_margin(x, w, labels, margin, scale), proj, emb, weight, labels)


@pytest.mark.parametrize("step", [0, 1, 9, 99, 5000])
def test_sphere_product_matches_wespeaker(step):
    """λ = 1000/(1 + 0.12·(step + 1)) ≈ 893, 806, 455, 78 and the floor 5 at step 5000."""
    projections = oracles.wespeaker("models.projections")
    emb, weight, labels = make_data()
    proj = torch_projection(projections.SphereProduct, weight, margin=4)
    proj.iter = step  # its forward increments the counter first: WeSpeaker's n = step + 1
    check_against_torch(lambda x, w: heads.sphere_product(x, w, labels, step), proj, emb, weight, labels)


@pytest.mark.parametrize("do_lm", [False, True])
@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_intertopk_subcenter_matches_wespeaker(margin, easy_margin, do_lm):
    projections = oracles.wespeaker("models.projections")
    emb, weight, labels = make_data(num_columns=3 * N)
    if margin and not easy_margin:
        assert (target_cos(emb, weight, labels, k=3) <= np.cos(np.pi - margin)).any()
    proj = torch_projection(
        projections.ArcMarginProduct_intertopk_subcenter,
        weight,
        scale=32.0,
        margin=0.0,
        easy_margin=easy_margin,
        K=3,
        mp=0.06,
        k_top=5,
        do_lm=do_lm,
    )
    proj.update(margin)
    fn = lambda x, w: heads.arc_margin_intertopk_subcenter(x, w, labels, margin, 32.0, easy_margin, do_lm=do_lm)
    logits = check_against_torch(fn, proj, emb, weight, labels)
    if margin and not do_lm:  # the penalty really moved some non-target logits
        plain = np.asarray(
            heads.arc_margin_intertopk_subcenter(emb, weight, labels, margin, 32.0, easy_margin, k_top=0)
        )
        assert np.sum(np.abs(logits - plain) > 1e-3) == B * 5


@pytest.mark.parametrize("margin_type", ["C", "A"])
@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("scale", [16.0, 32.0, 64.0])
def test_sphereface2_matches_wespeaker(margin, scale, margin_type):
    torch = oracles.torch()
    projections = oracles.wespeaker("models.projections")
    emb, weight, labels = make_data()
    bias = np.array([[0.3]], np.float32)
    proj = torch_projection(projections.SphereFace2, weight, scale=scale, margin=0.0, margin_type=margin_type)
    with torch.no_grad():
        proj.bias.fill_(0.3)
    proj.update(margin)
    # In float32 WeSpeaker's loss is NaN once s·(g + m) + b > 88 (s = 64, m = 0.5): compare with its
    # float64 run, which is finite everywhere and is what softplus computes in float32.
    proj.double()

    def fn(x, w, b):
        return heads.sphereface2(x, w, b, labels, margin, scale, margin_type=margin_type)

    logits = check_against_torch(lambda x, w: fn(x, w, bias), proj, emb, weight, labels, own_loss=True)
    assert np.isfinite(logits).all()
    g_bias = jax.grad(lambda b: fn(emb, weight, b)[1])(jnp.asarray(bias))
    proj.zero_grad()
    proj(torch.tensor(emb, dtype=torch.float64), torch.from_numpy(labels).long())[1].backward()
    assert max_rel_err(g_bias, proj.bias.grad.numpy()) <= ATOL


def test_softmax_head_matches_wespeaker():
    """BN → ReLU → Dense in eval and train mode: logits, running statistics and gradients."""
    torch = oracles.torch()
    projections = oracles.wespeaker("models.projections")
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((B, E)).astype(np.float32)
    labels = rng.integers(0, N, B).astype(np.int32)
    head = heads.SoftmaxHead(N)
    variables = head.init(jax.random.key(0), emb, labels)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    params = {
        "trans_0": {"scale": 1 + 0.1 * r(E), "bias": 0.1 * r(E)},
        "trans_2": {"kernel": r(E, N), "bias": r(N)},
    }
    stats = {"trans_0": {"mean": r(E), "var": 0.5 + rng.random(E).astype(np.float32), "num_batches_tracked": 3}}
    proj = projections.Linear(E, N)
    bn, dense = proj.trans[0], proj.trans[2]
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(params["trans_0"]["scale"]))
        bn.bias.copy_(torch.from_numpy(params["trans_0"]["bias"]))
        bn.running_mean.copy_(torch.from_numpy(stats["trans_0"]["mean"]))
        bn.running_var.copy_(torch.from_numpy(stats["trans_0"]["var"]))
        dense.weight.copy_(torch.from_numpy(params["trans_2"]["kernel"].T.copy()))
        dense.bias.copy_(torch.from_numpy(params["trans_2"]["bias"]))
    variables = {"params": params, "batch_stats": stats}
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.tree.map(lambda x: 0, head.init(jax.random.key(0), emb, labels))
    )

    proj.eval()
    logits, _ = head.apply(variables, emb, labels)
    assert np.max(np.abs(np.asarray(logits) - proj(torch.from_numpy(emb), None).detach().numpy())) <= ATOL

    proj.train()

    def loss_fn(p, x):
        (logits, loss), new = head.apply(
            {"params": p, "batch_stats": stats}, x, labels, train=True, mutable=["batch_stats"]
        )
        return loss, (logits, new["batch_stats"])

    (loss, (logits, new_stats)), (g_p, g_x) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, emb)
    x = torch.tensor(emb, requires_grad=True)
    t_logits = proj(x, None)
    t_loss = torch.nn.functional.cross_entropy(t_logits, torch.from_numpy(labels).long())
    t_loss.backward()
    assert np.max(np.abs(np.asarray(logits) - t_logits.detach().numpy())) <= ATOL
    assert abs(float(loss) - t_loss.item()) <= ATOL
    assert np.max(np.abs(np.asarray(new_stats["trans_0"]["mean"]) - bn.running_mean.numpy())) <= 1e-6
    assert np.max(np.abs(np.asarray(new_stats["trans_0"]["var"]) - bn.running_var.numpy())) <= 1e-6
    assert max_rel_err(g_x, x.grad.numpy()) <= ATOL
    assert max_rel_err(g_p["trans_2"]["kernel"], dense.weight.grad.numpy().T) <= ATOL
    assert max_rel_err(g_p["trans_0"]["scale"], bn.weight.grad.numpy()) <= ATOL


# ----------------------------------------------------------------------------- registry and modules


def wespeaker_conf(config: heads.HeadConfig) -> dict:
    """WeSpeaker's ``projection_args`` (plus embed_dim, num_class) for the same head."""
    conf = {k: v for k, v in vars(config).items() if k not in ("num_classes", "sphere_m")}
    return {**conf, "embed_dim": E, "num_class": config.num_classes}


@pytest.mark.parametrize("project_type", sorted(heads.HEADS))
def test_make_head_matches_get_projection(project_type):
    """Each registry entry, built from a HeadConfig, against WeSpeaker's get_projection of the same conf."""
    torch = oracles.torch()
    projections = oracles.wespeaker("models.projections")
    config = heads.HeadConfig(num_classes=N, project_type=project_type, scale=16.0, easy_margin=True, margin_type="A")
    emb, _, labels = make_data()
    head = heads.make_head(config, name="projection")
    variables = head.init(jax.random.key(0), emb, labels)
    margin, step = 0.3, 7
    logits, loss = head.apply(variables, emb, labels, margin=margin, scale=config.scale, step=step)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proj = projections.get_projection(wespeaker_conf(config))
    params = variables["params"]
    with torch.no_grad():
        if project_type == "softmax":
            proj.trans[2].weight.copy_(torch.from_numpy(np.array(params["trans_2"]["kernel"]).T.copy()))
            proj.trans[2].bias.copy_(torch.from_numpy(np.array(params["trans_2"]["bias"])))
            proj.eval()
        else:
            proj.weight.copy_(torch.from_numpy(np.asarray(params["weight"]).T.copy()))
    if hasattr(proj, "update"):
        proj.update(margin)
    proj.iter = step
    y = torch.from_numpy(labels).long()
    out = proj(torch.from_numpy(emb), y)
    t_logits, t_loss = out if project_type == "sphereface2" else (out, torch.nn.functional.cross_entropy(out, y))
    assert np.max(np.abs(np.asarray(logits) - t_logits.detach().numpy())) <= ATOL
    assert abs(float(loss) - t_loss.item()) <= ATOL


def test_class_weight_init_is_torch_xavier_uniform():
    """U(±sqrt(6 / (E + N))): every value inside the bound, std within 3% of bound/√3."""
    e, n = 64, 500
    weight = heads.ArcMarginHead(n).init(jax.random.key(3), jnp.ones((2, e)), jnp.zeros(2, jnp.int32))["params"]
    w = np.asarray(weight["weight"])
    bound = np.sqrt(6.0 / (e + n))
    assert w.shape == (e, n)
    assert np.max(np.abs(w)) <= bound and np.max(np.abs(w)) >= 0.99 * bound
    assert abs(w.std() / (bound / np.sqrt(3.0)) - 1) <= 0.03


def test_param_layout_of_subcenter_and_sphereface2():
    emb, _, labels = make_data()
    sub = heads.SubcenterHead(N, K=3).init(jax.random.key(0), emb, labels)["params"]
    sf2 = heads.SphereFace2Head(N).init(jax.random.key(0), emb, labels)["params"]
    assert sub["weight"].shape == (E, 3 * N)
    assert sf2["weight"].shape == (E, N) and sf2["bias"].shape == (1, 1) and float(sf2["bias"][0, 0]) == 0.0


# ----------------------------------------------------------------------------- JAX-side checks


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, w, y: heads.arc_margin(x, w, y, 0.5, 32.0),
        lambda x, w, y: heads.arc_margin(x, w, y, 0.5, 32.0, easy_margin=True),
        lambda x, w, y: heads.add_margin(x, w, y, 0.3, 32.0),
        lambda x, w, y: heads.sphereface2(x, w, jnp.zeros((1, 1)), y, 0.3, 32.0, margin_type="A")[0],
    ],
    ids=["aam", "aam_easy", "am", "sphereface2_A"],
)
def test_check_grads(fn):
    """Reverse-mode gradients of the mean CE loss vs central finite differences in float64."""
    emb, weight, labels = make_data()
    with jax.enable_x64(True):
        loss = lambda x, w: heads.margin_loss(fn(x, w, jnp.asarray(labels)), jnp.asarray(labels))
        check_grads(loss, (emb.astype(np.float64), weight.astype(np.float64)), order=1, modes=("rev",), atol=1e-5)


def test_traced_margin_under_jit_equals_python_float():
    """A margin from margin_schedule(step) inside jit gives the numbers of the host float margin."""
    emb, weight, labels = make_data(num_columns=3 * N)
    schedule = margin_schedule(100, 20, 40, 0.0, 0.2, "exp")

    @jax.jit
    def traced(step):
        m = schedule(step)
        return (
            heads.arc_margin(emb, weight[:, ::3], labels, m, 32.0),
            heads.arc_margin_intertopk_subcenter(emb, weight, labels, m, 32.0),
            heads.sphereface2(emb, weight[:, ::3], jnp.zeros((1, 1)), labels, m, 32.0, margin_type="A")[1],
            heads.sphere_product(emb, weight[:, ::3], labels, step),
        )

    for step in (0, 1950, 2500, 5000):
        m = float(schedule(step))
        host = (
            heads.arc_margin(emb, weight[:, ::3], labels, m, 32.0),
            heads.arc_margin_intertopk_subcenter(emb, weight, labels, m, 32.0),
            heads.sphereface2(emb, weight[:, ::3], jnp.zeros((1, 1)), labels, m, 32.0, margin_type="A")[1],
            heads.sphere_product(emb, weight[:, ::3], labels, step),
        )
        for ours, ref in zip(traced(jnp.int32(step)), host, strict=True):
            np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)


def test_margin_loss_and_accuracy_against_numpy():
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((B, N)).astype(np.float32) * 5
    labels = rng.integers(0, N, B).astype(np.int32)
    shifted = logits - logits.max(1, keepdims=True)
    ce = np.mean(np.log(np.exp(shifted).sum(1)) - shifted[np.arange(B), labels])
    assert abs(float(heads.margin_loss(logits, labels)) - ce) <= 1e-5
    labels[:4] = logits[:4].argmax(1)
    labels[4:] = (logits[4:].argmax(1) + 1) % N
    assert float(heads.accuracy(logits, labels)) == pytest.approx(4 / B, abs=1e-7)


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    emb, weight, labels = make_data()
    with pytest.raises(ValueError, match=r"embeddings must be \(B, E\)"):
        heads.arc_margin(emb[None], weight, labels, 0.2, 32.0)
    with pytest.raises(ValueError, match=r"weight must be \(E=16, N\)"):
        heads.add_margin(emb, weight.T, labels, 0.2, 32.0)
    with pytest.raises(ValueError, match=r"labels must be \(9,\)"):
        heads.arc_margin(emb, weight, labels[:3], 0.2, 32.0)
    with pytest.raises(ValueError, match="labels must be integers"):
        heads.arc_margin(emb, weight, labels.astype(np.float32), 0.2, 32.0)
    with pytest.raises(ValueError, match="not divisible by K=3"):
        heads.arc_margin_intertopk_subcenter(emb, weight[:, :8], labels, 0.2, 32.0)
    with pytest.raises(ValueError, match=r"k_top=10 must be in \[0, N=10\)"):
        heads.arc_margin_intertopk_subcenter(emb, np.tile(weight, 3), labels, 0.2, 32.0, k_top=10)
    with pytest.raises(ValueError, match="integer in 0..5"):
        heads.sphere_product(emb, weight, labels, 0, m=6)
    with pytest.raises(ValueError, match="margin_type must be 'A' or 'C'"):
        heads.sphereface2(emb, weight, jnp.zeros((1, 1)), labels, 0.2, 32.0, margin_type="B")


def test_bad_config_raises_clear_errors():
    with pytest.raises(ValueError, match="unknown project_type 'arcface'"):
        heads.HeadConfig(num_classes=N, project_type="arcface")
    with pytest.raises(ValueError, match="margin_type must be 'A' or 'C'"):
        heads.HeadConfig(num_classes=N, project_type="sphereface2", margin_type="X")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        heads.HeadConfig(num_classes=0)
    with pytest.raises(ValueError, match=r"unknown HeadConfig keys \['margin'\]"):
        heads.HeadConfig.from_dict({"num_classes": N, "margin": 0.2})
