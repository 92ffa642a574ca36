"""The training loop: `train_and_evaluate(config, workdir)`, WeSpeaker's recipe on a JAX mesh.

The workdir is the unit of a run and of its resumption (layout in `train.workdir`). Running the same
command again resumes exactly from the newest checkpoint that restores (`train.checkpointing`): the
state, every process's loader position (so the same batches follow), and the per-step rng, which is
``fold_in(key(seed), step)`` inside the step. The logs are cut back to that step first, so each step
is logged once (`train.logs`).

Steps are numbered as WeSpeaker's iterations: step i (from 0) runs with lr(i) and margin(i), and
the checkpoint called n holds the state after steps 0…n−1.

Multi-process runs (`train.distributed`): every process runs the same command and loads its slice of
each global batch; process 0 writes the logs, evaluates and exports while the others wait; all of
them write and restore the checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ecapa_jax.cli import INPUT_ERRORS
from ecapa_jax.io.checkpoint import load_model_dir
from ecapa_jax.models import build_model
from ecapa_jax.training.heads import make_head
from ecapa_jax.training.schedules import Schedule, exponential_decrease, margin_schedule
from train import augment
from train.checkpointing import Checkpoints
from train.config import TrainConfig
from train.data import Loader, make_source
from train.distributed import (
    ProcessFailedError,
    allgather_json,
    barrier,
    failure_message,
    is_lead,
    on_lead,
)
from train.evaluation import EvalSet, Evaluator, make_eval_set
from train.logs import JsonLog, MetricsLog, NonFiniteError, TensorBoard
from train.step import (
    TrainState,
    data_mesh,
    gather,
    init_state,
    jit_train_step,
    make_train_step,
    replicate,
    sgd,
    shard_batch,
)
from train.workdir import (
    CHECKPOINT_DIR,
    EVAL_FILE,
    METRICS_FILE,
    MODEL_DIR,
    TENSORBOARD_DIR,
    export_model,
    open_workdir,
)

log = logging.getLogger(__name__)


class TrainingStoppedError(RuntimeError):
    """The run stopped before its end (I/O, data, another process); the checkpoints written are kept."""


def schedules(config: TrainConfig, epoch_iter: int) -> tuple[Schedule, Schedule]:
    """(lr, margin) schedules of the step, WeSpeaker's ExponentialDecrease and MarginScheduler."""
    lr = exponential_decrease(
        config.num_epochs, epoch_iter, **dataclasses.asdict(config.scheduler_args), scale_ratio=config.lr_scale_ratio
    )
    return lr, margin_schedule(epoch_iter, **dataclasses.asdict(config.margin_update))


def initial_model(config: TrainConfig, num_classes: int) -> tuple[dict | None, int]:
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


class Trainer:
    """The train step for the ``('data',)`` mesh of every device, and the state it starts from.

    The step is compiled before the first batch goes in, then the processes of a multi-process run meet
    (`train.distributed.barrier`): Gloo gives a process 30 s to find its peers in its first collective, and
    compiling can take longer than that, or be a cache hit on process 0 and not on the others.

    Attributes:
      mesh: all devices of all processes.
      initial_state: the fresh state (``model_init`` applied), replicated on the mesh.
      device_keys: the batch entries the step takes (`train.data.Loader.device_keys`).
      rng: the step key, replicated.
      all_finite: whether a pytree holds only finite values (one replicated bool).
    """

    def __init__(self, config: TrainConfig, loader: Loader, num_classes: int, epoch_iter: int, init: dict | None):
        model, head = build_model(config.model), make_head(config.head_config(num_classes))
        lr, margin = schedules(config, epoch_iter)
        opt = config.optimizer_args
        tx = sgd(lr, opt.momentum, opt.nesterov, opt.weight_decay)
        spec_aug = None
        if config.data.spec_aug:
            d = config.data
            masks = {"num_t_mask": d.num_t_mask, "num_f_mask": d.num_f_mask, "max_t": d.max_t, "max_f": d.max_f}
            spec_aug = lambda feats, key: augment.spec_augment(key, feats, prob=d.spec_aug_prob, **masks)  # noqa: E731
        train_step = make_train_step(
            model,
            head,
            tx,
            lr,
            margin,
            scale=config.head_config(1).scale,
            frontend=config.frontend.with_dither(config.dither),
            spec_augment=spec_aug,
            augment=loader.device_augment,
        )
        self.mesh = data_mesh()
        self.device_keys = loader.device_keys
        init_key, step_key = jax.random.split(jax.random.key(config.seed))
        # One compiled program rather than the model's init op by op (much faster, and cached across runs).
        init_fn = functools.partial(init_state, model, head, tx, num_samples=loader.chunk_len, frontend=config.frontend)
        state = jax.jit(init_fn)(init_key)
        self.initial_state = replicate(state if init is None else _with_init(state, init, tx), self.mesh)
        self.rng = replicate(step_key, self.mesh)
        finite = lambda tree: jax.tree.reduce(jnp.logical_and, jax.tree.map(lambda x: jnp.isfinite(x).all(), tree))  # noqa: E731
        self.all_finite = jax.jit(finite)
        self._jitted, self._gather = jit_train_step(train_step, self.mesh), gather(self.mesh)
        self._step = None

    def __call__(self, state: TrainState, batch: dict) -> tuple[TrainState, dict, jax.Array]:
        """One step on this process's slice of the global batch: ``(state, metrics, global batch indices)``."""
        arrays = shard_batch({k: batch[k] for k in (*self.device_keys, "index")}, self.mesh)
        index = arrays.pop("index")
        if self._step is None:
            self._step = self._jitted.lower(state, arrays, self.rng).compile()
            barrier("step-compiled")
        state, metrics = self._step(state, arrays, self.rng)
        return state, metrics, self._gather(index)


def _with_init(state: TrainState, init: dict, tx) -> TrainState:
    """``state`` with model_init's variables (and head, if it has one) and a fresh optimiser state."""
    params = {**state.params, **init["params"]}
    stats = {**state.batch_stats, **init["batch_stats"]}
    for name, new, old in (("params", params, state.params), ("batch_stats", stats, state.batch_stats)):
        if jax.tree.map(np.shape, new) != jax.tree.map(np.shape, old):
            raise ValueError(f"model_init's {name} do not fit the configured model and head")
    params, stats = jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, stats)
    return TrainState(state.step, params, stats, tx.init(params))


def restore_or_init(
    trainer: Trainer, checkpoints: Checkpoints, loader: Loader, workdir: Path
) -> tuple[TrainState, int]:
    """The newest checkpoint that restores (the loader moved to its position), or the fresh state: (state, step)."""
    state = trainer.initial_state
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored = checkpoints.restore(target)
    if restored is None:
        return state, 0
    state, loader_state, step = restored
    try:
        loader.restore(loader_state)
    except ValueError as e:  # e.g. a data list changed under --force-config
        raise ValueError(
            f"checkpoint {checkpoints.manager.step_path(step)}: its data position does not fit: {e}"
        ) from None
    log.info("resumed %s from step %d", workdir, step)
    return state, step


@dataclasses.dataclass
class RunLogs:
    """The run's logging: metrics one step late, evaluation, TensorBoard (all cut back to ``start``)."""

    metrics: MetricsLog
    evaluate: Evaluator
    tensorboard: TensorBoard

    @classmethod
    def open(
        cls, workdir: Path, config: TrainConfig, eval_set: EvalSet | None, start: int, total: int, last_checkpoint
    ):
        lead = is_lead()
        metrics_jsonl, eval_jsonl = JsonLog(workdir / METRICS_FILE, lead), JsonLog(workdir / EVAL_FILE, lead)
        on_lead("truncate-logs", lambda: [f.truncate(start) for f in (metrics_jsonl, eval_jsonl)])
        tensorboard = TensorBoard(workdir / TENSORBOARD_DIR, purge_step=start, enabled=lead)
        metrics = MetricsLog(
            metrics_jsonl,
            tensorboard,
            log_interval=config.log_interval,
            total=total,
            global_batch_size=config.data.global_batch_size,
            start=start,
            last_checkpoint=last_checkpoint,
            lead=lead,
        )
        return cls(metrics, Evaluator(config, eval_set, eval_jsonl, tensorboard), tensorboard)

    def close(self) -> None:
        self.metrics.close()
        self.tensorboard.close()


def train_and_evaluate(config: TrainConfig, workdir: str | os.PathLike, force_config: bool = False) -> dict[str, Any]:
    """Trains (or resumes) the run in ``workdir``, evaluating on held-out trials; exports ``workdir/model``.

    Args:
      config: the run.
      workdir: its directory (created); see `train.workdir` for what goes in it.
      force_config: continue a run whose ``config.json`` differs (it is rewritten).

    Returns:
      {'step': steps done, 'eer': final held-out EER or None, 'model_dir': path}.

    Raises:
      ValueError, OSError: before any training: a bad config, data list or ``model_init``, a workdir
        holding another config or used by another trainer, checkpoints none of which restores.
      NonFiniteError: a non-finite loss, gradient or parameter; the checkpoints are all finite.
      TrainingStoppedError: the run stopped early (a failed write, unusable data, another process failed);
        the checkpoints written are kept and the same command resumes from the newest.
    """
    workdir = Path(workdir)
    # Data lists, labels, augmentation files and model_init are read before anything goes into the
    # workdir, so a mistake there leaves nothing behind that would refuse the corrected command.
    source = make_source(config.data)
    loader = Loader(source, config.data, jax.process_index(), jax.process_count())
    epoch_iter = config.steps_per_epoch or loader.epoch_iter
    total = config.num_epochs * epoch_iter
    init, num_classes = initial_model(config, loader.num_classes)
    eval_set = make_eval_set(config, source.demo)
    with contextlib.ExitStack() as stack:
        lock = on_lead("open-workdir", lambda: open_workdir(workdir, config, force_config))
        if lock is not None:
            stack.callback(lock.release)
        trainer = Trainer(config, loader, num_classes, epoch_iter, init)
        checkpoints = Checkpoints(workdir / CHECKPOINT_DIR, config.keep_checkpoints)
        stack.push(_closing(checkpoints.close))
        state, start = restore_or_init(trainer, checkpoints, loader, workdir)
        logs = RunLogs.open(workdir, config, eval_set, start, total, checkpoints.describe_latest)
        stack.push(_closing(logs.close))
        try:
            state = _train(trainer, state, start, total, config, loader, checkpoints, logs)
            eer = logs.evaluate(state, total)
            counts = _data_counts(loader)
            logs.close()
            metadata = {"source": str(workdir.resolve()), "source_format": "ecapa_jax.train", "step": total, "eer": eer}
            model_dir = on_lead("export", lambda: export_model(workdir, config, state, metadata))
        except (*INPUT_ERRORS, ProcessFailedError, jax.errors.JaxRuntimeError) as e:
            log.debug("training stopped", exc_info=True)
            raise TrainingStoppedError(
                f"training stopped after {logs.metrics.steps_done} steps: {failure_message(e)}. "
                f"{checkpoints.describe_latest()}; the same command resumes from it"
            ) from e
    if is_lead():
        _report_end(workdir, total, eer, counts)
    return {"step": total, "eer": eer, "model_dir": str(model_dir or workdir / MODEL_DIR)}


def _closing(close: Callable[[], None]):
    """An exit callback (``ExitStack.push``) calling ``close``, whose own error (say, a full disk again)
    is raised only when no other error is already on its way out."""

    def exit_(exc_type, exc, traceback) -> bool:
        try:
            close()
        except Exception:
            if exc_type is None:
                raise
            log.debug("while stopping", exc_info=True)
        return False

    return exit_


def _train(trainer, state, start, total, config, loader, checkpoints, logs) -> TrainState:
    """Steps ``start`` … ``total − 1``, with checkpoints and evaluations on schedule; the state after them."""
    if start < total and config.eval_interval and start % config.eval_interval == 0:
        logs.evaluate(state, start)  # at 0, or the evaluation that a run killed after its checkpoint missed
    checkpoint_every = config.checkpoint_interval or loader.epoch_iter
    batches = iter(loader)
    try:
        for step in range(start, total):
            position = loader.state()
            state, metrics, index = trainer(state, next(batches))
            data = {"data_epoch": position["epoch"], "data_step": position["step"], "index_crc": _crc(index)}
            logs.metrics.push(step, metrics, data)
            done = step + 1
            if done % checkpoint_every == 0 or done == total:
                logs.metrics.flush()
                logs.tensorboard.flush()  # what the checkpoint follows must outlive a kill (the kill soak found it)
                if not trainer.all_finite((state.params, state.batch_stats)):
                    raise NonFiniteError(
                        f"non-finite parameters after step {step}; not saved. {checkpoints.describe_latest()}"
                    )
                checkpoints.save(done, state, loader.state())
                logs.metrics.restart_clock(done)
            if config.eval_interval and done % config.eval_interval == 0 and done < total:
                logs.metrics.flush()
                logs.evaluate(state, done)
                logs.metrics.restart_clock(done)
        logs.metrics.flush()
    finally:
        batches.close()
    return state


def _crc(index: jax.Array) -> Callable[[], int]:
    """The checksum of a step's global batch indices, computed when the step is logged (one step late)."""
    return lambda: zlib.crc32(np.asarray(index).tobytes())


def _data_counts(loader: Loader) -> dict[str, int]:
    """What the loaders of all processes read: samples, reads, unusable and too-short utterances."""
    per_process = allgather_json(dict(loader.counts))
    return {k: sum(c.get(k, 0) for c in per_process) for k in ("samples", "reads", "bad", "filtered")}


def _report_end(workdir: Path, total: int, eer: float | None, counts: dict[str, int]) -> None:
    if eer is not None:
        print(f"final held-out EER after {total} steps: {100 * eer:.2f}%")
    print(
        f"data: {counts['samples']} samples from {counts['reads']} reads; {counts['bad']} unreadable and "
        f"{counts['filtered']} too short (each replaced by another utterance)"
    )
    print(
        f"model: {workdir / MODEL_DIR}; curves: tensorboard --logdir {workdir / TENSORBOARD_DIR} "
        f"(pip install tensorboard), or {workdir / METRICS_FILE} and {workdir / EVAL_FILE}"
    )


__all__ = [
    "NonFiniteError",
    "RunLogs",
    "Trainer",
    "TrainingStoppedError",
    "initial_model",
    "restore_or_init",
    "schedules",
    "train_and_evaluate",
]
