"""The benchmark scripts: each main runs at tiny sizes and prints its ratio line (no timing asserts);
the MAC count against a hand-written formula; the timing helper's interleaving; bad options."""

import argparse
import json
import os
import re

import numpy as np
import oracles
import pytest

from benchmarks import common, flops

TINY_MODEL = ["--channels", "16", "--repeats", "1", "--warmup", "1"]  # warm-up: compilation is not timed
RATIO = re.compile(r"ratio .+: (\d+\.\d+)x")


@pytest.fixture
def threads():
    """``--threads 1`` (torch's two threads thrash on a busy 2-core machine); the CPUs and torch restored after.

    JAX's backend starts first, so its CPU pool keeps every CPU for the rest of the session.
    """
    import jax

    jax.devices()
    torch = oracles.torch()
    cpus = os.sched_getaffinity(0)
    yield ["--threads", "1"]
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(1)


def _ratios(out: str) -> list[float]:
    values = [float(v) for v in RATIO.findall(out)]
    assert values and all(v > 0 for v in values), out
    return values


def test_embed_prints_ratios(threads, capsys):
    oracles.wespeaker("models.ecapa_tdnn")
    from benchmarks import embed

    ratios = embed.main([*threads, *TINY_MODEL, "--cases", "2x0.5"])
    out = capsys.readouterr().out
    assert len(_ratios(out)) == 2 and set(ratios) == {"2x0.5s features", "2x0.5s waveform"}
    # The script compares the two models' embeddings before timing: same weights, same numbers.
    err = float(re.search(r"max \|ours - theirs\| / max \|theirs\| (\S+)", out).group(1))
    assert err < 1e-4, out  # fp32 parity of the two implementations (tests/test_model.py is tighter)


def test_train_step_prints_ratios(threads, capsys):
    oracles.wespeaker("models.projections")
    from benchmarks import train_step

    ratios = train_step.main([*threads, *TINY_MODEL, "--batch", "2", "--frames", "20", "--classes", "6"])
    assert len(_ratios(capsys.readouterr().out)) == 2 and set(ratios) == {"features outside", "fbank inside"}


def test_fbank_prints_ratios(threads, capsys):
    oracles.wespeaker("models.ecapa_tdnn")
    pytest.importorskip("kaldi_native_fbank")
    from benchmarks import fbank

    fbank.main([*threads, "--repeats", "1", "--warmup", "0", "--batch", "2", "--seconds", "0.3"])
    out = capsys.readouterr().out
    assert len(_ratios(out)) == 2
    # The front-ends agree before they are timed (oracles.md: torchaudio vs knf ≤ 1.5e-3 worst case).
    for diff in re.findall(r"max \|ours - \w+\| = (\S+)", out):
        assert float(diff) < 2e-3, out


def test_pipeline_prints_ratios(capsys, tmp_path):
    """Generated VoxCeleb/MUSAN/RIRS-shaped data, python -m train.data pinned to a core, the host augmentation."""
    from benchmarks import pipeline

    args = ["--utts", "12", "--noise-files", "3", "--rirs", "4", "--batch", "4", "--repeats", "1", "--batches", "1"]
    result = pipeline.main([*args, "--host-samples", "2", "--keep", str(tmp_path)])
    out = capsys.readouterr().out
    assert len(_ratios(out)) == 2 and result["ours_samples_per_s"] > 0 and result["host_augment_samples_per_s"] > 0
    assert result["grain_samples_per_s"] > 0  # grain is in the test extra
    assert (
        sorted(os.listdir(tmp_path / "musan")) == ["music", "noise", "speech"]
        and len(os.listdir(tmp_path / "rirs")) == 4
    )


def test_augment_prints_its_share_of_the_step(threads, capsys):
    from benchmarks import augment

    ratios = augment.main([*threads, *TINY_MODEL, "--batch", "2", "--frames", "20", "--classes", "6"])
    out = capsys.readouterr().out
    assert len(_ratios(out)) == 1 and "the augmentation adds" in out
    names = {"step + augmentation / step", "fastest step + augmentation / fastest step", "augmentation / step"}
    assert set(ratios) == names and all(r > 0 for r in ratios.values())


def test_gpu_script_runs_every_section_in_tiny_mode(tmp_path, capsys):
    """The one-call GPU benchmark at toy sizes on the CPU: every section runs and every figure has a unit."""
    from benchmarks import gpu

    results = gpu.main(["--tiny", "--out", str(tmp_path / "gpu.json")])
    assert results["errors"] == {} and results["skipped"] == [], results["errors"]
    figures = json.loads((tmp_path / "gpu.json").read_text())["figures"]
    assert figures == results["figures"] and all(f["unit"] for f in figures.values())
    for name in (
        "ours train step fp32, 2 x 20 frames", "ours train step bf16, 2 x 20 frames", "WeSpeaker train step AMP fp16",
        "ratio ours bf16 / WeSpeaker AMP fp16", "ours extraction bf16, waveform -> emb, 2 x 0.5 s",
        "device augmentation's share of the step", "host loader, recipe settings, 1 core",
    ):  # fmt: skip
        assert figures[name]["value"] is not None and np.isfinite(figures[name]["value"]), name
    assert gpu.peak_for("NVIDIA H200") == gpu.PEAKS["H200"] and gpu.peak_for("NVIDIA L40S") == gpu.PEAKS["L40S"]
    assert gpu.peak_for("NVIDIA L4") == gpu.PEAKS["L4"] and gpu.peak_for("cpu") is None
    assert "device: " in capsys.readouterr().out


def test_flops_match_hand_count(capsys):
    """Analytic and XLA counts against the architecture's MAC formula, written out by hand."""
    t, c, f, m, e, s, b, a = 20, 16, 80, 1536, 192, 8, 128, 128  # frames, channels, mel, MFA, embed, scale, SE, att
    w = c // s
    block = 2 * t * c * c + (s - 1) * t * 3 * w * w + 2 * c * b  # conv1, Res2 branches, conv2, SE
    expected = t * 5 * f * c + 3 * block + t * 3 * c * m + t * 3 * m * a + t * a * m + 2 * m * e
    # What runs: the global-context attention's mean/std rows (2/3 of its first conv) once per utterance.
    executed = expected - t * 2 * m * a + 2 * m * a
    macs, xla_macs = flops.main(["--channels", "16", "--frames", str(t), "--models", "glob_c512"])["glob_c512"]
    assert macs == expected
    assert abs(xla_macs / executed - 1) < 0.05  # XLA also counts BN, activations and pooling statistics
    assert "MFU" in capsys.readouterr().out


def test_full_size_macs_are_wespeakers_figure():
    """GLOB_c512 at 200 frames: ≈ 1.04 G MACs (WeSpeaker's published figure), analytic count only."""
    import jax
    import jax.numpy as jnp

    from ecapa_jax.models.ecapa import ECAPA_TDNN, EcapaConfig

    model = ECAPA_TDNN(EcapaConfig.glob_c512())
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 200, 80)))
    assert abs(flops.analytic_macs(shapes["params"], 200) / 1.04e9 - 1) < 0.01


def test_interleaved_alternates_and_times_each_call():
    calls = []
    timings = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then alternating order per round
    assert all(len(t.wall) == 3 and len(t.cpu) == 3 for t in timings.values())


def test_bad_thread_count_is_refused():
    with pytest.raises(ValueError, match=r"--threads must be in \[1, \d+\]"):
        common.pin_threads(len(os.sched_getaffinity(0)) + 1)


def test_bad_repeats_and_frames_are_refused(capsys):
    with pytest.raises(SystemExit):
        common.parse(common.add_arguments(argparse.ArgumentParser()), ["--repeats", "0"])
    assert "--repeats must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        flops.main(["--frames", "0"])
    assert "--frames must be >= 1, got 0" in capsys.readouterr().err
