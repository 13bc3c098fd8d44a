"""skast._cache: atomic writes, misses, keys and the cache folder, and two
processes embedding into one cache at once (nothing lost or corrupt, no
temporary file left, every entry equal to a fresh computation).

Processes embedding the same clips into one cache, and the cache seen
through ``ASTFeaturizer``, are in tests/test_featurizer.py.
"""

import multiprocessing
import os
import warnings

import joblib
import numpy as np
import pytest
import soundfile as sf
import torch
from numpy.testing import assert_allclose, assert_array_equal

from skast import ASTFeaturizer
from skast._audio import check_audio_input
from skast._cache import (
    array_fingerprint,
    cache_dir,
    cache_key,
    file_fingerprint,
    read_embedding,
    write_embedding,
)
from tests._helpers import clips, featurizer
from tests.conftest import TINY


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "ab" / "abcdef.npy"
    write_embedding(path, np.ones(4, dtype=np.float32))

    def disk_full(fh, array):  # the documented seam: a write failing part way
        fh.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_embedding(path, np.zeros(4, dtype=np.float32), save=disk_full)
    assert os.listdir(path.parent) == ["abcdef.npy"]  # no temporary file left
    assert_array_equal(np.load(path), np.ones(4, dtype=np.float32))
    with pytest.raises(KeyboardInterrupt):  # interrupted: the same

        def interrupted(fh, array):
            fh.write(b"\x93NUMPY")
            raise KeyboardInterrupt

        write_embedding(path, np.zeros(4, dtype=np.float32), save=interrupted)
    assert os.listdir(path.parent) == ["abcdef.npy"]


def test_bad_files_are_misses(tmp_path):
    good = tmp_path / "good.npy"
    write_embedding(good, np.arange(3.0))
    assert_array_equal(read_embedding(good, 3), np.arange(3, dtype=np.float32))
    assert read_embedding(good, 4) is None  # another width
    (tmp_path / "truncated.npy").write_bytes(good.read_bytes()[:40])
    (tmp_path / "garbage.npy").write_bytes(b"garbage")
    np.save(tmp_path / "float64.npy", np.arange(3.0))
    np.save(tmp_path / "pickled.npy", np.array([None, 1, 2]), allow_pickle=True)
    for name in ("truncated", "garbage", "float64", "pickled", "missing"):
        assert read_embedding(tmp_path / f"{name}.npy", 3) is None, name


def test_cache_dir_and_keys(tmp_path):
    assert cache_dir(tmp_path) == tmp_path / "skast-embeddings"
    assert cache_dir(str(tmp_path)) == tmp_path / "skast-embeddings"
    assert (
        cache_dir(joblib.Memory(tmp_path, verbose=0)) == tmp_path / "skast-embeddings"
    )
    assert cache_dir(joblib.Memory(None)) is None and cache_dir(None) is None
    key = cache_key("f" * 64, ("mean", None, 16000))
    assert key == cache_key("f" * 64, ("mean", None, 16000))
    assert key != cache_key("f" * 64, ("cls", None, 16000))
    assert key != cache_key("e" * 64, ("mean", None, 16000))


def test_fingerprints(tmp_path):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    a.write_bytes(b"one")
    b.write_bytes(b"one")
    assert file_fingerprint(a) == file_fingerprint(b)
    b.write_bytes(b"two")
    assert file_fingerprint(a) != file_fingerprint(b)
    with pytest.raises(ValueError, match="^clip 3: cannot read audio file"):
        file_fingerprint(tmp_path / "missing.wav", index=3)
    x = np.arange(6, dtype=np.float32)
    assert array_fingerprint(x) == array_fingerprint(x.copy())
    assert array_fingerprint(x) != array_fingerprint(x.reshape(2, 3))
    assert array_fingerprint(x) != array_fingerprint(x.astype(np.float64))


# ---------------------------------------------------------------- two processes


def _embed_into(cache, X, out, barrier):
    est = featurizer(batch_size=4, cache=cache).fit(X)
    barrier.wait(timeout=300)  # both processes embed at the same time
    np.save(out, est.transform(X))


def test_two_processes_embed_same_and_different_clips_into_one_cache(tmp_path):
    shared, mine, theirs = clips(8, seed=1), clips(6, seed=2), clips(6, seed=3)
    X1 = mine + shared  # process 1
    X2 = shared[::-1] + theirs  # process 2: the shared clips in another order
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_embed_into, args=(cache, X, tmp_path / f"{i}.npy", barrier))
        for i, X in enumerate([X1, X2])
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    every = mine + shared + theirs
    fresh = featurizer(batch_size=4).fit(every).transform(every)
    # the files are named by the clips' fingerprints
    audio = check_audio_input(every)
    by_name = {audio.fingerprint(i): fresh[i] for i in range(len(every))}
    # each process got what a computation without cache gives
    assert_allclose(np.load(tmp_path / "0.npy"), fresh[:14], atol=1e-6)
    expected = np.r_[fresh[6:14][::-1], fresh[14:]]
    assert_allclose(np.load(tmp_path / "1.npy"), expected, atol=1e-6)
    # nothing lost, nothing corrupt, no temporary files left
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert all(f.suffix == ".npy" and not f.name.startswith(".") for f in files)
    assert sorted(f.stem for f in files) == sorted(by_name)
    for f in files:
        row = np.load(f, allow_pickle=False)
        assert row.dtype == np.float32 and row.shape == (TINY["hidden_size"],)
        assert_allclose(row, by_name[f.stem], atol=1e-6)
    # and a third user reads them all from the cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reread = featurizer(batch_size=4, cache=cache).fit(every).transform(every)
    assert_allclose(reread, fresh, atol=1e-6)


def test_records_and_tensors_have_content_fingerprints(tmp_path, rng):
    wave = (0.1 * rng.standard_normal(4000)).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, wave, 16000, subtype="FLOAT")
    audio = check_audio_input(
        [
            {"array": wave, "sampling_rate": 16000},
            {"array": wave.copy(), "sampling_rate": 16000},
            {"array": wave, "sampling_rate": 8000},
            {"path": str(path)},
            {"bytes": path.read_bytes()},
        ]
    )
    prints = [audio.fingerprint(i) for i in range(len(audio))]
    assert prints[0] == prints[1]  # the content, not the object
    assert prints[2] != prints[0]  # a record's own rate is part of the clip
    assert prints[3] == prints[4] == check_audio_input([path]).fingerprint(0)
    tensors = check_audio_input([torch.from_numpy(wave), torch.from_numpy(wave)])
    assert tensors.fingerprint(0) == tensors.fingerprint(1)
    assert tensors.fingerprint(0) != check_audio_input([wave[:-1]]).fingerprint(0)


def test_the_cache_serves_records(tmp_path, rng):
    X = [
        {"array": (0.1 * rng.standard_normal(n)).astype(np.float32), "sampling_rate": r}
        for n, r in [(4000, 16000), (3000, 8000), (4000, 16000)]
    ]
    est = ASTFeaturizer(model_config=TINY, device="cpu", cache=tmp_path).fit(X)
    plain = ASTFeaturizer(model_config=TINY, device="cpu").fit(X).transform(X)
    np.testing.assert_array_equal(est.transform(X), plain)  # written
    assert len(list(tmp_path.rglob("*.npy"))) == len(X)
    passes = []
    est.model_.patch_embed.register_forward_pre_hook(lambda m, a: passes.append(1))
    np.testing.assert_array_equal(est.transform(X), plain)  # read back
    assert passes == []  # no clip went through the encoder again
