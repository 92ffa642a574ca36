"""The notebooks run top to bottom and are committed clean; the plot helpers they use draw the right numbers.

Each notebook is executed with nbclient in the ``python3`` kernel (jupyter_client starts it with this
interpreter, i.e. the venv's, and the test's environment), in a temporary working directory, with a time
limit per cell; a cell that raises fails the test with its traceback.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm

from ecapa_jax.backend.plotting import (
    DET_LIMITS,
    moving_average,
    pca_2d,
    plot_curves,
    plot_det,
    plot_embeddings_2d,
    plot_score_histogram,
)

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CELL_TIMEOUT_S = 300
# What each notebook imports beyond the package; the PyTorch oracles are optional in the test environment.
NEEDS = {
    "01_quickstart.ipynb": ("nbclient", "matplotlib", "torch", "torchaudio", "wespeaker"),
    "02_train_demo.ipynb": ("nbclient", "matplotlib"),
    "03_pooling.ipynb": ("nbclient", "matplotlib"),
    "04_pretrained.ipynb": ("nbclient", "matplotlib", "torch", "speakerlab", "speechbrain", "G722"),
}
# Environment of the kernel: 02 trains the demo preset for this many epochs instead of its 12 (4–6 min).
ENV = {"02_train_demo.ipynb": {"ECAPA_NB_EPOCHS": "3"}, "04_pretrained.ipynb": {"ECAPA_NB_PER_SPEAKER": "6"}}


def test_every_notebook_is_listed():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NEEDS)


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_committed_without_outputs(name):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install nbformat)")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert dirty == [], f"{name}: code cells {dirty} carry outputs or execution counts; clear them before committing"


@pytest.mark.parametrize("name", sorted(NEEDS))
def test_notebook_runs(name, tmp_path, monkeypatch):
    missing = [m for m in NEEDS[name] if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"{name} needs {', '.join(missing)}, which is not installed")
    if name == "04_pretrained.ipynb":  # real weights and speech: skipped only when the download is impossible
        import oracles

        from ecapa_jax.io import realdata

        for fetch in (realdata.asterisk_clips, realdata.fillets_clips):
            oracles.fetched(fetch)
        for model in realdata.PRETRAINED:
            oracles.fetched(realdata.pretrained, model)
    import nbclient
    import nbformat

    for key, value in ENV.get(name, {}).items():
        monkeypatch.setenv(key, value)  # before the kernel starts: it inherits this process's environment

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell raises
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    if name == "02_train_demo.ipynb":  # the kernel saw the short run: the run's own config records it
        config = json.loads((tmp_path / "runs" / "demo_nb" / "config.json").read_text())
        assert config["num_epochs"] == int(ENV[name]["ECAPA_NB_EPOCHS"]), config["num_epochs"]


# ----------------------------------------------------------------------------- ecapa_jax.backend.plotting


@pytest.fixture
def axes():
    plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is not installed")
    fig, ax = plt.subplots()
    yield ax
    plt.close(fig)


# 3 targets, 3 non-targets; sorted ascending: 0.1 n, 0.2 t, 0.3 n, 0.5 t, 0.6 n, 0.9 t
SCORES = np.array([0.5, 0.1, 0.9, 0.3, 0.2, 0.6])
LABELS = np.array([1, 0, 1, 0, 1, 0])
# By hand: rejecting the i+1 lowest scores, miss = targets rejected / 3, false alarm = non-targets kept / 3.
FNR = np.array([0, 1, 1, 2, 2, 3]) / 3
FPR = np.array([2, 2, 1, 1, 0, 0]) / 3


def test_det_curve_is_probit_of_hand_computed_rates(axes):
    _, eer = plot_det(axes, SCORES, LABELS, title="t")
    curve = axes.get_lines()[0]
    lo, hi = DET_LIMITS
    np.testing.assert_allclose(curve.get_xdata(), norm.ppf(np.clip(FPR, lo, hi)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(curve.get_ydata(), norm.ppf(np.clip(FNR, lo, hi)), rtol=0, atol=1e-12)
    # fnr − fpr turns ≥ 0 between the 2nd (1/3 − 2/3) and 3rd (1/3 − 1/3) points: both rates 1/3 there.
    assert abs(eer - 1 / 3) <= 1e-12, eer
    marker = axes.get_lines()[1]
    np.testing.assert_allclose([marker.get_xdata()[0], marker.get_ydata()[0]], [norm.ppf(1 / 3)] * 2, atol=1e-12)
    assert axes.get_xlabel() and axes.get_ylabel() and axes.get_title() == "t"


def test_score_histogram_counts_each_class_on_shared_bins(axes):
    plot_score_histogram(axes, SCORES, LABELS, bins=4, title="t")
    edges = np.linspace(0.1, 0.9, 5)
    width = edges[1] - edges[0]
    for container, mask in zip(axes.containers, [LABELS == 1, LABELS == 0], strict=True):
        heights = np.array([p.get_height() for p in container])
        counts, _ = np.histogram(SCORES[mask], edges)
        np.testing.assert_allclose(heights, counts / (mask.sum() * width), rtol=1e-12)  # densities
    assert axes.get_xlabel() and axes.get_ylabel() and axes.get_title() == "t"


def test_plots_reject_bad_trials(axes):
    with pytest.raises(ValueError, match="equal length"):
        plot_score_histogram(axes, SCORES, LABELS[:-1], title="t")
    with pytest.raises(ValueError, match="both target and non-target"):
        plot_det(axes, SCORES, np.ones(6, bool), title="t")


def test_moving_average_matches_a_loop():
    x = np.array([4.0, 2.0, 9.0, 1.0, 3.0])
    want = [np.mean(x[max(0, i - 2) : i + 1]) for i in range(len(x))]  # trailing window of 3
    np.testing.assert_allclose(moving_average(x, 3), want, rtol=1e-12)
    np.testing.assert_allclose(moving_average(x, 1), x, rtol=0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        moving_average(x, 0)


def test_plot_curves_draws_smoothed_lines(axes):
    plot_curves(axes, {"a": [1.0, 3.0, 5.0], "b": [2.0, 2.0, 8.0]}, title="t", xlabel="step", ylabel="loss", window=2)
    np.testing.assert_allclose(axes.get_lines()[0].get_ydata(), [1.0, 2.0, 4.0], rtol=1e-12)
    np.testing.assert_allclose(axes.get_lines()[1].get_ydata(), [2.0, 2.0, 5.0], rtol=1e-12)
    assert axes.get_ylabel() == "loss (mean of last 2)" and axes.get_xlabel() == "step"


def test_plot_curves_takes_shared_steps(axes):
    plot_curves(axes, {"loss": [3.0, 2.0, 1.0]}, title="t", xlabel="step", ylabel="loss", x=[9, 19, 29])
    np.testing.assert_allclose(axes.get_lines()[0].get_xdata(), [9, 19, 29], rtol=0)
    np.testing.assert_allclose(axes.get_lines()[0].get_ydata(), [3.0, 2.0, 1.0], rtol=0)
    with pytest.raises(ValueError, match="has 3 values but x has 2"):
        plot_curves(axes, {"loss": [3.0, 2.0, 1.0]}, title="t", xlabel="step", ylabel="loss", x=[9, 19])


# Points on a known plane in R⁴: coordinates (a, b) on orthonormal axes E1, E2 around an offset. The (a, b) are
# centred and uncorrelated with variances 4.5 > 0.5, so the principal axes are ±E1, ±E2. E1's largest entry
# (0.8) is positive, E2's (−0.8) negative: the sign convention keeps a and flips b.
PLANE_AB = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
E1, E2 = np.array([0.6, 0.8, 0.0, 0.0]), np.array([0.0, 0.0, -0.8, 0.6])
PLANE = np.array([10.0, -2.0, 5.0, 1.0]) + PLANE_AB[:, :1] * E1 + PLANE_AB[:, 1:] * E2  # (4, 4)


def test_pca_2d_recovers_the_coordinates_on_a_known_plane():
    coords = pca_2d(PLANE)
    np.testing.assert_allclose(coords, PLANE_AB * [1.0, -1.0], rtol=0, atol=1e-12)
    # All the variance lies in the plane: 4.5 on the first axis, 0.5 on the second, 5.0 in all.
    np.testing.assert_allclose(coords.var(axis=0), [4.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(PLANE.var(axis=0).sum(), 5.0, rtol=1e-12)


def test_pca_2d_rejects_bad_points():
    with pytest.raises(ValueError, match=r"N >= 2 and D >= 2, got shape \(4,\)"):
        pca_2d(np.ones(4))
    with pytest.raises(ValueError, match=r"got shape \(1, 4\)"):
        pca_2d(np.ones((1, 4)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        pca_2d(np.where(np.eye(4) > 0, np.nan, PLANE))


def test_plot_embeddings_2d_draws_each_speaker_at_its_coordinates(axes):
    speakers = ["spk_b", "spk_a", "spk_b", "spk_c"]  # rows 0 and 2 are one speaker
    plot_embeddings_2d(axes, PLANE, speakers, title="t")
    want = PLANE_AB * [1.0, -1.0]  # as in the test above
    rows = {"spk_a": [1], "spk_b": [0, 2], "spk_c": [3]}
    collections = axes.collections
    assert [t.get_text() for t in axes.get_legend().get_texts()] == sorted(rows)
    for collection, name in zip(collections, sorted(rows), strict=True):
        np.testing.assert_allclose(collection.get_offsets(), want[rows[name]], rtol=0, atol=1e-12)
    axes.figure.canvas.draw()  # maps the colour-map values to colours
    colours = {tuple(np.round(c.get_facecolor()[0], 6)) for c in collections}
    assert len(colours) == 3, colours  # one colour per speaker
    # Shares of the variance 5.0: 4.5 → 90 %, 0.5 → 10 %.
    assert axes.get_xlabel() == "principal axis 1 (90 % of variance)", axes.get_xlabel()
    assert axes.get_ylabel() == "principal axis 2 (10 % of variance)", axes.get_ylabel()
    assert axes.get_title() == "t"
    with pytest.raises(ValueError, match="speakers must name each of the 4 embeddings"):
        plot_embeddings_2d(axes, PLANE, speakers[:3], title="t")
