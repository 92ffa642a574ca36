"""Typed, frozen config dataclasses from and to plain dicts (JSON): the one helper every config uses.

Configs in this project are frozen dataclasses (``EcapaConfig``, ``FbankConfig``, ``HeadConfig``,
``train.config.TrainConfig``, ...). ``from_dict`` rebuilds one from ``dataclasses.asdict`` output,
recursing into fields whose default is itself a config, and names any key that is not a field.
Where a field can hold one of several config classes (the model family, the front-end type), the dict
carries a tag naming the class: ``to_tagged_dict`` / ``from_tagged_dict`` with a registry
``{name: class}``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def _default(field: dataclasses.Field) -> Any:
    """The field's default value; None for a required field."""
    if field.default is not dataclasses.MISSING:
        return field.default
    return None if field.default_factory is dataclasses.MISSING else field.default_factory()


def is_config(value: Any) -> bool:
    """True for a dataclass instance (a config), False for a dataclass type or anything else."""
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def from_dict(cls: type[T], d: Mapping[str, Any], where: str = "") -> T:
    """``cls(**d)``, with nested configs rebuilt from their dicts and unknown keys named.

    Args:
      cls: a config dataclass.
      d: its fields (a subset: missing ones take their defaults).
      where: dotted prefix of ``d`` inside an enclosing config, for error messages.

    Returns:
      The config.

    Raises:
      ValueError: a key that is not a field of ``cls`` (the valid ones listed), or whatever the config's
        own validation raises.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"config {where.rstrip('.') or cls.__name__} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} keys {[where + k for k in unknown]}; expected a subset of {sorted(fields)}"
        )
    kwargs = {}
    for name, value in d.items():
        default = _default(fields[name])
        nested = is_config(default) and isinstance(value, Mapping)
        kwargs[name] = from_dict(type(default), value, f"{where}{name}.") if nested else value
    return cls(**kwargs)


def to_tagged_dict(config: Any, registry: Mapping[str, type], tag: str) -> dict[str, Any]:
    """``{tag: its registry name, **fields}`` for a config whose class is one of ``registry``'s values."""
    names = [name for name, cls in registry.items() if type(config) is cls]
    if not names:
        raise ValueError(f"{type(config).__name__} is not one of {sorted(registry)}")
    return {tag: names[0], **dataclasses.asdict(config)}


def from_tagged_dict(d: Mapping[str, Any], registry: Mapping[str, type], tag: str, where: str = "") -> Any:
    """The config a ``to_tagged_dict`` dict describes.

    Raises:
      ValueError: no or an unknown tag (the registered names listed), or bad fields.
    """
    if not isinstance(d, Mapping) or d.get(tag) not in registry:
        got = d.get(tag) if isinstance(d, Mapping) else d
        raise ValueError(f"{where}{tag} must be one of {sorted(registry)}, got {got!r}")
    fields = {k: v for k, v in d.items() if k != tag}
    return from_dict(registry[d[tag]], fields, where)


__all__ = ["from_dict", "from_tagged_dict", "is_config", "to_tagged_dict"]
