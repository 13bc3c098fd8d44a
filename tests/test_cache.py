"""skast._cache and skast._claims: atomic writes, misses, keys and the cache
folder; two processes embedding into one cache at once (each clip embedded
once in all, nothing lost or corrupt, no temporary file left, every entry
equal to a fresh computation); threads doing the same; the claims of a
killed process or of a dead machine taken over.

Processes embedding the same clips into one cache, and the cache seen
through ``ASTFeaturizer``, are in tests/test_featurizer.py.
"""

import concurrent.futures
import multiprocessing
import os
import sys
import time
import warnings

import joblib
import numpy as np
import pytest
import soundfile as sf
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch.nn.modules.module import register_module_forward_pre_hook

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
from skast._claims import Claims
from tests._helpers import clips, featurizer, log_encoder_clips, logged_clips
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

DASK = ("dask", "distributed")


def _embed_into(cache, X, out, logs, barrier):
    est = featurizer(batch_size=4, cache=cache).fit(X)
    log_encoder_clips(logs)
    barrier.wait(timeout=300)  # both processes embed at the same time
    np.save(out, est.transform(X))
    import skast.dask  # noqa: F401

    # nothing of skast imports Dask unless asked: not even skast.dask
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in DASK)
    out.with_suffix(".modules").write_text(" ".join(loaded))


def test_two_racing_processes_embed_each_clip_once_into_one_cache(tmp_path):
    shared, mine, theirs = clips(8, seed=1), clips(6, seed=2), clips(6, seed=3)
    X1 = mine + shared  # process 1
    X2 = shared[::-1] + theirs  # process 2: the shared clips in another order
    cache, logs = tmp_path / "cache", tmp_path / "logs"
    logs.mkdir()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(
            target=_embed_into, args=(cache, X, tmp_path / f"{i}.npy", logs, barrier)
        )
        for i, X in enumerate([X1, X2])
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    every = mine + shared + theirs
    # each distinct clip went through one process's encoder, once: the shared
    # clips one process claimed, the other waited for
    assert (tmp_path / "0.modules").read_text() == ""
    counts = logged_clips(logs)
    assert len(counts) == 2 and sum(counts.values()) == len(every)
    out1, out2 = np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy")
    assert_array_equal(out1[6:][::-1], out2[:8])  # the same rows, to the bit
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


# ---------------------------------------------------------------- exclusive claims


def _claims(cache):
    return sorted(cache.rglob("*.claim"))


def test_threads_embed_each_clip_once(tmp_path):
    X = clips(10, seed=5)
    est = featurizer(batch_size=2, cache=tmp_path).fit(X)
    handle = log_encoder_clips(tmp_path)
    try:
        outs = joblib.Parallel(n_jobs=3, backend="threading")(
            joblib.delayed(est.transform)(order)
            for order in (X, X[::-1], X[3:] + X[:3])
        )
    finally:
        handle.remove()
    assert sum(logged_clips(tmp_path).values()) == len(X)
    assert_array_equal(outs[1][::-1], outs[0])
    assert_array_equal(outs[2], np.r_[outs[0][3:], outs[0][:3]])
    assert _claims(tmp_path) == []


def _hang_while_embedding(cache, X):
    est = featurizer(cache=cache).fit(X)
    register_module_forward_pre_hook(lambda module, args: time.sleep(3600))
    est.transform(X)  # claims every clip, then never returns


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _transform_counted(est, X, logs):
    """``est.transform(X)`` within 30 s, and the clips through the encoder."""
    handle = log_encoder_clips(logs)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            out = pool.submit(est.transform, X).result(timeout=30)
    finally:
        handle.remove()
    return out, sum(logged_clips(logs).values())


def test_the_claims_of_a_killed_process_are_taken_over(tmp_path):
    X = clips(5, seed=6)
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_hang_while_embedding, args=(cache, X))
    proc.start()
    try:
        _wait_for(lambda: len(_claims(cache)) == len(X), 240, "the child's claims")
    finally:
        proc.kill()  # SIGKILL: no finally of its own runs
        proc.join(timeout=30)
    left = _claims(cache)
    assert len(left) == len(X) and not list(cache.rglob("*.npy"))
    # a successor on this host sees the owner's process gone: it takes the
    # claims over at once, well before the 60 s heartbeat timeout
    est = featurizer(cache=cache).fit(X)
    out, n_clips = _transform_counted(est, X, tmp_path)
    assert n_clips == len(X)
    assert_array_equal(out, featurizer().fit(X).transform(X))
    assert _claims(cache) == [] and len(list(cache.rglob("*.npy"))) == len(X)


def test_stale_claims_of_another_machine_are_taken_over(tmp_path):
    X = clips(3, seed=7)
    est = featurizer(cache=tmp_path).fit(X)
    ref = est.transform(X)
    # a machine that died an hour ago, holding these clips (the files' layout
    # is documented: one <clip>.npy each, claimed as <clip>.claim)
    for path in tmp_path.rglob("*.npy"):
        claim = path.with_suffix(".claim")
        claim.write_text("another-machine\n4242\n0123456789abcdef\n")
        hour_ago = time.time() - 3600
        os.utime(claim, (hour_ago, hour_ago))
        path.unlink()
    out, n_clips = _transform_counted(est, X, tmp_path)
    assert n_clips == len(X)
    assert_array_equal(out, ref)
    assert _claims(tmp_path) == []


def test_claims_are_live_while_renewed_and_stale_once_not(tmp_path):
    claim = tmp_path / "ab" / "abcd.claim"
    with Claims(timeout=0.5) as owner, Claims(timeout=0.5) as other:
        assert owner.acquire(claim) and not other.acquire(claim)
        time.sleep(0.8)  # the heartbeat renews it every timeout / 6
        assert not other.acquire(claim)
        owner.release(claim)
        assert not claim.exists() and other.acquire(claim)
    assert not claim.exists()  # closing releases every claim held
    # a live-looking claim of another machine whose clock is ahead: no age
    # can be read from its time, but it stops changing, and that is watched
    claim.parent.mkdir(exist_ok=True)
    claim.write_text("another-machine\n4242\n0123456789abcdef\n")
    ahead = time.time() + 3600
    os.utime(claim, (ahead, ahead))
    with Claims(timeout=0.5) as successor:
        assert not successor.acquire(claim)
        time.sleep(0.6)
        assert successor.acquire(claim)
        assert claim.read_text() == successor.owner
    assert not claim.exists()


def test_an_unwritable_cache_is_not_claimed(tmp_path):
    (tmp_path / "skast-embeddings").write_text("a file where the folder would be")
    X = clips(2, seed=8)
    est = featurizer(cache=tmp_path).fit(X)
    with pytest.warns(UserWarning, match="could not write to the embedding cache"):
        out = est.transform(X)
    assert_array_equal(out, featurizer().fit(X).transform(X))
