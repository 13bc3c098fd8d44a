"""skast._cache: atomic writes, misses, keys and the cache folder."""

import os

import joblib
import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skast._cache import (
    array_fingerprint,
    cache_dir,
    cache_key,
    file_fingerprint,
    read_embedding,
    write_embedding,
)


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
