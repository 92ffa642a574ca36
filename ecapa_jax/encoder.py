"""A ready-to-use speaker encoder: a model directory loaded; waveforms, files or features in, embeddings out.

This is the one padded-batch embedding path: the command line (``python -m ecapa_jax.embed``) and the
trainer's held-out evaluation both embed through ``Encoder``.

Shape letters: B batch, N samples, T frames, F mel bins, E embedding size.

    enc = ecapa_jax.load("voxceleb_ECAPA512")            # written by `python -m ecapa_jax.convert`
    emb = enc.embed(waveform, sample_rate=8000)          # (N,) floats in [−1, 1] → (E,)
    embs = enc.embed_batch([w1, w2, w3])                 # → (3, E), each as if embedded alone
    table, failures = enc.embed_files(["a.wav", "b.flac"])
    score = enc.similarity(table["a.wav"], table["b.flac"])
    emb = enc.embed_features(feats)                      # (T, F) or (B, T, F) → (B, E)

The waveform front-end is the one the model directory records (``ecapa_jax.frontend``); for WeSpeaker's
models that is its inference front-end (``wespeaker/cli/speaker.py``, ``bin/extract.py`` on the test sets):
resample to 16 kHz, fbank of waveform × 32768 (80 bins, 25/10 ms, hamming, dither 0), mean-only CMN. The
model runs on the whole utterance (no chunking); front-end and model run in one ``jit`` per padded shape.

Batches of utterances of different lengths are padded to a bucket shape (see :class:`Buckets`); the valid
lengths go to the front-end and the frame mask to the model, so padding does not change any embedding, and
a corpus compiles a bounded number of programs rather than one per length.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf
from tqdm import tqdm

from ecapa_jax.backend.scoring import cosine_scores
from ecapa_jax.frontend.audio import AudioError, load_audio, resample
from ecapa_jax.frontend.kaldi import KaldiFrontEnd
from ecapa_jax.io.checkpoint import load_model_dir
from ecapa_jax.models import build_model
from ecapa_jax.stats import lengths_to_mask

SPEECHBRAIN_NORM_FLOOR = 1e-10  # InputNormalization's epsilon: the std is clamped at it


@dataclasses.dataclass(frozen=True)
class Buckets:
    """The padded shapes of batched waveform inference: few, so XLA compiles few programs.

    Lengths grow geometrically: an utterance of T frames is padded to the smallest

        T_k = round(min_frames · ratio^k) ≥ T,   k = 0, 1, 2, ...

    frames, i.e. to the most samples that still give T_k frames (``frontend.max_samples``; for Kaldi fbank
    N_k = W + S·T_k − 1 with W = 400, S = 160 at 16 kHz). With the defaults (1 s, ratio √2) padding adds
    less than 42 % of frames past the first bucket, and every length from 1 s to 10 minutes falls in one of
    20 buckets. Batch sizes are bucketed too: n rows are padded to the smallest power of two ≥ n, capped at
    the batch size. A corpus therefore compiles at most (length buckets) × (⌊log₂ batch_size⌋ + 2)
    programs, and in practice about one per length bucket, since ``plan_batches`` fills every batch but the
    last.

    Attributes:
      min_frames: T_0, the smallest bucket, in frames (100 frames = 1 s).
      ratio: growth factor between consecutive buckets, > 1.
    """

    min_frames: int = 100
    ratio: float = math.sqrt(2)

    def __post_init__(self):
        if self.min_frames < 1 or self.ratio <= 1:
            raise ValueError(f"Buckets need min_frames >= 1 and ratio > 1, got {self.min_frames} and {self.ratio}")

    def frames(self, t: int) -> int:
        """T_k, the padded frame count of an utterance of ``t`` frames: the smallest bucket ≥ t."""
        k = 0
        while round(self.min_frames * self.ratio**k) < t:
            k += 1
        return round(self.min_frames * self.ratio**k)

    def shape(self, longest: int, rows: int, batch_size: int, frontend: Any) -> tuple[int, int]:
        """(B, N) of the padded batch for ``rows`` waveforms of at most ``longest`` samples, for ``frontend``."""
        samples = frontend.max_samples(self.frames(frontend.num_frames(longest)))
        return min(1 << (rows - 1).bit_length(), batch_size), samples


def plan_batches(lengths: Sequence[float], batch_size: int) -> list[np.ndarray]:
    """Groups utterances into batches of similar lengths: sorted by length, then cut every ``batch_size``.

    Args:
      lengths: (U,) lengths (samples or seconds; only their order matters).
      batch_size: the most utterances per batch, ≥ 1.

    Returns:
      index arrays into ``lengths``, each of at most ``batch_size``, covering every index once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(np.asarray(lengths, np.float64), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclasses.dataclass(frozen=True, eq=False)
class Encoder:
    """A speaker model with its variables and front-end, in eval mode.

    Attributes:
      config: the model family's config (``ecapa_jax.models``), e.g. an ``EcapaConfig``.
      variables: the model's ``{'params', 'batch_stats'}``, placed on the default device once.
      frontend: what turns waveforms into the model's features (default: WeSpeaker's, 16 kHz, 80 bins).
      projection: the training head's variables kept from the checkpoint, or None.
      metadata: what the model directory records (source file, ...).
      buckets: the padded shapes of waveform batches.
    """

    config: Any
    variables: Mapping[str, Any]
    frontend: Any = KaldiFrontEnd()
    projection: Mapping[str, Any] | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    buckets: Buckets = Buckets()

    def __post_init__(self):
        object.__setattr__(self, "variables", jax.device_put(self.variables))  # not once per call

    @property
    def sample_rate(self) -> int:
        """Hz of the audio the front-end takes; other rates are resampled to it."""
        return self.frontend.sample_rate

    @functools.cached_property
    def module(self):
        return build_model(self.config)

    @functools.cached_property
    def _embed(self):
        # jax.jit compiles once per (B, T) and per mask / no mask, then reuses the program.
        return jax.jit(lambda variables, feats, mask: self.module.apply(variables, feats, train=False, mask=mask)[0])

    def embed_features(self, feats: Any, lengths: Any = None) -> np.ndarray:
        """Speaker embeddings of mean-normalised fbank features (WeSpeaker's CMN: mean only).

        Args:
          feats: (B, T, F) or (T, F) features (the latter is a batch of one).
          lengths: (B,) valid frames per row of a padded batch, each in [1, T], or None (all T valid).
            Padded frames do not change the result: each row's embedding is that of its first
            ``lengths[b]`` frames alone.

        Returns:
          (B, E) float32 embeddings (not length-normalised).

        Raises:
          ValueError: feats or lengths of the wrong shape, or lengths out of range.
        """
        feats = jnp.asarray(feats, jnp.float32)
        if feats.ndim == 2:
            feats = feats[None]
        f = self.config.feat_dim
        if feats.ndim != 3 or feats.shape[-1] != f or feats.shape[1] == 0:
            raise ValueError(f"features must have shape (B, T, {f}) or (T, {f}) with T ≥ 1, got {feats.shape}")
        mask = None
        if lengths is not None:
            batch, frames = feats.shape[:2]
            lengths = np.asarray(lengths)
            if lengths.shape != (batch,) or not np.issubdtype(lengths.dtype, np.integer):
                raise ValueError(f"lengths must be {batch} integers (one per row), got {lengths.dtype} {lengths.shape}")
            if lengths.min() < 1 or lengths.max() > frames:
                raise ValueError(f"lengths must lie in [1, {frames}] (the padded T), got {lengths.tolist()}")
            mask = lengths_to_mask(lengths, frames)  # (B, T)
        return np.asarray(self._embed(self.variables, feats, mask))

    def embed(self, waveform: Any, sample_rate: int | None = None) -> np.ndarray:
        """The speaker embedding of one utterance, whole (WeSpeaker's inference front-end, see the module).

        Args:
          waveform: (N,) float samples in [−1, 1] (``audio.load_audio``'s scale), mono.
          sample_rate: of the waveform in Hz (default: the front-end's); other rates are resampled with
            ``audio.resample``.

        Returns:
          (E,) float32 embedding (not length-normalised).

        Raises:
          ValueError: see :meth:`embed_batch`.
        """
        return self.embed_batch([waveform], sample_rate, batch_size=1)[0]

    def embed_batch(self, waveforms: Sequence[Any], sample_rate: int | None = None, batch_size: int = 16) -> np.ndarray:
        """Speaker embeddings of utterances of any lengths, each equal to that of the utterance alone.

        The utterances are sorted by length and run ``batch_size`` at a time, each batch padded to a
        :class:`Buckets` shape.

        Args:
          waveforms: U (N_u,) float waveforms in [−1, 1], mono, all at ``sample_rate``.
          sample_rate: in Hz (default: the front-end's); resampled with ``audio.resample`` when different.
          batch_size: the most utterances per device batch.

        Returns:
          (U, E) float32 embeddings, in the order of ``waveforms``.

        Raises:
          ValueError: a model whose feature size is not the front-end's; a waveform that is not 1-D float,
            has NaN/inf samples, or is shorter than one frame (naming its index).
        """
        self._check_front_end()
        sample_rate = self.sample_rate if sample_rate is None else sample_rate
        if not sample_rate > 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
        waves = [self._prepare(w, sample_rate, f"waveform {i}") for i, w in enumerate(waveforms)]
        out = np.empty((len(waves), self.config.embed_dim), np.float32)
        for batch in plan_batches([len(w) for w in waves], batch_size):
            out[batch] = self._embed_padded([waves[i] for i in batch], batch_size)
        return out

    def embed_files(
        self,
        paths: Mapping[str, str | os.PathLike] | Sequence[str | os.PathLike],
        batch_size: int = 16,
        progress: bool = False,
    ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Speaker embeddings of audio files; a file that cannot be used is reported, not raised.

        Files are read with ``audio.load_audio`` (channels averaged, resampled to the front-end's rate), a
        batch at a time, in order of their durations from the file headers so that batches hold similar lengths.

        Args:
          paths: ``{utterance id: path}`` (a ``wav.scp``), or paths, which are then their own ids.
          batch_size: the most utterances per device batch.
          progress: show a tqdm progress bar (on stderr).

        Returns:
          ``(embeddings, failures)``: ``{id: (E,) float32}`` for the files that worked and
          ``{id: reason}`` (the reason names the file) for those that did not, both in input order.

        Raises:
          ValueError: a model whose feature size is not the front-end's.
          TypeError: a single path instead of a collection of them.
        """
        self._check_front_end()
        if isinstance(paths, str | os.PathLike):
            raise TypeError(f"embed_files takes a list of paths or {{id: path}}, got the single path {paths!r}")
        table = dict(paths) if isinstance(paths, Mapping) else {os.fspath(p): p for p in paths}
        ids = list(table)
        embeddings, failures = {}, {}
        with tqdm(total=len(ids), disable=not progress, unit="utt", desc="embedding") as bar:
            for batch in plan_batches([_duration(table[u]) for u in ids], batch_size):
                loaded = {}
                for i in batch:
                    try:
                        loaded[ids[i]] = load_audio(table[ids[i]], self.sample_rate, self.frontend.min_samples)
                    except AudioError as e:
                        failures[ids[i]] = str(e)
                if loaded:
                    embeddings.update(zip(loaded, self._embed_padded(list(loaded.values()), batch_size), strict=True))
                bar.update(len(batch))
        return (
            {u: embeddings[u] for u in ids if u in embeddings},
            {u: failures[u] for u in ids if u in failures},
        )

    @property
    def embedding_norm(self) -> Mapping[str, Any] | None:
        """The embedding normalisation the model directory records (SpeechBrain's ``mean_var_norm_emb``), or None."""
        return self.metadata.get("embedding_norm")

    def normalize(self, embeddings: Any) -> np.ndarray:
        """SpeechBrain's global embedding normalisation: (e − mean) / max(std, 1e-10), or e − mean without std_norm.

        What ``EncoderClassifier.encode_batch(normalize=True)`` applies with ``mean_var_norm_emb`` (recorded by
        ``python -m ecapa_jax.convert speechbrain --embedding-norm mean_var_norm_emb.ckpt``).

        Args:
          embeddings: (E,) or (B, E).

        Returns:
          float32 of the same shape.

        Raises:
          ValueError: the model directory records no normalisation, or the shape does not end in E.
        """
        norm = self.embedding_norm
        if norm is None:
            raise ValueError(
                "this model directory records no embedding normalisation (convert a SpeechBrain model with "
                "--embedding-norm mean_var_norm_emb.ckpt)"
            )
        e = np.asarray(embeddings, np.float32)
        mean = np.asarray(norm["mean"], np.float32)
        if e.shape[-1:] != mean.shape:
            raise ValueError(f"embeddings of shape {e.shape} do not end in the normalisation's size {mean.shape[0]}")
        if norm.get("std_norm"):
            return (e - mean) / np.maximum(np.asarray(norm["std"], np.float32), SPEECHBRAIN_NORM_FLOOR)
        return e - mean

    @staticmethod
    def similarity(a: Any, b: Any, unit_interval: bool = False) -> float | np.ndarray:
        """Cosine similarity ⟨a, b⟩ / (‖a‖‖b‖) of embeddings (row-wise for batches).

        WeSpeaker's CLI (``wespeaker/cli/speaker.py``) reports (cos + 1) / 2 ∈ [0, 1], which
        ``unit_interval=True`` gives; its recipe scores the plain cosine after subtracting the mean
        training embedding (``ecapa_jax.score``).

        Args:
          a, b: (E,) embeddings, or (M, E) each for M pairs.
          unit_interval: map the cosine to (cos + 1) / 2.

        Returns:
          a float for (E,) inputs, else (M,) float64.

        Raises:
          ValueError: shapes that differ or are not (E,) / (M, E), or a zero embedding.
        """
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.ndim not in (1, 2):
            raise ValueError(f"similarity needs two (E,) or two (M, E) arrays, got shapes {a.shape} and {b.shape}")
        cos = cosine_scores(np.atleast_2d(a), np.atleast_2d(b))  # (M,)
        if unit_interval:
            cos = (cos + 1.0) / 2.0
        return float(cos[0]) if a.ndim == 1 else cos

    def _check_front_end(self) -> None:
        if self.config.feat_dim != self.frontend.feature_dim:
            raise ValueError(
                f"the waveform front-end gives {self.frontend.feature_dim} features per frame, but this model takes "
                f"feat_dim={self.config.feat_dim}: compute them yourself and call embed_features"
            )

    def _prepare(self, waveform: Any, sample_rate: float, name: str) -> np.ndarray:
        """A checked (N,) float32 waveform at the front-end's rate."""
        x = np.asarray(waveform)
        if x.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D mono waveform, got shape {x.shape} (average the channels first)")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name}: expected float samples in [-1, 1], got {x.dtype} (scale int16 PCM by 1 / 32768)")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{name}: {np.count_nonzero(~np.isfinite(x))} sample(s) are NaN or infinite")
        x = resample(x, sample_rate, self.sample_rate)
        if x.shape[0] < self.frontend.min_samples:
            raise ValueError(
                f"{name}: too short, {x.shape[0]} samples at {self.sample_rate} Hz (from {len(waveform)} at "
                f"{sample_rate:g} Hz); one frame needs {self.frontend.min_samples}"
            )
        return x

    def _embed_padded(self, waves: list[np.ndarray], batch_size: int) -> np.ndarray:
        """(n, E) embeddings of n ≤ batch_size waveforms at the front-end's rate, run as one batch of a bucket shape."""
        rows, samples = self.buckets.shape(max(len(w) for w in waves), len(waves), batch_size, self.frontend)
        batch = np.zeros((rows, samples), np.float32)  # (B, N); spare rows stay silent and are dropped
        lengths = np.full(rows, samples, np.int32)  # (B,)
        for b, w in enumerate(waves):
            batch[b, : len(w)] = w
            lengths[b] = len(w)
        embeddings = embed_waveforms(self.variables, batch, lengths, self.config, self.frontend)
        return np.asarray(embeddings)[: len(waves)]


@functools.partial(jax.jit, static_argnames=("config", "frontend"))
def embed_waveforms(variables: Mapping[str, Any], waveforms: jax.Array, lengths: jax.Array, config, frontend):
    """The front-end and the model in one program, compiled once per (B, N), config and front-end.

    Args:
      variables: the model's ``{'params', 'batch_stats'}``.
      waveforms: (B, N) float waveforms in [−1, 1] at the front-end's rate, zero-padded.
      lengths: (B,) valid samples per row, each in [frontend.min_samples, N].
      config: the model family's config (static: encoders of one config share the compiled programs).
      frontend: the front-end (static).

    Returns:
      (B, E) float32 embeddings, each that of its row's first ``lengths[b]`` samples alone.
    """
    feats, valid = frontend(waveforms, lengths)  # (B, T, F), (B,)
    mask = lengths_to_mask(valid, feats.shape[1])  # (B, T)
    return build_model(config).apply(variables, feats, train=False, mask=mask)[0]


def _duration(path: str | os.PathLike) -> float:
    """Seconds of audio from the file header, for batching only; 0 for a file whose header cannot be read
    (``load_audio`` then reports why)."""
    try:
        return sf.info(os.fspath(path)).duration
    except (sf.LibsndfileError, TypeError, OSError):
        return 0.0


def load(path: str | os.PathLike) -> Encoder:
    """The encoder saved in the model directory ``path`` (see ``ecapa_jax.io.checkpoint.load_model_dir``)."""
    model = load_model_dir(path)
    return Encoder(model.config, model.model_variables, model.frontend, model.projection, model.metadata)


__all__ = ["Buckets", "Encoder", "embed_waveforms", "load", "plan_batches"]
