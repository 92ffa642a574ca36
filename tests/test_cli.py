"""Every command line under the one exit-code rule (ecapa_jax.cli): 0 ok, 1 partial, 2 usage/input error.

User mistakes are one line on stderr that names the path or key, never a traceback, and they are found before
any work is done, so nothing is written. The cases are those a new user ran into (issue 10).
"""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf
from test_embed import SMALL, speech_like

from ecapa_jax import convert, embed, export, metrics, score
from ecapa_jax.backend.scoring import read_trials
from ecapa_jax.frontend.kaldi import KaldiFrontEnd
from ecapa_jax.io.checkpoint import join_variables, save_model_dir
from ecapa_jax.models import build_model
from ecapa_jax.models.ecapa import EcapaConfig
from train import launch, tools
from train.__main__ import main as train_main
from train.config import check_workdir_config, load_config

COMMANDS = {
    "ecapa_jax.embed": embed.main,
    "ecapa_jax.score": score.main,
    "ecapa_jax.metrics": metrics.main,
    "ecapa_jax.convert": convert.main,
    "ecapa_jax.export": export.main,
    "train": train_main,
    "train.tools": tools.main,
    "train.launch": launch.main,
}


def one_line_error(err: str, pattern: str) -> None:
    """``err`` is exactly one ``error: ...`` line matching ``pattern``, with no traceback."""
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: "), err
    assert re.search(pattern, err), err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small random ECAPA model directory with WeSpeaker's front-end."""
    config = EcapaConfig(**SMALL)
    feats = np.zeros((1, 20, config.feat_dim), np.float32)
    variables = build_model(config).init(jax.random.key(0), feats)
    path = tmp_path_factory.mktemp("cli") / "model"
    save_model_dir(path, config, join_variables(jax.device_get(variables)), KaldiFrontEnd())
    return path


@pytest.fixture(scope="module")
def wavs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_wavs")
    for i in range(2):
        sf.write(root / f"u{i}.wav", speech_like(0.7, 16000, seed=i), 16000, subtype="PCM_16")
    return root


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_help_is_0_and_a_bad_flag_is_one_line_and_2(name, capsys):
    main = COMMANDS[name]
    assert main(["--help"]) == 0
    capsys.readouterr()
    assert main(["--no-such-flag"]) == 2
    one_line_error(capsys.readouterr().err, r"unrecognized arguments: --no-such-flag|required|invalid choice")


def test_embed_checks_the_output_location_before_any_work(model_dir, wavs, tmp_path, capsys):
    for out in ("missing_dir/x.npz", "missing_dir/x.ark"):
        # --model is wrong too: the output is checked first, so no model is loaded and nothing embedded.
        assert embed.main(["--model", "nowhere", str(wavs / "u0.wav"), "--out", str(tmp_path / out)]) == 2
        one_line_error(capsys.readouterr().err, r"missing_dir/x\.(npz|ark): the directory .*missing_dir does not exist")
    (tmp_path / "a_dir.npz").mkdir()
    assert embed.main(["--model", str(model_dir), str(wavs / "u0.wav"), "--out", str(tmp_path / "a_dir.npz")]) == 2
    one_line_error(capsys.readouterr().err, r"a_dir\.npz is a directory; give a file name")


def test_embed_given_a_folder_says_so_and_writes_nothing(model_dir, wavs, tmp_path, capsys):
    out = tmp_path / "e.npz"
    assert embed.main(["--model", str(model_dir), str(wavs), "--out", str(out)]) == 2
    one_line_error(capsys.readouterr().err, rf"{re.escape(str(wavs))} is a directory, not an audio file")
    assert not out.exists()


def test_embed_given_a_training_run_points_to_its_model(model_dir, wavs, tmp_path, capsys):
    run = tmp_path / "runs" / "demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    (run / "model").symlink_to(model_dir)
    assert embed.main(["--model", str(run), str(wavs / "u0.wav"), "--out", str(tmp_path / "e.npz")]) == 2
    one_line_error(capsys.readouterr().err, r"demo is a training run directory, not a model directory; .*demo/model")


def test_ark_index_holds_absolute_paths_so_scoring_works_from_elsewhere(model_dir, wavs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    files = [str(wavs / "u0.wav"), str(wavs / "u1.wav")]
    assert embed.main(["--model", str(model_dir), *files, "--out", "out/emb.ark"]) == 0  # a relative --out
    index = (tmp_path / "out" / "emb.scp").read_text().split()
    assert index[1].startswith(str(tmp_path / "out" / "emb.ark") + ":"), index
    (tmp_path / "trials").write_text("u0 u1 target\nu0 u0 nontarget\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    scores = elsewhere / "scores"
    argv = ["--embeddings", str(tmp_path / "out" / "emb.scp"), "--trials", str(tmp_path / "trials")]
    assert score.main([*argv, "--out", str(scores)]) == 0
    assert len(scores.read_text().splitlines()) == len(read_trials(tmp_path / "trials"))


def test_metrics_names_a_binary_file_and_partial_failures_are_1(tmp_path, capsys):
    good = tmp_path / "good.score"
    good.write_text("a b 0.9 target\na c 0.1 nontarget\n")
    binary = tmp_path / "model.npz"
    binary.write_bytes(b"PK\x03\x04\xff\xfe\x00garbage\n")
    assert metrics.main([str(binary)]) == 2  # nothing could be reported
    one_line_error(capsys.readouterr().err, rf"{re.escape(str(binary))}:1: not UTF-8 text")
    assert metrics.main([str(good), str(binary)]) == 1  # one reported, one failed
    captured = capsys.readouterr()
    assert "EER = 0.000" in captured.out and "not UTF-8 text" in captured.err
    assert metrics.main([str(good)]) == 0


def test_score_and_convert_input_errors_are_2(tmp_path, capsys):
    argv = ["--embeddings", str(tmp_path / "none.npz"), "--trials", str(tmp_path / "t"), "--out", str(tmp_path / "s")]
    assert score.main(argv) == 2
    one_line_error(capsys.readouterr().err, r"none\.npz")
    assert score.main([*argv[:4], "--out", str(tmp_path / "no" / "s")]) == 2
    one_line_error(capsys.readouterr().err, r"the directory .*no does not exist")
    assert convert.main(["wespeaker", str(tmp_path / "none.pt"), str(tmp_path / "out")]) == 2
    one_line_error(capsys.readouterr().err, r"none\.pt")
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


def test_train_with_missing_data_writes_nothing_and_the_fix_is_not_refused(tmp_path, capsys):
    workdir = tmp_path / "exp"
    argv = ["--config", "demo", "--workdir", str(workdir), "data.data_type=kaldi", f"data.train_data={tmp_path}/vox"]
    assert train_main(argv) == 2
    one_line_error(capsys.readouterr().err, rf"{re.escape(str(tmp_path))}/vox: not a Kaldi data directory")
    assert not (workdir / "config.json").exists()
    # The corrected command's config is accepted by the (still empty) workdir.
    check_workdir_config(workdir, load_config("demo"))


def test_train_config_errors_are_2_and_name_the_key(tmp_path, capsys):
    assert train_main(["--workdir", str(tmp_path), "model.chanels=4"]) == 2
    one_line_error(capsys.readouterr().err, r"unknown config key 'model\.chanels'")
    assert train_main(["--config", "no_such_preset", "--workdir", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, r"no config 'no_such_preset'")
    (tmp_path / "config.json").write_text("{not json")
    assert train_main(["--workdir", str(tmp_path), "num_epochs=1"]) == 2
    one_line_error(capsys.readouterr().err, rf"{re.escape(str(tmp_path / 'config.json'))}: not valid JSON")


def test_tools_errors_are_2(tmp_path, capsys):
    assert tools.main(["export", str(tmp_path)]) == 2
    one_line_error(capsys.readouterr().err, r"is not a training run directory: no checkpoints/")
    assert tools.main(["wespeaker", str(tmp_path / "nowhere"), str(tmp_path / "x.pt")]) == 2
    one_line_error(capsys.readouterr().err, r"nowhere is not an ecapa_jax model directory: no such directory")


@pytest.mark.parametrize(
    "module",
    [
        "ecapa_jax.embed",
        "ecapa_jax.score",
        "ecapa_jax.metrics",
        "ecapa_jax.convert",
        "ecapa_jax.export",
        "train.data",
        "train.launch",
    ],
)
def test_the_process_exits_by_the_rule_without_a_traceback(module, tmp_path):
    """The real ``python -m`` process: status 2, one line, no traceback, no runpy warning."""
    args = {
        "ecapa_jax.embed": ["--model", "m", "a.wav", "--out", str(tmp_path / "none" / "e.npz")],
        "ecapa_jax.score": ["--embeddings", "e.npz", "--trials", "t", "--out", str(tmp_path / "s")],
        "ecapa_jax.metrics": [str(tmp_path / "missing.score")],
        "ecapa_jax.convert": ["to-wespeaker", str(tmp_path / "nowhere"), str(tmp_path / "x.pt")],
        "ecapa_jax.export": [str(tmp_path / "nowhere"), str(tmp_path / "x.jax")],
        "train.data": ["data.data_type=kaldi", f"data.train_data={tmp_path / 'nowhere'}"],
        "train.launch": ["-n", "0", "--", "--config", "tiny"],
    }[module]
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    run = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    assert run.returncode == 2, run.stderr
    one_line_error(run.stderr, r"\S")
