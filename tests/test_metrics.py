"""EER / minDCF against WeSpeaker's score_metrics.py (the oracle) and hand-computed values."""

import importlib.util
import re
import subprocess
import sys
import types

import numpy as np
import oracles
import pytest

from ecapa_jax.backend.metrics import compute_eer, compute_min_dcf, det_curve
from ecapa_jax.metrics import main

# Sorted ascending the labels read N T T N T: fnr = 0, 1/3, 2/3, 2/3, 1 and fpr = 1/2, 1/2, 1/2, 0, 0.
HAND_SCORES = np.array([0.7, -0.2, 0.3, 0.1, 0.5])
HAND_LABELS = np.array([1, 0, 1, 1, 0])


@pytest.fixture(scope="module")
def wespeaker_metrics():
    """WeSpeaker's ``utils/score_metrics.py``. Its module imports matplotlib for ``plot_det_curve``
    only; where matplotlib is absent a placeholder module stands in for the import."""
    with pytest.MonkeyPatch.context() as mp:
        if importlib.util.find_spec("matplotlib") is None:
            mp.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
            mp.setitem(sys.modules, "matplotlib.pyplot", types.ModuleType("matplotlib.pyplot"))
        yield oracles.wespeaker("utils.score_metrics")


def test_det_curve_by_hand():
    fpr, fnr, thresholds = det_curve(HAND_SCORES, HAND_LABELS)
    np.testing.assert_allclose(fnr, [0, 1 / 3, 2 / 3, 2 / 3, 1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fpr, [1 / 2, 1 / 2, 1 / 2, 0, 0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(thresholds, np.sort(HAND_SCORES))


def test_eer_by_hand():
    # fnr − fpr = −1/2, −1/6, 1/6, ...: x2 = 1, x1 = 2; a = (1/6) / (0 + 1/3) = 1/2;
    # EER = 2/3 + 1/2·(1/3 − 2/3) = 1/2, threshold = sorted score 2 = 0.3.
    eer, threshold = compute_eer(HAND_SCORES, HAND_LABELS)
    assert eer == pytest.approx(0.5, abs=1e-15)
    assert threshold == 0.3


def test_min_dcf_by_hand():
    # p = 0.01: costs 0.01·fnr + 0.99·fpr = .495, .49833, .50167, .0066667, .01 → .0066667 / min(.01, .99).
    min_dcf, threshold = compute_min_dcf(HAND_SCORES, HAND_LABELS)
    assert min_dcf == pytest.approx(2 / 3, abs=1e-12)
    assert threshold == 0.5
    # p = 0.5: costs (fnr + fpr)/2 = .25, .41667, .58333, .33333, .5 → .25 / .5.
    min_dcf, threshold = compute_min_dcf(HAND_SCORES, HAND_LABELS, p_target=0.5)
    assert min_dcf == pytest.approx(0.5, abs=1e-12)
    assert threshold == -0.2
    # c_miss 10: costs .1·fnr + .99·fpr / min(.1, .99): index 3 gives (.0666667) / .1 = 2/3.
    assert compute_min_dcf(HAND_SCORES, HAND_LABELS, c_miss=10)[0] == pytest.approx(2 / 3, abs=1e-12)


def test_perfect_separation_and_reversed_single_target():
    assert compute_eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == (0.0, 0.2)
    assert compute_min_dcf([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == (0.0, 0.2)
    # One target below every non-target: no sorted point has fnr < fpr (WeSpeaker: IndexError); the
    # accept-everything point (fnr 0, fpr 1) and point 0 (fnr 1, fpr 1) give a = 0, EER = 1.
    assert compute_eer([0.1, 0.2, 0.3], [True, False, False]) == (1.0, 0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_wespeaker_bit_for_bit_with_many_ties(wespeaker_metrics, seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(3000) < 0.1
    scores = np.round(rng.normal(0.0, 0.1, 3000) + 0.25 * labels, 2)  # 2 decimals: many mixed-label ties
    assert len(np.unique(scores)) < 200
    wfnr, wfpr = wespeaker_metrics.compute_pmiss_pfa_rbst(scores, labels)
    fpr, fnr, _ = det_curve(scores, labels)
    np.testing.assert_array_equal(fnr, wfnr)
    np.testing.assert_array_equal(fpr, wfpr)
    assert compute_eer(scores, labels) == tuple(float(v) for v in wespeaker_metrics.compute_eer(wfnr, wfpr, scores))
    for p_target, c_miss, c_fa in [(0.01, 1, 1), (0.05, 1, 1), (0.001, 2, 1)]:
        expected = wespeaker_metrics.compute_c_norm(wfnr, wfpr, p_target, c_miss, c_fa)
        assert compute_min_dcf(scores, labels, p_target, c_miss, c_fa)[0] == expected  # tolerance 0


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([], [], "no trials"),
        ([0.1, 0.2], [1], "equal length"),
        ([0.1, 0.2], [1, 1], "need both target and non-target trials, got 2 targets among 2"),
        ([0.1, 0.2], [0, 0], "got 0 targets among 2"),
        ([0.1, np.nan, np.inf], [1, 0, 0], "2 score.s. are NaN or infinite"),
        ([0.1, 0.2], [1, 2], "labels must be bool or 0/1"),
    ],
)
def test_bad_trials(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        compute_eer(scores, labels)


def test_bad_costs():
    with pytest.raises(ValueError, match="need 0 < p_target < 1 and positive costs"):
        compute_min_dcf(HAND_SCORES, HAND_LABELS, p_target=1.0)


def _score_file(path, scores, labels):
    lines = [
        f"e{i} t{i} {s:.5f} {'target' if y else 'nontarget'}\n"
        for i, (s, y) in enumerate(zip(scores, labels, strict=True))
    ]
    path.write_text("".join(lines))
    return path


def test_cli_prints_as_wespeaker(tmp_path, capsys):
    a = _score_file(tmp_path / "a.score", HAND_SCORES, HAND_LABELS)
    b = _score_file(tmp_path / "b.score", [0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert main([str(a), str(b), "--p-target", "0.5"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "---- a.score -----",
        "EER = 50.000",
        "minDCF (p_target:0.5 c_miss:1 c_fa:1) = 0.500",
        "---- b.score -----",
        "EER = 0.000",
        "minDCF (p_target:0.5 c_miss:1 c_fa:1) = 0.000",
    ]


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("e t 0.5", "expected 'enroll test score target|nontarget'"),
        ("e t abc target", "score 'abc' is not a number"),
        ("e t nan target", "score 'nan' is not finite"),
        ("e t 0.5 tgt", "label 'tgt' is neither 'target' nor 'nontarget'"),
    ],
)
def test_cli_malformed_line_names_file_and_line_and_exits_2(tmp_path, capsys, line, match):
    path = tmp_path / "bad.score"
    path.write_text(f"a b 0.1 target\n\n{line}\nc d 0.2 nontarget\n")
    assert main([str(path)]) == 2
    assert re.search(re.escape(f"error: {path}:3: ") + match, capsys.readouterr().err)


def test_cli_exit_status_from_the_shell(tmp_path):
    good = _score_file(tmp_path / "good.score", HAND_SCORES, HAND_LABELS)
    single = _score_file(tmp_path / "single.score", [0.1, 0.2], [1, 1])
    run = subprocess.run(
        [sys.executable, "-m", "ecapa_jax.metrics", str(good), str(single)], capture_output=True, text=True
    )
    assert run.returncode == 1  # partial failure: one file reported, one failed
    assert "EER = 50.000" in run.stdout  # the good file is still reported
    assert f"{single}: need both target and non-target trials" in run.stderr
