"""Long recordings: ``window_hop`` cuts clips longer than one window into
windows of ``max_length`` frames, batched across clips; clips are the mean of
their windows (embeddings) or their aggregated probabilities (classifier)."""

import multiprocessing
import resource
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy.special import softmax
from torch.nn.modules.module import register_module_forward_pre_hook

from skast import ASTFeaturizer
from skast._checkpoints import save_pretrained
from skast._features import fbank
from skast._model import AST, ASTConfig, PatchEmbed
from skast._recipes import SAMPLE_RATE
from skast.cli import main
from tests._helpers import classifier, clips, featurizer, write
from tests.conftest import FAST

HOP = 0.25  # seconds; the FAST model's window is 64 frames (0.64 s + 15 ms)


@pytest.fixture(scope="module")
def recordings():
    """Two long clips (1.5 s, 1.0 s) and a short one (0.3 s)."""
    return [*clips(1, seed=5, seconds=1.5), *clips(1, seed=6, seconds=1.0)] + clips(
        1, seed=7
    )


@pytest.fixture(scope="module")
def windowed(recordings):
    return featurizer(window_hop=HOP).fit(recordings)


@pytest.fixture
def batch_sizes():
    """The sizes of the batches the encoder sees (train or eval), in order."""
    sizes = []

    def hook(module, args):
        if isinstance(module, PatchEmbed):
            sizes.append((len(args[0]), torch.is_grad_enabled()))

    handle = register_module_forward_pre_hook(hook)
    yield sizes
    handle.remove()


def test_windows_start_every_hop_and_the_last_ends_with_the_clip(windowed, recordings):
    embeddings, starts = windowed.transform_windows(recordings)
    # 1.5 s: 148 frames, the last window starts at frame 148 - 64 = 84;
    # 1.0 s: 98 frames, last start 34; 0.3 s: one window
    assert_allclose(starts[0], [0.0, 0.25, 0.5, 0.75, 0.84])
    assert_allclose(starts[1], [0.0, 0.25, 0.34])
    assert_allclose(starts[2], [0.0])
    assert [e.shape for e in embeddings] == [(5, 32), (3, 32), (1, 32)]
    assert all(e.dtype == np.float32 for e in embeddings)


def test_a_window_embeds_as_the_clip_cut_at_its_start(windowed, recordings):
    embeddings, starts = windowed.transform_windows(recordings)
    plain = featurizer().fit(recordings)
    for wave, rows, times in zip(recordings, embeddings, starts):
        cut = [wave[round(t * SAMPLE_RATE) :] for t in times]
        assert_allclose(rows, plain.transform(cut), atol=1e-4)


def test_a_clip_embeds_as_the_mean_of_its_windows(windowed, recordings):
    embeddings, _ = windowed.transform_windows(recordings)
    means = np.stack([e.mean(axis=0) for e in embeddings])
    assert_allclose(windowed.transform(recordings), means, atol=1e-6)


def test_clips_of_one_window_are_unchanged(recordings):
    short = clips(4, seed=3, seconds=0.6)  # 58 frames: one window
    plain = featurizer().fit(short)
    assert_array_equal(featurizer(window_hop=HOP).fit(short).transform(short),
                       plain.transform(short))  # fmt: skip
    # next to long clips too (their windows are in other batches)
    out = featurizer(window_hop=HOP, batch_size=1).fit(short).transform(recordings)
    assert_array_equal(out[2], featurizer(batch_size=1).fit(short).transform(
        recordings[2:])[0])  # fmt: skip
    clf = classifier(max_epochs=1).fit(short, [0, 1, 0, 1])
    windowed = clf.set_params(window_hop=HOP)
    proba = windowed.predict_proba(short)
    assert_array_equal(proba, clf.set_params(window_hop=None).predict_proba(short))


def test_windows_are_batched_across_clips(recordings, batch_sizes):
    est = featurizer(window_hop=HOP, batch_size=4).fit(recordings)
    est.transform(recordings)  # 5 + 3 + 1 windows
    assert [n for n, _ in batch_sizes] == [4, 4, 1]


def test_windows_of_files_decoded_in_workers(windowed, recordings, tmp_path):
    files = [str(write(tmp_path / f"{i}.wav", w, subtype="FLOAT"))
             for i, w in enumerate(recordings)]  # fmt: skip
    ref, ref_starts = windowed.transform_windows(recordings)
    est = featurizer(window_hop=HOP, num_workers=2, batch_size=2).fit(files)
    got, starts = est.transform_windows(files)
    for a, b, s, t in zip(got, ref, starts, ref_starts):
        assert_allclose(a, b, atol=1e-6)
        assert_array_equal(s, t)


def test_transform_windows_without_a_hop_is_one_window_per_clip(recordings):
    est = featurizer().fit(recordings)
    embeddings, starts = est.transform_windows(recordings)
    assert_array_equal(np.concatenate(embeddings), est.transform(recordings))
    assert [s.tolist() for s in starts] == [[0.0]] * 3


def test_a_hop_under_one_frame_is_refused(recordings):
    with pytest.raises(ValueError, match="window_hop"):
        featurizer(window_hop=0.001).fit(recordings)


def test_the_cache_keys_the_hop(recordings, tmp_path):
    est = featurizer(window_hop=HOP, cache=tmp_path).fit(recordings)
    windowed = est.transform(recordings)
    assert_allclose(windowed, featurizer(window_hop=HOP).fit(recordings).transform(
        recordings), atol=1e-6)  # fmt: skip
    truncated = est.set_params(window_hop=None).transform(recordings)
    assert_allclose(truncated, featurizer().fit(recordings).transform(recordings),
                    atol=1e-6)  # fmt: skip
    assert not np.allclose(truncated[0], windowed[0])


# ---------------------------------------------------------------- classifier


def test_clip_probabilities_aggregate_the_windows(recordings):
    y = ["a", "b", "c"]
    clf = classifier(max_epochs=1, window_hop=HOP).fit(recordings, y)
    proba, starts = clf.predict_proba_windows(recordings)
    assert [p.shape for p in proba] == [(5, 3), (3, 3), (1, 3)]
    assert_allclose([s[-1] for s in starts], [0.84, 0.34, 0.0])
    mean = np.stack([p.mean(axis=0) for p in proba])
    assert_allclose(clf.predict_proba(recordings), mean, atol=1e-12)
    assert_array_equal(clf.predict(recordings), clf.classes_[mean.argmax(axis=1)])
    # logits up to a constant per clip: a windowed clip's are log-probabilities
    scores = clf.decision_function(recordings)
    assert_allclose(softmax(scores, axis=1), mean, atol=1e-12)
    assert_allclose(scores[:2], np.log(mean[:2]), atol=1e-12)
    top = np.stack([p.max(axis=0) for p in proba])  # renormalised
    maxed = clf.set_params(window_aggregation="max").predict_proba(recordings)
    assert_allclose(maxed, top / top.sum(axis=1, keepdims=True), atol=1e-12)
    # a window's probabilities are those of the clip cut at its start
    plain = clf.set_params(window_hop=None)
    cut = [recordings[0][round(t * SAMPLE_RATE) :] for t in starts[0]]
    assert_allclose(proba[0], plain.predict_proba(cut), atol=1e-4)


def test_multilabel_clips_take_the_max_by_default(recordings):
    Y = np.array([[1, 0], [0, 1], [1, 1]])
    clf = classifier(max_epochs=1, window_hop=HOP).fit(recordings, Y)
    proba, _ = clf.predict_proba_windows(recordings)
    top = np.stack([p.max(axis=0) for p in proba])
    assert_allclose(clf.predict_proba(recordings), top, atol=1e-12)
    assert_array_equal(clf.predict(recordings), (top > 0.5).astype(Y.dtype))
    mean = clf.set_params(window_aggregation="mean").predict_proba(recordings)
    assert_allclose(mean, np.stack([p.mean(axis=0) for p in proba]), atol=1e-12)


def test_fit_trains_on_windows(recordings, batch_sizes):
    clf = classifier(max_epochs=2, batch_size=16, window_hop=HOP)
    clf.fit(recordings, ["a", "b", "a"])
    trained = [n for n, grad in batch_sizes if grad]
    assert trained == [9, 9]  # every window, each epoch


def test_fit_normalization_sees_every_window(windowed, recordings):
    est = featurizer(window_hop=HOP, normalize="fit").fit(recordings)
    _, starts = windowed.transform_windows(recordings)
    feats = [
        fbank(torch.from_numpy(wave[round(t * SAMPLE_RATE) :]), max_length=64)
        for wave, times in zip(recordings, starts)
        for t in times
    ]
    values = torch.cat(feats).double()
    mean, std = values.mean().item(), values.std(correction=0).item()
    assert_allclose(est.normalization_, (mean, std), rtol=1e-5)


# ---------------------------------------------------------------- memory


def _peak_rss_bytes():
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


def _hour_in_a_fresh_process(queue):
    """transform of a one-hour recording, in a process whose peak memory so
    far holds the recording, the model and a warm-up."""
    torch.set_num_threads(1)
    wave = np.random.default_rng(0).standard_normal(3600 * SAMPLE_RATE, np.float32)
    wave *= 0.1
    est = featurizer(window_hop=2.0).fit([wave[:SAMPLE_RATE]])
    est.transform([wave[: 20 * SAMPLE_RATE]])  # warm up
    before = _peak_rss_bytes()
    out = est.transform([wave])
    queue.put((_peak_rss_bytes() - before, wave.nbytes, out.shape))


def test_an_hour_is_embedded_in_memory_bounded_by_a_batch_of_windows():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_hour_in_a_fresh_process, args=(queue,))
    proc.start()
    growth, wave_bytes, shape = queue.get(timeout=300)
    proc.join(timeout=60)
    assert proc.exitcode == 0 and shape == (1, 32)
    # the hour's fbank would be 360,000 x 128 float32 (184 MB, more while it
    # is computed); a batch of 16 windows' is 0.5 MB. Loading the clip checks
    # that its samples are finite, a byte per sample (58 MB) for a moment.
    assert growth < 0.3 * wave_bytes < 184e6 / 2, (growth, wave_bytes)


# ---------------------------------------------------------------- command line


def test_skast_embed_window_hop(recordings, tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "ckpt"
    save_pretrained(AST(ASTConfig(**FAST)), ckpt)
    files = [str(write(tmp_path / f"{i}.wav", w)) for i, w in enumerate(recordings)]
    est = ASTFeaturizer(ckpt, window_hop=HOP, device="cpu").fit(files)
    args = ["--checkpoint", str(ckpt), "--device", "cpu", "-q", "--window-hop"]
    npy, csv = tmp_path / "emb.npy", tmp_path / "emb.csv"
    assert main(["embed", *files, "-o", str(npy), *args, str(HOP)]) == 0
    assert_allclose(np.load(npy), est.transform(files), atol=1e-6)
    per_window = ["--per-window", *args, str(HOP)]
    assert main(["embed", *files, "-o", str(csv), *per_window]) == 0
    header, *rows = csv.read_text().strip().splitlines()
    assert header.startswith("file,start,astfeaturizer0")
    cells = [row.split(",") for row in rows]
    assert [c[0] for c in cells] == [files[0]] * 5 + [files[1]] * 3 + [files[2]]
    embeddings, starts = est.transform_windows(files)
    assert_allclose([float(c[1]) for c in cells], np.concatenate(starts))
    values = np.array([c[2:] for c in cells], dtype=float)
    assert_allclose(values, np.concatenate(embeddings), atol=1e-6)
    capsys.readouterr()
    assert main(["embed", *files, "-o", str(npy), "--per-window", *args[:-1]]) == 2
    assert "--per-window needs --window-hop" in capsys.readouterr().err
