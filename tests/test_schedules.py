"""LR and margin schedules against WeSpeaker's scheduler objects at every step of a 150 × 100 run."""

import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest

from ecapa_jax.training.schedules import exponential_decrease, margin_schedule, sphere_lambda

EPOCH_ITER = 100
STEPS = np.arange(150 * EPOCH_ITER)  # 15,000 iterations
HOST_RTOL = 1e-9  # float64 on the host vs WeSpeaker's Python floats
JIT_RTOL = 2e-6  # float32 under jit

LR_CASES = {  # (num_epochs, initial_lr, final_lr, warm_up_epoch, scale_ratio, warm_from_zero)
    "recipe_2x128": (150, 0.1, 5e-5, 6, 4.0, True),
    "recipe_1gpu_64": (150, 0.1, 5e-5, 6, 1.0, True),
    "no_warm_from_zero_scaled": (150, 0.1, 5e-5, 6, 4.0, False),
    "no_warm_from_zero": (150, 0.1, 5e-5, 6, 1.0, False),
    "lm_finetune": (5, 1e-4, 2.5e-5, 1, 2.0, True),  # evaluated past its 500 steps too
}
MARGIN_CASES = {  # (increase_start_epoch, fix_start_epoch, initial, final, increase_type, update_margin)
    "recipe_exp": (20, 40, 0.0, 0.2, "exp", True),
    "recipe_linear": (20, 40, 0.0, 0.2, "linear", True),
    "lm_fixed": (1, 1, 0.5, 0.5, "exp", True),
    "nonzero_start": (2, 7, 0.1, 0.35, "exp", True),
    "fix_before_increase": (30, 10, 0.0, 0.2, "exp", True),
    "no_update": (20, 40, 0.1, 0.2, "exp", False),
}


def wespeaker_lr(num_epochs, initial_lr, final_lr, warm_up_epoch, scale_ratio, warm_from_zero):
    """WeSpeaker's lr for iteration i: ``step(i)`` sets then uses current_iter, as ``step_return_lr``."""
    schedulers = oracles.wespeaker("utils.schedulers")
    sched = schedulers.ExponentialDecrease(
        None, num_epochs, EPOCH_ITER, initial_lr, final_lr, warm_up_epoch, scale_ratio, warm_from_zero
    )
    return np.array([sched.step_return_lr(int(i)) for i in STEPS])


def wespeaker_margin(increase_start, fix_start, initial, final, increase_type, update_margin):
    """The projection's margin after ``MarginScheduler.step(i)``, i.e. the one used in iteration i."""
    schedulers = oracles.wespeaker("utils.schedulers")
    projections = oracles.wespeaker("models.projections")
    model = types.SimpleNamespace(projection=projections.ArcMarginProduct(4, 3))
    sched = schedulers.MarginScheduler(
        model, EPOCH_ITER, increase_start, fix_start, initial, final, update_margin, increase_type
    )
    values = []
    for i in STEPS:
        sched.step(int(i))
        values.append(sched.get_margin())
    return np.array(values)


@pytest.mark.parametrize("case", sorted(LR_CASES))
def test_exponential_decrease_matches_wespeaker_every_step(case):
    num_epochs, initial_lr, final_lr, warm_up, scale_ratio, from_zero = LR_CASES[case]
    ref = wespeaker_lr(*LR_CASES[case])
    schedule = exponential_decrease(num_epochs, EPOCH_ITER, initial_lr, final_lr, warm_up, scale_ratio, from_zero)

    host = schedule(STEPS)
    assert host.dtype == np.float64
    np.testing.assert_allclose(host, ref, rtol=HOST_RTOL, atol=0)
    for i in (0, 1, 599, 600, 14999):  # scalar host steps take the same path
        assert schedule(i) == host[i] and isinstance(schedule(i), float)

    # float32 under jit: the exponent's rounding gives ~6e-8·|ln(lr/initial_lr)| relative, so
    # compare over the run itself (the LM schedule extrapolated 30× decays to 1e-22).
    run = STEPS[: num_epochs * EPOCH_ITER]
    traced = jax.jit(schedule)(jnp.asarray(run, jnp.int32))
    assert traced.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(traced), ref[run], rtol=JIT_RTOL, atol=0)


@pytest.mark.parametrize("case", sorted(MARGIN_CASES))
def test_margin_schedule_matches_wespeaker_every_step(case):
    ref = wespeaker_margin(*MARGIN_CASES[case])
    schedule = margin_schedule(EPOCH_ITER, *MARGIN_CASES[case])

    host = schedule(STEPS)
    assert host.dtype == np.float64
    np.testing.assert_allclose(host, ref, rtol=HOST_RTOL, atol=0)
    traced = jax.jit(schedule)(jnp.asarray(STEPS, jnp.int32))
    np.testing.assert_allclose(np.asarray(traced), ref, rtol=JIT_RTOL, atol=1e-7)


def test_margin_schedule_boundaries_by_hand():
    """Recipe boundaries: initial up to iteration 1899, ramp from 1900, final from 3900 on."""
    exp = margin_schedule(EPOCH_ITER, 20, 40, 0.0, 0.2, "exp")
    lin = margin_schedule(EPOCH_ITER, 20, 40, 0.0, 0.2, "linear")
    assert exp(1899) == 0.0 and exp(1900) == 0.0 and exp(3899) < 0.2 and exp(3900) == 0.2
    assert exp(1901) == pytest.approx(0.2 * (1 - (1e-3 / (1 + 1e-6)) ** (1 / 2000)), rel=1e-12)
    assert lin(2900) == pytest.approx(0.1, rel=1e-15) and lin(3899) == pytest.approx(0.2 * 1999 / 2000, rel=1e-15)


def test_sphere_lambda_matches_sphere_product_counter():
    """λ(step) is SphereProduct's ``lamb`` on its (step + 1)-th forward."""
    torch = oracles.torch()
    projections = oracles.wespeaker("models.projections")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SphereProduct calls the deprecated nn.init.xavier_uniform
        proj = projections.SphereProduct(4, 3, margin=4)
    x, y = torch.randn(2, 4), torch.tensor([0, 2])
    steps = np.concatenate([np.arange(50), [100, 1000, 1657, 1658, 1659, 5000, 14999]])  # floor 5 from n = 1659
    ref = []
    for s in steps:
        proj.iter = int(s)
        proj(x, y)
        ref.append(proj.lamb)
    np.testing.assert_allclose(sphere_lambda(steps), ref, rtol=HOST_RTOL, atol=0)
    np.testing.assert_allclose(jax.jit(sphere_lambda)(jnp.asarray(steps)), ref, rtol=JIT_RTOL)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="increase_type must be 'exp' or 'linear', got 'cosine'"):
        margin_schedule(EPOCH_ITER, 20, 40, 0.0, 0.2, "cosine")
    with pytest.raises(ValueError, match="epoch_iter must be > 0, got 0"):
        margin_schedule(0, 20, 40, 0.0, 0.2)
    with pytest.raises(ValueError, match="final_lr must be > 0, got 0.0"):
        exponential_decrease(150, EPOCH_ITER, 0.1, 0.0)
    with pytest.raises(ValueError, match="num_epochs must be > 0, got 0"):
        exponential_decrease(0, EPOCH_ITER, 0.1, 5e-5)
