"""Learning-rate and margin schedules as functions of the step, in the style of ``optax.Schedule``.

WeSpeaker drives both from mutable objects (``ExponentialDecrease``, ``MarginScheduler``) whose
``step(cur_iter)`` is called at the top of every iteration, before the forward pass; here each is a
pure ``step -> value`` function, where ``step`` is that same global iteration index
``(epoch − 1) · epoch_iter + i``, starting at 0. ``schedule(i)`` is the value in effect for
iteration i, so the first iteration of a warm-up from zero runs with lr 0, as in WeSpeaker.

One formula, two precisions: given a JAX array or tracer (inside ``jit``) the schedule computes with
``jax.numpy`` in the default float dtype (float32 unless x64 is on); given a Python int, a NumPy
integer or a NumPy array of steps it computes with NumPy in float64, which reproduces WeSpeaker's
Python-float values to ~1e-15 relative. Host evaluation is vectorised: ``schedule(np.arange(n))``
gives the whole run in one call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[Any], Any]


def _namespace(step) -> tuple[Any, Any]:
    """``(xp, float dtype)``: ``(jax.numpy, default float)`` for JAX arrays and tracers, else ``(numpy, float64)``."""
    if isinstance(step, jax.Array):
        return jnp, jnp.result_type(float)
    return np, np.float64


def _finish(xp, value):
    """A NumPy scalar for a scalar host step (``float()``- and JSON-friendly); arrays unchanged."""
    return value[()] if xp is np else value


def _check_positive(**values) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def exponential_decrease(
    num_epochs: int,
    epoch_iter: int,
    initial_lr: float,
    final_lr: float,
    warm_up_epoch: int = 6,
    scale_ratio: float = 1.0,
    warm_from_zero: bool = False,
) -> Schedule:
    """WeSpeaker's ``ExponentialDecrease`` learning rate, with its multi-process warm-up.

    lr(t) = coeff(t) · initial_lr · exp((t / (num_epochs · epoch_iter)) · ln(final_lr / initial_lr))

    coeff(t) = scale_ratio for t ≥ W = warm_up_epoch · epoch_iter; during warm-up (t < W) it is
    scale_ratio · t / W if ``warm_from_zero``, else (scale_ratio − 1) · t / W + 1 if scale_ratio > 1,
    else 1. WeSpeaker's ``train.py`` sets scale_ratio = world_size · batch_size / 64.

    Args:
      num_epochs: length of the run in epochs; the decay reaches final_lr at num_epochs · epoch_iter.
      epoch_iter: iterations per epoch.
      initial_lr: lr at t = 0 before the warm-up coefficient.
      final_lr: lr at the end of the run before the coefficient.
      warm_up_epoch: warm-up length in epochs.
      scale_ratio: multiplier applied after warm-up.
      warm_from_zero: ramp the coefficient from 0 rather than from 1.

    Returns:
      ``schedule(step) -> lr``: float64 on the host, the default float dtype under ``jit``.

    Reference: wespeaker/utils/schedulers.py (``BaseClass.get_multi_process_coeff``,
    ``ExponentialDecrease.get_current_lr``).
    """
    _check_positive(num_epochs=num_epochs, epoch_iter=epoch_iter, initial_lr=initial_lr, final_lr=final_lr)
    max_iter = num_epochs * epoch_iter
    warm_up_iter = warm_up_epoch * epoch_iter
    log_ratio = math.log(final_lr / initial_lr)
    ramp_len = max(warm_up_iter, 1)  # the ramp is only selected when warm_up_iter > 0

    def schedule(step):
        xp, dtype = _namespace(step)
        t = xp.asarray(step, dtype)
        if warm_from_zero:
            ramp = scale_ratio * t / ramp_len
        elif scale_ratio > 1:
            ramp = (scale_ratio - 1) * t / ramp_len + 1.0
        else:
            ramp = xp.ones_like(t)
        coeff = xp.where(t < warm_up_iter, ramp, 1.0 * scale_ratio)
        return _finish(xp, coeff * initial_lr * xp.exp((t / max_iter) * log_ratio))

    return schedule


def margin_schedule(
    epoch_iter: int,
    increase_start_epoch: int,
    fix_start_epoch: int,
    initial_margin: float,
    final_margin: float,
    increase_type: str = "exp",
    update_margin: bool = True,
) -> Schedule:
    """WeSpeaker's ``MarginScheduler``: margin held, then increased, then fixed.

    With S = (increase_start_epoch − 1) · epoch_iter, F = (fix_start_epoch − 1) · epoch_iter and
    r(t) = 1 − exp((t / (F − S)) · ln(1e-3 / (1 + 1e-6)))  ('exp', ≈ 1 − 0.001^(t/(F−S)))
    or r(t) = t / (F − S)  ('linear'):

        margin(i) = initial_margin                                        for i < S
                  = initial_margin + (final − initial) · r(i − S)          for S ≤ i < F
                  = final_margin                                           for i ≥ F

    The fixed branch is tested first, as in WeSpeaker, so with F ≤ S the margin jumps from initial to
    final at F (the LM fine-tune uses F = S = 0: final from the first iteration). With
    ``update_margin=False`` WeSpeaker only ever sets the initial margin, so the schedule is constant.
    The exp ratio is evaluated as −expm1(·), equal to 1 − exp(·) in exact arithmetic and free of
    cancellation in float32.

    Args:
      epoch_iter: iterations per epoch.
      increase_start_epoch: 1-based epoch at whose first iteration the increase starts.
      fix_start_epoch: 1-based epoch from whose first iteration the margin is final_margin.
      initial_margin: margin before the increase.
      final_margin: margin after it.
      increase_type: 'exp' or 'linear'.
      update_margin: False keeps initial_margin throughout.

    Returns:
      ``schedule(step) -> margin``: float64 on the host, the default float dtype under ``jit``.

    Reference: wespeaker/utils/schedulers.py (``MarginScheduler``).
    """
    if increase_type not in ("exp", "linear"):
        raise ValueError(f"increase_type must be 'exp' or 'linear', got {increase_type!r}")
    _check_positive(epoch_iter=epoch_iter)
    start = (increase_start_epoch - 1) * epoch_iter
    fix = (fix_start_epoch - 1) * epoch_iter
    length = max(fix - start, 1)  # the increasing branch is only selected when fix > start
    log_final = math.log(1e-3 / (1.0 + 1e-6))

    def schedule(step):
        xp, dtype = _namespace(step)
        i = xp.asarray(step, dtype)
        if not update_margin:
            return _finish(xp, xp.full_like(i, initial_margin))
        # t = 0 before S makes the ramp exactly initial_margin there; the upper clip keeps exp finite
        # when F < S (the ramp is then never selected).
        t = xp.clip(i - start, 0, length)
        ratio = -xp.expm1((t / length) * log_final) if increase_type == "exp" else t / length
        ramp = initial_margin + (final_margin - initial_margin) * ratio
        return _finish(xp, xp.where(i >= fix, final_margin, ramp))

    return schedule


def sphere_lambda(step):
    """SphereFace's annealing weight λ = max(5, 1000 · (1 + 0.12 · n)^−1), with n = step + 1.

    WeSpeaker's ``SphereProduct`` counts its forward calls in ``self.iter`` and increments it before
    use, so its first forward has n = 1; ``step`` is the 0-based training step. (WeSpeaker's counter
    is not saved in checkpoints and restarts at 1 on resume; this one follows the global step.)

    Args:
      step: 0-based step; a JAX array/tracer (jnp, default float) or an int / NumPy array (float64).

    Returns:
      λ with the shape of ``step``.

    Reference: Liu et al., SphereFace, arXiv:1704.08063; wespeaker/models/projections.py.
    """
    xp, dtype = _namespace(step)
    n = xp.asarray(step, dtype) + 1
    return _finish(xp, xp.maximum(5.0, 1000.0 * (1 + 0.12 * n) ** -1.0))


__all__ = ["Schedule", "exponential_decrease", "margin_schedule", "sphere_lambda"]
