"""The trainer survives faults without losing a step (issue 11): damaged checkpoints, a failing write, two
trainers on one workdir, logs of an interrupted run, unreadable audio, stale export folders.

Most scenarios start from a copy of one finished tiny run (checkpoints at 2, 4 and 6) changed the way a fault
would leave it, then run the same command again: one trainer process per scenario, programs from a shared
compilation cache.
"""

import fcntl
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import runs

from ecapa_jax.io.checkpoint import CheckpointManager
from train.__main__ import main as train_main
from train.demo_corpus import DemoCorpus, write_dataset
from train.logs import JsonLog
from train.workdir import WorkdirBusyError, WorkdirLock

STEPS, EVERY = 6, 2
RUN = [f"num_epochs={STEPS}", f"checkpoint_interval={EVERY}", "keep_checkpoints=3"]


@pytest.fixture(scope="module")
def straight(train_env, tmp_path_factory):
    """The uninterrupted run: checkpoints 2, 4, 6, the model exported."""
    workdir = tmp_path_factory.mktemp("straight") / "run"
    result = runs.run(workdir, *RUN, environ=train_env)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def _copy(straight, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(straight, workdir)
    return workdir


def _largest_file(directory):
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_restore_skips_damaged_checkpoints(straight, train_env, tmp_path):
    """Checkpoint 6 with a truncated array file and 4 without its _METADATA: each is skipped with one line naming
    it and why, moved to checkpoints.damaged/, and the run resumes from 2 and ends where the straight run did."""
    workdir = _copy(straight, tmp_path)
    reference, _ = runs.checkpoint(straight, STEPS)
    array_file = _largest_file(workdir / "checkpoints" / "6" / "state")
    array_file.write_bytes(array_file.read_bytes()[: array_file.stat().st_size // 2])
    (workdir / "checkpoints" / "4" / "state" / "_METADATA").unlink()
    # What an export killed halfway leaves (save_model_dir's and save_state_dict's temporaries).
    (workdir / ".model.0123456789ab.tmp" / "state").mkdir(parents=True)
    (workdir / ".model.pt.0123456789ab.tmp").write_bytes(b"partial")

    result = runs.run(workdir, *RUN, environ=train_env)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped = [line for line in result.stderr.splitlines() if "does not restore" in line]
    assert [f"checkpoints/{s} does not restore" in line for s, line in zip((6, 4), skipped, strict=True)] == [1, 1]
    assert "Traceback" not in result.stderr, result.stderr[-6000:]
    assert f"resumed {workdir} from step 2" in result.stderr
    assert sorted(p.name.split(".")[0] for p in (workdir / "checkpoints.damaged").iterdir()) == ["4", "6"]
    state, _ = runs.checkpoint(workdir, STEPS)
    assert runs.bitwise_equal(state, reference)
    assert [r["step"] for r in runs.jsonl(workdir / "metrics.jsonl")] == list(range(STEPS))
    assert not list(workdir.glob(".model*")), list(workdir.glob(".*"))


def test_checkpoints_of_another_model_are_refused_not_set_aside(straight, train_env, tmp_path):
    """--force-config with another model: its checkpoints do not fit, which is a config error (exit 2, one line),
    not damage: they stay where they are."""
    workdir = _copy(straight, tmp_path)
    result = runs.run(workdir, *RUN, "model.channels=24", environ=train_env, flags=["--force-config"])
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoints/6 holds a state of other shapes than this config's" in errors[0], errors
    assert not (workdir / "checkpoints.damaged").exists() and "Traceback" not in result.stderr
    with CheckpointManager(workdir / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [2, 4, 6]


def test_logs_hold_each_step_once_when_no_checkpoint_was_written(straight, train_env, tmp_path):
    """A run killed before its first checkpoint leaves logs but no checkpoint: the rerun starts over and logs
    every step once (metrics.jsonl, and TensorBoard once its purge marker is applied)."""
    workdir = _copy(straight, tmp_path)
    shutil.rmtree(workdir / "checkpoints")
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 6, "loss": 1.0')  # a line cut short by the kill
    result = runs.run(workdir, *RUN, environ=train_env)
    assert result.returncode == 0, result.stderr[-3000:]
    records = runs.jsonl(workdir / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(STEPS))
    assert [r["loss"] for r in records] == [r["loss"] for r in runs.jsonl(straight / "metrics.jsonl")]
    scalars = runs.tensorboard_scalars(workdir / "tensorboard")
    assert len(list((workdir / "tensorboard").iterdir())) == 2  # the interrupted run's file and this one's
    for name in ("loss", "accuracy", "lr", "margin", "grad_norm", "samples_per_s"):
        assert [s for s, _ in scalars[f"train/{name}"]] == list(range(STEPS)), name
        assert [v for _, v in scalars[f"train/{name}"]] == [np.float32(r[name]) for r in records], name


def test_a_failed_checkpoint_write_stops_at_once(straight, train_env, tmp_path):
    """Resumed from 4 with files limited to 64 kB, the save of checkpoint 6 fails: the run stops at once with one
    line naming the path and the reason (exit 1), no traceback, and checkpoints 2 and 4 restore as before."""
    workdir = _copy(straight, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "6")
    before = runs.checkpoint(workdir, 4)
    # Array files of a checkpoint are larger than 64 kB; the logs and the resumed run's other files are not.
    result = runs.run(workdir, *RUN, environ=train_env, timeout=120, file_size_limit=64_000)
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not write checkpoint 6 to" in errors[0] and "File too large" in errors[0], (
        result.stderr[-4000:]
    )
    assert "The last good checkpoint is step 4" in errors[0]
    assert "Traceback" not in result.stderr and "ERROR:absl" not in result.stderr, result.stderr[-3000:]
    with CheckpointManager(workdir / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [2, 4]
    after = runs.checkpoint(workdir, 4)
    assert runs.bitwise_equal(after[0], before[0]) and after[1] == before[1]


def test_one_trainer_per_workdir(tmp_path, capsys):
    """The lock refuses a second trainer (exit 2, naming the holder, nothing written) and is released by the
    kernel when its holder dies, however it dies."""
    holder = runs.hold_lock(tmp_path)
    try:
        with pytest.raises(WorkdirBusyError, match=rf"in use by another trainer \(pid {holder.pid} on "):
            WorkdirLock(tmp_path).acquire()
        assert train_main(runs.train_args(tmp_path, *RUN)) == 2
        assert f"is in use by another trainer (pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # no config.json, no logs
    finally:
        holder.kill()
        holder.wait()
    lock = WorkdirLock(tmp_path)  # a dead holder's lock is free
    lock.acquire()
    with open(tmp_path / ".lock") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert f"pid {os.getpid()} on" in (tmp_path / ".lock").read_text()
    lock.release()


def test_log_truncation_names_the_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"step": 2, "loss": 1')
    JsonLog(path).truncate(2)  # the torn last line is dropped, step 1 kept
    assert runs.jsonl(path) == [{"step": 0}, {"step": 1}]
    path.write_text('{"step": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not valid JSON"):
        JsonLog(path).truncate(1)
    path.write_text('{"step": 0}\n{"loss": 1}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl: record 2 has no integer 'step'"):
        JsonLog(path).truncate(1)


# ----------------------------------------------------------------------------- unreadable audio


@pytest.fixture(scope="module")
def raw_data(tmp_path_factory):
    """The tiny run's 16 speakers × 4 utterances as WAV files (``wav/``) and a raw list."""
    corpus = DemoCorpus(num_speakers=16, utts_per_speaker=4, num_held_out=0)
    return Path(write_dataset(corpus, tmp_path_factory.mktemp("data"))["dir"])


def _dataset(raw_data, tmp_path):
    """A copy of the data set whose files a test may damage: (raw list, WAV directory)."""
    wavs, data_list = tmp_path / "wav", tmp_path / "raw.list"
    shutil.copytree(raw_data / "wav", wavs)
    data_list.write_text((raw_data / "raw.list").read_text().replace(str(raw_data / "wav"), str(wavs)))
    return data_list, wavs


def _raw(data_list, *extra):
    return ["data.data_type='raw'", f"data.train_data='{data_list}'", *extra]


def _corrupt(path):
    path.write_bytes(b"this is not audio")


def test_a_resumed_run_reports_the_whole_runs_data(straight, train_env, tmp_path):
    """The loader's books (samples, reads, unusable files) travel in the checkpoint with its position: a run
    resumed from checkpoint 4 ends with the straight run's counts (not only what it read after the restart),
    and every process's loader state is saved."""
    workdir = _copy(straight, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / str(STEPS))
    result = runs.run(workdir, *RUN, environ=train_env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = f"data: {STEPS * 8} samples from {STEPS * 8} reads; 0 unreadable and 0 too short"
    assert line in result.stdout, result.stdout
    (_, extra), (_, extra_ref) = runs.checkpoint(workdir, STEPS), runs.checkpoint(straight, STEPS)
    assert extra == extra_ref and extra["loader"][0]["samples"] == STEPS * 8


def test_a_broken_data_set_stops_before_any_work_naming_files(raw_data, train_env, tmp_path):
    """A quarter of the files unreadable: the bound (max_bad_fraction 1%) stops the run as the list is indexed,
    with one line naming files; nothing was done, so the exit status is 2 and nothing is written."""
    data_list, wavs = _dataset(raw_data, tmp_path)
    broken = sorted(wavs.glob("*.wav"))[::4]
    for path in broken:
        _corrupt(path)
    result = runs.run(
        tmp_path / "run", *RUN, *_raw(data_list, f"data.cache_dir='{tmp_path / 'cache'}'"), environ=train_env
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "16 of 64 utterances are unusable" in errors[0], errors
    assert "max_bad_fraction 1.0%" in errors[0] and any(path.stem in errors[0] for path in broken), errors[0]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
