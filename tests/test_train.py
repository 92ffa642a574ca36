"""`python -m train` end to end on the demo corpus: it learns, resumes exactly after SIGKILL, follows
WeSpeaker's LR and margin schedulers, refuses bad configs, stops on a non-finite loss, and its
checkpoints average and export.

Most tests share one tiny run of the recipe config (a 16-channel model, 16 demo speakers, one
step per "epoch", so the recipe's 150 epochs, 6-epoch warm-up and epoch 20–40 margin ramp all
happen in 150 steps); its reruns are subprocesses sharing a JAX compilation cache, so that train
step is compiled once. Learning is shown by a separate small run of the demo preset.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import oracles
import pytest
import runs
import soundfile as sf

import ecapa_jax
from ecapa_jax.convert import main as convert_main
from ecapa_jax.embed import main as embed_main
from ecapa_jax.io.checkpoint import CheckpointManager, load_model_dir
from ecapa_jax.io.torchzip import load_state_dict
from ecapa_jax.score import main as score_main
from train import tools
from train.__main__ import main as train_main
from train.config import TrainConfig, apply_overrides, check_workdir_config, load_config
from train.distributed import initialize_distributed
from train.evaluation import make_eval_set
from train.loop import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
STEPS, HALF = 150, 75
SPEAKERS, UTTS = 16, 4
PRESET = "voxceleb_glob_c512"
RUN = [  # overrides of the tiny preset (the recipe at toy size, one step per "epoch")
    "data.demo_held_out=0",  # no evaluation: this run is about the loop's mechanics
    f"checkpoint_interval={HALF}",
    "keep_checkpoints=2",
]
DEMO = [  # overrides of the demo preset: 16 speakers × 12 utterances, a 32-channel model, 162 steps
    "model.channels=32",
    "model.mfa_dim=96",
    "model.embed_dim=64",
    "data.demo_speakers=16",
    "data.demo_utts_per_speaker=12",
    "data.demo_held_out=6",
    "data.num_frms=100",
    "num_epochs=27",
    "log_interval=10",
    "eval_interval=162",
    "num_eval_trials=1000",
]
DEMO_STEPS = 162  # 27 epochs of ⌊192 / 32⌋ steps


def _config(*extra: str) -> TrainConfig:
    return apply_overrides(load_config("tiny"), RUN + list(extra))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("jax_cache")
    return {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }


def _command(workdir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", "--config=tiny", f"--workdir={workdir}", *RUN, *extra]


def _run(env, workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(workdir, *extra), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(env, tmp_path_factory) -> Path:
    """The straight run: STEPS steps, checkpoints at HALF and STEPS."""
    workdir = tmp_path_factory.mktemp("straight")
    result = _run(env, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_demo_learns(tmp_path):
    """A short demo run takes the held-out EER (unseen speakers, whole utterances) clearly down."""
    cmd = [sys.executable, "-m", "train", f"--workdir={tmp_path}", *DEMO]
    result = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=os.environ | {"JAX_PLATFORMS": "cpu"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    evals = runs.jsonl(tmp_path / "eval.jsonl")
    init, end = evals[0]["eer"], evals[-1]["eer"]
    print(f"held-out EER: {100 * init:.1f}% at init -> {100 * end:.1f}% after {evals[-1]['step']} steps")
    # Measured: 28.0% -> 13.6%; a model that learns nothing stays near its initial 28%.
    assert [e["step"] for e in evals] == [0, DEMO_STEPS] and end < init - 0.10, f"EER {init:.3f} -> {end:.3f}"
    assert f"final held-out EER after {DEMO_STEPS} steps: {100 * end:.2f}%" in result.stdout
    assert f"data: {DEMO_STEPS * 32} samples from " in result.stdout  # the loader's counts, reported at the end
    assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in result.stdout
    # TensorBoard holds what the JSON logs hold: every logged step's scalars, and each evaluation's EER.
    scalars, metrics = runs.tensorboard_scalars(tmp_path / "tensorboard"), runs.jsonl(tmp_path / "metrics.jsonl")
    for name in ("loss", "accuracy", "lr", "margin", "grad_norm", "samples_per_s"):
        assert scalars[f"train/{name}"] == [(r["step"], np.float32(r[name])) for r in metrics], name
    assert scalars["eval/eer"] == [(e["step"], np.float32(e["eer"])) for e in evals]
    # The exported model directory is what ecapa_jax.load reads; it holds the final state.
    encoder = ecapa_jax.load(tmp_path / "model")
    final, _ = CheckpointManager(tmp_path / "checkpoints").restore(DEMO_STEPS)
    kernel = final["params"]["model"]["linear"]["kernel"]
    np.testing.assert_array_equal(encoder.variables["params"]["linear"]["kernel"], kernel)
    # The README's newcomer path from files: held-out audio + trials, the exported WeSpeaker .pt converted
    # back, the embed / score / metrics CLIs. Same model and trials as the run's own EER; only the 16-bit
    # WAVs differ from the in-memory waveforms, so the EER may move by a few of the 500 target trials.
    data, models = tmp_path / "held_out", tmp_path / "converted"
    assert tools.main(["demo-data", str(data), "--workdir", str(tmp_path)]) == 0
    assert convert_main(["wespeaker", str(tmp_path / "model.pt"), str(models)]) == 0
    embeddings = tmp_path / "e.npz"
    assert embed_main(["--model", str(models), "--wav-scp", str(data / "wav.scp"), "--out", str(embeddings)]) == 0
    trials = ["--embeddings", str(embeddings), "--trials", str(data / "trials")]
    assert score_main([*trials, "--out", str(tmp_path / "scores")]) == 0
    lines = [line.split() for line in (tmp_path / "scores").read_text().splitlines()]
    eer, _ = ecapa_jax.compute_eer(np.array([float(x[2]) for x in lines]), np.array([x[3] == "target" for x in lines]))
    print(f"EER from files through the CLIs: {100 * eer:.2f}% vs the trainer's {100 * end:.2f}%")
    assert len(lines) == 1000 and abs(eer - end) <= 0.01, (eer, end)


def test_schedules_match_wespeaker(run):
    """lr and margin logged at every step equal WeSpeaker's ExponentialDecrease and MarginScheduler."""
    torch = oracles.torch()
    schedulers = oracles.wespeaker("utils.schedulers")
    projections = oracles.wespeaker("models.projections")
    recipe = load_config(PRESET)
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert (config.scheduler_args, config.margin_update, config.num_epochs) == (
        recipe.scheduler_args,
        recipe.margin_update,
        recipe.num_epochs,
    )
    s, m = recipe.scheduler_args, recipe.margin_update
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=s.initial_lr)
    lr_ref = schedulers.ExponentialDecrease(
        optimizer, recipe.num_epochs, 1, s.initial_lr, s.final_lr, s.warm_up_epoch, 8 / 64, s.warm_from_zero
    )
    model = torch.nn.Module()
    model.projection = projections.ArcMarginProduct(8, 4, scale=32.0, margin=0.0)
    margin_ref = schedulers.MarginScheduler(
        model,
        1,
        m.increase_start_epoch,
        m.fix_start_epoch,
        m.initial_margin,
        m.final_margin,
        m.update_margin,
        m.increase_type,
    )
    margin_ref.init_margin()
    logged = runs.jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in logged] == list(range(STEPS))
    for r in logged:  # WeSpeaker calls step(i) before iteration i's forward pass
        lr_ref.step(r["step"])
        margin_ref.step(r["step"])
        where = f"step {r['step']}"
        np.testing.assert_allclose(r["lr"], lr_ref.get_lr(), rtol=1e-6, atol=1e-12, err_msg=f"lr, {where}")
        np.testing.assert_allclose(
            r["margin"], margin_ref.get_margin(), rtol=1e-6, atol=1e-7, err_msg=f"margin, {where}"
        )
    margins = [r["margin"] for r in logged]
    assert margins[18] == 0.0 and 0.0 < margins[19 + 5] < 0.2 and margins[39] == pytest.approx(0.2)


def test_resume_after_sigkill_is_exact(run, env, tmp_path):
    """Killed (SIGKILL) after the checkpoint at HALF, the same command again: same params, same batches."""
    log = tmp_path / "killed.log"  # a file, not a pipe nobody reads: a full pipe would stall the child
    with log.open("w") as out:
        proc = subprocess.Popen(_command(tmp_path), env=env, cwd=ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + 240
    while not (tmp_path / "checkpoints" / str(HALF)).is_dir():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    steps = CheckpointManager(tmp_path / "checkpoints").all_steps()
    assert steps == [HALF], f"the kill came too late: checkpoints {steps}"
    result = _run(env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"train.loop: resumed {tmp_path} from step {HALF}" in result.stderr  # the trainer's INFO lines show

    straight, resumed = (runs.jsonl(d / "metrics.jsonl") for d in (run, tmp_path))
    keys = ("step", "data_epoch", "data_step", "index_crc")
    assert [[r[k] for k in keys] for r in resumed] == [[r[k] for k in keys] for r in straight]
    # TensorBoard too holds each step once: the killed run's events up to its checkpoint, the rerun's after it.
    scalars = runs.tensorboard_scalars(tmp_path / "tensorboard")["train/loss"]
    assert scalars == [(r["step"], np.float32(r["loss"])) for r in straight]
    np.testing.assert_allclose([r["loss"] for r in resumed], [r["loss"] for r in straight], rtol=1e-6)
    a, extra_a = CheckpointManager(run / "checkpoints").restore(STEPS)
    b, extra_b = CheckpointManager(tmp_path / "checkpoints").restore(STEPS)
    assert extra_a == extra_b
    diff = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - y), initial=0.0)), a, b)
    print(f"resumed vs straight: max |Δ| over the state = {max(jax.tree.leaves(diff))}")
    assert max(jax.tree.leaves(diff)) <= 1e-6, diff


def _augmentation_files(directory: Path) -> tuple[str, str]:
    """A MUSAN-like noise dir (a music file and a noise file) and a RIR dir, 16-bit WAV."""
    rng = np.random.default_rng(0)
    for rel, n in (("musan/music/m.wav", 3 * 16000), ("musan/noise/n.wav", 5000)):
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(directory / rel, 0.1 * rng.standard_normal(n), 16000, subtype="PCM_16")
    (directory / "rirs").mkdir()
    for i, n in enumerate((300, 1200)):
        rir = np.exp(-np.arange(n) / 100.0) * rng.standard_normal(n)
        sf.write(directory / f"rirs/r{i}.wav", 0.5 * rir / np.max(np.abs(rir)), 16000, subtype="PCM_16")
    return str(directory / "musan"), str(directory / "rirs")


def test_resume_after_sigkill_with_full_augmentation_is_exact(env, tmp_path):
    """The recipe's whole augmentation on (speed perturbation, reverb and noise at p 0.6 drawn by the host and
    applied in the step, SpecAugment): killed after a checkpoint and rerun, the parameters are bit-identical."""
    noise, rirs = _augmentation_files(tmp_path)
    steps, half = 16, 8
    aug = [
        "data.speed_perturb=True", "data.aug_prob=0.6", f"data.noise_data='{noise}'", f"data.reverb_data='{rirs}'",
        "data.spec_aug=True", "data.spec_aug_prob=1.0", f"data.cache_dir='{tmp_path / 'cache'}'",
        f"num_epochs={steps}", f"checkpoint_interval={half}",
    ]  # fmt: skip
    straight = _run(env, tmp_path / "straight", *aug)
    assert straight.returncode == 0, straight.stderr[-3000:]
    workdir = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_command(workdir, *aug), env=env, cwd=ROOT, stdout=out, stderr=out)
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / str(half)).is_dir():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert CheckpointManager(workdir / "checkpoints").all_steps() == [half], "the kill came too late"
    resumed = _run(env, workdir, *aug)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, extra_a = CheckpointManager(tmp_path / "straight" / "checkpoints").restore(steps)
    b, extra_b = CheckpointManager(workdir / "checkpoints").restore(steps)
    assert extra_a == extra_b
    assert a["params"]["projection"]["weight"].shape[1] == 3 * SPEAKERS  # each speed a class
    diff = max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y), initial=0.0)), a, b)))
    print(f"augmented run, resumed vs straight: max |Δ| over the state = {diff}")
    assert diff == 0.0
    keys = ("step", "data_epoch", "data_step", "index_crc", "loss")
    logs = [runs.jsonl(d / "metrics.jsonl") for d in (tmp_path / "straight", workdir)]
    assert [[r[k] for k in keys] for r in logs[0]] == [[r[k] for k in keys] for r in logs[1]]


def test_non_finite_loss_stops_and_keeps_good_checkpoints(run, env, tmp_path):
    """A learning rate that blows the parameters up (peak 1e20): NaN at step 2, a clear error, no bad save.

    (The data cannot do it any more: the host hands over int16 PCM, whose fbank is always finite.)
    """
    extra = ["checkpoint_interval=1", "scheduler_args.initial_lr=1e20", "num_epochs=8"]
    result = _run(env, tmp_path / "run", *extra)
    assert result.returncode == 1
    assert "non-finite loss or gradient at step 2" in result.stderr, result.stderr[-3000:]
    ckpt = CheckpointManager(tmp_path / "run" / "checkpoints")
    assert ckpt.all_steps() == [1, 2]  # the state after step 2 was never saved
    state, extra_state = ckpt.restore(2)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
    (loader,) = extra_state["loader"]  # one loader state per process
    assert {k: loader[k] for k in ("epoch", "step", "samples")} == {"epoch": 0, "step": 2, "samples": 16}


def test_average_and_export(run, tmp_path):
    """``average`` is WeSpeaker's avg_model (params and BN statistics); ``wespeaker`` writes it as a .pt."""
    assert tools.main(["average", str(run), "--num", "2", "--out", str(tmp_path / "avg")]) == 0
    averaged = load_model_dir(tmp_path / "avg")
    variables, projection = averaged.model_variables, averaged.projection
    assert averaged.metadata["steps"] == [HALF, STEPS]
    with CheckpointManager(run / "checkpoints") as ckpt:
        a, b = (ckpt.restore(s)[0] for s in (HALF, STEPS))
    kernel = lambda t: t["params"]["model"]["layer1"]["conv"]["kernel"]
    np.testing.assert_allclose(variables["params"]["layer1"]["conv"]["kernel"], (kernel(a) + kernel(b)) / 2, rtol=1e-6)
    var = lambda t: t["batch_stats"]["model"]["bn"]["var"]
    np.testing.assert_allclose(variables["batch_stats"]["bn"]["var"], (var(a) + var(b)) / 2, rtol=1e-6)
    assert variables["batch_stats"]["bn"]["num_batches_tracked"] == round((HALF + STEPS) / 2)
    weight = (a["params"]["projection"]["weight"] + b["params"]["projection"]["weight"]) / 2
    np.testing.assert_allclose(projection["params"]["weight"], weight, rtol=1e-6)

    assert tools.main(["wespeaker", str(tmp_path / "avg"), str(tmp_path / "avg_model.pt")]) == 0
    state_dict = load_state_dict(tmp_path / "avg_model.pt")
    np.testing.assert_array_equal(state_dict["projection.weight"], projection["params"]["weight"].T)
    np.testing.assert_array_equal(state_dict["layer1.conv.weight"], variables["params"]["layer1"]["conv"]["kernel"].T)


def test_tools_errors(tmp_path, capsys):
    assert tools.main(["export", str(tmp_path)]) == 2
    assert "is not a training run directory: no checkpoints/" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a training run directory: no config.json"):
        tools.read_run_config(tmp_path)
    with pytest.raises(ValueError, match="needs a run on the demo corpus .* data.data_type='shard'"):
        tools.write_demo_eval(load_config(PRESET), tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("not ours")
    assert tools.main(["demo-data", str(tmp_path / "out")]) == 2  # the demo preset, into a non-empty dir
    assert "out exists and is not empty (--overwrite to write into it)" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]  # nothing written, nothing lost


# ----------------------------------------------------------------------------- configuration


def test_overrides_parse():
    config = apply_overrides(
        load_config("demo"),
        ["num_epochs=2", "model.channels=256", "data.num_frms=150", "scheduler_args.initial_lr=1"]
        + ["projection_args.K=2", "data.train_data=/data/list", "dither=0"],
    )
    assert (config.num_epochs, config.model.channels, config.data.num_frms) == (2, 256, 150)
    assert config.scheduler_args.initial_lr == 1.0 and isinstance(config.scheduler_args.initial_lr, float)
    assert config.projection_args["K"] == 2 and config.data.train_data == "/data/list" and config.dither == 0.0
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.chanels=3", r"unknown config key 'model.chanels'; fields of model: \[.*'channels'"),
        ("epochs=3", r"unknown config key 'epochs'; top-level fields"),
        ("projection_args.num_classes=3", r"unknown config key 'projection_args.num_classes'"),
        ("model=3", r"config key 'model' is a group"),
        ("num_epochs=1.5", r"config key 'num_epochs' has type int, got 1.5"),
        ("model.channels", r"not KEY=VALUE"),
        ("eval_data=/x", r"eval_data and eval_trials go together"),
    ],
)
def test_bad_overrides(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(load_config("demo"), [override])


def test_presets_follow_the_recipe():
    base, lm = load_config("voxceleb_glob_c512"), load_config("voxceleb_glob_c512_lm")
    assert base.model.wespeaker_name == "ECAPA_TDNN_GLOB_c512"
    assert load_config("voxceleb_glob_c1024").model.wespeaker_name == "ECAPA_TDNN_GLOB_c1024"
    assert (base.lr_scale_ratio, base.num_epochs, base.data.num_frms, base.keep_checkpoints) == (4.0, 150, 200, 10)
    assert (lm.lr_scale_ratio, lm.num_epochs, lm.data.num_frms, lm.data.speed_perturb) == (2.0, 5, 600, False)
    assert (lm.scheduler_args.initial_lr, lm.scheduler_args.final_lr) == (1e-4, 2.5e-5)
    assert (lm.margin_update.initial_margin, lm.margin_update.final_margin, lm.margin_update.fix_start_epoch) == (
        0.5,
        0.5,
        1,
    )
    assert load_config("voxceleb_glob_c1024_lm").model == load_config("voxceleb_glob_c1024").model
    with pytest.raises(FileNotFoundError, match="no config 'nope'.*presets are"):
        load_config("nope")


def test_workdir_with_another_config_is_refused(tmp_path, capsys):
    config = load_config("demo")
    check_workdir_config(tmp_path, config)
    check_workdir_config(tmp_path, config)  # the same config: fine
    other = apply_overrides(config, ["num_epochs=3"])
    with pytest.raises(ValueError, match=r"different config \(num_epochs: 12 -> 3\).*--force-config"):
        check_workdir_config(tmp_path, other)
    check_workdir_config(tmp_path, other, force=True)
    assert TrainConfig.from_dict(json.loads((tmp_path / "config.json").read_text())) == other
    # The command line reports it (and bad overrides) as an error, before any training.
    assert train_main([f"--workdir={tmp_path}", "num_epochs=4"]) == 2
    assert train_main([f"--workdir={tmp_path}", "model.chanels=4"]) == 2
    assert "different config" in capsys.readouterr().err


def test_distributed_environment_must_be_complete():
    assert initialize_distributed({}) is False  # a single process: nothing to set up
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS needs JAX_NUM_PROCESSES and JAX_PROCESS_ID"):
        initialize_distributed({"JAX_COORDINATOR_ADDRESS": "localhost:1234"})


def test_eval_trials_must_name_known_labelled_utterances(tmp_path):
    (tmp_path / "wav.scp").write_text("a /x/a.wav\nb /x/b.wav\n")
    (tmp_path / "trials").write_text("a c target\n")
    config = _config(f"eval_data='{tmp_path}'", f"eval_trials='{tmp_path / 'trials'}'")
    with pytest.raises(ValueError, match=r"trials: utterance 'c' is not in .*/wav.scp"):
        make_eval_set(config)
    (tmp_path / "trials").write_text("a b\n")
    with pytest.raises(ValueError, match="trial a b has no target/nontarget label"):
        make_eval_set(config)
    (tmp_path / "trials").write_text("a b target\nb a nontarget\n")
    assert make_eval_set(config).trials == [("a", "b", True), ("b", "a", False)]


def test_model_init_must_match_the_model(run, tmp_path):
    config = _config("model.channels=24", f"model_init='{run / 'model'}'")
    with pytest.raises(ValueError, match=r"model_init .*/model is a EcapaConfig\(channels=16.*the config asks for"):
        train_and_evaluate(config, tmp_path)
