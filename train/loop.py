"""The training loop: `train_and_evaluate(config, workdir)`, WeSpeaker's recipe on a JAX mesh.

The workdir is the unit of a run and of its resumption::

    WORKDIR/config.json        the resolved TrainConfig (a different one is refused)
    WORKDIR/checkpoints/<n>/   state after n steps (params, batch_stats, opt_state, step) + loader position
    WORKDIR/metrics.jsonl      every ``log_interval``-th step: loss, accuracy, lr, margin, grad_norm,
                               samples/s, and the data position and index checksum of its batch
    WORKDIR/eval.jsonl         held-out EER at step 0 (fresh runs), every ``eval_interval`` steps, the end
    WORKDIR/model/             the final inference model directory (``ecapa_jax.load`` reads it)
    WORKDIR/model.pt           the same model as a WeSpeaker state_dict (``python -m ecapa_jax.convert``)

Running the same command again resumes exactly from the newest checkpoint: the state, the loader
position (so the same batches follow), and the per-step rng, which is ``fold_in(key(seed), step)``
inside the step. Lines of ``metrics.jsonl`` / ``eval.jsonl`` written after that checkpoint by the
interrupted process are dropped first, so each step is logged once.

Steps are numbered as WeSpeaker's iterations: step i (from 0) runs with lr(i) and margin(i), and
the checkpoint called n holds the state after steps 0…n−1.

Multi-process runs: `initialize_distributed` calls ``jax.distributed.initialize`` when
``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``) is set, or when
SLURM / Open MPI report more than one task (then JAX detects the rest). Each process loads its
slice of every global batch; process 0 writes the logs; orbax writes the checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ecapa_jax.backend.metrics import compute_eer
from ecapa_jax.backend.scoring import cosine_scores, read_trials
from ecapa_jax.encoder import Encoder
from ecapa_jax.frontend.audio import load_audio
from ecapa_jax.io.checkpoint import CheckpointManager, load_model_dir, save_model_dir, split_variables
from ecapa_jax.io.convert.wespeaker import dir_to_wespeaker
from ecapa_jax.io.kaldi_io import read_wav_scp
from ecapa_jax.models import build_model
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.training.heads import make_head
from ecapa_jax.training.schedules import Schedule, exponential_decrease, margin_schedule
from train import augment
from train.config import TrainConfig, check_workdir_config
from train.data import Loader, make_source
from train.step import (
    TrainState,
    data_mesh,
    init_state,
    jit_train_step,
    make_train_step,
    replicate,
    sgd,
    shard_batch,
)

log = logging.getLogger(__name__)

METRICS_FILE, EVAL_FILE, CHECKPOINT_DIR, MODEL_DIR = "metrics.jsonl", "eval.jsonl", "checkpoints", "model"
WESPEAKER_FILE = "model.pt"  # the final model as WeSpeaker's state_dict, for WeSpeaker's own tools


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter; nothing non-finite was saved."""


def initialize_distributed(environ=os.environ) -> bool:
    """``jax.distributed.initialize`` for a multi-process run described by the environment; True if called."""
    if "JAX_COORDINATOR_ADDRESS" in environ:
        count, index = environ.get("JAX_NUM_PROCESSES"), environ.get("JAX_PROCESS_ID")
        if count is None or index is None:
            raise ValueError("JAX_COORDINATOR_ADDRESS needs JAX_NUM_PROCESSES and JAX_PROCESS_ID as well")
        jax.distributed.initialize(environ["JAX_COORDINATOR_ADDRESS"], int(count), int(index))
        return True
    if int(environ.get("SLURM_NTASKS", 1)) > 1 or int(environ.get("OMPI_COMM_WORLD_SIZE", 1)) > 1:
        jax.distributed.initialize()
        return True
    return False


# ----------------------------------------------------------------------------- schedules and state


def schedules(config: TrainConfig, epoch_iter: int) -> tuple[Schedule, Schedule]:
    """(lr, margin) schedules of the step, WeSpeaker's ExponentialDecrease and MarginScheduler."""
    lr = exponential_decrease(
        config.num_epochs, epoch_iter, **dataclasses.asdict(config.scheduler_args), scale_ratio=config.lr_scale_ratio
    )
    return lr, margin_schedule(epoch_iter, **dataclasses.asdict(config.margin_update))


def _initial_model(config: TrainConfig, num_classes: int) -> tuple[dict | None, int]:
    """``model_init``'s variables (the shared layout, or None) and the head's class count (from its
    projection when it has one)."""
    if not config.model_init:
        return None, num_classes
    init = load_model_dir(config.model_init)
    if init.config != config.model:
        raise ValueError(f"model_init {config.model_init} is a {init.config}, the config asks for {config.model}")
    projection = init.projection
    if projection is not None:  # the head keeps its classes (the LM fine-tune keeps 3 × speakers)
        params, head = projection["params"], config.head_config(1)
        weight = params.get("weight", params.get("trans_2", {}).get("kernel"))  # margin heads / softmax
        if weight is None:
            raise ValueError(f"model_init {config.model_init}: its projection has no class weights ({sorted(params)})")
        num_classes = weight.shape[1] // (head.K if head.project_type == "arc_margin_intertopk_subcenter" else 1)
    return init.variables, num_classes


def _with_init(state: TrainState, init: dict, tx) -> TrainState:
    """``state`` with model_init's variables (and head, if it has one) and a fresh optimiser state."""
    params = {**state.params, **init["params"]}
    stats = {**state.batch_stats, **init["batch_stats"]}
    for name, new, old in (("params", params, state.params), ("batch_stats", stats, state.batch_stats)):
        if jax.tree.map(np.shape, new) != jax.tree.map(np.shape, old):
            raise ValueError(f"model_init's {name} do not fit the configured model and head")
    params, stats = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, stats)
    return TrainState(state.step, params, stats, tx.init(params))


def _all_finite(tree) -> bool:
    return bool(jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), tree), True))


# ----------------------------------------------------------------------------- evaluation


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Verification trials and the audio of their utterances.

    Attributes:
      trials: [(enroll id, test id, is target)].
      load: utterance id → (N,) float32 waveform at 16 kHz.
    """

    trials: list[tuple[str, str, bool]]
    load: Any

    @property
    def utterances(self) -> list[str]:
        return sorted({u for e, t, _ in self.trials for u in (e, t)})


def make_eval_set(config: TrainConfig, demo=None) -> EvalSet | None:
    """The demo corpus's held-out trials, or ``eval_trials`` over ``eval_data``; None when there is neither.

    Raises:
      ValueError: an unlabelled trial, or a trial utterance missing from ``eval_data/wav.scp``.
    """
    if config.eval_trials:
        scp = read_wav_scp(os.path.join(config.eval_data, "wav.scp"))
        trials = []
        for t in read_trials(config.eval_trials):
            if t.label is None:
                raise ValueError(f"{config.eval_trials}: trial {t.enroll} {t.test} has no target/nontarget label")
            for u in (t.enroll, t.test):
                if u not in scp:
                    raise ValueError(f"{config.eval_trials}: utterance {u!r} is not in {config.eval_data}/wav.scp")
            trials.append((t.enroll, t.test, t.label == "target"))
        return EvalSet(trials, lambda u: load_audio(scp[u], config.data.sample_rate))
    if demo is not None and demo.num_held_out >= 2:
        return EvalSet(demo.held_out_trials(config.num_eval_trials), demo.waveform)
    return None


def evaluate(encoder: Encoder, eval_set: EvalSet, batch_size: int = 16) -> dict[str, float]:
    """Held-out EER: whole-utterance embeddings (``Encoder.embed_batch``), cosine scores, WeSpeaker's EER.

    Returns:
      {'eer': fraction, 'threshold': score at the EER, 'trials': count}.
    """
    utts = eval_set.utterances
    emb = encoder.embed_batch([eval_set.load(u) for u in utts], batch_size=batch_size)
    row = {u: i for i, u in enumerate(utts)}
    enroll = emb[[row[e] for e, _, _ in eval_set.trials]]
    test = emb[[row[t] for _, t, _ in eval_set.trials]]
    eer, threshold = compute_eer(cosine_scores(enroll, test), np.array([y for _, _, y in eval_set.trials]))
    return {"eer": eer, "threshold": threshold, "trials": len(eval_set.trials)}


# ----------------------------------------------------------------------------- logs


class JsonLog:
    """Appends JSON lines (on process 0 only); `truncate` drops lines logged past a resumed step."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def truncate(self, before_step: int, inclusive: bool = False) -> None:
        if not (self.enabled and self.path.is_file()):
            return
        last = before_step if inclusive else before_step - 1
        keep = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= last]
        self.path.write_text("".join(line + "\n" for line in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _check_finite(record: dict, ckpt: CheckpointManager) -> None:
    if not all(math.isfinite(record[k]) for k in ("loss", "grad_norm")):
        raise NonFiniteError(
            f"non-finite loss or gradient at step {record['step']} (loss {record['loss']}, grad_norm "
            f"{record['grad_norm']}, lr {record['lr']:.4g}); stopped without saving. The last good checkpoint "
            f"is step {ckpt.latest_step()} in {ckpt.directory}; lower scheduler_args.initial_lr or check the data, "
            "then rerun (with --force-config after changing the config) to continue from it"
        )


# ----------------------------------------------------------------------------- the loop


def train_and_evaluate(config: TrainConfig, workdir: str | os.PathLike, force_config: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``, evaluating on held-out trials; exports ``workdir/model``.

    Args:
      config: the run.
      workdir: its directory (created); see the module docstring for what goes in it.
      force_config: continue a run whose ``config.json`` differs (it is rewritten).

    Returns:
      {'step': steps done, 'eer': final held-out EER or None, 'model_dir': path}.

    Raises:
      ValueError: ``workdir`` holds a run with another config (unless ``force_config``).
      NonFiniteError: a non-finite loss, gradient or parameter; the checkpoints are all finite.
    """
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    # Data lists, labels, augmentation files and model_init are read before anything goes into the
    # workdir, so a mistake there leaves nothing behind that would refuse the corrected command.
    source = make_source(config.data)
    loader = Loader(source, config.data, jax.process_index(), jax.process_count())
    epoch_iter = config.steps_per_epoch or loader.epoch_iter
    total = config.num_epochs * epoch_iter
    lr, margin = schedules(config, epoch_iter)
    init, num_classes = _initial_model(config, loader.num_classes)
    eval_set = make_eval_set(config, source.demo)
    if lead:
        check_workdir_config(workdir, config, force=force_config)
    model = build_model(config.model)
    frontend = config.frontend
    head = make_head(config.head_config(num_classes))
    opt = config.optimizer_args
    tx = sgd(lr, opt.momentum, opt.nesterov, opt.weight_decay)
    spec_aug = None
    if config.data.spec_aug:
        d = config.data
        masks = {"num_t_mask": d.num_t_mask, "num_f_mask": d.num_f_mask, "max_t": d.max_t, "max_f": d.max_f}
        spec_aug = lambda feats, key: augment.spec_augment(key, feats, prob=d.spec_aug_prob, **masks)
    train_step = make_train_step(
        model,
        head,
        tx,
        lr,
        margin,
        scale=config.head_config(1).scale,
        frontend=frontend.with_dither(config.dither),
        spec_augment=spec_aug,
        augment=loader.device_augment,
    )
    mesh = data_mesh()
    step_fn = jit_train_step(train_step, mesh)
    init_key, step_key = jax.random.split(jax.random.key(config.seed))
    # One compiled program rather than the model's init op by op (much faster, and cached across runs).
    state = jax.jit(functools.partial(init_state, model, head, tx, num_samples=loader.chunk_len, frontend=frontend))(
        init_key
    )
    if init is not None:
        state = _with_init(state, init, tx)
    state = replicate(state, mesh)
    rng = replicate(step_key, mesh)

    metrics_log, eval_log = JsonLog(workdir / METRICS_FILE, lead), JsonLog(workdir / EVAL_FILE, lead)
    ckpt = CheckpointManager(workdir / CHECKPOINT_DIR, config.keep_checkpoints)
    step = 0
    if ckpt.latest_step() is not None:
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        state, extra = ckpt.restore(target=target)
        step = int(jax.device_get(state.step))
        loader.restore(extra["loader"])
        metrics_log.truncate(step)
        eval_log.truncate(step, inclusive=step < total)  # a finished run's final evaluation is redone
        log.info("resumed %s from step %d", workdir, step)

    def run_eval(at_step: int) -> float | None:
        if eval_set is None:
            return None
        variables, _ = split_variables({"params": state.params, "batch_stats": state.batch_stats})
        result = evaluate(Encoder(config.model, variables, frontend), eval_set, config.eval_batch_size)
        eval_log.write({"step": at_step, **result})
        if lead:
            tqdm.tqdm.write(f"step {at_step}: held-out EER {100 * result['eer']:.2f}% ({result['trials']} trials)")
        return result["eer"]

    def restart_clock() -> None:  # samples/s counts training only, not evaluation
        nonlocal last_log
        last_log = (step, time.perf_counter())

    checkpoint_every = config.checkpoint_interval or epoch_iter
    if step == 0 and config.eval_interval:
        run_eval(0)
    pending: dict | None = None  # the previous step: metrics still on the device, logged one step late
    last_log = (step, time.perf_counter())

    def finish(p: dict) -> None:
        nonlocal last_log
        record = {"step": p["step"], **{k: float(v) for k, v in jax.device_get(p["metrics"]).items()}, **p["data"]}
        _check_finite(record, ckpt)
        if (p["step"] + 1) % config.log_interval == 0 or p["step"] + 1 == total:
            now = time.perf_counter()
            samples = (p["step"] + 1 - last_log[0]) * config.data.global_batch_size
            record["samples_per_s"] = samples / (now - last_log[1])
            last_log = (p["step"] + 1, now)
            metrics_log.write(record)
            bar.set_postfix(
                loss=f"{record['loss']:.3f}",
                acc=f"{record['accuracy']:.3f}",
                lr=f"{record['lr']:.3g}",
                margin=f"{record['margin']:.3f}",
                samples_s=f"{record['samples_per_s']:.0f}",
            )

    batches = iter(loader)
    bar = tqdm.tqdm(total=total, initial=step, disable=not lead, desc="train", dynamic_ncols=True)
    try:
        while step < total:
            position = loader.state()
            batch = next(batches)
            data = {"data_epoch": position["epoch"], "data_step": position["step"]}
            data["index_crc"] = zlib.crc32(batch["index"].tobytes())
            state, metrics = step_fn(state, shard_batch({k: batch[k] for k in loader.device_keys}, mesh), rng)
            if pending is not None:
                finish(pending)
            pending = {"step": step, "metrics": metrics, "data": data}
            step += 1
            bar.update(1)
            save = step % checkpoint_every == 0 or step == total
            evaluate_now = bool(config.eval_interval) and step % config.eval_interval == 0 and step < total
            if save or evaluate_now or step == total:
                finish(pending)
                pending = None
            if save:
                if not _all_finite((state.params, state.batch_stats)):
                    raise NonFiniteError(
                        f"non-finite parameters after step {step - 1}; not saved. The last good checkpoint is step "
                        f"{ckpt.latest_step()} in {ckpt.directory}"
                    )
                ckpt.save(step, state, {"loader": loader.state(), "step": step})
            if evaluate_now:
                run_eval(step)
                restart_clock()
        eer = run_eval(total)
    finally:
        bar.close()
        batches.close()
        ckpt.wait_until_finished()
        ckpt.close()

    model_dir = workdir / MODEL_DIR
    if lead:
        variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        metadata = {"source": str(workdir.resolve()), "source_format": "ecapa_jax.train", "step": total, "eer": eer}
        save_model_dir(model_dir, config.model, variables, frontend, metadata, overwrite=True)
        if isinstance(config.model, EcapaConfig) and config.model.is_wespeaker:  # WeSpeaker's ECAPA only
            dir_to_wespeaker(model_dir, workdir / WESPEAKER_FILE, overwrite=True)
        if eer is not None:
            print(f"final held-out EER after {total} steps: {100 * eer:.2f}%")
    return {"step": total, "eer": eer, "model_dir": str(model_dir)}


__all__ = [
    "EvalSet",
    "JsonLog",
    "NonFiniteError",
    "evaluate",
    "initialize_distributed",
    "make_eval_set",
    "schedules",
    "train_and_evaluate",
]
