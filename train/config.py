"""The training configuration: one typed, frozen `TrainConfig`, presets in ``train/configs/``, dotted overrides.

Field names follow WeSpeaker's recipe yaml (``examples/voxceleb/v2/conf/ecapa_tdnn.yaml``):
``projection_args``, ``optimizer_args``, ``scheduler_args``, ``margin_update``, ``num_epochs``,
``model_init``; the defaults *are* that recipe (GLOB_c512, 2 GPUs × 128, 150 epochs). The data
pipeline's settings (batch, chunk length, fbank frames, augmentation, SpecAugment, data seed) live in
`train.data.DataConfig`, the architecture (and compute dtype) in a model family's config
(`ecapa_jax.EcapaConfig`; in JSON it carries its ``family``).

A preset is a Python file with ``get_config() -> TrainConfig``; on the command line any field can
be overridden with ``key=value`` (dotted for nested ones: ``model.channels=256``,
``scheduler_args.initial_lr=0.2``, ``projection_args.scale=30.0``), the value read as a Python
literal (a bare word that is not one is taken as a string: ``data.train_data=/data/shard.list``).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ecapa_jax.config import from_dict
from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd
from ecapa_jax.io.files import read_json
from ecapa_jax.models import model_config_from_dict, model_config_to_dict
from ecapa_jax.models.ecapa import EcapaConfig
from ecapa_jax.training.heads import HeadConfig
from train.data import DataConfig

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclasses.dataclass(frozen=True)
class OptimizerArgs:
    """WeSpeaker's ``optimizer_args`` for ``SGD`` (weight decay on every parameter, coupled L2)."""

    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4


@dataclasses.dataclass(frozen=True)
class SchedulerArgs:
    """WeSpeaker's ``scheduler_args`` for ``ExponentialDecrease`` (`ecapa_jax.training.schedules`).

    The peak is scaled by global batch / 64 (WeSpeaker's ``scale_ratio`` = world_size · batch_size / 64).
    """

    initial_lr: float = 0.1
    final_lr: float = 5e-5
    warm_up_epoch: int = 6
    warm_from_zero: bool = True


@dataclasses.dataclass(frozen=True)
class MarginUpdate:
    """WeSpeaker's ``margin_update`` for ``MarginScheduler`` (`ecapa_jax.training.schedules.margin_schedule`)."""

    initial_margin: float = 0.0
    final_margin: float = 0.2
    increase_start_epoch: int = 20
    fix_start_epoch: int = 40
    update_margin: bool = True
    increase_type: str = "exp"

    def __post_init__(self):
        if self.increase_type not in ("exp", "linear"):
            raise ValueError(f"margin_update.increase_type must be 'exp' or 'linear', got {self.increase_type!r}")


def _recipe_projection() -> dict[str, Any]:
    return {"project_type": "arc_margin", "scale": 32.0, "easy_margin": False}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; the defaults are WeSpeaker's ECAPA recipe.

    Attributes:
      model: the architecture, a model family's config (``dtype`` is the compute dtype).
      data: the input pipeline, including ``global_batch_size``, ``num_frms``, the fbank's
        ``sample_rate``/``frame_length_ms``/``frame_shift_ms``, ``spec_aug`` and the data ``seed``.
      projection_args: `ecapa_jax.training.heads.HeadConfig` fields but ``num_classes`` (WeSpeaker's
        ``projection_args``); the class count comes from the data, or from ``model_init``'s head.
      optimizer_args: SGD settings.
      scheduler_args: learning-rate schedule.
      margin_update: margin schedule.
      num_epochs: length of the run in epochs.
      steps_per_epoch: iterations per epoch (WeSpeaker's ``epoch_iter``); 0 takes the loader's
        ⌊utterances / global batch⌋. Overriding it shortens the schedules' epochs, not the loader's.
      seed: seeds parameter initialisation and the per-step rng (dither, SpecAugment), folded
        with the step.
      dither: Kaldi dither on the ×32768 waveform (1.0 in WeSpeaker's training; 0 in the exported model).
      model_init: a model directory (`ecapa_jax.io.checkpoint.save_model_dir`) to start from,
        projection included when it has one (WeSpeaker's ``model_init``; the LM fine-tune).
      checkpoint_interval: steps between checkpoints; 0 saves at the end of every epoch.
      keep_checkpoints: checkpoints kept (the newest); WeSpeaker averages the last ``num_avg`` = 10.
      log_interval: steps between lines of ``metrics.jsonl`` (WeSpeaker's ``log_batch_interval``).
      eval_interval: steps between held-out evaluations; 0 evaluates only at the end.
      eval_data: Kaldi data directory (``wav.scp``) of the evaluation audio; empty with the demo
        corpus uses its held-out speakers.
      eval_trials: trials file (``enroll test target|nontarget``) over ``eval_data``.
      num_eval_trials: demo trials drawn from the held-out speakers.
      eval_batch_size: utterances embedded per forward pass in evaluation.
    """

    model: Any = EcapaConfig.glob_c512()
    data: DataConfig = DataConfig()
    projection_args: Mapping[str, Any] = dataclasses.field(default_factory=_recipe_projection)
    optimizer_args: OptimizerArgs = OptimizerArgs()
    scheduler_args: SchedulerArgs = SchedulerArgs()
    margin_update: MarginUpdate = MarginUpdate()
    num_epochs: int = 150
    steps_per_epoch: int = 0
    seed: int = 42
    dither: float = 1.0
    model_init: str = ""
    checkpoint_interval: int = 0
    keep_checkpoints: int = 10
    log_interval: int = 100
    eval_interval: int = 0
    eval_data: str = ""
    eval_trials: str = ""
    num_eval_trials: int = 2000
    eval_batch_size: int = 16

    def __post_init__(self):
        object.__setattr__(self, "projection_args", dict(self.projection_args))
        if "num_classes" in self.projection_args:
            raise ValueError("projection_args must not set num_classes: it comes from the data (or model_init)")
        HeadConfig.from_dict({**self.projection_args, "num_classes": 1})  # unknown keys, bad values
        for name in ("num_epochs", "keep_checkpoints", "log_interval", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps_per_epoch", "checkpoint_interval", "eval_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_frames = getattr(self.model, "check_frames", None)  # a model whose kernels need long enough chunks
        if check_frames is not None:
            check_frames(self.data.num_frms, "data.num_frms")
        if bool(self.eval_data) != bool(self.eval_trials):
            raise ValueError("eval_data and eval_trials go together: give both or neither")

    @property
    def lr_scale_ratio(self) -> float:
        """WeSpeaker's ``scale_ratio``: the learning rate is scaled linearly with the global batch / 64."""
        return self.data.global_batch_size / 64

    def head_config(self, num_classes: int) -> HeadConfig:
        return HeadConfig.from_dict({**self.projection_args, "num_classes": num_classes})

    @property
    def frontend(self) -> KaldiFrontEnd:
        """The model's front-end as exported (dither 0): WeSpeaker's ``fbank_args`` from ``data`` (sample rate,
        frame length and shift) with ``model.feat_dim`` mel bins. Training uses it with ``dither``."""
        d = self.data
        fbank = FbankConfig.wespeaker(d.sample_rate, 0.0, self.model.feat_dim, d.frame_length_ms, d.frame_shift_ms)
        return KaldiFrontEnd(fbank)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model": model_config_to_dict(self.model)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are errors, missing ones take the defaults."""
        d = dict(d)
        if "model" in d:
            d["model"] = model_config_from_dict(d["model"], "model.")
        return from_dict(cls, d)


# ----------------------------------------------------------------------------- overrides


def parse_value(text: str) -> Any:
    """A Python literal (``3``, ``0.1``, ``True``, ``'x'``, ``(1, 2)``), else the text itself as a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _coerce(key: str, old: Any, new: Any) -> Any:
    """``new`` checked against the type of the value it replaces (ints are accepted for floats)."""
    if isinstance(old, bool) or isinstance(new, bool):
        ok = isinstance(old, bool) and isinstance(new, bool)
    elif isinstance(old, float) and isinstance(new, int):
        return float(new)
    else:
        ok = old is None or isinstance(new, type(old))
    if not ok:
        raise ValueError(f"config key {key!r} has type {type(old).__name__}, got {new!r} ({type(new).__name__})")
    return new


def _head_default(name: str) -> Any:
    field = {f.name: f for f in dataclasses.fields(HeadConfig) if f.name != "num_classes"}.get(name)
    return None if field is None or field.default is dataclasses.MISSING else field.default


def _set(tree: dict, path: list[str], value: Any, where: str = "") -> None:
    """Sets ``tree[path]`` (a `TrainConfig.to_dict` tree) to ``value`` after checking key and type."""
    name, rest = path[0], path[1:]
    key = where + name
    if where == "projection_args.":  # its keys are HeadConfig's, set or not
        valid = sorted(f.name for f in dataclasses.fields(HeadConfig) if f.name != "num_classes")
        if rest or name not in valid:
            full = ".".join([key, *rest])
            raise ValueError(f"unknown config key {full!r}; projection_args takes {valid}")
        tree[name] = _coerce(key, tree.get(name, _head_default(name)), value)
        return
    if name not in tree:
        scope = f"fields of {where.rstrip('.')}" if where else "top-level fields"
        full = ".".join([key, *rest])
        raise ValueError(f"unknown config key {full!r}; {scope}: {sorted(tree)}")
    if rest:
        if not isinstance(tree[name], dict):
            raise ValueError(f"config key {key!r} is a {type(tree[name]).__name__}, it has no field {rest[0]!r}")
        _set(tree[name], rest, value, key + ".")
    elif isinstance(tree[name], dict):
        raise ValueError(f"config key {key!r} is a group; set its fields ({key}.NAME=VALUE)")
    else:
        tree[name] = _coerce(key, tree[name], value)


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Applies ``key=value`` strings (see the module docstring); the result is validated once, at the end.

    Raises:
      ValueError: an item without '=', an unknown key (the valid ones listed), a value of the
        wrong type, or an invalid resulting config.
    """
    tree = config.to_dict()
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"override {item!r} is not KEY=VALUE (e.g. num_epochs=2, model.channels=256)")
        _set(tree, key.strip().split("."), parse_value(text.strip()))
    return TrainConfig.from_dict(tree)


# ----------------------------------------------------------------------------- presets


def preset_names() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def load_config(name_or_file: str) -> TrainConfig:
    """The ``get_config()`` of a preset name (``train/configs/NAME.py``) or of a Python file.

    Raises:
      FileNotFoundError: neither a preset nor a file, naming the presets.
      ValueError: the file has no ``get_config`` returning a TrainConfig.
    """
    path = Path(name_or_file)
    if not name_or_file.endswith(".py"):
        path = CONFIG_DIR / f"{name_or_file}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no config {name_or_file!r}: not a file, and the presets are {preset_names()}")
    spec = importlib.util.spec_from_file_location(f"train_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = getattr(module, "get_config", lambda: None)()
    if not isinstance(config, TrainConfig):
        raise ValueError(f"{path}: get_config() must return a TrainConfig, got {type(config).__name__}")
    return config


def check_workdir_config(
    workdir: str | os.PathLike, config: TrainConfig, force: bool = False, write: bool = True
) -> Path:
    """Writes ``config.json`` into ``workdir``, or checks that the run there has this same config.

    Args:
      workdir: the run directory.
      config: the run's config.
      force: accept (and write) a config that differs from the one in ``workdir``.
      write: write ``config.json``; False only checks, writing nothing.

    Raises:
      ValueError: ``workdir`` holds a run with another config and ``force`` is False; the message
        lists the differing keys.
    """
    path = Path(workdir) / "config.json"
    new = json.loads(config.to_json())
    if path.is_file() and not force:
        old = read_json(path)
        if old != new:
            diff = [f"{k}: {a!r} -> {b!r}" for k, a, b in _diff(old, new)]
            raise ValueError(
                f"{workdir} holds a run with a different config ({'; '.join(diff[:8])}); use another --workdir, "
                "or --force-config to continue it with this one"
            )
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json() + "\n")
    return path


def _diff(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


__all__ = [
    "MarginUpdate",
    "OptimizerArgs",
    "SchedulerArgs",
    "TrainConfig",
    "apply_overrides",
    "check_workdir_config",
    "load_config",
    "parse_value",
    "preset_names",
]
