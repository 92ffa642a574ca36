"""Cosine scoring of verification trials, with mean subtraction and AS-norm, as WeSpeaker.

WeSpeaker's recipe (``bin/score.py``, ``bin/score_norm.py``): subtract the mean of a large set of
training embeddings (vox2_dev) from every embedding, score each trial by cosine similarity, and
optionally apply adaptive symmetric score normalisation (Matějka et al., Interspeech 2017,
"Analysis of score normalization in multilingual speaker recognition"): for an utterance u,
μ_u and σ_u are the mean and (ddof 0) standard deviation of its top_n highest cosine scores
against a cohort (vox2_dev speaker means, mean-subtracted the same way), and

    s_norm = 0.5·((s − μ_e)/σ_e + (s − μ_t)/σ_t).

Cohort statistics are computed once per utterance, in float64, in blocks of rows so that
vox1-E/H-sized lists fit in memory. Letters: M trials, U utterances, K cohort, E embedding dim.

Its command line is ``python -m ecapa_jax.score``. Embedding files are ``.npz`` (utterance id → 1-D
vector), Kaldi ``.ark`` or ``.scp``. Trials are ``enroll test [target|nontarget]`` per line; output lines
are ``enroll test %.5f [label]``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ecapa_jax.backend.metrics import LABELS
from ecapa_jax.io import kaldi_io
from ecapa_jax.io.files import text_lines
from ecapa_jax.stats import l2_normalize

BLOCK = 4096  # rows per block: a (4096, 6000) float64 cohort-score block is ~200 MB


class CohortStats(NamedTuple):
    """Per-utterance statistics of its top-n cohort scores: mean (U,) and std (U,)."""

    mean: np.ndarray
    std: np.ndarray

    def take(self, index: np.ndarray) -> CohortStats:
        """The statistics of the utterances at ``index`` (e.g. one row per trial)."""
        return CohortStats(self.mean[index], self.std[index])


class Trial(NamedTuple):
    enroll: str
    test: str
    label: str | None  # 'target', 'nontarget', or None for unlabelled trials


# ----------------------------------------------------------------------------- scoring math


def mean_normalize(embeddings: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """embeddings − mean, WeSpeaker's mean subtraction. embeddings: (N, E); mean: (E,). Returns float64."""
    return np.asarray(embeddings, np.float64) - np.asarray(mean, np.float64)


def cosine_scores(enroll: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity ⟨e, t⟩ / (‖e‖‖t‖) in float64. enroll, test: (M, E). Returns (M,).

    A zero row scores 0 (``stats.l2_normalize`` leaves it zero); ``score_trials`` refuses zero embeddings
    before scoring, naming them.
    """
    return np.einsum("me,me->m", _unit_rows(enroll), _unit_rows(test))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return l2_normalize(np.asarray(x, np.float64))


def top_n_stats(cohort_scores: np.ndarray, top_n: int | None = None) -> CohortStats:
    """Mean and std (ddof 0) of each row's top_n highest scores, as WeSpeaker's ``get_mean_std``.

    μ = (1/n) Σ top_i and σ = sqrt((1/n) Σ (top_i − μ)²) over the n = min(top_n, K) highest. The n
    are found by partition, then sorted descending as WeSpeaker sorts them, so μ and σ are
    bit-identical to its full sort.

    Args:
      cohort_scores: (U, K) cosine scores of U utterances against K cohort embeddings.
      top_n: how many of the highest scores to keep; None or ≥ K keeps the whole cohort (S-norm).

    Returns:
      CohortStats with mean (U,) and std (U,).
    """
    if top_n is not None and top_n < 1:
        raise ValueError(f"top_n must be a positive integer or None, got {top_n}")
    k = cohort_scores.shape[1]
    n = k if top_n is None else min(top_n, k)
    top = np.partition(cohort_scores, k - n, axis=1)[:, k - n :]  # (U, n): the n highest, unordered
    top = np.sort(top, axis=1)[:, ::-1]  # descending, WeSpeaker's order, so the sums add up the same way
    return CohortStats(np.mean(top, axis=1), np.std(top, axis=1))


def cohort_stats(embeddings: np.ndarray, cohort: np.ndarray, top_n: int | None = None) -> CohortStats:
    """AS-norm statistics of each embedding against the cohort, in blocks of rows.

    Args:
      embeddings: (U, E) utterance embeddings (already mean-subtracted).
      cohort: (K, E) cohort embeddings (already mean-subtracted).
      top_n: see :func:`top_n_stats`.

    Returns:
      CohortStats with mean (U,) and std (U,).
    """
    cohort = _unit_rows(cohort)
    stats = [top_n_stats(_unit_rows(embeddings[rows]) @ cohort.T, top_n) for rows in _blocks(len(embeddings))]
    return CohortStats(*(np.concatenate(s) for s in zip(*stats, strict=True)))


def as_norm(scores: np.ndarray, enroll: CohortStats, test: CohortStats) -> np.ndarray:
    """Adaptive symmetric normalisation: 0.5·((s − μ_e)/σ_e + (s − μ_t)/σ_t).

    Args:
      scores: (M,) raw trial scores.
      enroll: statistics of each trial's enrollment utterance, each (M,).
      test: statistics of each trial's test utterance, each (M,).

    Returns:
      (M,) normalised scores.
    """
    if np.any(enroll.std == 0) or np.any(test.std == 0):
        raise ValueError("a cohort score standard deviation is 0 (top_n = 1, or identical cohort scores)")
    return 0.5 * ((scores - enroll.mean) / enroll.std + (scores - test.mean) / test.std)


def score_trials(
    embeddings: Mapping[str, np.ndarray],
    trials: Sequence[Trial],
    mean: np.ndarray | None = None,
    cohort: np.ndarray | None = None,
    top_n: int | None = None,
) -> np.ndarray:
    """WeSpeaker's scoring: mean subtraction, cosine, then AS-norm when a cohort is given.

    WeSpeaker's ``score_norm.py`` normalises the cosine scores it reads back from the score file
    that ``score.py`` wrote with ``%.5f``; the raw scores are rounded the same way before AS-norm
    so that the normalised scores carry the same digits.

    Args:
      embeddings: utterance id → (E,) embedding.
      trials: the trials; every id must be in ``embeddings``.
      mean: (E,) vector subtracted from every embedding and cohort row, or None.
      cohort: (K, E) cohort embeddings (before mean subtraction), or None for plain cosine.
      top_n: AS-norm top-n; None or ≥ K gives S-norm over the whole cohort.

    Returns:
      (M,) float64 scores.

    Raises:
      ValueError: listing (the first few) trial utterances missing from ``embeddings``, or with a
        zero embedding.
    """
    utts = list(dict.fromkeys(u for t in trials for u in (t.enroll, t.test)))
    missing = [u for u in utts if u not in embeddings]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} trial utterance(s) have no embedding: {shown}")
    index = {u: i for i, u in enumerate(utts)}
    x = np.stack([embeddings[u] for u in utts]).astype(np.float64)  # (U, E)
    if mean is not None:
        x = mean_normalize(x, mean)
    zero = [u for u, n in zip(utts, np.linalg.norm(x, axis=1), strict=True) if n == 0]
    if zero:
        raise ValueError(f"zero embedding (after mean subtraction), cosine undefined: {', '.join(zero[:5])}")
    enroll_idx = np.array([index[t.enroll] for t in trials])  # (M,)
    test_idx = np.array([index[t.test] for t in trials])
    scores = np.concatenate([cosine_scores(x[enroll_idx[r]], x[test_idx[r]]) for r in _blocks(len(trials))])
    if cohort is None:
        return scores
    if mean is not None:
        cohort = mean_normalize(cohort, mean)
    stats = cohort_stats(x, cohort, top_n)  # once per utterance
    rounded = np.array([float(f"{s:.5f}") for s in scores])
    return as_norm(rounded, stats.take(enroll_idx), stats.take(test_idx))


def _blocks(n: int) -> Iterator[slice]:
    return (slice(i, min(i + BLOCK, n)) for i in range(0, n, BLOCK))


# ----------------------------------------------------------------------------- files


def load_embeddings(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads embeddings: ``.npz`` (id → 1-D array), Kaldi ``.ark`` or ``.scp``.

    Returns:
      utterance id → (E,) float array, in file order.

    Raises:
      ValueError: naming the file (and the key) for an unknown format, no vectors, a value that is
        not a 1-D float vector, mixed dimensions, or NaN/inf values.
    """
    suffix = os.path.splitext(path)[1]
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                table = {key: npz[key] for key in npz.files}
        except (ValueError, OSError) as e:
            raise ValueError(f"{path}: cannot read as .npz ({e})") from e
    elif suffix in (".ark", ".scp"):
        table = kaldi_io.read_ark(path) if suffix == ".ark" else kaldi_io.read_scp(path)
    else:
        raise ValueError(f"{path}: unknown embeddings format {suffix!r} (expected .npz, .ark or .scp)")
    if not table:
        raise ValueError(f"{path}: no embeddings")
    dim = None
    for key, vector in table.items():
        if vector.ndim != 1 or not np.issubdtype(vector.dtype, np.floating):
            raise ValueError(f"{path}: {key}: expected a 1-D float vector, got {vector.dtype} {vector.shape}")
        if dim is not None and vector.shape[0] != dim:
            raise ValueError(f"{path}: {key}: dimension {vector.shape[0]}, but earlier vectors have {dim}")
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"{path}: {key}: NaN or infinite values")
        dim = vector.shape[0]
    return table


def load_mean(path: str | os.PathLike) -> np.ndarray:
    """The vector to subtract: a ``.npy`` (E,) mean (WeSpeaker's ``mean_vec.npy``) or the mean of an embeddings file."""
    if os.path.splitext(path)[1] == ".npy":
        mean = np.load(path, allow_pickle=False)
        if mean.ndim != 1:
            raise ValueError(f"{path}: expected a 1-D mean vector, got shape {mean.shape}")
        return mean.astype(np.float64)
    return np.mean(np.stack(list(load_embeddings(path).values())).astype(np.float64), axis=0)


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """Reads ``enroll test [target|nontarget]`` lines (blank lines skipped).

    Raises:
      ValueError: naming file and line, for a line of other than 2 or 3 fields or an unknown
        label; or for a file without trials.
    """
    trials = []
    for lineno, line in text_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] not in LABELS):
            raise ValueError(f"{path}:{lineno}: expected 'enroll test [target|nontarget]', got {line.strip()!r}")
        trials.append(Trial(fields[0], fields[1], fields[2] if len(fields) == 3 else None))
    if not trials:
        raise ValueError(f"{path}: no trials")
    return trials


def write_scores(path: str | os.PathLike, trials: Sequence[Trial], scores: np.ndarray) -> None:
    """Writes WeSpeaker score lines: ``enroll test %.5f [label]``."""
    with open(path, "w", encoding="utf-8") as f:
        for trial, score in zip(trials, scores, strict=True):
            label = "" if trial.label is None else f" {trial.label}"
            f.write(f"{trial.enroll} {trial.test} {score:.5f}{label}\n")
