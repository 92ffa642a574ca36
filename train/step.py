"""The training step: waveform chunks → front-end (fbank + CMN) → model → margin head → SGD, jitted once.

Data parallelism is `jax.jit` over a ``('data',)`` mesh: the batch is sharded on its first axis,
the state is replicated, and XLA inserts the gradient all-reduce that pmap/DDP did by hand. The
same code runs on one CPU, N GPUs, a TPU slice or several hosts (after ``jax.distributed``).
BatchNorm statistics are computed over the *global* batch (a sharded mean is a global mean), so
results do not depend on the device count; PyTorch DDP normalises per device instead.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ecapa_jax.training.heads import accuracy
from ecapa_jax.training.schedules import Schedule
from train.augment import to_float

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training.

    ``params`` and ``batch_stats`` are ``{'model': …, 'projection': …}``: together they are the variable
    layout of model directories (``ecapa_jax.io.checkpoint.join_variables``).
    """

    step: Array  # () int32: the global iteration, the argument of every schedule
    params: dict
    batch_stats: dict
    opt_state: optax.OptState


def sgd(lr: Schedule, momentum: float = 0.9, nesterov: bool = True, weight_decay: float = 1e-4):
    """PyTorch's ``SGD(momentum, nesterov, weight_decay)`` as optax: the decay term wd·θ joins the
    gradient *before* the momentum buffer (coupled L2, not AdamW-style decoupled), on every parameter."""
    return optax.chain(
        optax.add_decayed_weights(weight_decay),
        optax.sgd(lr, momentum=momentum, nesterov=nesterov),
    )


def init_state(model: nn.Module, head: nn.Module, tx, key: Array, num_samples: int, frontend) -> TrainState:
    """Fresh state for a model fed ``num_samples``-sample waveform chunks through ``frontend``."""
    k_model, k_head = jax.random.split(key)
    feats, _ = frontend.with_dither(0.0)(jnp.zeros((2, num_samples), jnp.float32))
    model_vars = model.init(k_model, feats)
    emb, _ = model.apply(model_vars, feats)
    head_vars = head.init(k_head, emb, jnp.zeros((2,), jnp.int32))
    params = {"model": model_vars["params"], "projection": head_vars["params"]}
    batch_stats = {"model": model_vars.get("batch_stats", {}), "projection": head_vars.get("batch_stats", {})}
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))


def make_train_step(
    model: nn.Module,
    head: nn.Module,
    tx,
    lr: Schedule,
    margin: Schedule,
    *,
    scale: float,
    frontend,
    spec_augment: Callable[[Array, Array], Array] | None = None,
    augment: Callable[[dict, Array], tuple[Array, Array]] | None = None,
) -> Callable[[TrainState, dict, Array], tuple[TrainState, dict]]:
    """``train_step(state, batch, rng) -> (state, metrics)``, pure; jit it with ``jit_train_step``.

    Args:
      model, head: the ECAPA_TDNN and margin-head modules.
      tx: the optax optimiser (its schedule must be ``lr``).
      lr, margin: schedules of the step; evaluated here only to log them and drive the margin.
      scale: the head's logit scale.
      frontend: waveforms → features (``ecapa_jax.frontend``), with the training dither (WeSpeaker: 1.0).
      spec_augment: optional ``(feats (B, T, F), key) -> feats``.
      augment: optional ``(batch, key) -> (wav (B, L) float32, label (B,))``, the waveform augmentation
        (`train.augment.DeviceAugment`, from ``Loader.device_augment``): speed, reverb/noise, peak
        normalisation and the speed's label mapping, before the front-end.

    The batch is ``{'wav': (B, L) float32 in [−1, 1] or int16 PCM, 'label': (B,) int32}`` plus, with
    ``augment``, what it takes (``Loader.device_keys``). Metrics are scalars: loss, accuracy, lr, margin,
    grad_norm.
    """

    def train_step(state: TrainState, batch: dict, rng: Array) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(rng, state.step)
        k_dither, k_spec = jax.random.split(rng)
        if augment is not None:  # its own stream: dither and SpecAugment draw as they did without it
            wav, labels = augment(batch, jax.random.fold_in(rng, 1))  # (B, L), (B,)
        else:
            wav, labels = to_float(batch["wav"]), batch["label"]
        k_dropout = jax.random.fold_in(rng, 2)  # for models with dropout; the keys above stay as they were
        feats, _ = frontend(wav, key=k_dither)  # (B, T, F)
        if spec_augment is not None:
            feats = spec_augment(feats, k_spec)
        m = margin(state.step)

        def loss_fn(params):
            (emb, _), model_stats = model.apply(
                {"params": params["model"], "batch_stats": state.batch_stats["model"]},
                feats,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": k_dropout},
            )
            head_vars = {"params": params["projection"]}
            if state.batch_stats["projection"]:
                head_vars["batch_stats"] = state.batch_stats["projection"]
            (logits, loss), head_stats = head.apply(
                head_vars, emb, labels, margin=m, scale=scale, step=state.step, train=True, mutable=["batch_stats"]
            )
            stats = {"model": model_stats.get("batch_stats", {}), "projection": head_stats.get("batch_stats", {})}
            return loss, (logits, stats)

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": accuracy(logits, labels),
            "lr": jnp.asarray(lr(state.step), jnp.float32),
            "margin": jnp.asarray(m, jnp.float32),
            "grad_norm": optax.tree.norm(grads),
        }
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return train_step


def data_mesh(devices=None) -> Mesh:
    """A 1-D ``('data',)`` mesh over all devices of all processes (or the given ones).

    Devices are ordered by process, so process p's slice of a global batch (``shard_batch``) is the
    p-th block of rows: the same batch as one process loading all of it.
    """
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(sorted(devices, key=lambda d: (d.process_index, d.id))), ("data",))


def jit_train_step(train_step, mesh: Mesh):
    """``train_step`` jitted with the state replicated, the batch sharded over ``data``, the state donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    return jax.jit(
        train_step,
        in_shardings=(replicated, sharded, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def shard_batch(batch: dict, mesh: Mesh) -> dict:
    """This process's slice of the global batch → global arrays sharded over ``data``."""
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharded, np.asarray(v)) for k, v in batch.items()}


def replicate(tree, mesh: Mesh):
    """Places a pytree of host values (the same on every process) on every device of the mesh.

    Each process fills only its own devices (``jax.make_array_from_callback``), which is what a mesh
    spanning several processes allows; typed PRNG keys travel as their key data.
    """
    sharding = NamedSharding(mesh, PartitionSpec())

    def put(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def gather(mesh: Mesh):
    """A jitted ``x -> x`` whose result is replicated: a batch-sharded array made readable on every process."""
    return jax.jit(lambda x: x, out_shardings=NamedSharding(mesh, PartitionSpec()))
