"""What every converter shares: PyTorch state_dict keys ↔ Flax variable locations, values, templates, errors.

A PyTorch key names a module path and a leaf (``layer2.se_res2block.1.convs.3.weight``); our modules carry
PyTorch's names with list indices merged by ``_`` (``layer2/se_res2block_1/convs_3``), so a key's Flax
location is this rule plus a leaf table:

=============================  ===========================================  ==========================
torch leaf                     flax leaf                                    value
=============================  ===========================================  ==========================
``weight`` of a Conv1d/Linear  params ``kernel``                            axes reversed: (O, I, K) →
                                                                            (K, I, O), (O, I) → (I, O)
``weight`` of a Batch/LayerNorm  params ``scale``                           as is
``bias``                       params ``bias``                              as is
``running_mean``/``_var``      batch_stats ``mean``/``var``                 as is
``num_batches_tracked``        batch_stats ``num_batches_tracked``          int32 (int64 in torch)
other (``pool.attention``)     params, same name                            as is
=============================  ===========================================  ==========================

Each source module (``wespeaker.py``, ``pytorch.py``) adds how it tells a norm's ``weight`` from a kernel
and any leaves it renames, and checks keys against the template of the Flax model (``template``: shapes
from ``jax.eval_shape``, nothing computed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Location = tuple[str, ...]  # (collection, *module path, leaf)

LEAVES = {  # torch leaf → (collection, flax leaf), ``weight`` aside
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "num_batches_tracked": ("batch_stats", "num_batches_tracked"),
}
MAX_LISTED = 12  # keys named in an error message before "... and N more"


def module_path(key: str) -> tuple[list[str], str]:
    """``(Flax module path, torch leaf)`` of a torch key: list indices merge into the preceding name.

    ``layer2.se_res2block.1.convs.3.weight`` → (['layer2', 'se_res2block_1', 'convs_3'], 'weight').
    """
    *modules, leaf = key.split(".")
    path: list[str] = []
    for part in modules:
        if part.isdigit() and path:
            path[-1] = f"{path[-1]}_{part}"
        else:
            path.append(part)
    return path, leaf


def leaf_location(path: Sequence[str], leaf: str) -> Location:
    """The location of a torch leaf other than ``weight`` (see the table in the module docstring)."""
    collection, name = LEAVES.get(leaf, ("params", leaf))
    return (collection, *path, name)


def reverse_axes(x: np.ndarray) -> np.ndarray:
    """Conv1d (O, I, K) ↔ Flax (K, I, O) and Linear (O, I) ↔ Dense (I, O); other ranks unchanged."""
    return x.transpose(tuple(reversed(range(x.ndim)))) if x.ndim >= 2 else x


def torch_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """The PyTorch shape of a Flax leaf of ``shape`` (axes reversed for rank ≥ 2)."""
    return tuple(reversed(shape)) if len(shape) >= 2 else tuple(shape)


def listing(items: Sequence[str]) -> str:
    """At most ``MAX_LISTED`` items, comma-separated, then how many more there are."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def to_flax(x: Any, loc: Location) -> np.ndarray:
    """A torch value as the Flax leaf at ``loc``: axes reversed, float32 (int32 ``num_batches_tracked``)."""
    x = reverse_axes(np.asarray(x))
    if loc[-1] == "num_batches_tracked":  # int64 in torch; averaged checkpoints hold a float
        return np.rint(x.astype(np.float64)).astype(np.int32)
    return x.astype(np.float32)


def to_torch(x: Any) -> np.ndarray:
    """A Flax leaf as its torch value: axes reversed, float32 or int64, C order."""
    x = reverse_axes(np.asarray(x))
    return np.asarray(x, np.int64 if np.issubdtype(x.dtype, np.integer) else np.float32, order="C")


def template(module: nn.Module, feat_dim: int) -> dict[Location, jax.ShapeDtypeStruct]:
    """Flat ``{location: ShapeDtypeStruct}`` of ``module``'s variables (called as ``module(x, train=False)`` on
    (B, T, ``feat_dim``) input), not computed."""
    x = jnp.zeros((1, 8, feat_dim), jnp.float32)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, train=False))
    return traverse_util.flatten_dict(shapes)


def check_leaves(what: str, flat: Mapping[Location, Any], shapes: Mapping[Location, tuple[int, ...]]) -> list[str]:
    """Every leaf of ``shapes`` missing from ``flat`` or of another shape, and every leaf of ``flat`` not in it."""
    problems = [f"{what} {'/'.join(loc)} missing (expected {s})" for loc, s in shapes.items() if loc not in flat]
    problems += [
        f"{what} {'/'.join(loc)} has shape {np.shape(flat[loc])}, expected {s}"
        for loc, s in shapes.items()
        if loc in flat and np.shape(flat[loc]) != s
    ]
    return problems + [f"{what} {'/'.join(loc)} is unexpected" for loc in flat if loc not in shapes]


def convert_to_template(
    state_dict: Mapping[str, Any],
    shapes: Mapping[Location, jax.ShapeDtypeStruct],
    locate: Callable[[str], Location],
) -> tuple[dict[Location, np.ndarray], list[str]]:
    """Maps every key to its location in a template; lists keys that land nowhere or mis-shaped, and leaves missed.

    Args:
      state_dict: ``{torch key: array}``.
      shapes: the template (``template``).
      locate: torch key → Flax location.

    Returns:
      ``(flat variables, problems)``; the variables are complete and well-shaped when there are no problems.
    """
    flat, problems, hit = {}, [], set()
    for key, value in state_dict.items():
        loc = locate(key)
        hit.add(loc)
        if loc not in shapes:
            problems.append(f"{key} is unexpected (shape {np.shape(value)}; no leaf {'/'.join(loc)})")
        elif np.shape(value) != torch_shape(shapes[loc].shape):
            problems.append(f"{key} has shape {np.shape(value)}, expected {torch_shape(shapes[loc].shape)}")
        elif loc in flat:
            problems.append(f"{key} lands on {'/'.join(loc)}, which another key already filled")
        else:
            flat[loc] = to_flax(value, loc)
    problems += [
        f"leaf {'/'.join(loc)} has no key (expected a tensor of shape {torch_shape(s.shape)})"
        for loc, s in shapes.items()
        if loc not in hit
    ]
    return flat, problems


__all__ = [
    "LEAVES",
    "Location",
    "check_leaves",
    "convert_to_template",
    "leaf_location",
    "listing",
    "module_path",
    "reverse_axes",
    "template",
    "to_flax",
    "to_torch",
    "torch_shape",
]
