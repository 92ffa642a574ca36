"""Deployable artifacts of a model directory: ``jax.export`` (features or waveforms in) and ONNX.

Shape letters: B batch, T frames, F features per frame, N samples, E embedding size. B, T and N are
symbolic: one artifact takes any batch and any length.

=================  =====================================================================================
``OUT.jax``        a serialized ``jax.export.Exported`` (StableHLO with the weights inside), for the
                   platforms asked (``cpu``, ``cuda``, ``rocm``, ``tpu``). ``feats (B, T, F) float32 →
                   embs (B, E) float32``, or with ``waveform=True`` ``(waveforms (B, N) float32 in [−1, 1]
                   at the front-end's sample rate, lengths (B,) int32) → embs (B, E)`` with the front-end
                   and the masks inside, so each row's embedding is that of its first ``lengths[b]``
                   samples alone.
``OUT.onnx``       WeSpeaker's runtime convention (``bin/export_onnx.py``): input ``feats (B, T, F)``,
                   output ``embs (B, E)``, B and T dynamic; converted by jax2onnx at opset 18 (its
                   ReduceMean takes the axes as an input, which opsets < 18 do not allow).
``OUT.*.json``     what the artifact expects: its inputs and outputs (names, shapes, dtypes), the sample
                   rate and the front-end's configuration (the features are the front-end's:
                   WeSpeaker's fbank + mean CMN for converted models), the model config, the source.
=================  =====================================================================================

A ``.jax`` artifact runs with jax alone, neither ecapa_jax nor flax imported::

    import jax, numpy as np
    exported = jax.export.deserialize(open("model.jax", "rb").read())
    embs = np.asarray(exported.call(feats))  # feats: (B, T, 80) float32, mean-normalised fbank

and an ``.onnx`` one with onnxruntime: ``ort.InferenceSession("model.onnx").run(["embs"], {"feats": feats})``.
``load_artifact`` runs either with its inputs checked against ``OUT.*.json`` first (shape, feature width,
sample rate), so that bad input is an error naming the problem rather than a shape error from inside.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ecapa_jax.encoder import embed_waveforms
from ecapa_jax.frontend import frontend_to_dict
from ecapa_jax.io.checkpoint import load_model_dir
from ecapa_jax.io.files import check_output_file, read_json
from ecapa_jax.models import build_model, model_config_to_dict

FORMAT = "ecapa_jax.export"
FORMAT_VERSION = 1
SUFFIXES = (".jax", ".onnx")
ONNX_OPSET = 18
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def spec_path(artifact: str | os.PathLike) -> Path:
    """The spec beside an artifact: ``OUT.jax.json`` for ``OUT.jax``, ``OUT.onnx.json`` for ``OUT.onnx``."""
    return Path(f"{os.fspath(artifact)}.json")


def export(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    waveform: bool = False,
    platforms: Sequence[str] = ("cpu",),
    opset: int = ONNX_OPSET,
) -> dict[str, Any]:
    """Writes the artifact ``out`` of a model directory (its format from the suffix) and its spec beside it.

    Both files are written next to their destination and renamed into place, so a failure leaves nothing.

    Args:
      model_dir: an ecapa_jax model directory.
      out: ``*.jax`` or ``*.onnx``.
      waveform: take waveforms and lengths (front-end inside) instead of features; ``.jax`` only.
      platforms: what a ``.jax`` artifact is lowered for (any of ``PLATFORMS``; no device needed).
      opset: ONNX opset, ≥ 18.

    Returns:
      the spec written beside it.

    Raises:
      ValueError: an unknown suffix or platform, ``waveform`` with ``.onnx``, an opset below 18, a model
        whose features do not come from its front-end (``waveform``), an output location that cannot be
        written; FileNotFoundError / ValueError for a bad model directory.
      ImportError: ``.onnx`` without the ``onnx`` extra (jax2onnx, onnx, onnxruntime).
    """
    out = Path(out)
    if out.suffix not in SUFFIXES:
        raise ValueError(f"{out}: the artifact's suffix must be one of {SUFFIXES} (it picks the format)")
    if out.suffix == ".onnx" and waveform:
        raise ValueError(f"{out}: the waveform variant is a .jax artifact; ONNX takes features (WeSpeaker's runtime)")
    if out.suffix == ".onnx" and opset < ONNX_OPSET:
        raise ValueError(f"opset {opset}: jax2onnx writes ReduceMean with its axes as an input, which needs >= 18")
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise ValueError(f"platforms {list(platforms)}: expected one or more of {list(PLATFORMS)}")
    check_output_file(out)
    check_output_file(spec_path(out))
    model = load_model_dir(model_dir)
    config, variables, frontend = model.config, model.model_variables, model.frontend
    if waveform and config.feat_dim != frontend.feature_dim:
        raise ValueError(
            f"{model_dir}: the front-end gives {frontend.feature_dim} features per frame but the model takes "
            f"{config.feat_dim}; export the features variant"
        )
    spec = _spec(out, model, waveform, platforms, opset)
    if out.suffix == ".jax":
        payload = _export_jax(config, variables, frontend, waveform, tuple(platforms))
    else:
        payload = _export_onnx(config, variables, spec, opset)
    _write_atomic(out, payload)
    try:
        _write_atomic(spec_path(out), (json.dumps(spec, indent=2) + "\n").encode())
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return spec


def _spec(out: Path, model, waveform: bool, platforms: Sequence[str], opset: int) -> dict[str, Any]:
    config, frontend = model.config, model.frontend
    f, e = config.feat_dim, config.embed_dim
    if waveform:
        inputs = [
            {"name": "waveforms", "shape": ["B", "N"], "dtype": "float32", "range": [-1.0, 1.0]},
            {"name": "lengths", "shape": ["B"], "dtype": "int32", "min": frontend.min_samples, "max": "N"},
        ]
    else:
        inputs = [{"name": "feats", "shape": ["B", "T", f], "dtype": "float32"}]
    spec = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "artifact": out.name,
        "runtime": "jax.export" if out.suffix == ".jax" else "onnx",
        "kind": "waveform" if waveform else "features",
        "inputs": inputs,
        "outputs": [{"name": "embs", "shape": ["B", e], "dtype": "float32"}],
        "sample_rate": frontend.sample_rate,
        "feature_dim": f,
        "min_samples": frontend.min_samples,
        "frontend": frontend_to_dict(frontend),
        "model": model_config_to_dict(config),
        "metadata": dict(model.metadata),
    }
    if out.suffix == ".jax":
        spec["platforms"] = list(platforms)
    else:
        spec["opset"] = opset
    return spec


def _export_jax(config, variables, frontend, waveform: bool, platforms: tuple[str, ...]) -> bytes:
    """The serialized ``jax.export`` artifact: B, T (or N) symbolic, the variables as constants."""
    variables = jax.tree.map(np.asarray, variables)
    if waveform:
        b, n = jax.export.symbolic_shape("B, N", constraints=(f"N >= {frontend.min_samples}",))

        def fn(waveforms, lengths):  # (B, N), (B,) → (B, E)
            return embed_waveforms(variables, waveforms, lengths, config, frontend)

        args = (jax.ShapeDtypeStruct((b, n), jnp.float32), jax.ShapeDtypeStruct((b,), jnp.int32))
    else:
        b, t = jax.export.symbolic_shape("B, T")
        module = build_model(config)

        def fn(feats):  # (B, T, F) → (B, E)
            return module.apply(variables, feats, train=False)[0]

        args = (jax.ShapeDtypeStruct((b, t, config.feat_dim), jnp.float32),)
    return bytes(jax.export.export(jax.jit(fn), platforms=platforms)(*args).serialize())


def _export_onnx(config, variables, spec: Mapping[str, Any], opset: int) -> bytes:
    """The ONNX model (jax2onnx): ``feats (B, T, F)`` → ``embs (B, E)``, the spec in its metadata_props."""
    # jax2onnx imports its example plugins too; those that need packages of its declared dependencies we leave
    # out (dm_pix, ...) log a traceback each, and its dtype promotion warns about float64 without x64.
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.CRITICAL)
    import onnx
    from jax2onnx import to_onnx

    variables = jax.tree.map(np.asarray, variables)
    module = build_model(config)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Explicitly requested dtype float64", UserWarning)
        try:
            proto = to_onnx(
                lambda feats: module.apply(variables, feats, train=False)[0],
                [("B", "T", config.feat_dim)],
                model_name=f"ecapa_jax_{spec['model']['family']}",
                opset=opset,
                input_names=["feats"],
                output_names=["embs"],
            )
        except Exception as e:  # jax2onnx raises assorted errors for what it cannot express
            raise ValueError(
                f"jax2onnx cannot convert this {spec['model']['family']} model with a dynamic T "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); export a .jax artifact instead"
            ) from e
    onnx.helper.set_model_props(proto, {"ecapa_jax": json.dumps(spec)})
    return proto.SerializeToString()


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_bytes(payload)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- running artifacts


@dataclasses.dataclass(frozen=True)
class Artifact:
    """An exported model with its spec, run through jax.export or onnxruntime with its inputs checked.

    Attributes:
      path: the ``.jax`` / ``.onnx`` file.
      spec: the content of ``OUT.*.json``.
    """

    path: Path
    spec: Mapping[str, Any]
    run: Any = dataclasses.field(repr=False)

    @property
    def kind(self) -> str:
        """'features' or 'waveform'."""
        return self.spec["kind"]

    def embed(self, feats: Any) -> np.ndarray:
        """(B, E) embeddings of (B, T, F) float32 features (the front-end's, see ``spec['frontend']``).

        Raises:
          ValueError: a waveform artifact, or features that are not (B, T ≥ 1, F) with the artifact's F.
        """
        if self.kind != "features":
            raise ValueError(f"{self.path} takes waveforms and lengths (embed_waveforms), not features")
        f = self.spec["feature_dim"]
        feats = np.asarray(feats)
        if feats.ndim != 3 or feats.shape[-1] != f or feats.shape[1] < 1 or not np.issubdtype(feats.dtype, np.floating):
            raise ValueError(
                f"{self.path} takes float features of shape (B, T, {f}) with T ≥ 1, got {feats.dtype} {feats.shape}"
            )
        return np.asarray(self.run(feats.astype(np.float32)))

    def embed_waveforms(self, waveforms: Any, sample_rate: float, lengths: Any = None) -> np.ndarray:
        """(B, E) embeddings of (B, N) waveforms in [−1, 1] at the artifact's sample rate.

        Args:
          waveforms: (B, N) float samples, zero-padded rows.
          sample_rate: of the waveforms in Hz; it must be the artifact's (resample first otherwise).
          lengths: (B,) valid samples per row in [min_samples, N], or None (all N).

        Raises:
          ValueError: a features artifact, another sample rate, waveforms that are not (B, N) floats, or lengths
            out of range.
        """
        if self.kind != "waveform":
            raise ValueError(f"{self.path} takes features (embed), not waveforms")
        rate, least = self.spec["sample_rate"], self.spec["min_samples"]
        if sample_rate != rate:
            raise ValueError(f"{self.path} takes {rate} Hz audio, got {sample_rate:g} Hz: resample it first")
        waves = np.asarray(waveforms)
        if waves.ndim != 2 or not np.issubdtype(waves.dtype, np.floating):
            raise ValueError(f"{self.path} takes float waveforms of shape (B, N), got {waves.dtype} {waves.shape}")
        lengths = np.full(len(waves), waves.shape[1]) if lengths is None else np.asarray(lengths)
        if (
            lengths.shape != (len(waves),)
            or lengths.min(initial=least) < least
            or lengths.max(initial=0) > waves.shape[1]
        ):
            raise ValueError(
                f"{self.path}: lengths must be {len(waves)} sample counts in [{least}, {waves.shape[1]}] (one frame at "
                f"least, the padded N at most), got {lengths.tolist()}"
            )
        return np.asarray(self.run(waves.astype(np.float32), lengths.astype(np.int32)))


def load_artifact(path: str | os.PathLike) -> Artifact:
    """An artifact written by ``export``, with its spec ``OUT.*.json`` beside it.

    Raises:
      OSError: the artifact or its spec cannot be read.
      ValueError: a spec that is not ecapa_jax's, or an artifact its runtime cannot load (named, with why).
    """
    path = Path(path)
    spec = read_json(spec_path(path))
    if not isinstance(spec, dict) or spec.get("format") != FORMAT:
        raise ValueError(f"{spec_path(path)} is not an ecapa_jax export spec (format {FORMAT!r})")
    payload = path.read_bytes()
    if spec["runtime"] == "jax.export":
        try:
            exported = jax.export.deserialize(bytearray(payload))
        except Exception as e:  # flatbuffers raises assorted errors on garbage
            raise ValueError(f"{path} is not a serialized jax.export artifact ({type(e).__name__}: {e})") from None
        return Artifact(path, spec, exported.call)
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(payload, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types
        raise ValueError(f"{path} is not a loadable ONNX model ({e})") from None
    return Artifact(path, spec, lambda feats: session.run(["embs"], {"feats": feats})[0])


__all__ = ["FORMAT", "ONNX_OPSET", "PLATFORMS", "SUFFIXES", "Artifact", "export", "load_artifact", "spec_path"]
