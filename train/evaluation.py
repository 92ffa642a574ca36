"""The trainer's held-out evaluation: verification trials embedded through `ecapa_jax.encoder.Encoder`.

Whole utterances, cosine scores, WeSpeaker's EER; run by process 0 on a host copy of the variables
while the other processes wait (`train.distributed.on_lead`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np
import tqdm

from ecapa_jax.backend.metrics import compute_eer
from ecapa_jax.backend.scoring import cosine_scores, read_trials
from ecapa_jax.encoder import Encoder
from ecapa_jax.frontend.audio import load_audio
from ecapa_jax.io.checkpoint import split_variables
from ecapa_jax.io.kaldi_io import read_wav_scp
from train.config import TrainConfig
from train.distributed import is_lead, on_lead
from train.logs import JsonLog, TensorBoard


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Verification trials and the audio of their utterances.

    Attributes:
      trials: [(enroll id, test id, is target)].
      load: utterance id → (N,) float32 waveform at 16 kHz.
    """

    trials: list[tuple[str, str, bool]]
    load: Any

    @property
    def utterances(self) -> list[str]:
        return sorted({u for e, t, _ in self.trials for u in (e, t)})


def make_eval_set(config: TrainConfig, demo=None) -> EvalSet | None:
    """The demo corpus's held-out trials, or ``eval_trials`` over ``eval_data``; None when there is neither.

    Raises:
      ValueError: an unlabelled trial, or a trial utterance missing from ``eval_data/wav.scp``.
    """
    if config.eval_trials:
        scp = read_wav_scp(os.path.join(config.eval_data, "wav.scp"))
        trials = []
        for t in read_trials(config.eval_trials):
            if t.label is None:
                raise ValueError(f"{config.eval_trials}: trial {t.enroll} {t.test} has no target/nontarget label")
            for u in (t.enroll, t.test):
                if u not in scp:
                    raise ValueError(f"{config.eval_trials}: utterance {u!r} is not in {config.eval_data}/wav.scp")
            trials.append((t.enroll, t.test, t.label == "target"))
        return EvalSet(trials, lambda u: load_audio(scp[u], config.data.sample_rate))
    if demo is not None and demo.num_held_out >= 2:
        return EvalSet(demo.held_out_trials(config.num_eval_trials), demo.waveform)
    return None


def evaluate(encoder: Encoder, eval_set: EvalSet, batch_size: int = 16) -> dict[str, float]:
    """Held-out EER: whole-utterance embeddings (``Encoder.embed_batch``), cosine scores, WeSpeaker's EER.

    Returns:
      {'eer': fraction, 'threshold': score at the EER, 'trials': count}.
    """
    utts = eval_set.utterances
    emb = encoder.embed_batch([eval_set.load(u) for u in utts], batch_size=batch_size)
    row = {u: i for i, u in enumerate(utts)}
    enroll = emb[[row[e] for e, _, _ in eval_set.trials]]
    test = emb[[row[t] for _, t, _ in eval_set.trials]]
    eer, threshold = compute_eer(cosine_scores(enroll, test), np.array([y for _, _, y in eval_set.trials]))
    return {"eer": eer, "threshold": threshold, "trials": len(eval_set.trials)}


@dataclasses.dataclass
class Evaluator:
    """Evaluates a training state on the held-out set and logs the result (``eval.jsonl``, TensorBoard).

    Attributes:
      config: the run (model config, front-end, eval batch size).
      eval_set: the trials, or None (then nothing is evaluated).
      jsonl: the ``eval.jsonl`` writer.
      tensorboard: the event writer.
    """

    config: TrainConfig
    eval_set: EvalSet | None
    jsonl: JsonLog
    tensorboard: TensorBoard

    def __call__(self, state, step: int) -> float | None:
        """The held-out EER of ``state`` after ``step`` steps, on process 0 (None elsewhere or without trials).

        Every process calls it; the others wait while process 0 evaluates.
        """
        if self.eval_set is None:
            return None
        return on_lead(f"eval/{step}", lambda: self._run(state, step))

    def _run(self, state, step: int) -> float:
        # The state is replicated: this process holds all of it, no collective is needed to read it.
        variables, _ = split_variables(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))
        encoder = Encoder(self.config.model, variables, self.config.frontend)
        result = evaluate(encoder, self.eval_set, self.config.eval_batch_size)
        self.jsonl.write({"step": step, **result})
        self.tensorboard.scalars(step, {"eer": result["eer"]}, "eval")
        self.tensorboard.flush()
        if is_lead():
            tqdm.tqdm.write(f"step {step}: held-out EER {100 * result['eer']:.2f}% ({result['trials']} trials)")
        return result["eer"]


__all__ = ["EvalSet", "Evaluator", "evaluate", "make_eval_set"]
