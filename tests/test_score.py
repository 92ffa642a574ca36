"""Cosine scoring and AS-norm against loop references, sklearn (WeSpeaker's cosine), and the CLIs."""

import re

import numpy as np
import pytest

from ecapa_jax import metrics as metrics_cli
from ecapa_jax import score
from ecapa_jax.backend import scoring
from ecapa_jax.backend.scoring import Trial, as_norm, cohort_stats, cosine_scores, score_trials, top_n_stats
from ecapa_jax.io import kaldi_io

E = 8


def _reference_scores(emb, trials, mean, cohort, top_n):
    """WeSpeaker's pipeline written out with loops: mean subtraction, cosine, '%.5f', AS-norm."""

    def unit(v):
        v = [a - b for a, b in zip(v, mean, strict=True)]
        norm = sum(a * a for a in v) ** 0.5
        return [a / norm for a in v]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    def stats(u):
        top = sorted((dot(unit(emb[u]), unit(c)) for c in cohort), reverse=True)[:top_n]
        mu = sum(top) / len(top)
        return mu, (sum((s - mu) ** 2 for s in top) / len(top)) ** 0.5

    out = []
    for t in trials:
        s = dot(unit(emb[t.enroll]), unit(emb[t.test]))
        if cohort is not None:
            s = float(f"{s:.5f}")  # score_norm.py reads the %.5f score file written by score.py
            (mu_e, sd_e), (mu_t, sd_t) = stats(t.enroll), stats(t.test)
            s = 0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)
        out.append(s)
    return np.array(out)


def _data(seed=0, n_spk=4, per_spk=3, n_cohort=20, noise=0.3):
    """Utterances spk{j}/u{k} around speaker centroids, all trials among them, and a cohort."""
    rng = np.random.default_rng(seed)
    centroids = rng.standard_normal((n_spk, E)) + 2.0  # a shared offset, as real embeddings have
    emb = {
        f"spk{j}/u{k}.wav": (centroids[j] + noise * rng.standard_normal(E)).astype(np.float32)
        for j in range(n_spk)
        for k in range(per_spk)
    }
    ids = list(emb)
    trials = [
        Trial(a, b, "target" if a.split("/")[0] == b.split("/")[0] else "nontarget")
        for i, a in enumerate(ids)
        for b in ids[i + 1 :]
    ]
    cohort = (rng.standard_normal((n_cohort, E)) + 2.0).astype(np.float32)
    mean = np.mean(np.stack(list(emb.values())), axis=0).astype(np.float64)
    return emb, trials, mean, cohort


def test_cosine_matches_sklearn_used_by_wespeaker():
    sklearn_pairwise = pytest.importorskip("sklearn.metrics.pairwise")
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 6, E))
    expected = [sklearn_pairwise.cosine_similarity(x[None], y[None])[0, 0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(cosine_scores(a, b), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("top_n", [5, None, 50])  # 50 ≥ cohort size 20: S-norm, like None
def test_as_norm_matches_loop_reference(monkeypatch, top_n):
    monkeypatch.setattr(scoring, "BLOCK", 5)  # several blocks of trials and of utterances
    emb, trials, mean, cohort = _data()
    got = score_trials(emb, trials, mean, cohort, top_n)
    np.testing.assert_allclose(got, _reference_scores(emb, trials, mean, cohort, top_n), rtol=0, atol=1e-12)


@pytest.mark.parametrize("top_n", [1, 7, None, 50, 80])
def test_top_n_stats_equal_wespeakers_sort_expression_bit_for_bit(top_n):
    cohort_scores = np.random.default_rng(5).uniform(-1, 1, (20, 50))
    top = np.sort(cohort_scores, axis=1)[:, ::-1][:, :top_n]  # score_norm.py's get_mean_std
    stats = top_n_stats(cohort_scores, top_n)
    np.testing.assert_array_equal(stats.mean, np.mean(top, axis=1))  # tolerance 0
    np.testing.assert_array_equal(stats.std, np.std(top, axis=1))


def test_as_norm_pieces_without_rounding():
    emb, trials, mean, cohort = _data(seed=2)
    e = np.stack([emb[t.enroll] - mean for t in trials])  # (M, E)
    t = np.stack([emb[t.test] - mean for t in trials])
    raw = cosine_scores(e, t)
    got = as_norm(raw, cohort_stats(e, cohort - mean, 7), cohort_stats(t, cohort - mean, 7))
    cohort_unit = [(c - mean) / np.linalg.norm(c - mean) for c in cohort]
    expected = []
    for i in range(len(trials)):  # per trial, straight from the definition
        mu_sd = []
        for v in (e[i], t[i]):
            top = np.array(sorted((float(v @ c) / np.linalg.norm(v) for c in cohort_unit), reverse=True)[:7])
            mu_sd.append((top.mean(), np.sqrt(np.mean((top - top.mean()) ** 2))))
        (mu_e, sd_e), (mu_t, sd_t) = mu_sd
        expected.append(0.5 * ((raw[i] - mu_e) / sd_e + (raw[i] - mu_t) / sd_t))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_mean_subtraction_changes_cosine_as_expected():
    emb, trials, mean, _ = _data(seed=3)
    np.testing.assert_allclose(
        score_trials(emb, trials, mean), _reference_scores(emb, trials, mean, None, None), rtol=0, atol=1e-12
    )
    plain = score_trials(emb, trials)
    np.testing.assert_allclose(plain, _reference_scores(emb, trials, np.zeros(E), None, None), rtol=0, atol=1e-12)
    # Without the mean, the shared +2 offset pulls non-target pairs together.
    nontarget = np.array([t.label == "nontarget" for t in trials])
    assert score_trials(emb, trials, mean)[nontarget].mean() < plain[nontarget].mean() - 0.3


def _files(tmp_path, seed=0):
    emb, trials, mean, cohort = _data(seed=seed, noise=0.05)
    np.savez(tmp_path / "emb.npz", **emb)
    train = {f"train{i}": v + 0.01 * i for i, v in enumerate(emb.values())}  # mean-from set
    np.savez(tmp_path / "train.npz", **train)
    np.savez(tmp_path / "cohort.npz", **{f"c{i}": c for i, c in enumerate(cohort)})
    lines = [f"{t.enroll} {t.test} {t.label}\n" for t in trials]
    (tmp_path / "trials").write_text("".join(lines))
    train_mean = np.mean(np.stack(list(train.values())).astype(np.float64), axis=0)
    return emb, trials, train_mean, cohort


def _read_score_file(path):
    rows = [line.split() for line in path.read_text().splitlines()]
    return [(r[0], r[1], r[3]) for r in rows], np.array([float(r[2]) for r in rows]), rows


def test_cli_end_to_end_then_metrics(tmp_path, capsys):
    emb, trials, train_mean, cohort = _files(tmp_path)
    out = tmp_path / "asnorm.score"
    argv = ["--embeddings", str(tmp_path / "emb.npz"), "--trials", str(tmp_path / "trials")]
    argv += ["--mean-from", str(tmp_path / "train.npz"), "--cohort", str(tmp_path / "cohort.npz"), "--top-n", "6"]
    assert score.main([*argv, "--out", str(out)]) == 0
    keys, got, rows = _read_score_file(out)
    assert keys == [(t.enroll, t.test, t.label) for t in trials]
    assert all(re.fullmatch(r"-?\d+\.\d{5}", r[2]) for r in rows)  # '%.5f' as WeSpeaker
    np.testing.assert_allclose(
        got, _reference_scores(emb, trials, train_mean, cohort, 6), rtol=0, atol=5e-6 + 1e-12
    )  # printed with 5 decimals
    # Speakers are far apart relative to the noise: every target outscores every non-target.
    capsys.readouterr()
    assert metrics_cli.main([str(out)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "---- asnorm.score -----",
        "EER = 0.000",
        "minDCF (p_target:0.01 c_miss:1 c_fa:1) = 0.000",
    ]


def test_cli_reads_kaldi_scp_and_npy_mean_like_npz(tmp_path):
    emb, trials, train_mean, _ = _files(tmp_path, seed=4)
    kaldi_io.write_vectors(tmp_path / "emb.ark", emb, tmp_path / "emb.scp")
    np.save(tmp_path / "mean.npy", train_mean)
    outs = []
    for emb_file, mean_file in [("emb.npz", "train.npz"), ("emb.scp", "mean.npy"), ("emb.ark", "train.npz")]:
        out = tmp_path / f"{emb_file}.score"
        argv = ["--embeddings", str(tmp_path / emb_file), "--trials", str(tmp_path / "trials")]
        assert score.main([*argv, "--mean-from", str(tmp_path / mean_file), "--out", str(out)]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1] == outs[2]
    _, got, _ = _read_score_file(tmp_path / "emb.npz.score")
    np.testing.assert_allclose(got, _reference_scores(emb, trials, train_mean, None, None), rtol=0, atol=5e-6 + 1e-12)


def test_unlabelled_trials_give_three_columns(tmp_path):
    emb, trials, _, _ = _files(tmp_path)
    (tmp_path / "trials").write_text(f"{trials[0].enroll} {trials[0].test}\n")
    argv = ["--embeddings", str(tmp_path / "emb.npz"), "--trials", str(tmp_path / "trials")]
    assert score.main([*argv, "--out", str(tmp_path / "s")]) == 0
    (fields,) = [line.split() for line in (tmp_path / "s").read_text().splitlines()]
    assert fields[:2] == [trials[0].enroll, trials[0].test] and len(fields) == 3


def _cli_error(tmp_path, capsys, argv, match):
    base = ["--embeddings", str(tmp_path / "emb.npz"), "--trials", str(tmp_path / "trials")]
    assert score.main([*base, *argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err


def test_cli_missing_ids_are_listed_and_exit_2(tmp_path, capsys):
    _files(tmp_path)
    (tmp_path / "trials").write_text("".join(f"spk0/u0.wav gone{i} nontarget\n" for i in range(7)))
    match = re.escape(f"{tmp_path / 'trials'} with {tmp_path / 'emb.npz'}: 7 trial utterance(s) have no embedding: ")
    _cli_error(tmp_path, capsys, [], match + "gone0, gone1, gone2, gone3, gone4, ...$")


def test_cli_malformed_trials_line(tmp_path, capsys):
    _files(tmp_path)
    (tmp_path / "trials").write_text("spk0/u0.wav spk0/u1.wav target\nspk0/u0.wav spk0/u1.wav maybe\n")
    _cli_error(tmp_path, capsys, [], re.escape(f"{tmp_path / 'trials'}:2: expected 'enroll test [target|nontarget]'"))


def test_cli_bad_embedding_files(tmp_path, capsys):
    _files(tmp_path)
    np.savez(tmp_path / "cohort.npz", good=np.zeros(E, np.float32), bad=np.zeros((2, E), np.float32))
    _cli_error(
        tmp_path,
        capsys,
        ["--cohort", str(tmp_path / "cohort.npz")],
        re.escape(f"{tmp_path / 'cohort.npz'}: bad: expected a 1-D float vector"),
    )
    np.savez(tmp_path / "cohort.npz", a=np.ones(E + 1, np.float32))
    _cli_error(
        tmp_path,
        capsys,
        ["--cohort", str(tmp_path / "cohort.npz")],
        re.escape(f"{tmp_path / 'cohort.npz'}: cohort dimension {E + 1} does not match {E}"),
    )
    np.savez(tmp_path / "train.npz", a=np.float32([1, np.nan] + [0] * (E - 2)))
    _cli_error(
        tmp_path, capsys, ["--mean-from", str(tmp_path / "train.npz")], re.escape(f"{tmp_path / 'train.npz'}: a: NaN")
    )
    _cli_error(tmp_path, capsys, ["--mean-from", str(tmp_path / "x.txt")], "unknown embeddings format '.txt'")


def test_top_n_needs_a_cohort_and_must_be_positive(tmp_path, capsys):
    _files(tmp_path)
    assert score.main(["--embeddings", "e.npz", "--trials", "t", "--top-n", "3", "--out", "s"]) == 2
    assert "--top-n needs --cohort" in capsys.readouterr().err
    _cli_error(tmp_path, capsys, ["--cohort", str(tmp_path / "cohort.npz"), "--top-n", "0"], "top_n must be a positive")
