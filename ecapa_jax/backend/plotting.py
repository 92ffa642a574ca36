"""Plots of verification scores, training curves and embeddings, drawn on a matplotlib ``Axes`` the caller owns.

The notebooks call these so that what they show is computed by the library: the DET curve is
``metrics.det_curve`` (WeSpeaker's operating points) on normal-deviate axes, the EER marker is
``metrics.compute_eer``, the embedding map is ``pca_2d``. Nothing here imports matplotlib; pass
``plt.subplots()``'s axes.

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3)
    plot_score_histogram(ax1, scores, labels, title="Cosine scores")
    plot_det(ax2, scores, labels, title="DET")
    plot_embeddings_2d(ax3, embeddings, speakers, title="Embeddings")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

from ecapa_jax.backend.metrics import check_trials, compute_eer, det_curve

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
    scores, labels = check_trials(scores, labels)
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


def plot_curves(
    ax,
    curves: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    window: int = 1,
    x: Sequence[float] | None = None,
):
    """One line per named curve (e.g. the loss per step of several runs), optionally smoothed.

    Args:
      ax: a matplotlib Axes.
      curves: ``{name: (N,) values}``.
      title, xlabel, ylabel: the axes texts.
      window: trailing moving-average window (1 = raw values), see ``moving_average``.
      x: (N,) abscissae shared by every curve (e.g. the logged steps); default the index 0…N−1.

    Returns:
      ``ax``.

    Raises:
      ValueError: ``x`` and a curve of different lengths.
    """
    for name, values in curves.items():
        y = moving_average(values, window)
        if x is None:
            ax.plot(y, label=name)
        elif len(x) != len(y):
            raise ValueError(f"curve {name!r} has {len(y)} values but x has {len(x)}")
        else:
            ax.plot(x, y, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel if window == 1 else f"{ylabel} (mean of last {window})")
    ax.set_title(title)
    ax.legend()
    return ax


def pca_2d(x: Any) -> np.ndarray:
    """Coordinates of points on their two principal axes: y = (x − mean) · [v₁ v₂].

    v₁, v₂ are the top two right singular vectors of the centred data (the directions of largest
    variance; Pearson 1901, via the SVD). A singular vector's sign is arbitrary, so each is fixed to
    have its largest-magnitude entry positive (the first such entry on a tie): the same data always
    give the same picture.

    Args:
      x: (N, D) points, N ≥ 2, D ≥ 2.

    Returns:
      (N, 2) float64 coordinates; column k has variance σ_k² / N, the k-th largest share of the total.

    Raises:
      ValueError: ``x`` is not 2-D with at least two rows and two columns, or is not finite.
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise ValueError(f"pca_2d needs (N, D) points with N >= 2 and D >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("pca_2d: the points contain NaN or infinite values")
    centred = x - x.mean(axis=0)  # (N, D)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]  # (2, D)
    signs = np.sign(axes[np.arange(2), np.argmax(np.abs(axes), axis=1)])
    return centred @ (axes * signs[:, None]).T  # (N, 2)


def plot_embeddings_2d(ax, embeddings: Any, speakers: Sequence[str], *, title: str):
    """Embeddings on their two principal axes (``pca_2d``), one colour and legend entry per speaker.

    Axis labels give each axis's share of the total variance, Σ_n y_nk² / Σ_n ‖x_n − mean‖².

    Args:
      ax: a matplotlib Axes.
      embeddings: (N, E) embeddings (length-normalise them first to show what cosine scoring sees).
      speakers: (N,) speaker of each row; colours follow the sorted speaker names (tab20 up to 20
        speakers, else a continuous map).
      title: the axes title.

    Returns:
      ``ax``.

    Raises:
      ValueError: ``speakers`` and ``embeddings`` of different lengths, or as ``pca_2d``.
    """
    x = np.asarray(embeddings, np.float64)
    coords = pca_2d(x)  # (N, 2)
    speakers = np.asarray(speakers)
    if speakers.shape != (len(x),):
        raise ValueError(f"speakers must name each of the {len(x)} embeddings, got shape {speakers.shape}")
    share = np.sum(coords**2, axis=0) / np.sum((x - x.mean(axis=0)) ** 2)  # (2,)
    names = sorted(set(speakers.tolist()))
    cmap = "tab20" if len(names) <= 20 else "turbo"
    for i, name in enumerate(names):
        rows = speakers == name
        # One colour per speaker: the colour-map value i sits in the middle of the i-th of len(names) bins.
        colour = np.full(np.count_nonzero(rows), i)
        ax.scatter(*coords[rows].T, c=colour, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, s=14, label=name)
    ax.set_xlabel(f"principal axis 1 ({100 * share[0]:.0f} % of variance)")
    ax.set_ylabel(f"principal axis 2 ({100 * share[1]:.0f} % of variance)")
    ax.set_title(title)
    ax.legend(fontsize="small", ncol=-(-len(names) // 20), loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ax


__all__ = [
    "DET_LIMITS",
    "DET_TICKS",
    "moving_average",
    "pca_2d",
    "plot_curves",
    "plot_det",
    "plot_embeddings_2d",
    "plot_score_histogram",
    "probit",
]
