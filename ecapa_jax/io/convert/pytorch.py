"""PyTorch's ``nn.TransformerEncoder(Layer)`` and torchaudio's ``Conformer`` state_dicts → ecapa_jax variables.

Our Transformer and Conformer modules carry PyTorch's names (``ecapa_jax.models.transformer``,
``ecapa_jax.models.conformer``), so a key converts by the rule and leaf table of
``ecapa_jax.io.convert.common`` plus this table of the leaves ``nn.MultiheadAttention`` names differently:

=======================================  ======================================  ===========================
torch key (suffix)                       flax leaf                               value
=======================================  ======================================  ===========================
``self_attn.in_proj_weight`` (3D, D)     ``self_attn/in_proj/kernel`` (D, 3D)    transposed; columns q | k | v
``self_attn.in_proj_bias`` (3D,)         ``self_attn/in_proj/bias``              as is
``weight`` with a ``kernel`` leaf        ``kernel``                              axes reversed (Linear, Conv1d,
                                                                                 depthwise (D, 1, K) → (K, 1, D))
``weight`` otherwise                     ``scale`` (LayerNorm, BatchNorm)        as is
=======================================  ======================================  ===========================

Examples of the whole key (the rest of the rule merges list indices: ``layers.0`` → ``layers_0``):
``layers.0.linear1.weight`` → ``params/layers_0/linear1/kernel`` (a ``TransformerEncoder``);
``conformer_layers.1.conv_module.sequential.3.running_var`` → ``batch_stats/conformer_layers_1/conv_module/
sequential_3/var`` (a ``Conformer``). A speaker model (``SpeakerTransformer``/``SpeakerConformer``) is the
state_dict of a PyTorch module with the children ``prenet`` (``nn.Linear``), ``encoder``
(``nn.TransformerEncoder`` or ``torchaudio.models.Conformer``), ``pool`` (WeSpeaker's pooling layers, or our
SAP: ``pool.linear`` + ``pool.attention``), ``bn`` (``nn.BatchNorm1d``, with ``pooled_bn``) and ``linear``
(``nn.Linear``).

Every key must land on a leaf of the Flax template with the right shape and every leaf must be filled;
anything else is one error listing the offending keys and leaves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from ecapa_jax.io.convert.common import (
    Location,
    check_leaves,
    checked_variables,
    convert_keys,
    module_template,
    torch_shape,
)
from ecapa_jax.io.convert.common import flax_location as plain_location
from ecapa_jax.models import build_model

RENAMED = {  # nn.MultiheadAttention's packed projection → an ordinary Dense named ``in_proj``
    "in_proj_weight": ("in_proj", "kernel"),
    "in_proj_bias": ("in_proj", "bias"),
}


def flax_location(key: str, shapes: Mapping[Location, Any]) -> Location:
    """Where the torch ``key`` lives in the Flax variables whose template is ``shapes`` (module docstring).

    The common rule (``ecapa_jax.io.convert.common.flax_location``), with the ``RENAMED`` leaves, and a
    ``weight`` that is a ``scale`` wherever the template has no ``kernel`` there (LayerNorm, which has no
    ``running_mean`` sibling for the common rule to tell it by).
    """
    *path, leaf = plain_location(key, ())
    if leaf in RENAMED:
        return ("params", *path[1:], *RENAMED[leaf])
    if leaf == "kernel" and ("params", *path[1:], "kernel") not in shapes:
        return ("params", *path[1:], "scale")
    return (*path, leaf)


def module_from_torch(state_dict: Mapping[str, Any], module: nn.Module, feat_dim: int) -> dict[str, Any]:
    """The Flax variables of ``module`` from the state_dict of its PyTorch counterpart.

    Args:
      state_dict: ``{key: array}`` (NumPy, torch tensors or anything ``np.asarray`` takes).
      module: e.g. ``TransformerEncoderLayer(2, 256)``, ``Conformer(...)``, ``SpeakerConformer(config)``.
      feat_dim: the width of the module's (B, T, ·) input (its template is built for it).

    Returns:
      ``{'params': ..., 'batch_stats': ...}`` (``batch_stats`` only where the module has BatchNorms), float32
      (int32 ``num_batches_tracked``).

    Raises:
      ValueError: keys that land on no leaf or have the wrong shape, and leaves no key fills, all listed.
    """
    shapes = {loc: tuple(s.shape) for loc, s in module_template(module, feat_dim).items()}
    state_dict = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in state_dict.items()}
    locations = {key: flax_location(key, shapes) for key in state_dict}
    layout = {key: torch_shape(shapes[loc]) for key, loc in locations.items() if loc in shapes}
    flat, problems = convert_keys(state_dict, layout, locations.__getitem__)
    filled = {locations[key] for key in layout}
    problems += check_leaves("leaf", {}, {loc: s for loc, s in shapes.items() if loc not in filled})
    return checked_variables(flat, problems, shapes, type(module).__name__)


def from_torch(config: Any, state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """The variables of a Transformer or Conformer speaker model (``config``) from a PyTorch state_dict.

    The PyTorch model has the children ``prenet``, ``encoder``, ``pool``, ``bn`` and ``linear`` (module docstring).
    Raises ValueError as ``module_from_torch``.
    """
    return module_from_torch(state_dict, build_model(config), config.feat_dim)


__all__ = ["RENAMED", "flax_location", "from_torch", "module_from_torch"]
