"""Long-form evaluation: the whole-file embedding of a recording of any length, exact, in bounded memory.

Shape letters: T frames of the file, L frames per chunk, H halo frames, F features, E embedding size.

A speaker model is local in time except where it reduces over the whole utterance. Its convolutions give
each frame-level output from the ``context_frames`` input frames on either side (the family's config says
how many); its reductions are the ``UtteranceStats`` modules (``ecapa_jax.models.pooling``): ECAPA's SE
squeeze in each block, the pooling's global context and its statistics. Everything after the pooling is
per utterance. So the embedding of a long file is computed in passes over chunks of its features:

    chunks     frames [s, s + L) of the file, read as [s − H, s + L + H) ∩ file: the halo H = context_frames
               makes every frame of [s, s + L) exactly what the whole-file pass computes there. A chunk's
               frames start its array and are its valid prefix, so the model pads (zeros or reflection) at
               the file's own ends exactly as for the whole file
    pass k     for reduction k (in the order the model computes them), with reductions 1 … k − 1 supplied:
               run every chunk, summarise what reduction k sees on the chunk's own frames
               (``stats.weighted_moments``) and merge the summaries over the chunks (``stats.merge_moments``,
               exact: Chan's pairwise update, with online softmax rescaling for attention weights)
    embedding  the model with every reduction supplied: its head, from the merged statistics

The result equals the whole-file embedding up to float rounding (summation order): measured ≤ 1e-6 on
unit-scale embeddings (``tests/test_long_form.py``). Pass k is one jitted program per chunk shape whose
output is reduction k's summary, so XLA drops every layer after reduction k from it: pass k costs the
layers up to reduction k. For ECAPA with ASTP and global context that is five passes (three SE squeezes,
the context, the attention) and about 3× the multiply-adds of a single pass; peak memory is that of one
chunk whatever the file's length.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ecapa_jax.models.pooling import FRAMES, STATS
from ecapa_jax.stats import merge_moments, weighted_moments

Site = tuple[str, ...]  # the module path of one UtteranceStats inside the model


def chunk_starts(frames: int, chunk_frames: int) -> list[int]:
    """First frames of the chunks that cover ``frames`` frames, ``chunk_frames`` each (the last may be shorter)."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    return list(range(0, frames, chunk_frames))


def chunk_input(feats: np.ndarray, start: int, chunk_frames: int, halo: int) -> tuple[np.ndarray, ...]:
    """One chunk as the model reads it: its frames with up to ``halo`` frames on each side, left-aligned.

    Args:
      feats: (T, F) the file's features.
      start: the chunk's first own frame.
      chunk_frames: L, frames per chunk.
      halo: H.

    Returns:
      ``(x (1, L + 2H, F), valid (1, L + 2H), own (1, L + 2H))``: x holds file frames [a, b) =
      [start − H, start + L + H) ∩ [0, T) from its first row on, zeros after; ``valid`` marks them (a prefix:
      the model's mask) and ``own`` the chunk's frames [start, start + L) ∩ [0, T) among them.
    """
    total, dim = feats.shape
    size = chunk_frames + 2 * halo
    a, b = max(start - halo, 0), min(start + chunk_frames + halo, total)
    x = np.zeros((1, size, dim), np.float32)
    x[0, : b - a] = feats[a:b]
    index = np.arange(size) + a  # the file frame of each row
    valid = index < b
    own = valid & (index >= start) & (index < start + chunk_frames)
    return x, valid[None], own[None]


def embed_long(
    module: nn.Module, variables: Mapping[str, Any], feats: np.ndarray, chunk_frames: int, halo: int | None = None
) -> np.ndarray:
    """The embedding of one utterance of any length, computed in chunks (see the module docstring).

    Args:
      module: a model family's module (``ecapa_jax.models.build_model``) whose config has ``context_frames``.
      variables: its ``{'params', 'batch_stats'}``.
      feats: (T, F) features of the whole utterance (already normalised by the front-end), T ≥ 1.
      chunk_frames: L, frames per chunk; memory grows with L + 2 · context_frames, not with T.
      halo: H, frames read on each side of a chunk; default the family's ``context_frames``, the least that is
        exact (the tests show one frame less is not).

    Returns:
      (E,) float32, the embedding of the whole utterance (not length-normalised).

    Raises:
      ValueError: a family without ``context_frames`` (not local in time between its reductions), features
        that are not (T, feat_dim), or chunk_frames < 1.
    """
    if getattr(module.config, "context_frames", None) is None:
        raise ValueError(f"{type(module).__name__} does not support long-form evaluation (no context_frames)")
    halo = module.config.context_frames if halo is None else halo
    feats = np.asarray(feats, np.float32)
    if feats.ndim != 2 or feats.shape[0] < 1 or feats.shape[1] != module.config.feat_dim:
        raise ValueError(f"features must have shape (T, {module.config.feat_dim}) with T ≥ 1, got {feats.shape}")
    starts = chunk_starts(len(feats), chunk_frames)
    chunks = lambda: (chunk_input(feats, s, chunk_frames, halo) for s in starts)  # noqa: E731 - rebuilt per pass
    variables = dict(variables)
    supplied: dict[str, Any] = {}
    for site in _sites(module, variables, *next(chunks())[:2]):
        total = None
        for x, valid, own in chunks():
            part = _site_moments(module, {**variables, STATS: supplied}, x, valid, own, site)
            total = part if total is None else _merge(total, part)
        node = supplied
        for name in site:
            node = node.setdefault(name, {})
        node["moments"] = total
    x, valid, _ = next(chunks())
    return np.asarray(_embed_supplied(module, {**variables, STATS: supplied}, x, valid))[0]


def _sites(module: nn.Module, variables: Mapping[str, Any], x: np.ndarray, valid: np.ndarray) -> list[Site]:
    """The model's reductions, in the order it computes them (that of the sown collection: call order)."""
    key = (module, x.shape)
    if key not in _SITES:
        found: list[Site] = []

        def trace(v, x, m):
            _, state = module.apply(v, x, train=False, mask=m, mutable=[FRAMES])
            found.extend(_paths(state[FRAMES]))  # plain dicts here, in insertion order (pytrees would sort keys)

        jax.eval_shape(trace, variables, x, valid)
        _SITES[key] = found
    return _SITES[key]


_SITES: dict[Any, list[Site]] = {}


def _paths(tree: Mapping[str, Any], prefix: Site = ()) -> list[Site]:
    """Paths to the modules that sowed ``frames``, depth first in insertion order."""
    paths = []
    for name, node in tree.items():
        if name == "frames":
            paths.append(prefix)
        else:
            paths.extend(_paths(node, (*prefix, name)))
    return paths


@functools.partial(jax.jit, static_argnames=("module", "site"))
def _site_moments(module, variables, x, valid, own, site: Site):
    """``weighted_moments`` of what reduction ``site`` sees on the chunk's own frames (one pass, one chunk)."""
    _, state = module.apply(variables, x, train=False, mask=valid, mutable=[FRAMES])
    node = state[FRAMES]
    for name in site:
        node = node[name]
    seen = node["frames"][0]
    return weighted_moments(seen["x"], own, seen.get("scores"))


_merge = jax.jit(merge_moments)


@functools.partial(jax.jit, static_argnames=("module",))
def _embed_supplied(module, variables, x, valid):
    """The embedding with every reduction supplied; XLA drops the frame-level layers, whose results are unused."""
    return module.apply(variables, x, train=False, mask=valid)[0]


__all__ = ["chunk_input", "chunk_starts", "embed_long"]
