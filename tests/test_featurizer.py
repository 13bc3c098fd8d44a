"""ASTFeaturizer: parity with transformers, input kinds, streaming, the cache,
pickling and model selection."""

import math
import multiprocessing
import pickle
import resource
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline

from skast import ASTFeaturizer, DeviceWarning
from tests.conftest import TINY

SR = 16000


def make(**kw):
    """A tiny random-weight featurizer on the CPU."""
    return ASTFeaturizer(**{"model_config": TINY, "device": "cpu", **kw})


def clips(rng, seconds, sr=SR):
    """Noise clips of the given durations, float32, amplitude ~0.1."""
    return [
        (0.1 * rng.standard_normal(int(round(s * sr)))).astype(np.float32)
        for s in seconds
    ]


def tones(n_per_class=12, seed=0):
    """Two classes: a low and a high tone in noise, ragged lengths."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for label, freq in enumerate((300.0, 3000.0)):
        for _ in range(n_per_class):
            n = int(rng.integers(6000, 10000))
            t = np.arange(n) / SR
            phase = rng.uniform(0, 2 * np.pi)
            wave = 0.3 * np.sin(2 * np.pi * freq * t + phase)
            X.append((wave + 0.05 * rng.standard_normal(n)).astype(np.float32))
            y.append(label)
    return X, np.array(y)


def record_batches(sizes):
    """Record the batch size of every forward pass of any AST encoder, through
    torch's global forward pre-hook on the patch embedding (an AST's only
    convolution, which every pass runs first); returns the hook's handle."""

    def hook(module, args):
        if isinstance(module, torch.nn.Conv2d):
            sizes.append(args[0].shape[0])

    return torch.nn.modules.module.register_module_forward_pre_hook(hook)


@pytest.fixture
def count_clips():
    """The batch sizes of the encoders' forward passes during the test."""
    sizes = []
    handle = record_batches(sizes)
    yield sizes
    handle.remove()


# ---------------------------------------------------------------- fidelity


def _hf_pool(tokens, pooling):
    if pooling == "mean":
        return (tokens[:, 0] + tokens[:, 1]) / 2
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "dist":
        return tokens[:, 1]
    return tokens[:, 2:].mean(dim=1)


@pytest.fixture(scope="module")
def hf_reference(hf_tiny_dir):
    """Clips and transformers' outputs for them (feature extractor + ASTModel)."""
    transformers = pytest.importorskip("transformers")
    rng = np.random.default_rng(1)
    # shorter than max_length (padded), about equal, longer (truncated)
    waves = clips(rng, [0.3, 0.5, 0.65, 1.2])
    fe = transformers.ASTFeatureExtractor(max_length=64)
    x = fe(waves, sampling_rate=SR, return_tensors="pt").input_values
    hf = transformers.ASTForAudioClassification.from_pretrained(hf_tiny_dir)
    with torch.no_grad():
        out = hf.eval().audio_spectrogram_transformer(x, output_hidden_states=True)
    return waves, out


@pytest.mark.parametrize(
    "pooling, layer",
    [
        ("mean", None),
        ("cls", None),
        ("dist", None),
        ("patch", None),
        ("mean", 0),
        ("cls", 1),
        ("patch", 2),
        ("mean", -1),
        ("dist", -3),
    ],
)
def test_embeddings_equal_transformers(hf_tiny_dir, hf_reference, pooling, layer):
    waves, out = hf_reference
    est = ASTFeaturizer(hf_tiny_dir, pooling=pooling, layer=layer, device="cpu")
    got = est.fit(waves).transform(waves)
    if layer is None and pooling == "mean":
        ref = out.pooler_output
    elif layer is None:
        ref = _hf_pool(out.last_hidden_state, pooling)
    else:
        # transformers' hidden_states: [0] the embeddings, [i] block i's
        # output before the final LayerNorm
        ref = _hf_pool(out.hidden_states[layer], pooling)
    ref = ref.numpy()
    assert got.dtype == np.float32 and got.shape == ref.shape == (4, 32)
    assert np.abs(ref).max() > 1e-2  # not a comparison between zeros
    assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_a_clip_alone_or_in_a_ragged_batch(rng):
    waves = clips(rng, [0.2, 1.0, 0.5, 0.75, 0.03, 0.6])
    est = make(batch_size=4).fit(waves)
    together = est.transform(waves)
    for i, wave in enumerate(waves):
        assert_allclose(est.transform([wave])[0], together[i], atol=1e-5, rtol=0)
    # and in another order, in other batches
    order = [5, 2, 0, 4, 1, 3]
    shuffled = est.transform([waves[i] for i in order])
    assert_allclose(shuffled, together[order], atol=1e-5, rtol=0)


def test_input_kinds_agree(tmp_path, rng):
    waves = clips(rng, [0.5, 0.5, 0.5])
    X = np.stack(waves)
    est = make().fit(X)
    ref = est.transform(X)
    assert_allclose(est.transform(list(waves)), ref, atol=1e-6, rtol=0)
    assert_allclose(est.transform(tuple(waves)), ref, atol=1e-6, rtol=0)
    assert_allclose(est.transform(pd.Series(list(waves))), ref, atol=1e-6, rtol=0)

    # float wav files: exact; stereo with identical channels: exact
    mono, stereo = [], []
    for i, wave in enumerate(waves):
        mono.append(tmp_path / f"mono{i}.wav")
        sf.write(mono[-1], wave, SR, subtype="FLOAT")
        stereo.append(str(tmp_path / f"stereo{i}.wav"))
        sf.write(stereo[-1], np.stack([wave, wave], axis=1), SR, subtype="FLOAT")
    assert_allclose(est.transform(mono), ref, atol=1e-6, rtol=0)
    assert_allclose(est.transform(stereo), ref, atol=1e-6, rtol=0)

    # 16-bit PCM: equal to its own int16 samples given as an array, and within
    # the quantisation of the float original
    pcm = []
    for i, wave in enumerate(waves):
        pcm.append(tmp_path / f"pcm{i}.wav")
        sf.write(pcm[-1], wave, SR, subtype="PCM_16")
    from_files = est.transform(pcm)
    ints = np.stack([sf.read(p, dtype="int16")[0] for p in pcm])
    assert_allclose(from_files, est.transform(ints), atol=1e-5, rtol=0)
    assert_allclose(from_files, ref, atol=2e-2, rtol=0)
    flac = []
    for i, wave in enumerate(waves):
        flac.append(tmp_path / f"clip{i}.flac")
        sf.write(flac[-1], wave, SR, subtype="PCM_24")
    assert_allclose(est.transform(flac), ref, atol=1e-3, rtol=0)


def test_files_carry_their_own_sample_rate(tmp_path, rng):
    waves = clips(rng, [0.5, 0.7], sr=44100)
    paths = []
    for i, wave in enumerate(waves):
        paths.append(tmp_path / f"clip{i}.wav")
        sf.write(paths[-1], np.stack([wave, wave], axis=1), 44100, subtype="FLOAT")
    from_arrays = make(sample_rate=44100).fit(waves).transform(waves)
    # the featurizer's sample_rate is for arrays only
    from_files = make(sample_rate=8000).fit(paths).transform(paths)
    assert_allclose(from_files, from_arrays, atol=1e-5, rtol=0)
    # not a no-op: reading the 44.1 kHz waveform as 16 kHz changes the result
    as_16k = make().fit(waves).transform(waves)
    assert np.abs(as_16k - from_arrays).max() > 1e-3


def test_normalize_fit_equals_the_statistics_of_the_padded_features(rng):
    torchaudio = pytest.importorskip("torchaudio")
    waves = clips(rng, [0.3, 0.5, 1.0, 0.8])
    est = make(normalize="fit").fit(waves)
    feats = []
    for wave in waves:
        f = torchaudio.compliance.kaldi.fbank(
            torch.from_numpy(wave)[None],
            htk_compat=True,
            sample_frequency=SR,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_shift=10,
        )
        f = torch.nn.functional.pad(f, (0, 0, 0, max(0, 64 - len(f))))[:64]
        feats.append(f.double())
    feats = torch.stack(feats)
    mean, std = est.normalization_
    assert mean == pytest.approx(feats.mean().item(), abs=1e-4)
    assert std == pytest.approx(feats.std(unbiased=False).item(), rel=1e-4)
    # and they are what transform normalises with
    preset = make(normalize=(mean, std)).fit(waves[:1])
    assert_allclose(preset.transform(waves), est.transform(waves), atol=1e-6)


def test_precisions_give_float32(rng):
    waves = clips(rng, [0.5, 0.4])
    ref = make().fit(waves).transform(waves)
    est = make(precision="bfloat16").fit(waves)
    out = est.transform(waves)
    assert out.dtype == np.float32
    assert_allclose(out, ref, atol=0.1 * np.abs(ref).max())


# ---------------------------------------------------------------- streaming


def _peak_rss_bytes():
    """The peak resident memory of this process so far (ru_maxrss)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


def _stream_in_a_fresh_process(n, batch_size, queue):
    """transform of n clips in a process whose peak memory so far is that of
    X, the model and a warm-up: the peak's growth is what transform needs."""
    torch.set_num_threads(1)
    sizes = []
    record_batches(sizes)
    X = np.random.default_rng(0).standard_normal((n, SR // 2), dtype=np.float32)
    X *= 0.1  # in place: no second copy of X in the peak
    est = make(batch_size=batch_size).fit(X[:2])
    est.transform(X[:64])  # warm up allocators and caches
    before = _peak_rss_bytes()
    out = est.transform(X)
    queue.put((_peak_rss_bytes() - before, X.nbytes, out.shape, sizes))


def test_many_clips_stream_in_batches():
    n, batch_size = 2000, 32
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_stream_in_a_fresh_process, args=(n, batch_size, queue))
    proc.start()
    growth, x_bytes, shape, sizes = queue.get(timeout=300)
    proc.join(timeout=60)
    assert proc.exitcode == 0 and shape == (n, 32)
    # the encoder never sees more than a batch
    assert max(sizes) <= batch_size and sum(sizes) == 64 + n
    assert len(sizes) == 2 + math.ceil(n / batch_size)
    # all the clips' features would be 2000 x 64 x 128 float32 (65 MB) and
    # their waveforms as many bytes as X (64 MB); streaming needs a batch
    assert growth < x_bytes / 2, (growth, x_bytes)


def test_fit_embeds_nothing(count_clips, rng):
    waves = clips(rng, [0.5, 0.5, 0.5])
    make().fit(waves)
    make(normalize="fit").fit(waves)
    assert count_clips == []


# ---------------------------------------------------------------- pickling


def test_joblib_round_trip(tmp_path, hf_tiny_dir, rng):
    import shutil

    waves = clips(rng, [0.5, 0.3, 0.8])
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(hf_tiny_dir, checkpoint)
    est = ASTFeaturizer(checkpoint, device="cpu").fit(waves)
    ref = est.transform(waves)
    joblib.dump(est, tmp_path / "est.joblib")
    # pickling leaves the estimator as it was (weights are packed in a copy)
    assert "model_" in vars(est) and "_packed_model" not in vars(est)
    # the pickle is self-contained: the checkpoint is no longer needed
    shutil.rmtree(checkpoint)
    loaded = joblib.load(tmp_path / "est.joblib")
    assert_array_equal(loaded.transform(waves), ref)
    assert_array_equal(est.transform(waves), ref)
    assert loaded.get_params() == est.get_params()
    assert loaded.device_ == "cpu" and loaded.normalization_ == est.normalization_
    assert_array_equal(pickle.loads(pickle.dumps(loaded)).transform(waves), ref)


def test_fitted_on_cuda_loads_on_a_cpu_only_machine(tmp_path, monkeypatch, rng):
    waves = clips(rng, [0.5, 0.3])
    est = make().fit(waves)
    ref = est.transform(waves)
    est.device_ = "cuda:0"  # as if fitted on a GPU (pickles hold CPU tensors)
    joblib.dump(est, tmp_path / "est.joblib")
    pickled = pickle.dumps(est)
    est.device_ = "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning, match="'cuda:0', which is not available") as rec:
        loaded = joblib.load(tmp_path / "est.joblib")
    # the warning points at the line that loaded the estimator
    assert [w.filename for w in rec] == [__file__]
    with pytest.warns(DeviceWarning) as rec:
        pickle.loads(pickled)
    assert [w.filename for w in rec] == [__file__]
    assert loaded.device_ == "cpu"
    assert next(loaded.model_.parameters()).device.type == "cpu"
    assert_array_equal(loaded.transform(waves), ref)
    assert_array_equal(est.transform(waves), ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_round_trip(tmp_path, monkeypatch, rng):
    waves = clips(rng, [0.5, 0.3])
    est = make(device="cuda", precision="float32").fit(waves)
    ref = est.transform(waves)
    joblib.dump(est, tmp_path / "est.joblib")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning, match="not available"):
        loaded = joblib.load(tmp_path / "est.joblib")
    assert_allclose(loaded.transform(waves), ref, atol=1e-4)


# ---------------------------------------------------------------- model selection


def test_pipeline_cross_validation_and_grid_search():
    X, y = tones()
    # random tiny weights give small embeddings: a weakly regularised probe
    pipe = make_pipeline(make(), LogisticRegression(C=100.0, max_iter=1000))
    serial = cross_val_score(pipe, X, y, cv=3, n_jobs=1)
    parallel = cross_val_score(pipe, X, y, cv=3, n_jobs=2)
    assert_allclose(serial, parallel)
    assert serial.mean() > 0.9  # the two tones are easy, even for random weights
    search = GridSearchCV(pipe, {"logisticregression__C": [0.01, 100.0]}, cv=3)
    search.fit(X, y)
    assert search.best_params_ == {"logisticregression__C": 100.0}
    assert_array_equal(search.predict(X[::6]), y[::6])


def test_cached_cross_validation_embeds_each_clip_once(tmp_path, count_clips):
    X, y = tones()
    pipe = make_pipeline(make(cache=tmp_path), LogisticRegression(C=100.0))
    first = cross_val_score(pipe, X, y, cv=5, n_jobs=1)
    assert sum(count_clips) == len(X)
    count_clips.clear()
    again = cross_val_score(pipe, X, y, cv=5, n_jobs=1)
    assert count_clips == []
    assert_array_equal(first, again)
    uncached = cross_val_score(
        make_pipeline(make(), LogisticRegression(C=100.0)), X, y, cv=5
    )
    assert_array_equal(first, uncached)


def test_set_output_pandas(rng):
    waves = clips(rng, [0.5, 0.3])
    est = make().set_output(transform="pandas")
    df = est.fit_transform(waves)
    assert isinstance(df, pd.DataFrame) and df.shape == (2, 32)
    assert list(df.columns) == [f"astfeaturizer{i}" for i in range(32)]
    assert_array_equal(est.get_feature_names_out(), df.columns)
    assert_array_equal(df.to_numpy(), make().fit(waves).transform(waves))


# ---------------------------------------------------------------- cache


def _cache_files(root):
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_cache_layout_and_reuse(tmp_path, rng, count_clips):
    waves = clips(rng, [0.5, 0.3, 0.8])
    ref = make().fit(waves).transform(waves)
    est = make(cache=str(tmp_path)).fit(waves)
    assert_array_equal(est.transform(waves), ref)
    files = _cache_files(tmp_path)
    assert len(files) == 3
    for f in files:
        rel = f.relative_to(tmp_path).parts
        assert rel[0] == "skast-embeddings" and len(rel[1]) == 16
        assert rel[3] == f"{f.stem}.npy" and rel[2] == f.stem[:2]
    count_clips.clear()
    # another estimator with the same settings, duplicates and a new clip
    new = clips(np.random.default_rng(7), [0.4])[0]
    more = [waves[2], new, waves[0], new.copy()]
    out = make(cache=tmp_path).fit(waves).transform(more)
    assert sum(count_clips) == 1  # only the new clip, once
    assert_allclose(out[[0, 2]], ref[[2, 0]], atol=1e-6)
    assert_array_equal(out[1], out[3])
    assert len(_cache_files(tmp_path)) == 4


def test_cache_key_covers_what_changes_the_embedding(tmp_path, rng):
    waves = clips(rng, [0.5])
    for est in [
        make(cache=tmp_path),
        make(cache=tmp_path, pooling="cls"),
        make(cache=tmp_path, layer=1),
        make(cache=tmp_path, normalize="esc50"),
        make(cache=tmp_path, model_config={**TINY, "hidden_size": 16}),
    ]:
        ref = clone(est).set_params(cache=None).fit(waves).transform(waves)
        assert_array_equal(est.fit(waves).transform(waves), ref)
    folders = {f.parts[-3] for f in _cache_files(tmp_path)}
    assert len(folders) == 5
    # set_params after fit is honoured too, never served from the old key
    est = make(cache=tmp_path).fit(waves)
    est.set_params(pooling="dist")
    assert_array_equal(
        est.transform(waves), make(pooling="dist").fit(waves).transform(waves)
    )


def test_joblib_memory_cache(tmp_path, rng):
    waves = clips(rng, [0.5, 0.3])
    ref = make().fit(waves).transform(waves)
    est = make(cache=joblib.Memory(tmp_path / "m", verbose=0)).fit(waves)
    assert_array_equal(est.transform(waves), ref)
    assert len(_cache_files(tmp_path / "m" / "skast-embeddings")) == 2
    est = make(cache=joblib.Memory(None)).fit(waves)
    assert_array_equal(est.transform(waves), ref)


def test_corrupt_cache_files_are_misses(tmp_path, rng, count_clips):
    waves = clips(rng, [0.5, 0.3, 0.8])
    est = make(cache=tmp_path).fit(waves)
    ref = est.transform(waves)
    files = _cache_files(tmp_path)
    files[0].write_bytes(files[0].read_bytes()[:40])  # truncated
    files[1].write_bytes(b"garbage")
    np.save(files[2], np.zeros(5, dtype=np.float32))  # wrong shape
    count_clips.clear()
    assert_array_equal(est.transform(waves), ref)
    assert sum(count_clips) == 3
    count_clips.clear()
    assert_array_equal(est.transform(waves), ref)  # rewritten, now hits
    assert count_clips == []


def _transform_in_a_process(est, waves):
    return est.transform(waves)


def test_concurrent_processes_share_a_cache(tmp_path, rng):
    waves = clips(rng, [0.5] * 24)
    est = make(cache=tmp_path, batch_size=4).fit(waves)
    outs = joblib.Parallel(n_jobs=2)(
        joblib.delayed(_transform_in_a_process)(est, waves) for _ in range(4)
    )
    ref = make().fit(waves).transform(waves)
    for out in outs:
        assert_allclose(out, ref, atol=1e-6)
    files = _cache_files(tmp_path)
    assert len(files) == 24 and all(f.suffix == ".npy" for f in files)
    for f in files:
        assert np.load(f).shape == (32,)


def test_unwritable_cache_warns_and_still_embeds(tmp_path, rng):
    # a file where the cache's folder would be: nothing can be written under
    # it, whoever runs the test (a read-only folder would not stop root)
    (tmp_path / "skast-embeddings").write_text("in the way")
    waves = clips(rng, [0.5, 0.3])
    est = make(cache=tmp_path).fit(waves)
    with pytest.warns(UserWarning, match="could not write to the embedding cache"):
        out = est.transform(waves)
    assert_array_equal(out, make().fit(waves).transform(waves))


# ---------------------------------------------------------------- errors, contract


def test_unfitted_transform():
    with pytest.raises(NotFittedError):
        make().transform(np.zeros((2, 800), dtype=np.float32))


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(pooling="max"), "pooling"),
        (dict(batch_size=0), "batch_size"),
        (dict(normalize="x"), "normalize"),
        (dict(normalize=(1.0,)), "normalize"),
        (dict(layer=3), "layer"),
        (dict(layer=-4), "layer"),
        (dict(layer=1.5), "layer"),
        (dict(cache=3), "cache"),
        (dict(model_config={"hidden_size": 30, "num_attention_heads": 4}), "model"),
    ],
)
def test_bad_parameters(params, match):
    X = np.zeros((2, 800), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        make(**params).fit(X)


def test_bad_clips_name_their_index(rng, tmp_path):
    waves = clips(rng, [0.5, 0.3, 0.4])
    bad = [w.copy() for w in waves]
    bad[2][10] = np.nan
    with pytest.raises(ValueError, match="clip 2: .*NaN"):
        make().fit(bad)
    est = make().fit(waves)
    with pytest.raises(ValueError, match="clip 2: .*NaN"):
        est.transform(bad)
    X = np.stack(waves[:1] * 3)
    X[1, 5] = np.inf
    with pytest.raises(ValueError, match="clip 1: .*infinite"):
        est.transform(X)
    with pytest.raises(ValueError, match="clip 1: .*empty"):
        est.transform([waves[0], np.zeros(0, dtype=np.float32)])
    with pytest.raises(ValueError, match="shape"):
        est.transform(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="Reshape your data"):
        est.transform(waves[0])
    with pytest.raises(TypeError, match="sparse"):
        from scipy import sparse

        est.transform(sparse.csr_matrix(np.ones((2, 800))))
    path = tmp_path / "ok.wav"
    sf.write(path, waves[0], SR)
    with pytest.raises(ValueError, match="clip 1: cannot read"):
        est.transform([path, tmp_path / "missing.wav"])
    with pytest.raises(ValueError, match="mixes file paths and waveforms"):
        est.transform([path, waves[0]])
    # with a cache, only the missing clips load: an error still names the
    # clip's index in X
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file")
    cached = make(cache=tmp_path / "cache").fit(waves)
    cached.transform([path])
    with pytest.raises(ValueError, match="clip 2: cannot read"):
        cached.transform([path, path, corrupt])


def test_inputs_and_estimator_are_left_unchanged(rng):
    waves = clips(rng, [0.5, 0.3])
    ints = (np.stack(clips(rng, [0.5, 0.5])) * 30000).astype(np.int16)
    copies = [w.copy() for w in waves], ints.copy()
    est = make(normalize="fit").fit(waves)
    state = dict(est.__dict__)
    est.transform(waves)
    est.transform(ints)
    make().fit(ints).transform(ints)
    assert est.__dict__ == state
    for a, b in zip(waves, copies[0]):
        assert_array_equal(a, b)
    assert_array_equal(ints, copies[1])


def test_verbose_shows_progress(rng, capsys):
    waves = clips(rng, [0.5, 0.3])
    make(verbose=True).fit(waves).transform(waves)
    assert "embedding" in capsys.readouterr().err


def test_no_n_features_in(rng):
    est = make().fit(np.zeros((2, 8000), dtype=np.float32))
    assert not hasattr(est, "n_features_in_")
    # clips of another length than at fit are fine
    assert est.transform(np.zeros((3, 1234), dtype=np.float32)).shape == (3, 32)


def test_files_decoded_in_workers(tmp_path, rng):
    waves = clips(rng, [0.5, 0.3, 0.8, 0.4, 0.6])
    paths = []
    for i, wave in enumerate(waves):
        paths.append(tmp_path / f"clip{i}.flac")
        sf.write(paths[-1], wave, SR, subtype="PCM_24")
    ref = make(batch_size=2).fit(paths).transform(paths)
    est = make(batch_size=2, num_workers=2, cache=tmp_path / "cache").fit(paths)
    assert_allclose(est.transform(paths[:2]), ref[:2], atol=1e-6)
    assert_allclose(est.transform(paths), ref, atol=1e-6)  # 3 missing, in workers
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not really a wav file")
    with pytest.raises(ValueError, match="clip 5: cannot read"):
        est.transform(paths + [corrupt])
