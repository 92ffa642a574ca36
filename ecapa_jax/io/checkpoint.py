"""Checkpoint I/O: pytrees through orbax, the ecapa_jax model directory, numbered training checkpoints.

One variable layout serves the training state and model directories: the Flax collections at the top,
the speaker model and its training head (the ``projection``, as WeSpeaker names it) below::

    {"params":      {"model": {...}, "projection": {...}},
     "batch_stats": {"model": {...}, "projection": {...}}}     # projection: absent without a head

``join_variables`` builds it from the model's ``{'params', 'batch_stats'}`` and the head's variables,
``split_variables`` takes it apart again; the trainer's state holds its ``params`` and ``batch_stats`` in
this form, so a checkpoint becomes a model directory without any conversion.

A model directory holds everything needed to rebuild an encoder::

    DIR/config.json   {"format": "ecapa_jax.model_dir", "format_version": 2,
                       "model": {"family": "ecapa", ...config fields},
                       "frontend": {"type": "kaldi", ...front-end fields},
                       "metadata": {...}}
    DIR/state/        orbax checkpoint of the variables in the layout above

Directories are written next to their destination and renamed into place, so a failure never leaves a
half-written model directory behind. Version 1 directories (ECAPA only, WeSpeaker's front-end, state
``{"variables", "projection"}``) are still read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ecapa_jax.frontend import frontend_from_dict, frontend_to_dict
from ecapa_jax.frontend.kaldi import KaldiFrontEnd
from ecapa_jax.io.files import read_json
from ecapa_jax.models import model_config_from_dict, model_config_to_dict

FORMAT = "ecapa_jax.model_dir"
FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
STATE_DIR = "state"


# ----------------------------------------------------------------------------- the variable layout


def join_variables(model: Mapping[str, Any], projection: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The shared layout (module docstring) of a model's ``{'params', 'batch_stats'}`` and its head's variables."""
    tree = {"params": {"model": model["params"]}, "batch_stats": {"model": model.get("batch_stats", {})}}
    if projection is not None:
        tree["params"]["projection"] = projection["params"]
        tree["batch_stats"]["projection"] = projection.get("batch_stats", {})
    return tree


def split_variables(tree: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(model variables {'params', 'batch_stats'}, head variables or None)`` of the shared layout.

    The head's variables hold ``batch_stats`` only when it has some (the softmax head's BatchNorm).
    """
    params, stats = tree["params"], tree.get("batch_stats", {})
    model = {"params": params["model"], "batch_stats": stats.get("model", {})}
    if "projection" not in params:
        return model, None
    projection = {"params": params["projection"]}
    if stats.get("projection"):
        projection["batch_stats"] = stats["projection"]
    return model, projection


# ----------------------------------------------------------------------------- pytrees


def _this_process_only() -> ocp.options.MultiprocessingOptions:
    """Orbax options for I/O by this process alone: no barriers with the other processes of a run, so
    one process of a multi-process job (the trainer's process 0 exporting its model) can save or load."""
    index = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=index, active_processes={index})


def save_pytree(path: str | os.PathLike, tree: Any) -> None:
    """Saves a pytree of (NumPy or JAX) arrays as an orbax checkpoint at ``path``, which must not exist.

    Blocks until the checkpoint is complete on disk. Only the calling process takes part.
    """
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as checkpointer:
        checkpointer.save(Path(path).absolute(), tree)
        checkpointer.wait_until_finished()


def restore_pytree(path: str | os.PathLike) -> Any:
    """The pytree saved at ``path`` by ``save_pytree``, with NumPy leaves. Only the calling process takes part."""
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as checkpointer:
        tree = checkpointer.restore(Path(path).absolute())
    return jax.tree.map(np.asarray, tree)


# ----------------------------------------------------------------------------- model directories


@dataclasses.dataclass(frozen=True)
class ModelDir:
    """What a model directory holds.

    Attributes:
      config: the model family's config (``ecapa_jax.models.FAMILIES``).
      frontend: the front-end that computes its input features (``ecapa_jax.frontend.FRONTENDS``).
      variables: the variables in the shared layout (module docstring), NumPy arrays.
      metadata: JSON facts kept with the model (source checkpoint, training step, ...).
    """

    config: Any
    frontend: Any
    variables: dict[str, Any]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def model_variables(self) -> dict[str, Any]:
        """The model's ``{'params', 'batch_stats'}``."""
        return split_variables(self.variables)[0]

    @property
    def projection(self) -> dict[str, Any] | None:
        """The training head's variables, or None."""
        return split_variables(self.variables)[1]


def _is_model_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_model_dir(
    dst: str | os.PathLike,
    config: Any,
    variables: Mapping[str, Any],
    frontend: Any,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a model directory (layout in the module docstring).

    Args:
      dst: the directory to create.
      config: the model family's config, stored in ``config.json``.
      variables: the variables in the shared layout (``join_variables``).
      frontend: the front-end of the model's features, stored in ``config.json``.
      metadata: JSON-serialisable facts to keep (e.g. the source checkpoint).
      overwrite: replace ``dst`` if it is an existing model directory (or empty). Anything else at
        ``dst`` is never replaced.

    Returns:
      ``dst`` as a Path.

    Raises:
      FileExistsError: ``dst`` exists and ``overwrite`` is False, or it is not a model directory.
      ValueError: ``metadata`` is not JSON-serialisable.
    """
    dst = Path(dst)
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
        if not (dst.is_dir() and (_is_model_dir(dst) or not any(dst.iterdir()))):
            raise FileExistsError(f"{dst} exists and is not an ecapa_jax model directory; refusing to replace it")
    try:
        config_json = json.dumps(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model": model_config_to_dict(config),
                "frontend": frontend_to_dict(frontend),
                "metadata": metadata or {},
            },
            indent=2,
        )
    except TypeError as e:
        raise ValueError(f"metadata for {dst} is not JSON-serialisable: {e}") from None

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(dst, ".tmp")
    tmp.mkdir()  # (not tempfile.mkdtemp, whose 0700 mode would stay with the result)
    try:
        save_pytree(tmp / STATE_DIR, dict(variables))
        (tmp / CONFIG_FILE).write_text(config_json + "\n")
        if dst.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside first
            old = _sibling(dst, ".old")
            dst.rename(old)
            try:
                tmp.rename(dst)
            except BaseException:
                old.rename(dst)
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dst


def _sibling(path: Path, suffix: str) -> Path:
    """A fresh hidden name next to ``path``: same file system, so renames are atomic."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{suffix}"


def _not_a_model_dir(path: Path) -> str:
    """Why ``path`` is not a model directory, pointing at the one inside a training run."""
    if path.is_file():
        return (
            f"{path} is a file, not an ecapa_jax model directory; convert a checkpoint first "
            f"(e.g. `python -m ecapa_jax.convert wespeaker {path} DST_DIR`)"
        )
    if not path.exists():
        return f"{path} is not an ecapa_jax model directory: no such directory"
    if (path / "checkpoints").is_dir() or _is_model_dir(path / "model"):
        inner = path / "model"
        hint = f"its exported model is {inner}" if _is_model_dir(inner) else "export one with `python -m train.tools`"
        return f"{path} is a training run directory, not a model directory; {hint}"
    return f"{path} is not an ecapa_jax model directory: no {CONFIG_FILE} of format {FORMAT!r} in it"


def load_model_dir(path: str | os.PathLike) -> ModelDir:
    """Reads a model directory written by ``save_model_dir`` (or a version 1 one).

    Raises:
      FileNotFoundError: not a model directory (what was found said: a file, a training run, ...).
      ValueError: an invalid ``config.json`` (named, with the reason).
    """
    path = Path(path)
    config_file = path / CONFIG_FILE
    meta = read_json(config_file) if config_file.is_file() else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FileNotFoundError(_not_a_model_dir(path))
    version = meta.get("format_version")
    try:
        if version == 1:  # ECAPA with WeSpeaker's front-end, state {"variables", "projection"}
            config = model_config_from_dict({"family": "ecapa", **meta["config"]})
            frontend = KaldiFrontEnd()
        elif version == FORMAT_VERSION:
            config = model_config_from_dict(meta["model"], "model.")
            frontend = frontend_from_dict(meta["frontend"], "frontend.")
        else:
            raise ValueError(f"format version {version!r}; this ecapa_jax reads versions 1 and {FORMAT_VERSION}")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config_file} is not a valid ecapa_jax model config: {e}") from None
    if not (path / STATE_DIR).is_dir():
        raise FileNotFoundError(f"{path} is not a complete ecapa_jax model directory: {STATE_DIR}/ is missing")
    state = restore_pytree(path / STATE_DIR)
    variables = join_variables(state["variables"], state.get("projection")) if version == 1 else state
    return ModelDir(config, frontend, variables, meta.get("metadata", {}))


# ----------------------------------------------------------------------------- training checkpoints


class CheckpointManager:
    """Numbered training checkpoints in one directory: a pytree and a JSON dict per step, the newest N kept.

    A thin wrapper of ``orbax.checkpoint.CheckpointManager``: ``DIR/<step>/state`` (the pytree) and
    ``DIR/<step>/extra`` (e.g. the data loader's position). Saving is synchronous: `save` returns once
    the checkpoint is complete on disk, or raises the write's error (path and reason) at once; orbax's
    asynchronous mode reports a failed write only at the next save and can then wait minutes for a
    directory-creation signal that never comes. A step directory appears only once complete (written
    under a temporary name, renamed), so a killed process leaves the previous checkpoints intact; the
    temporary directories of interrupted saves are removed when the next manager opens the directory.
    In a multi-process run every process creates the manager and calls `save`/`restore` together.

    Args:
      directory: where the step directories live (created).
      max_to_keep: newest checkpoints kept; None keeps all.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = None):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
            ),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()},
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_path(self, step: int) -> Path:
        """The directory of checkpoint ``step``."""
        return self.directory / str(step)

    def reload(self) -> None:
        """Re-reads the step directories (after some were moved away by hand or by another process)."""
        self._manager.reload()

    def save(self, step: int, tree: Any, extra: Mapping[str, Any] | None = None) -> None:
        """Saves ``tree`` and ``extra`` (JSON-serialisable) as checkpoint ``step``; returns when it is on disk."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), extra=ocp.args.JsonSave(dict(extra or {})))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict[str, Any]]:
        """``(tree, extra)`` of checkpoint ``step`` (default: the latest).

        Args:
          step: which checkpoint.
          target: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings) giving the
            structure and placement of the result; None restores the saved structure as NumPy, whatever
            devices and processes wrote it.

        Raises:
          FileNotFoundError: no such checkpoint (the ones present named).
        """
        step = self.latest_step() if step is None else step
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint {step}; have steps {self.all_steps()}")
        if target is None:  # the saved shapes on this process's first device (a multi-device save names others)
            device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            on_host = jax.tree.map(lambda m: m.update(sharding=device), self.shapes(step))
        args = ocp.args.StandardRestore(on_host if target is None else target)
        out = self._manager.restore(step, args=ocp.args.Composite(state=args, extra=ocp.args.JsonRestore()))
        tree = out["state"] if target is not None else jax.tree.map(np.asarray, out["state"])
        return tree, dict(out["extra"] or {})

    def shapes(self, step: int) -> Any:
        """The saved tree of checkpoint ``step`` as ``jax.ShapeDtypeStruct`` leaves (its metadata; no arrays read).

        Raises:
          ValueError: the metadata is missing (``state/_METADATA``); orbax's own errors for unreadable ones.
        """
        metadata = self._manager.item_metadata(step)["state"]
        if metadata is None or not jax.tree.leaves(metadata):
            raise ValueError(f"{self.step_path(step)}: no array metadata (state/_METADATA is missing or empty)")
        return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = [
    "CheckpointManager",
    "ModelDir",
    "join_variables",
    "load_model_dir",
    "restore_pytree",
    "save_model_dir",
    "save_pytree",
    "split_variables",
]
