"""The embedding cache of :class:`skast.ASTFeaturizer`: fingerprints, files.

A clip's embedding is kept in one ``.npy`` file,
``<cache>/skast-embeddings/<key[:16]>/<fp[:2]>/<fp>.npy``, where ``key``
(:func:`cache_key`) hashes the fitted model's weights and every setting that
changes an embedding, and ``fp`` is the clip's content fingerprint
(:func:`file_fingerprint`, :func:`array_fingerprint`, 64 hex digits). So no
clip is embedded twice, across estimators, folds, grid-search candidates and
processes; a moved or copied file keeps its fingerprint.

Concurrent workers on one cache (threads, processes, machines sharing the
folder) embed each clip once in all: a missing clip is claimed before it is
embedded, and workers that find it claimed wait for its file instead; the
claim of a worker that died is taken over (:mod:`skast._claims`). Files are
written atomically (a temporary file in the same folder, then a rename):
readers never see a partial one, and should two writers of one clip ever
meet (a claim taken over from a worker that was only slow), each renames a
complete file over the other's. A missing, unreadable or
malformed file is a miss, computed and written again. A cache that cannot be
written (a read-only folder, a full disk) warns once per ``transform`` and
the embeddings are returned all the same.

Faults are injected at one seam, for tests: the ``save`` argument of
:func:`write_embedding` (:func:`numpy.save` by default), which writes the
array to the open temporary file and may fail part way, as a full disk does.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import torch

from skast._claims import POLL_FIRST, POLL_LAST, Claims
from skast._persist import replacing

__all__ = [
    "array_fingerprint",
    "cache_dir",
    "cache_key",
    "embed_cached",
    "file_fingerprint",
    "model_fingerprint",
    "read_embedding",
    "write_embedding",
]

# Bumped whenever what a cached file holds changes meaning.
_CACHE_FORMAT = "skast-embeddings-v1"
# Missing clips are embedded and written to the cache this many at a time, so an
# interrupted run keeps most of its work.
_CACHE_CHUNK = 512
_HEX = re.compile(r"[0-9a-fA-F]{16,128}")

# --------------------------------------------------------------------------- keys


def cache_dir(cache) -> Path | None:
    """The folder of the embedding files for a ``cache`` parameter.

    Parameters
    ----------
    cache : str, path-like, joblib.Memory or None
        A folder, or a ``Memory`` (its ``location``; none: no cache).

    Returns
    -------
    pathlib.Path or None
        ``<cache>/skast-embeddings``, or ``None`` when nothing is cached.

    Examples
    --------
    >>> import joblib
    >>> from skast._cache import cache_dir
    >>> cache_dir("runs").as_posix(), cache_dir(joblib.Memory(None))
    ('runs/skast-embeddings', None)
    """
    if isinstance(cache, joblib.Memory):
        cache = cache.location
    if cache is None:
        return None
    return Path(cache) / "skast-embeddings"


def model_fingerprint(model: torch.nn.Module, settings: tuple) -> str:
    """A hash of ``model``'s weights, its config and ``settings``.

    Parameters
    ----------
    model : torch.nn.Module
        With a ``config`` attribute (:class:`skast._model.AST`).
    settings : tuple
        What else changes the outputs, hashed as its ``repr``.

    Returns
    -------
    str
        64 hexadecimal digits.

    Examples
    --------
    >>> from skast._cache import model_fingerprint
    >>> from skast._model import AST, ASTConfig
    >>> model = AST(ASTConfig(hidden_size=32, num_hidden_layers=1,
    ...                       num_attention_heads=2, intermediate_size=64))
    >>> a, b = model_fingerprint(model, ("cpu",)), model_fingerprint(model, ("cuda",))
    >>> len(a), a == b
    (64, False)
    """
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        # the raw bytes, without a copy (a uint8 view serves any dtype)
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    h.update(repr(model.config).encode())
    h.update(repr(settings).encode())
    return h.hexdigest()


def cache_key(fingerprint: str, settings: tuple) -> str:
    """The key of a model's embeddings: its fingerprint and the settings read
    when embedding (so that ``set_params`` after ``fit`` cannot serve stale
    files).

    Examples
    --------
    >>> from skast._cache import cache_key
    >>> len(cache_key("0" * 64, ("mean", None, 16000)))
    64
    """
    h = hashlib.sha256(_CACHE_FORMAT.encode())
    h.update(fingerprint.encode())
    h.update(repr(settings).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- clips


@functools.lru_cache(maxsize=1 << 16)
def _file_digest(path: str, stat_key: tuple) -> str:
    """sha256 of a file's bytes; memoised on (path, device, inode, size,
    mtime, ctime) so that repeated fits do not read unchanged files again."""
    h = hashlib.sha256(b"file\0")
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_fingerprint(path, *, index=None) -> str:
    """A hash of a file's bytes, not of its path.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    index : int, default=None
        The clip's index in ``X``, to name it in the error.

    Returns
    -------
    str
        64 hexadecimal digits.

    Raises
    ------
    ValueError
        If the file cannot be read.

    Examples
    --------
    >>> import os, tempfile
    >>> from skast._cache import file_fingerprint
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     for name in ("a.wav", "b.wav"):
    ...         with open(os.path.join(folder, name), "wb") as f:
    ...             _ = f.write(b"the same bytes")
    ...     a, b = (file_fingerprint(os.path.join(folder, n)) for n in ("a.wav", "b.wav"))
    >>> a == b, len(a)
    (True, 64)
    """
    name = os.fspath(path)
    try:
        st = os.stat(name)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return _file_digest(os.path.abspath(name), key)
    except OSError as err:
        where = "" if index is None else f"clip {index}: "
        raise ValueError(f"{where}cannot read audio file {name!r}: {err}") from err


def bytes_fingerprint(data: bytes) -> str:
    """A hash of an audio file's bytes held in memory: the fingerprint of a
    file with these bytes (:func:`file_fingerprint`).

    Examples
    --------
    >>> from skast._cache import bytes_fingerprint
    >>> len(bytes_fingerprint(b"RIFF...."))
    64
    """
    return hashlib.sha256(b"file\0" + bytes(data)).hexdigest()


def array_fingerprint(a, *, rate: int | None = None) -> str:
    """A hash of a numeric array's (or tensor's) dtype, shape and bytes (C
    order), and of its sample ``rate`` when the clip carries its own.

    A tensor is hashed from its bytes on the host (a CUDA tensor is copied
    once for that), under torch's dtype name.

    Examples
    --------
    >>> import numpy as np
    >>> from skast._cache import array_fingerprint
    >>> x = np.arange(6.0).reshape(2, 3)
    >>> array_fingerprint(x.T) == array_fingerprint(np.ascontiguousarray(x.T))
    True
    >>> array_fingerprint(x) == array_fingerprint(x.astype(np.float32))
    False
    >>> array_fingerprint(x, rate=8000) == array_fingerprint(x, rate=16000)
    False
    """
    if isinstance(a, torch.Tensor):
        t = a.detach().contiguous().cpu()
        dtype, shape = str(t.dtype), tuple(t.shape)
        data = t.reshape(-1).view(torch.uint8).numpy()
    else:
        data = np.ascontiguousarray(a)
        dtype, shape = data.dtype.str, data.shape
    head = f"array\0{dtype}\0{shape}\0"
    if rate is not None:
        head += f"rate\0{rate}\0"
    h = hashlib.sha256(head.encode())
    h.update(memoryview(data).cast("B"))
    return h.hexdigest()


def _safe_name(fingerprint: str) -> str:
    """A clip's content hash as a file name (hashed again unless plain hex)."""
    if _HEX.fullmatch(fingerprint):
        return fingerprint.lower()
    return hashlib.sha256(fingerprint.encode()).hexdigest()


# --------------------------------------------------------------------------- files


def read_embedding(path: Path, n_features: int) -> np.ndarray | None:
    """A cached embedding, or ``None`` if missing, unreadable or malformed.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skast._cache import read_embedding, write_embedding
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "ab" / "abcd.npy"
    ...     write_embedding(path, np.ones(4, dtype=np.float32))
    ...     read_embedding(path, 4), read_embedding(path, 5)
    (array([1., 1., 1., 1.], dtype=float32), None)
    """
    try:
        row = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if row.shape != (n_features,) or row.dtype != np.float32:
        return None
    return row


def write_embedding(path: Path, row: np.ndarray, *, save: Callable = np.save) -> None:
    """Write an embedding atomically: a temporary file in the same folder,
    then a rename.

    Concurrent writers of the same clip each rename a complete file over the
    other's; readers never see a partial one. If writing fails, the temporary
    file is removed and the error raised; ``path`` is left as it was.

    Parameters
    ----------
    path : pathlib.Path
        The file; its folder is created.
    row : ndarray of shape (n_features,)
        Written as float32.
    save : callable, default=numpy.save
        ``save(file, array)`` writes ``array`` to the open binary ``file``:
        the seam through which tests inject a failing write.

    Examples
    --------
    >>> import os, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skast._cache import write_embedding
    >>> def disk_full(file, array):
    ...     file.write(b"half a file")
    ...     raise OSError("No space left on device")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "abcd.npy"
    ...     write_embedding(path, np.ones(4))
    ...     try:
    ...         write_embedding(path, np.zeros(4), save=disk_full)
    ...     except OSError as err:
    ...         print(err)
    ...     print(os.listdir(folder), np.load(path))
    No space left on device
    ['abcd.npy'] [1. 1. 1. 1.]
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, open(tmp, "wb") as fh:
        save(fh, np.ascontiguousarray(row, dtype=np.float32))


# --------------------------------------------------------------------------- transform


def embed_cached(
    audio, embed: Callable, *, folder: Path, key: str, n_features: int
) -> np.ndarray:
    """Embeddings of every clip, read from the cache or computed and written.

    Clips with the same content are embedded once. The missing ones are
    claimed (:class:`skast._claims.Claims`) and embedded ``512`` at a time,
    and written as each chunk is done, so that an interrupted run keeps most
    of its work; those that other workers have claimed are read once they are
    written, and those whose claims are stale are taken over. A write that
    fails warns (once) and the embeddings are returned all the same.

    Parameters
    ----------
    audio : AudioInput
        The validated clips (:func:`skast._audio.check_audio_input`).
    embed : callable
        ``embed(subset, desc=...)`` -> float32 ``(len(subset), n_features)``.
    folder : pathlib.Path
        The cache folder (:func:`cache_dir`).
    key : str
        The model's and the settings' key (:func:`cache_key`).
    n_features : int
        The embedding's width.

    Returns
    -------
    ndarray of shape (len(audio), n_features), dtype float32

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skast._audio import check_audio_input
    >>> from skast._cache import embed_cached
    >>> audio = check_audio_input(np.array([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]))
    >>> def embed(subset, desc):
    ...     print(desc, len(subset))
    ...     return np.stack([subset[i] for i in range(len(subset))]).astype("float32")
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     kw = dict(folder=Path(folder), key="0" * 64, n_features=2)
    ...     first = embed_cached(audio, embed, **kw)  # two distinct clips
    ...     again = embed_cached(audio, embed, **kw)  # nothing to embed
    embedding 2
    >>> again
    array([[1., 2.],
           [3., 4.],
           [1., 2.]], dtype=float32)
    """
    models = folder / key[:16]
    out = np.empty((len(audio), n_features), dtype=np.float32)
    missing: dict[str, list[int]] = {}  # clip name -> its indices in X
    for i in range(len(audio)):
        clip = _safe_name(audio.fingerprint(i))
        if clip in missing:
            missing[clip].append(i)
            continue
        row = read_embedding(models / clip[:2] / f"{clip}.npy", n_features)
        if row is None:
            missing[clip] = [i]
        else:
            out[i] = row
    if missing:
        with Claims() as claims:
            _embed_missing(audio, embed, out, missing, models, claims, folder)
    return out


def _embed_missing(audio, embed, out, missing, models, claims, folder) -> None:
    """Fill ``out`` with the ``missing`` clips: those this call claims are
    embedded (``512`` at a time) and written, those other workers hold are
    read once written; a stale claim is taken over (:mod:`skast._claims`)."""
    n_chunks = -(-len(missing) // _CACHE_CHUNK)  # without other workers
    pending = [(models / c[:2] / f"{c}.npy", i) for c, i in missing.items()]
    done, pause, warned = 0, POLL_FIRST, False
    while pending:
        mine, waiting = [], []
        for item in pending:
            path, indices = item
            if len(mine) == _CACHE_CHUNK:
                waiting.append(item)
                continue
            row = read_embedding(path, out.shape[1])
            if row is None and claims.acquire(path.with_suffix(".claim")):
                # written by its owner between the look and the claim?
                row = read_embedding(path, out.shape[1])
                if row is None:
                    mine.append(item)
                    continue
                claims.release(path.with_suffix(".claim"))
            if row is None:
                waiting.append(item)
            else:
                out[indices] = row
        pending = waiting
        if not mine:  # every missing clip is another worker's
            time.sleep(pause)
            pause = min(1.5 * pause, POLL_LAST)
            continue
        pause, done = POLL_FIRST, done + 1
        desc = "embedding"
        if n_chunks > 1:
            desc += f" {min(done, n_chunks)}/{n_chunks}"
        rows = embed(audio.subset([indices[0] for _, indices in mine]), desc=desc)
        for (path, indices), row in zip(mine, rows):
            out[indices] = row
            try:
                write_embedding(path, row)
            except OSError as err:
                if not warned:
                    warnings.warn(
                        f"could not write to the embedding cache {folder}: "
                        f"{err}; embeddings are computed but not cached",
                        UserWarning,
                        stacklevel=4,
                    )
                    warned = True
            claims.release(path.with_suffix(".claim"))
