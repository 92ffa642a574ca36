"""Plots of verification scores and training curves, drawn on a matplotlib ``Axes`` the caller owns.

The notebooks call these so that what they show is computed by the library: the DET curve is
``metrics.det_curve`` (WeSpeaker's operating points) on normal-deviate axes, the EER marker is
``metrics.compute_eer``. Nothing here imports matplotlib; pass ``plt.subplots()``'s axes.

    fig, (ax1, ax2) = plt.subplots(1, 2)
    plot_score_histogram(ax1, scores, labels, title="Cosine scores")
    plot_det(ax2, scores, labels, title="DET")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from ecapa_jax.metrics import _check_trials, compute_eer, det_curve

# Rates are clipped to this range before the probit, so 0 and 1 land on the axis edges, not at ±inf.
DET_LIMITS = (0.001, 0.999)
DET_TICKS = (0.001, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)


def probit(rate: Any) -> np.ndarray:
    """Φ⁻¹(clip(rate, 0.1 %, 99.9 %)), the normal deviate a DET plot uses as its coordinate."""
    return norm.ppf(np.clip(np.asarray(rate, np.float64), *DET_LIMITS))


def plot_det(ax, scores: Any, labels: Any, *, title: str, label: str | None = None):
    """Detection error trade-off curve with the EER point, on normal-deviate (probit) axes.

    x = Φ⁻¹(false-alarm rate), y = Φ⁻¹(miss rate) at every operating point of ``metrics.det_curve``
    (Martin et al., "The DET curve in assessment of detection task performance", Eurospeech 1997).

    Args:
      ax: a matplotlib Axes.
      scores: (N,) trial scores, higher = more likely the same speaker.
      labels: (N,) bool or 0/1, True for target trials.
      title: the axes title.
      label: legend entry of the curve; default "EER x.xx %".

    Returns:
      ``(ax, eer)`` with the EER as a fraction.

    Raises:
      ValueError: as ``metrics.det_curve`` (shapes, NaN scores, a single class).
    """
    fpr, fnr, _ = det_curve(scores, labels)
    eer, _ = compute_eer(scores, labels)
    ax.plot(probit(fpr), probit(fnr), label=label or f"EER {100 * eer:.2f} %")
    ax.plot(probit(eer), probit(eer), "o", color="black")
    ticks = probit(DET_TICKS)
    names = [f"{100 * t:g}" for t in DET_TICKS]
    ax.set_xticks(ticks, names)
    ax.set_yticks(ticks, names)
    ax.set_xlim(*probit(DET_LIMITS))
    ax.set_ylim(*probit(DET_LIMITS))
    ax.plot(ax.get_xlim(), ax.get_ylim(), ":", color="grey", linewidth=0.8)  # the EER line, miss = false alarm
    ax.set_xlabel("false-alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title(title)
    ax.legend()
    return ax, eer


def plot_score_histogram(ax, scores: Any, labels: Any, *, title: str, bins: int = 20, xlabel: str = "cosine score"):
    """Histograms of target and non-target trial scores on shared bins, as densities.

    Args:
      ax: a matplotlib Axes.
      scores: (N,) trial scores.
      labels: (N,) bool or 0/1, True for target trials.
      title: the axes title.
      bins: number of equal-width bins over [min(scores), max(scores)].
      xlabel: what the scores are.

    Returns:
      ``ax``.

    Raises:
      ValueError: as ``metrics.det_curve`` (shapes, NaN scores, a single class).
    """
    scores, labels = _check_trials(scores, labels)
    edges = np.histogram_bin_edges(scores, bins)
    for mask, name in ((labels, "target"), (~labels, "non-target")):
        ax.hist(scores[mask], edges, density=True, alpha=0.5, label=f"{name} ({np.count_nonzero(mask)} trials)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    return ax


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values: y_i = mean(x[max(0, i − window + 1) : i + 1]). (N,) → (N,)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(values, np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    csum = np.concatenate([[0.0], np.cumsum(x)])
    lo = np.maximum(np.arange(len(x)) + 1 - window, 0)
    return (csum[1:] - csum[lo]) / (np.arange(len(x)) + 1 - lo)


def plot_curves(ax, curves: Mapping[str, Sequence[float]], *, title: str, xlabel: str, ylabel: str, window: int = 1):
    """One line per named curve (e.g. the loss per step of several runs), optionally smoothed.

    Args:
      ax: a matplotlib Axes.
      curves: ``{name: (N,) values}``; x is the index 0…N−1.
      title, xlabel, ylabel: the axes texts.
      window: trailing moving-average window (1 = raw values), see ``moving_average``.

    Returns:
      ``ax``.
    """
    for name, values in curves.items():
        ax.plot(moving_average(values, window), label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if window == 1 else f"{ylabel} (mean of last {window})")
    ax.set_title(title)
    ax.legend()
    return ax


__all__ = ["DET_LIMITS", "DET_TICKS", "moving_average", "plot_curves", "plot_det", "plot_score_histogram", "probit"]
