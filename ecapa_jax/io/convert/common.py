"""What every converter shares: PyTorch keys ↔ Flax locations, the leaf table, shape checks, error lists.

Our Flax module paths are the source's state_dict prefixes with list indices merged by ``_``
(``layer2.se_res2block.1.convs.3`` ↔ ``layer2/se_res2block_1/convs_3``), or a per-source renaming of them
(SpeechBrain's), so a conversion is a key rule plus this leaf table:

=============================  ===========================================  ==========================
torch leaf                     flax leaf                                    value
=============================  ===========================================  ==========================
``weight`` of a Conv/Linear    params ``kernel``                            axes reversed: (O, I, K) →
                                                                            (K, I, O), (O, I) → (I, O),
                                                                            (O, I, kF, kT) → (kT, kF, I, O)
``weight`` of a BatchNorm      params ``scale``                             as is
``bias``                       params ``bias``                              as is
``running_mean``/``_var``      batch_stats ``mean``/``var``                 as is
``num_batches_tracked``        batch_stats ``num_batches_tracked``          int32 (int64 in torch)
other (``pool.attention``)     params, same name                            as is
=============================  ===========================================  ==========================

A BatchNorm ``weight`` is told apart by its sibling ``running_mean``. After the axes are reversed a value
takes the shape of its Flax leaf when only size-1 axes differ (a 1×1 Conv1d (O, I, 1) holding a Dense
kernel (I, O)). The expected keys come from each source's key list, the expected shapes from the Flax
template (``jax.eval_shape`` of ``init``), so every key lands on exactly one template leaf of the right
shape; whatever does not is listed in one error with both shapes.

``identify`` names the architecture a state_dict holds, so that a converter given another source's file
says which one it is and which command converts it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ecapa_jax.io.checkpoint import load_model_dir
from ecapa_jax.io.torchzip import load_state_dict, save_state_dict
from ecapa_jax.models import build_model

Location = tuple[str, ...]  # (collection, *module path, leaf)

BN_LEAVES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
AFFINE = ("weight", "bias")
_LEAVES = {  # torch leaf → (collection, flax leaf), ``weight`` aside
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "num_batches_tracked": ("batch_stats", "num_batches_tracked"),
}
MAX_LISTED = 12  # keys named in an error message before "... and N more"


def module_keys(prefix: str, leaves: Sequence[str]) -> list[str]:
    """``[prefix.leaf, ...]``: the state_dict keys of one module."""
    return [f"{prefix}.{leaf}" for leaf in leaves]


def listing(items: Sequence[str]) -> str:
    """The first ``MAX_LISTED`` items, comma-separated, then how many more."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def flax_location(key: str, keys: Sequence[str] | set[str], path: Sequence[str] | None = None) -> Location:
    """Where the torch ``key`` lives in Flax variables: ``(collection, *module path, leaf)``.

    List indices merge into the preceding name (``convs.3`` → ``convs_3``) unless ``path`` gives the module
    path; the leaf follows the table in the module docstring. ``keys`` is the full key set, used to tell
    BatchNorm weights (which have a ``running_mean`` sibling) from Conv/Linear weights.
    """
    *modules, leaf = key.split(".")
    if path is None:
        path = []
        for part in modules:
            if part.isdigit() and path:
                path[-1] = f"{path[-1]}_{part}"
            else:
                path.append(part)
    if leaf == "weight":
        is_bn = ".".join([*modules, "running_mean"]) in keys
        return ("params", *path, "scale" if is_bn else "kernel")
    collection, name = _LEAVES.get(leaf, ("params", leaf))
    return (collection, *path, name)


def reverse_axes(x: np.ndarray) -> np.ndarray:
    """Conv (O, I, *K) ↔ Flax (*reversed K, I, O) and Linear (O, I) ↔ Dense (I, O); other ranks unchanged."""
    return x.transpose(tuple(reversed(range(x.ndim)))) if x.ndim >= 2 else x


def torch_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The torch shape of a Flax leaf of ``shape`` under the plain rule (axes reversed)."""
    return tuple(reversed(shape)) if len(shape) >= 2 else tuple(shape)


def to_flax(x: Any, loc: Location, shape: Sequence[int] | None = None) -> np.ndarray:
    """A torch value as the Flax leaf at ``loc``: axes reversed, size-1 axes fitted to ``shape``, float32/int32."""
    x = reverse_axes(np.asarray(x))
    if shape is not None and x.shape != tuple(shape) and _squeezed(x.shape) == _squeezed(shape):
        x = x.reshape(shape)
    if loc[-1] == "num_batches_tracked":  # int64 in torch; averaged checkpoints hold a float
        return np.rint(x.astype(np.float64)).astype(np.int32)
    return x.astype(np.float32)


def to_torch(x: Any, shape: Sequence[int] | None = None) -> np.ndarray:
    """A Flax leaf as its torch tensor: axes reversed (and reshaped to ``shape``), float32 / int64, C order."""
    x = reverse_axes(np.asarray(x))
    if shape is not None:
        x = x.reshape(shape)
    return np.asarray(x, np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32, order="C")


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(n for n in shape if n != 1)


def module_template(module: nn.Module, feat_dim: int, frames: int = 8) -> dict[Location, jax.ShapeDtypeStruct]:
    """Flat ``{location: ShapeDtypeStruct}`` of the variables of any module called as ``module(x, train=False)``
    on (1, ``frames``, ``feat_dim``) input (a family's model, or one of its layers), without computing them."""
    x = jnp.zeros((1, frames, feat_dim), jnp.float32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
    return traverse_util.flatten_dict(shapes)


@functools.lru_cache(maxsize=32)
def template(config: Any, frames: int = 8) -> dict[Location, jax.ShapeDtypeStruct]:
    """Flat ``{location: ShapeDtypeStruct}`` of the variables of ``build_model(config)``, without computing them."""
    return module_template(build_model(config), config.feat_dim, frames)


def template_shapes(config: Any) -> dict[Location, tuple[int, ...]]:
    return {loc: tuple(s.shape) for loc, s in template(config).items()}


def convert_keys(
    state_dict: Mapping[str, Any],
    layout: Mapping[str, tuple[int, ...]],
    locate: Callable[[str], Location],
    prefix: str = "",
    flax_shapes: Mapping[Location, tuple[int, ...]] | None = None,
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> tuple[dict[Location, np.ndarray], list[str]]:
    """Maps every key of ``layout`` ({torch key: torch shape}) to Flax; lists missing/mis-shaped/extra keys.

    Args:
      state_dict: ``{key: array}``.
      layout: the expected keys and their torch shapes.
      locate: key → Flax location.
      prefix: prepended to key names in the problems (e.g. ``projection.``).
      flax_shapes: the template's shapes, to fit 1×1 conv kernels to Dense kernels (``to_flax``).
      transform: applied to a torch value before ``to_flax`` (a layout change, e.g. a permutation).

    Returns:
      ``({location: value}, problems)``.
    """
    flat, problems = {}, []
    for key, want in layout.items():
        if key not in state_dict:
            problems.append(f"{prefix}{key} missing (expected {want})")
        elif np.shape(state_dict[key]) != tuple(want):
            problems.append(f"{prefix}{key} has shape {np.shape(state_dict[key])}, expected {tuple(want)}")
        else:
            loc = locate(key)
            value = np.asarray(state_dict[key])
            if transform is not None:
                value = transform(key, value)
            flat[loc] = to_flax(value, loc, None if flax_shapes is None else flax_shapes.get(loc))
    problems += [f"{prefix}{k} is unexpected (shape {np.shape(v)})" for k, v in state_dict.items() if k not in layout]
    return flat, problems


def check_leaves(what: str, flat: Mapping[Location, Any], shapes: Mapping[Location, tuple[int, ...]]) -> list[str]:
    """Problems of Flax leaves against the expected ``{location: shape}``: missing, mis-shaped, unexpected."""
    problems = [f"{what} {'/'.join(loc)} missing (expected {s})" for loc, s in shapes.items() if loc not in flat]
    problems += [
        f"{what} {'/'.join(loc)} has shape {np.shape(flat[loc])}, expected {s}"
        for loc, s in shapes.items()
        if loc in flat and np.shape(flat[loc]) != s
    ]
    return problems + [f"{what} {'/'.join(loc)} is unexpected" for loc in flat if loc not in shapes]


# ----------------------------------------------------------------------------- what a file holds

# (name, converter command, keys that only that architecture has)
_SIGNATURES = (
    ("a WeSpeaker ECAPA-TDNN", "wespeaker", ("layer1.conv.weight", "layer2.se_res2block.1.convs.0.weight")),
    ("a SpeechBrain ECAPA-TDNN", "speechbrain", ("blocks.0.conv.conv.weight", "asp_bn.norm.weight")),
    ("a CAM++ (3D-Speaker or WeSpeaker)", "campplus", ("head.conv1.weight", "xvector.tdnn.linear.weight")),
)


def checked_variables(
    flat: Mapping[Location, np.ndarray], problems: Sequence[str], expected: Iterable[Location], what: str
) -> dict[str, Any]:
    """The Flax variables of a conversion (``convert_keys`` output) once nothing is wrong with them.

    Raises:
      ValueError: ``problems`` (the source does not match ``what``: every offending key listed).
      RuntimeError: the converter's key table missed a leaf of the model (``expected``): a bug, not a bad file.
    """
    if problems:
        raise ValueError(f"state_dict does not match {what}: {len(problems)} offending keys: {'; '.join(problems)}")
    if set(flat) != set(expected):
        raise RuntimeError(f"key table and model differ for {what}: {sorted(set(expected) ^ set(flat), key=str)}")
    return traverse_util.unflatten_dict(dict(flat))


def identify(keys: Iterable[str]) -> tuple[str, str] | None:
    """``(what it is, the convert sub-command for it)`` for a state_dict's keys, or None when unknown."""
    keys = {k.removeprefix("module.") for k in keys}
    for name, command, anchors in _SIGNATURES:
        if all(a in keys for a in anchors):
            return name, command
    return None


def load_source(src: str | os.PathLike, command: str, key: str | None = None, use_torch: bool = False) -> dict:
    """The state_dict in ``src`` for the ``command`` converter: ``src[key]``, or the one nested state_dict of
    that architecture when ``src`` holds several (each listed with what it is otherwise)."""

    def is_mine(state_dict: Mapping) -> bool:
        found = identify(state_dict)
        return found is not None and found[1] == command

    def describe(state_dict: Mapping) -> str:
        found = identify(state_dict)
        return f"{found[0]}, `python -m ecapa_jax.convert {found[1]}`" if found else ""

    return load_state_dict(src, key=key, use_torch=use_torch, pick=is_mine, describe=describe)


def not_this_format(keys: Iterable[str], expected: str, command: str) -> str | None:
    """The message for a state_dict of another known architecture given to the ``command`` converter, or None."""
    found = identify(keys)
    if found is None or found[1] == command:
        return None
    name, other = found
    return f"this is {name} checkpoint, not {expected}; convert it with `python -m ecapa_jax.convert {other}`"


def dir_to_state_dict(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config_type: type,
    expected: str,
    to_state_dict: Callable[[Any, dict, dict | None], dict[str, np.ndarray]],
    overwrite: bool,
) -> dict[str, np.ndarray]:
    """Writes the model directory ``src`` as the PyTorch state_dict ``dst`` of another toolkit (no torch).

    Args:
      src: an ecapa_jax model directory.
      dst: the file to write.
      config_type: the config class the model must have (the family the target toolkit holds).
      expected: the target's name for messages ("WeSpeaker's ECAPA-TDNN").
      to_state_dict: the converter's table: ``(config, model variables, projection or None) -> {key: array}``.
      overwrite: replace an existing ``dst``.

    Returns:
      The state_dict written.

    Raises:
      FileExistsError: ``dst`` exists and ``overwrite`` is False (checked before anything is read).
      ValueError: ``src`` holds another family of model.
    """
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} already exists; pass overwrite=True (--overwrite) to replace it")
    model = load_model_dir(src)
    if not isinstance(model.config, config_type):
        raise ValueError(f"{src} holds a {type(model.config).__name__} model, not {expected}")
    state_dict = to_state_dict(model.config, model.model_variables, model.projection)
    save_state_dict(dst, state_dict)
    return state_dict


__all__ = [
    "AFFINE",
    "BN_LEAVES",
    "Location",
    "check_leaves",
    "checked_variables",
    "convert_keys",
    "dir_to_state_dict",
    "flax_location",
    "identify",
    "listing",
    "load_source",
    "module_keys",
    "module_template",
    "not_this_format",
    "reverse_axes",
    "template",
    "template_shapes",
    "to_flax",
    "to_torch",
    "torch_shape",
]
