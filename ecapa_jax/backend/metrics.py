"""Speaker-verification metrics: DET curve, EER and minDCF, computed exactly as WeSpeaker does.

WeSpeaker (``wespeaker/utils/score_metrics.py``, NIST SRE16 scoring code) sorts the N trial
scores ascending and treats each sorted position i as an operating point that rejects the trials
at positions ≤ i:

    fnr_i = #{targets at ≤ i} / N_tgt,      fpr_i = 1 − #{non-targets at ≤ i} / N_non.

EER interpolates linearly between x2 (last i with fnr − fpr < 0) and x1 (first i with
fnr − fpr ≥ 0); minDCF = min_i(c_miss·p·fnr_i + c_fa·(1 − p)·fpr_i) / min(c_miss·p, c_fa·(1 − p)).

Ties: the order is that of ``np.argsort`` with its default (unstable) kind, the call WeSpeaker
makes, so tied scores produce the same operating points and the same numbers as WeSpeaker's script
run on the same file. Inside a group of k tied scores those points are not reachable by any
threshold; they move the EER by less than about k / min(N_tgt, N_non).

Its command line, ``python -m ecapa_jax.metrics scores.txt [more.txt ...]``, prints per WeSpeaker score file
(``enroll test score target|nontarget``) the header, EER (%) and minDCF as WeSpeaker's
``bin/compute_metrics.py`` prints them (``report``).
"""

from __future__ import annotations

import os

import numpy as np

from ecapa_jax.io.files import text_lines

LABELS = {"target": True, "nontarget": False}


def check_trials(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validated (N,) float64 scores and (N,) bool labels (True = target)."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if scores.size == 0:
        raise ValueError("no trials: scores and labels are empty")
    if labels.dtype != bool:
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError("labels must be bool or 0/1 (1 = target)")
        labels = labels == 1
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{np.count_nonzero(~np.isfinite(scores))} score(s) are NaN or infinite")
    n_tgt = int(np.count_nonzero(labels))
    if n_tgt in (0, labels.size):
        raise ValueError(f"need both target and non-target trials, got {n_tgt} targets among {labels.size}")
    return scores, labels


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detection error trade-off: false-positive and false-negative rates at every sorted score.

    fnr_i = cumsum(tgt)_i / N_tgt, fpr_i = 1 − cumsum(non)_i / N_non over the scores sorted
    ascending; point i rejects the trials with score ≤ thresholds_i (ties: see the module docstring).

    Args:
      scores: (N,) trial scores, higher = more likely the same speaker.
      labels: (N,) bool or 0/1, True/1 for target trials.

    Returns:
      fpr (N,), fnr (N,), thresholds (N,): the sorted scores. All float64.

    Raises:
      ValueError: empty input, mismatched shapes, NaN/inf scores, labels other than 0/1, or a
        single class.
    """
    scores, labels = check_trials(scores, labels)
    order = np.argsort(scores)  # the default kind, as WeSpeaker: same tie order, same numbers
    sorted_labels = labels[order]
    fnr = np.cumsum(sorted_labels) / np.count_nonzero(labels)
    fpr = 1 - np.cumsum(~sorted_labels) / np.count_nonzero(~labels)
    return fpr, fnr, scores[order]


def compute_eer(scores, labels) -> tuple[float, float]:
    """Equal error rate, by linear interpolation where fnr − fpr changes sign (WeSpeaker).

    With x2 = last point with fnr < fpr and x1 = first with fnr ≥ fpr,
    a = (fnr[x1] − fpr[x1]) / (fpr[x2] − fpr[x1] − (fnr[x2] − fnr[x1])) and
    EER = fnr[x1] + a·(fnr[x2] − fnr[x1]).

    The curve starts with the accept-everything point (fnr 0, fpr 1). WeSpeaker omits it. It can
    only become x2 when no sorted point has fnr < fpr, where WeSpeaker raises IndexError; every
    other result is unchanged.

    Args:
      scores: (N,) trial scores.
      labels: (N,) bool or 0/1, True/1 for target trials.

    Returns:
      (eer, threshold): EER as a fraction (×100 for %), and the score at x1, as WeSpeaker.
    """
    fpr, fnr, thresholds = det_curve(scores, labels)
    fnr = np.concatenate([[0.0], fnr])
    fpr = np.concatenate([[1.0], fpr])
    diff = fnr - fpr
    x1 = np.flatnonzero(diff >= 0)[0]  # exists: the last point has fnr 1, fpr 0
    x2 = np.flatnonzero(diff < 0)[-1]  # exists: the first point has fnr 0, fpr 1
    a = (fnr[x1] - fpr[x1]) / (fpr[x2] - fpr[x1] - (fnr[x2] - fnr[x1]))
    return float(fnr[x1] + a * (fnr[x2] - fnr[x1])), float(thresholds[x1 - 1])


def compute_min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0):
    """Normalised minimum detection cost (NIST SRE), as WeSpeaker's ``compute_c_norm``.

    minDCF = min_i(c_miss·p·fnr_i + c_fa·(1 − p)·fpr_i) / min(c_miss·p, c_fa·(1 − p)) over the
    points of :func:`det_curve` (WeSpeaker's curve, without the accept-everything point).

    Args:
      scores: (N,) trial scores.
      labels: (N,) bool or 0/1, True/1 for target trials.
      p_target: prior probability of a target trial, in (0, 1).
      c_miss: cost of a miss (false rejection), > 0.
      c_fa: cost of a false alarm, > 0.

    Returns:
      (min_dcf, threshold): the normalised cost and the score of the minimising point.
    """
    if not 0 < p_target < 1 or c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"need 0 < p_target < 1 and positive costs, got {p_target=}, {c_miss=}, {c_fa=}")
    fpr, fnr, thresholds = det_curve(scores, labels)
    c_det = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    best = int(np.argmin(c_det))
    return float(c_det[best] / min(c_miss * p_target, c_fa * (1 - p_target))), float(thresholds[best])


def read_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reads a WeSpeaker score file: ``enroll test score target|nontarget`` per line.

    Blank lines are skipped.

    Returns:
      scores (N,) float64 and labels (N,) bool (True = target).

    Raises:
      ValueError: naming the file and line, for a line that is not four fields, a score that is
        not a finite number, or a label other than target/nontarget; or for an empty file.
    """
    scores, labels = [], []
    for lineno, line in text_lines(path):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{lineno}"
        if len(fields) != 4:
            raise ValueError(f"{where}: expected 'enroll test score target|nontarget', got {line.strip()!r}")
        try:
            score = float(fields[2])
        except ValueError:
            raise ValueError(f"{where}: score {fields[2]!r} is not a number") from None
        if not np.isfinite(score):
            raise ValueError(f"{where}: score {fields[2]!r} is not finite")
        if fields[3] not in LABELS:
            raise ValueError(f"{where}: label {fields[3]!r} is neither 'target' nor 'nontarget'")
        scores.append(score)
        labels.append(LABELS[fields[3]])
    if not scores:
        raise ValueError(f"{path}: no trials")
    return np.array(scores, np.float64), np.array(labels, bool)


def report(path: str | os.PathLike, p_target: float = 0.01, c_miss: float = 1.0, c_fa: float = 1.0) -> str:
    """WeSpeaker's three-line summary of one score file (header, EER in %, minDCF)."""
    scores, labels = read_scores(path)
    try:
        eer, _ = compute_eer(scores, labels)
        min_dcf, _ = compute_min_dcf(scores, labels, p_target, c_miss, c_fa)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return (
        f"---- {os.path.basename(path)} -----\n"
        f"EER = {100 * eer:.3f}\n"
        f"minDCF (p_target:{p_target:g} c_miss:{c_miss:g} c_fa:{c_fa:g}) = {min_dcf:.3f}"
    )
