"""Checkpoint I/O: pytrees through orbax, and the ecapa_jax model directory.

A model directory holds everything needed to rebuild an encoder::

    DIR/config.json   {"format": "ecapa_jax.model_dir", "format_version": 1,
                       "config": EcapaConfig.to_dict(), "metadata": {...}}
    DIR/state/        orbax checkpoint of {"variables": {"params", "batch_stats"}, "projection"?: {...}}

Directories are written next to their destination and renamed into place, so a failure never leaves a
half-written model directory behind.
"""

from __future__ import annotations

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

from ecapa_jax.model import EcapaConfig

FORMAT = "ecapa_jax.model_dir"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
STATE_DIR = "state"


def save_pytree(path: str | os.PathLike, tree: Any) -> None:
    """Saves a pytree of (NumPy or JAX) arrays as an orbax checkpoint at ``path``, which must not exist.

    Blocks until the checkpoint is complete on disk.
    """
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(Path(path).absolute(), tree)
        checkpointer.wait_until_finished()


def restore_pytree(path: str | os.PathLike) -> Any:
    """The pytree saved at ``path`` by ``save_pytree``, with NumPy leaves."""
    with ocp.StandardCheckpointer() as checkpointer:
        tree = checkpointer.restore(Path(path).absolute())
    return jax.tree.map(np.asarray, tree)


def _is_model_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save_model_dir(
    dst: str | os.PathLike,
    config: EcapaConfig,
    variables: Mapping[str, Any],
    projection: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes a model directory (layout in the module docstring).

    Args:
      dst: the directory to create.
      config: the architecture, stored as ``config.json``.
      variables: ``{'params', 'batch_stats'}`` of ``ECAPA_TDNN(config)``.
      projection: the training head's variables, or None.
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
                "config": config.to_dict(),
                "metadata": metadata or {},
            },
            indent=2,
        )
    except TypeError as e:
        raise ValueError(f"metadata for {dst} is not JSON-serialisable: {e}") from None
    state = {"variables": variables} | ({"projection": projection} if projection is not None else {})

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(dst, ".tmp")
    tmp.mkdir()  # (not tempfile.mkdtemp, whose 0700 mode would stay with the result)
    try:
        save_pytree(tmp / STATE_DIR, state)
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


def load_model_dir(
    path: str | os.PathLike,
) -> tuple[EcapaConfig, dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Reads a model directory written by ``save_model_dir``.

    Args:
      path: the directory.

    Returns:
      ``(config, variables, projection, metadata)``; arrays are NumPy, ``projection`` is None when the
      directory has none.

    Raises:
      FileNotFoundError: no directory, ``config.json`` or state at ``path``.
      ValueError: an invalid ``config.json`` (named, with the reason).
    """
    path = Path(path)
    if path.is_file():
        raise FileNotFoundError(
            f"{path} is a file, not an ecapa_jax model directory; convert a WeSpeaker checkpoint first with "
            f"`python -m ecapa_jax.convert wespeaker {path} DST_DIR`"
        )
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        what = "no such directory" if not path.exists() else f"no {CONFIG_FILE} in it"
        raise FileNotFoundError(f"{path} is not an ecapa_jax model directory: {what}")
    try:
        meta = json.loads(config_file.read_text())
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {meta.get('format')!r} version {meta.get('format_version')!r}")
        config = EcapaConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{config_file} is not a valid ecapa_jax model config ({FORMAT} v{FORMAT_VERSION}): {e}"
        ) from e
    if not (path / STATE_DIR).is_dir():
        raise FileNotFoundError(f"{path} is not a complete ecapa_jax model directory: {STATE_DIR}/ is missing")
    state = restore_pytree(path / STATE_DIR)
    return config, state["variables"], state.get("projection"), meta.get("metadata", {})


class CheckpointManager:
    """Numbered training checkpoints in one directory: a pytree and a JSON dict per step, the newest N kept.

    A thin wrapper of ``orbax.checkpoint.CheckpointManager``: ``DIR/<step>/state`` (the pytree) and
    ``DIR/<step>/extra`` (e.g. the data loader's position). Saving is asynchronous (the arrays are
    copied to the host before `save` returns, so they may be donated afterwards); a step directory
    appears only once complete, so a killed process leaves the previous checkpoints intact.

    Args:
      directory: where the step directories live (created).
      max_to_keep: newest checkpoints kept; None keeps all.
    """

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = None):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
            item_names=("state", "extra"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, tree: Any, extra: Mapping[str, Any] | None = None) -> None:
        """Starts saving ``tree`` and ``extra`` (JSON-serialisable) as checkpoint ``step``."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(tree), extra=ocp.args.JsonSave(dict(extra or {})))
        self._manager.save(step, args=args, force=True)

    def restore(self, step: int | None = None, target: Any = None) -> tuple[Any, dict[str, Any]]:
        """``(tree, extra)`` of checkpoint ``step`` (default: the latest).

        Args:
          step: which checkpoint.
          target: a pytree of arrays or ``jax.ShapeDtypeStruct`` (with shardings) giving the
            structure and placement of the result; None restores the saved structure as NumPy.

        Raises:
          FileNotFoundError: no such checkpoint (the ones present named).
        """
        step = self.latest_step() if step is None else step
        if step is None or step not in self._manager.all_steps():
            raise FileNotFoundError(f"{self.directory}: no checkpoint {step}; have steps {self.all_steps()}")
        state_args = ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore()
        out = self._manager.restore(step, args=ocp.args.Composite(state=state_args, extra=ocp.args.JsonRestore()))
        tree = out["state"] if target is not None else jax.tree.map(np.asarray, out["state"])
        return tree, dict(out["extra"] or {})

    def wait_until_finished(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["CheckpointManager", "load_model_dir", "restore_pytree", "save_model_dir", "save_pytree"]
