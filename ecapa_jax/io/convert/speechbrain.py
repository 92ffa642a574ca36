"""SpeechBrain ECAPA-TDNN checkpoints ↔ ecapa_jax variables, both ways, exactly.

SpeechBrain's ``embedding_model.ckpt`` is a ``torch.save`` of ``speechbrain.lobes.models.ECAPA_TDNN.
ECAPA_TDNN.state_dict()`` (the zip format ``ecapa_jax.io.torchzip`` reads without torch). Its layers are
WeSpeaker's with other names and a few other choices (see ``ecapa_jax.models.ecapa``); they map onto an
``EcapaConfig.speechbrain(...)`` model by this module table (i ≥ 1 numbers the SE-Res2 blocks, j the Res2
branches), then the leaf table of ``ecapa_jax.io.convert.common``:

==========================================  ======================================  ==================
SpeechBrain module                          ecapa_jax module                        kind
==========================================  ======================================  ==================
``blocks.0.conv.conv`` / ``.norm.norm``     ``layer1/conv`` / ``layer1/bn``         Conv1d / BN
``blocks.i.tdnn1``, ``.tdnn2``              ``layer{i+1}/se_res2block_0``, ``_2``   Conv1d + BN
``blocks.i.res2net_block.blocks.j``         ``layer{i+1}/se_res2block_1/convs_j``,  Conv1d + BN
                                            ``bns_j``
``blocks.i.se_block.conv1.conv``, ``conv2`` ``layer{i+1}/se_res2block_3/linear1``,  1×1 Conv1d → Dense
                                            ``linear2``
``mfa.conv.conv`` / ``mfa.norm.norm``       ``conv`` / ``mfa_bn``                   Conv1d / BN
``asp.tdnn.conv.conv`` / ``.norm.norm``     ``pool/linear1`` / ``pool/bn``          1×1 Conv1d / BN
``asp.conv.conv``                           ``pool/linear2``                        1×1 Conv1d
``asp_bn.norm``                             ``bn``                                  BN
``fc.conv``                                 ``linear``                              1×1 Conv1d → Dense
==========================================  ======================================  ==================

The architecture comes from SpeechBrain's ``hyperparams.yaml`` when given (the ``ECAPA_TDNN`` node:
``channels``, ``kernel_sizes``, ``dilations``, ``attention_channels``, ``res2net_scale``, ``se_channels``,
``lin_neurons``, ``global_context``; the ``Fbank`` and ``InputNormalization`` nodes for the front-end),
else from the tensor shapes; dilations cannot be read from shapes, so without hyperparameters they are
``spkrec-ecapa-voxceleb``'s (1, 2, 3, 4, 1) for three blocks, or must be passed. The YAML is read as
data: no tag is executed (``!new:`` nodes are plain mappings, ``!ref <name>`` a look-up).

``mean_var_norm_emb.ckpt`` (SpeechBrain's global embedding normalisation, ``{'count', 'glob_mean',
'glob_std', ...}``) is kept in the model directory's metadata as ``embedding_norm`` and applied by
``Encoder.normalize`` / ``python -m ecapa_jax.embed --normalize``, as ``EncoderClassifier.encode_batch(
normalize=True)`` applies it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from flax import traverse_util

from ecapa_jax.frontend.speechbrain import SpeechBrainFbank
from ecapa_jax.io.checkpoint import join_variables, save_model_dir
from ecapa_jax.io.convert.common import (
    AFFINE,
    BN_LEAVES,
    Location,
    check_leaves,
    checked_variables,
    convert_keys,
    dir_to_state_dict,
    flax_location,
    listing,
    load_source,
    module_keys,
    not_this_format,
    template_shapes,
    to_torch,
)
from ecapa_jax.io.torchzip import load_checkpoint
from ecapa_jax.models.ecapa import EcapaConfig

SPKREC_DILATIONS = (1, 2, 3, 4, 1)  # spkrec-ecapa-voxceleb, and SpeechBrain's class default
_ANCHORS = ("blocks.0.conv.conv.weight", "mfa.conv.conv.weight", "asp.conv.conv.weight", "fc.conv.weight")

# ----------------------------------------------------------------------------- the module table


def module_table(config: EcapaConfig) -> list[tuple[str, tuple[str, ...], str]]:
    """``[(SpeechBrain module prefix, ecapa_jax module path, 'conv' | 'bn')]`` in SpeechBrain's registration order."""
    rows = [("blocks.0.conv.conv", ("layer1", "conv"), "conv"), ("blocks.0.norm.norm", ("layer1", "bn"), "bn")]
    for i in range(1, config.num_blocks + 1):
        layer, sb = f"layer{i + 1}", f"blocks.{i}"

        def tdnn(sb_prefix: str, ours: tuple[str, ...], conv: str = "conv", bn: str = "bn") -> list:
            return [(f"{sb_prefix}.conv.conv", (*ours, conv), "conv"), (f"{sb_prefix}.norm.norm", (*ours, bn), "bn")]

        rows += tdnn(f"{sb}.tdnn1", (layer, "se_res2block_0"))
        for j in range(config.scale - 1):
            rows += tdnn(f"{sb}.res2net_block.blocks.{j}", (layer, "se_res2block_1"), f"convs_{j}", f"bns_{j}")
        rows += tdnn(f"{sb}.tdnn2", (layer, "se_res2block_2"))
        rows += [
            (f"{sb}.se_block.conv1.conv", (layer, "se_res2block_3", "linear1"), "conv"),
            (f"{sb}.se_block.conv2.conv", (layer, "se_res2block_3", "linear2"), "conv"),
        ]
    rows += [
        ("mfa.conv.conv", ("conv",), "conv"),
        ("mfa.norm.norm", ("mfa_bn",), "bn"),
        ("asp.tdnn.conv.conv", ("pool", "linear1"), "conv"),
        ("asp.tdnn.norm.norm", ("pool", "bn"), "bn"),
        ("asp.conv.conv", ("pool", "linear2"), "conv"),
        ("asp_bn.norm", ("bn",), "bn"),
        ("fc.conv", ("linear",), "conv"),
    ]
    return rows


def speechbrain_locations(config: EcapaConfig) -> dict[str, Location]:
    """``{SpeechBrain key: Flax location}`` in SpeechBrain's registration order (``ECAPA_TDNN.state_dict()``)."""
    rows = module_table(config)
    keys = [k for prefix, _, kind in rows for k in module_keys(prefix, AFFINE if kind == "conv" else BN_LEAVES)]
    paths = {prefix: path for prefix, path, _ in rows}
    return {k: flax_location(k, keys, paths[k.rsplit(".", 1)[0]]) for k in keys}


def speechbrain_shapes(config: EcapaConfig) -> dict[str, tuple[int, ...]]:
    """``{SpeechBrain key: torch shape}``: every weight is a Conv1d's (O, I, K), BN leaves as ours."""
    shapes = template_shapes(config)
    out = {}
    for key, loc in speechbrain_locations(config).items():
        shape = shapes[loc]
        if loc[-1] == "kernel":  # Flax (K, I, O) or a Dense (I, O) held by a 1×1 Conv1d
            shape = tuple(reversed(shape)) if len(shape) == 3 else (shape[1], shape[0], 1)
        out[key] = shape
    return out


# ----------------------------------------------------------------------------- architecture


def detect_config(
    state_dict: Mapping[str, Any], dilations: Sequence[int] | None = None, hparams: Mapping[str, Any] | None = None
) -> EcapaConfig:
    """The ``EcapaConfig`` of a SpeechBrain ``ECAPA_TDNN`` state_dict.

    From the shapes: channels C and feat_dim F from ``blocks.0.conv.conv.weight`` (C, F, k₀); the number of
    SE-Res2 blocks from ``blocks.i``; Res2 scale from the branch width; every kernel size; se_channels;
    mfa_dim and its kernel from ``mfa.conv.conv.weight``; attention_channels and global context from
    ``asp.tdnn.conv.conv.weight``; lin_neurons from ``fc.conv.weight``. The dilations come from
    ``dilations``, else from ``hparams`` (``read_hparams``), else SpeechBrain's defaults for three blocks.

    Raises:
      ValueError: not a SpeechBrain ECAPA-TDNN (what it is, when known), per-block channels that differ
        (SpeechBrain's shortcut convs are not supported), hyperparameters that contradict the shapes, or
        unknown dilations.
    """
    shapes = {k: tuple(np.shape(v)) for k, v in state_dict.items()}
    other = not_this_format(shapes, "a SpeechBrain ECAPA-TDNN", "speechbrain")
    if other:
        raise ValueError(other)
    missing = [k for k in _ANCHORS if len(shapes.get(k, ())) != 3]
    if missing:
        raise ValueError(
            f"not a SpeechBrain ECAPA-TDNN checkpoint: missing or mis-shaped [{listing(missing)}]; "
            f"its keys: [{listing(list(shapes))}]"
        )
    channels, feat_dim, k0 = shapes["blocks.0.conv.conv.weight"]
    blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k)) and m.group(1) != "0"})
    if blocks != list(range(1, len(blocks) + 1)):
        raise ValueError(f"SE-Res2 blocks are not numbered 1..n: {blocks}")
    shortcut = [k for k in shapes if ".shortcut." in k]
    widths = [shapes.get(f"blocks.{i}.tdnn1.conv.conv.weight", (0,))[0] for i in blocks]
    if shortcut or any(w != channels for w in widths):
        raise ValueError(
            f"per-block channels {[channels, *widths]} differ (shortcut convs {listing(shortcut) or 'none'}); "
            "only equal channels in layer1 and the SE-Res2 blocks are supported"
        )
    if not blocks:
        raise ValueError("no SE-Res2 blocks (blocks.1.*): not an ECAPA-TDNN")
    width = shapes.get("blocks.1.res2net_block.blocks.0.conv.conv.weight", (0,))[0]
    kernels = [k0] + [shapes.get(f"blocks.{i}.res2net_block.blocks.0.conv.conv.weight", (0, 0, 1))[2] for i in blocks]
    mfa_dim, _, k_mfa = shapes["mfa.conv.conv.weight"]
    attention_dim, attention_in, _ = shapes["asp.tdnn.conv.conv.weight"]
    config = dict(
        channels=channels,
        feat_dim=feat_dim,
        embed_dim=shapes["fc.conv.weight"][0],
        mfa_dim=mfa_dim,
        scale=channels // width if width and channels % width == 0 else 0,
        se_bottleneck=shapes.get("blocks.1.se_block.conv1.conv.weight", (128,))[0],
        kernel_sizes=(*kernels, k_mfa),
        global_context_att=attention_in == 3 * mfa_dim,
        attention_dim=attention_dim,
    )
    if config["scale"] == 0:
        raise ValueError(f"Res2 branch width {width} (res2net_block.blocks.0) does not divide channels {channels}")
    if hparams:
        _check_hparams(hparams, config)
        dilations = dilations or hparams.get("dilations")
    if dilations is None:
        if len(blocks) != 3:
            raise ValueError(
                f"{len(blocks) + 2} layers: the dilations cannot be read from the tensor shapes; give them "
                "(--dilations 1,2,3 or the model's hyperparams.yaml with --hparams)"
            )
        dilations = SPKREC_DILATIONS
    if len(dilations) != len(blocks) + 2:
        raise ValueError(f"{len(dilations)} dilations {tuple(dilations)} for {len(blocks) + 2} layers")
    return EcapaConfig.speechbrain(**config, dilations=tuple(int(d) for d in dilations))


def _check_hparams(hparams: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Hyperparameters that contradict the shapes are an error naming both."""
    channels = hparams.get("channels")
    expected = {
        "input_size": config["feat_dim"],
        "lin_neurons": config["embed_dim"],
        "kernel_sizes": list(config["kernel_sizes"]),
        "attention_channels": config["attention_dim"],
        "res2net_scale": config["scale"],
        "se_channels": config["se_bottleneck"],
        "global_context": config["global_context_att"],
    }
    wrong = [f"{k} {hparams[k]!r} (the tensors say {v!r})" for k, v in expected.items() if hparams.get(k, v) != v]
    if channels is not None:
        want = [config["channels"]] * (len(config["kernel_sizes"]) - 1) + [config["mfa_dim"]]
        if list(channels) != want:
            wrong.append(f"channels {channels!r} (the tensors say {want!r})")
    if wrong:
        raise ValueError(f"hyperparameters do not match the checkpoint: {'; '.join(wrong)}")


# ----------------------------------------------------------------------------- hyperparams.yaml


class _Tagged(dict):
    """A ``!tag`` YAML node read as data: its mapping (or ``{'': value}``) plus the tag."""

    def __init__(self, tag: str, value: Any):
        super().__init__(value if isinstance(value, Mapping) else {"": value})
        self.tag = tag


class _DataLoader(yaml.SafeLoader):
    """YAML with every ``!tag`` kept as data (``_Tagged``); nothing is imported or called."""


def _construct_tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> _Tagged:
    if isinstance(node, yaml.MappingNode):
        value = loader.construct_mapping(node, deep=True)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_scalar(node)
    return _Tagged("!" + suffix, value)


_DataLoader.add_multi_constructor("!", _construct_tagged)


def read_hparams(path: str | os.PathLike) -> dict[str, Any]:
    """The ECAPA, Fbank and normalisation arguments in a SpeechBrain ``hyperparams.yaml``, read as data.

    Returns:
      ``{ECAPA_TDNN argument: value, ..., 'fbank': {Fbank arguments}, 'input_norm': {...},
      'embedding_norm': {...}}`` (absent nodes give empty dicts); ``!ref <name>`` values resolved to the
      top-level ``name``.

    Raises:
      ValueError: unreadable YAML, no ``ECAPA_TDNN`` node, or a ``!ref`` that is not a plain ``<name>`` of
        a top-level key (named, with the file).
    """
    path = Path(path)
    try:
        doc = yaml.load(path.read_text(), Loader=_DataLoader)  # noqa: S506 - a loader that only builds data
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not a readable YAML file: {e}") from None
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: expected a mapping of hyperparameters, got {type(doc).__name__}")

    def resolve(value: Any, where: str) -> Any:
        if isinstance(value, _Tagged) and value.tag == "!ref":
            m = re.fullmatch(r"\s*<([A-Za-z_][\w]*)>\s*", str(value[""]))
            if not m or m.group(1) not in doc:
                raise ValueError(f"{path}: {where}: cannot resolve {value['']!r} (only !ref <top-level key> is read)")
            return resolve(doc[m.group(1)], m.group(1))
        if isinstance(value, list):
            return [resolve(v, where) for v in value]
        return value

    def node(suffix: str, prefer: str | None = None) -> tuple[str | None, dict[str, Any]]:
        found = [(k, v) for k, v in doc.items() if isinstance(v, _Tagged) and v.tag.endswith(suffix)]
        if prefer is not None and any(k == prefer for k, _ in found):
            found = [(k, v) for k, v in found if k == prefer]
        if not found:
            return None, {}
        key, value = found[0]
        return key, {k: resolve(v, f"{key}.{k}") for k, v in value.items() if k}

    key, ecapa = node("ECAPA_TDNN.ECAPA_TDNN", "embedding_model")
    if key is None:
        raise ValueError(f"{path}: no speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN node in the hyperparameters")
    norms = [k for k, v in doc.items() if isinstance(v, _Tagged) and v.tag.endswith("InputNormalization")]
    _, fbank = node("features.Fbank", "compute_features")
    _, input_norm = node("InputNormalization", "mean_var_norm") if "mean_var_norm" in norms else (None, {})
    _, emb_norm = node("InputNormalization", "mean_var_norm_emb") if "mean_var_norm_emb" in norms else (None, {})
    return ecapa | {"fbank": fbank, "input_norm": input_norm, "embedding_norm": emb_norm}


def frontend_from_hparams(hparams: Mapping[str, Any] | None, n_mels: int) -> SpeechBrainFbank:
    """The ``SpeechBrainFbank`` of the ``Fbank`` and ``mean_var_norm`` nodes (``spkrec-ecapa-voxceleb``'s without)."""
    hparams = hparams or {}
    fbank, norm = dict(hparams.get("fbank", {})), dict(hparams.get("input_norm", {}))
    unsupported = {k: fbank[k] for k in ("deltas", "context", "requires_grad") if fbank.get(k)}
    if fbank.get("filter_shape", "triangular") != "triangular":
        unsupported["filter_shape"] = fbank["filter_shape"]
    if norm.get("norm_type", "sentence") != "sentence":
        unsupported["mean_var_norm.norm_type"] = norm["norm_type"]
    if unsupported:
        raise ValueError(f"unsupported SpeechBrain front-end options {unsupported}")
    names = ("sample_rate", "n_fft", "n_mels", "win_length", "hop_length", "f_min", "f_max")
    kwargs = {k: fbank[k] for k in names if k in fbank} | {"n_mels": fbank.get("n_mels", n_mels)}
    if kwargs["n_mels"] != n_mels:
        raise ValueError(f"Fbank n_mels {kwargs['n_mels']} but the model takes {n_mels} features")
    return SpeechBrainFbank(**kwargs, std_norm=bool(norm.get("std_norm", False)))


# ----------------------------------------------------------------------------- conversion


def from_speechbrain(
    state_dict: Mapping[str, Any], dilations: Sequence[int] | None = None, hparams: Mapping[str, Any] | None = None
) -> tuple[EcapaConfig, dict[str, Any]]:
    """Converts a SpeechBrain ECAPA-TDNN state_dict to ecapa_jax variables.

    Args:
      state_dict: ``{key: array}`` of ``ECAPA_TDNN.state_dict()``.
      dilations: the layers' dilations (see ``detect_config``).
      hparams: ``read_hparams`` output, or None.

    Returns:
      ``(config, variables)``: ``variables`` = ``{'params', 'batch_stats'}`` for ``ECAPA_TDNN(config)``.

    Raises:
      ValueError: another architecture, or keys missing, unexpected or mis-shaped (all listed with shapes).
    """
    config = detect_config(state_dict, dilations, hparams)
    locations = speechbrain_locations(config)
    shapes = template_shapes(config)
    flat, problems = convert_keys(state_dict, speechbrain_shapes(config), locations.__getitem__, flax_shapes=shapes)
    return config, checked_variables(flat, problems, shapes, "SpeechBrain's ECAPA_TDNN")


def to_speechbrain(config: EcapaConfig, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The inverse of ``from_speechbrain``: a state_dict that ``ECAPA_TDNN.load_state_dict(strict=True)`` takes.

    Raises:
      ValueError: a config SpeechBrain's layer cannot express, or variables that do not fit it (listed).
    """
    speechbrain = EcapaConfig.speechbrain()
    fixed = ("padding", "res2_identity", "mfa_bn", "attention", "pooling", "emb_bn")
    differ = [f"{f}={getattr(config, f)!r}" for f in fixed if getattr(config, f) != getattr(speechbrain, f)]
    if differ:
        raise ValueError(f"SpeechBrain's ECAPA_TDNN cannot hold this architecture ({', '.join(differ)})")
    flat = traverse_util.flatten_dict(dict(variables))
    problems = check_leaves("variable", flat, template_shapes(config))
    if problems:
        raise ValueError(f"variables do not match the config: {'; '.join(problems)}")
    shapes = speechbrain_shapes(config)
    return {k: to_torch(flat[loc], shapes[k]) for k, loc in speechbrain_locations(config).items()}


def read_embedding_norm(path: str | os.PathLike, std_norm: bool = False) -> dict[str, Any]:
    """SpeechBrain's ``mean_var_norm_emb.ckpt`` as ``{'mean': [E floats], 'std': [...], 'std_norm', 'count'}``.

    Raises:
      ValueError: not such a file (what it holds is named).
    """
    obj = load_checkpoint(path)
    if not (isinstance(obj, Mapping) and "glob_mean" in obj and "glob_std" in obj):
        what = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path}: not SpeechBrain's InputNormalization statistics (no glob_mean/std; holds {what})")
    mean, std = (np.asarray(obj[k], np.float32).reshape(-1) for k in ("glob_mean", "glob_std"))
    if mean.shape != std.shape:
        raise ValueError(f"{path}: glob_mean {mean.shape} and glob_std {std.shape} differ in shape")
    count = obj.get("count", 0)
    return {"mean": mean.tolist(), "std": std.tolist(), "std_norm": bool(std_norm), "count": int(np.asarray(count))}


# ----------------------------------------------------------------------------- files


def speechbrain_to_dir(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    hparams: str | os.PathLike | None = None,
    dilations: Sequence[int] | None = None,
    embedding_norm: str | os.PathLike | None = None,
    key: str | None = None,
    overwrite: bool = False,
) -> tuple[EcapaConfig, dict[str, Any]]:
    """Converts SpeechBrain's ``embedding_model.ckpt`` into the ecapa_jax model directory ``DST``.

    The directory records SpeechBrain's front-end (``SpeechBrainFbank``, from the hyperparameters when
    given) and, with ``embedding_norm``, the embedding normalisation in its metadata.

    Args:
      src: the checkpoint (``torch.save`` of the state_dict; a file holding several state_dicts, e.g.
        ``{'ecapa_state_dict': ..., 'proj_head_state_dict': ...}``, gives the one that is a SpeechBrain
        ECAPA-TDNN, or ``key``'s).
      dst: the model directory to write; an existing one is refused unless ``overwrite``.
      hparams: SpeechBrain's ``hyperparams.yaml`` of the model.
      dilations: the layers' dilations, when there is no ``hparams`` and they are not spkrec's.
      embedding_norm: ``mean_var_norm_emb.ckpt``.
      key: the entry of ``src`` that holds the state_dict.
      overwrite: replace an existing model directory.

    Returns:
      ``(config, variables)`` as written.
    """
    state_dict = load_source(src, "speechbrain", key)
    params = read_hparams(hparams) if hparams is not None else None
    try:
        config, variables = from_speechbrain(state_dict, dilations, params)
        frontend = frontend_from_hparams(params, config.feat_dim)
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None
    metadata: dict[str, Any] = {"source": str(Path(src).resolve()), "source_format": "speechbrain"}
    if key is not None:
        metadata["source_key"] = key
    if embedding_norm is not None:
        std_norm = bool((params or {}).get("embedding_norm", {}).get("std_norm", False))
        norm = read_embedding_norm(embedding_norm, std_norm)
        if len(norm["mean"]) != config.embed_dim:
            raise ValueError(f"{embedding_norm}: {len(norm['mean'])} means for {config.embed_dim}-d embeddings")
        metadata["embedding_norm"] = norm | {"source": str(Path(embedding_norm).resolve())}
    save_model_dir(dst, config, join_variables(variables), frontend, metadata, overwrite)
    return config, variables


def dir_to_speechbrain(
    src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False
) -> dict[str, np.ndarray]:
    """Writes the ecapa_jax model directory ``SRC`` as SpeechBrain's ``embedding_model.ckpt`` ``DST`` (no torch).

    The margin head's weights are not written: SpeechBrain keeps them in another file (``classifier.ckpt``).
    """

    def embedding_model(config: EcapaConfig, variables: dict, projection: dict | None) -> dict[str, np.ndarray]:
        return to_speechbrain(config, variables)

    return dir_to_state_dict(src, dst, EcapaConfig, "an ECAPA-TDNN", embedding_model, overwrite)


__all__ = [
    "detect_config",
    "dir_to_speechbrain",
    "from_speechbrain",
    "frontend_from_hparams",
    "module_table",
    "read_embedding_norm",
    "read_hparams",
    "speechbrain_locations",
    "speechbrain_shapes",
    "speechbrain_to_dir",
    "to_speechbrain",
]
