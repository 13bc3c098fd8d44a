"""Resumable training snapshots: a fit's state at the end of each epoch.

With ``snapshot_dir``, :func:`skast._training.train` calls
:meth:`SnapshotDir.write` at the end of every epoch and
:meth:`SnapshotDir.restore` before the first, so that a fit killed part way
goes on, in a new process, after its last complete epoch, and ends with the
model an uninterrupted fit gives. A directory holds one snapshot (two for a
moment, while the next replaces it)::

    DIR/epoch-0003/state.pt        the tensors and numbers the next epochs read
    DIR/epoch-0003/snapshot.json   what the snapshot belongs to; written last

``state.pt`` is written by :func:`torch.save` and read back with
``torch.load(weights_only=True)`` (tensors, lists, dicts and numbers: no
object is unpickled); ``snapshot.json`` holds the format, the epoch, the
fit's seed and normalisation, the fingerprint of the fit (:func:`fingerprint`)
and the size and sha256 of ``state.pt``. Both are written into a temporary
folder, flushed to disk, and the folder is renamed ``epoch-NNNN`` (an atomic
rename); the previous snapshot is deleted after that. A folder that is not
complete (a temporary one, a manifest missing, unreadable, of another epoch
or whose ``state.pt`` has another size or hash) is never loaded: the newest
complete snapshot is.

Under ``torch.distributed``, rank 0 writes and every rank waits for it (a
barrier), and the ranks check that they all resume from the same snapshot.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from numbers import Integral
from pathlib import Path

import torch

from skast._distributed import grouped, leader
from skast._typedjson import encode

__all__ = ["SnapshotDir", "fingerprint"]

FORMAT = "skast-snapshot"
FORMAT_VERSION = 1
MANIFEST = "snapshot.json"
STATE = "state.pt"
_FOLDER = re.compile(r"epoch-(\d{4,})")
#: parameters that do not change what a fit computes (checked: nothing)
_NOT_TRAINING = {
    "device",
    "num_workers",
    "snapshot_dir",
    "verbose",
    "warm_start",
    "window_aggregation",
}


# --------------------------------------------------------------------------- fingerprint


def _plain(value):
    """``value`` with lists as tuples and paths as strings, so that equal
    settings spelled differently have one fingerprint."""
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _clip_key(audio, i: int) -> str:
    """A cheap identity of clip ``i``: a file's path, or the hash of an
    in-memory waveform's bytes."""
    from skast._records import record_source

    item = audio[i]
    if audio.kind == "paths":
        return "path\0" + os.fspath(item)
    if audio.kind == "records":
        kind, value, _ = record_source(item, i, decode=False)
        if kind == "file" and isinstance(value, (str, os.PathLike)):
            return "path\0" + os.fspath(value)
    return audio.fingerprint(i)


def fingerprint(
    params: Mapping, classes, audio, targets: torch.Tensor, start: int = 0
) -> dict:
    """What a snapshot must match to be resumed: the parameters that change
    training, the classes, the training data and the number of epochs the
    model had before the fit (``start``: those of a warm start).

    ``params`` are the estimator's parameters with its recipe's values
    filled in; those that do not change training (``device``, ``verbose``,
    ``num_workers`` ...) are left out, and ``random_state`` unless it is an
    int. The data are the number of clips and a hash of each clip's file
    path (paths: the files are not read) or samples (arrays), and of the
    clips' targets.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skast._audio import check_audio_input
    >>> from skast._snapshots import fingerprint
    >>> audio = check_audio_input([np.zeros(400), np.ones(400)])
    >>> key = fingerprint({"learning_rate": 1e-3, "verbose": True}, np.array(["a", "b"]),
    ...                   audio, torch.tensor([0, 1]))
    >>> sorted(key), sorted(key["params"]), key["n_clips"]
    (['classes', 'data', 'n_clips', 'params', 'start'], ['learning_rate'], 2)
    """
    kept = {
        k: _plain(v)
        for k, v in params.items()
        if k not in _NOT_TRAINING
        and not (k == "random_state" and not isinstance(v, Integral))
    }
    h = hashlib.sha256(f"{FORMAT}\0{audio.kind}\0".encode())
    for i in range(len(audio)):
        h.update(_clip_key(audio, i).encode("utf-8", "surrogateescape") + b"\0")
    t = targets.detach().cpu().contiguous()
    h.update(f"{t.dtype}\0{tuple(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {
        "params": {k: encode(v, f"params.{k}") for k, v in sorted(kept.items())},
        "classes": encode(list(_plain(list(classes))), "classes"),
        "n_clips": len(audio),
        "start": int(start),
        "data": h.hexdigest(),
    }


def _differences(saved: dict, current: dict) -> list[str]:
    """Why a snapshot's fingerprint is not this fit's, in words."""
    why = []
    a, b = saved.get("params", {}), current["params"]
    names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if names:
        why.append("other parameters (" + ", ".join(names) + ")")
    if saved.get("start") != current["start"]:
        why.append(
            f"a fit that starts after {current['start']} epoch(s) (warm_start), "
            f"not {saved.get('start')}"
        )
    if saved.get("classes") != current["classes"]:
        why.append("other classes")
    if saved.get("n_clips") != current["n_clips"]:
        why.append(
            f"other training data ({current['n_clips']} clips, not the "
            f"snapshot's {saved.get('n_clips')})"
        )
    elif saved.get("data") != current["data"]:
        why.append(
            f"other training data (as many clips, {current['n_clips']}, but "
            "other clips or labels)"
        )
    return why


# --------------------------------------------------------------------------- files


def _sha256(path: Path) -> tuple[str, int]:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class _Hashed:
    """A binary file that hashes what is written to it (torch.save writes
    its zip archive in order)."""

    def __init__(self, file):
        self.file, self.sha256, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha256.update(data)
        self.size += len(memoryview(data).cast("B"))
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _cpu(obj):
    """``obj`` with its tensors on the CPU (not copied when they are there:
    they are saved before training goes on)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _record(h: dict) -> dict:
    """A history record of Python scalars (no numpy scalar to unpickle)."""
    return {k: v.item() if hasattr(v, "item") else v for k, v in h.items()}


class _Snapshot:
    """A complete snapshot read from disk: its manifest and its state."""

    def __init__(self, folder: Path, manifest: dict, state: dict):
        self.folder, self.manifest, self.state = folder, manifest, state

    @property
    def epoch(self) -> int:
        """The number of epochs of the fit it ends."""
        return self.manifest["epoch"]

    @property
    def seed(self) -> int:
        return self.manifest["seed"]

    @property
    def normalization(self) -> tuple[float, float]:
        return tuple(self.manifest["normalization"])

    @property
    def history(self) -> list[dict]:
        return [dict(h) for h in self.state["history"]]


class SnapshotDir:
    """The snapshots of one fit in ``directory``.

    Parameters
    ----------
    directory : str or path-like
        Created by :meth:`latest`.
    key : dict
        The fit's :func:`fingerprint`.

    Examples
    --------
    >>> import tempfile
    >>> from skast._snapshots import SnapshotDir
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(SnapshotDir(d, key={}).latest())
    None
    """

    def __init__(self, directory, key: dict):
        self.directory, self.key = Path(directory), key
        self.snapshot: _Snapshot | None = None
        self._bound = None

    # ------------------------------------------------------------------ reading

    def latest(self) -> _Snapshot | None:
        """The newest complete snapshot, or None; ValueError if it belongs to
        another fit. Incomplete or corrupt folders are skipped with a
        warning."""
        if self.directory.exists() and not self.directory.is_dir():
            raise ValueError(f"snapshot_dir='{self.directory}' is not a directory")
        try:  # now, not after the first epoch
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(
                f"snapshot_dir='{self.directory}' cannot be created: {err}"
            ) from err
        folders = []
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                m = _FOLDER.fullmatch(p.name)
                if m and p.is_dir() and not p.is_symlink():
                    folders.append((int(m.group(1)), p))
        for epoch, folder in sorted(folders, reverse=True):
            manifest = self._manifest(folder, epoch)
            if manifest is None:
                continue
            why = _differences(manifest["fingerprint"], self.key)
            if why:
                raise ValueError(
                    f"snapshot_dir='{self.directory}' holds a snapshot of another "
                    f"fit ({folder.name}): {'; '.join(why)}. Resume it with the "
                    "same data and parameters, or delete the directory (or name "
                    "another) to start over."
                )
            state = self._state(folder, manifest)
            if state is not None:
                self.snapshot = _Snapshot(folder, manifest, state)
                return self.snapshot
        return None

    def _skip(self, folder: Path, why: str) -> None:
        warnings.warn(
            f"snapshot_dir: skipping '{folder}', not a complete snapshot ({why})",
            UserWarning,
            stacklevel=8,  # the caller of fit (through _fit_context)
        )

    def _manifest(self, folder: Path, epoch: int) -> dict | None:
        path = folder / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            self._skip(folder, f"{MANIFEST}: {err}")
            return None
        ok = (
            isinstance(manifest, dict)
            and manifest.get("format") == FORMAT
            and isinstance(manifest.get("fingerprint"), dict)
            and isinstance(manifest.get("state"), dict)
            and isinstance(manifest.get("finished"), bool)
            and type(manifest.get("seed")) is int
            and 0 <= manifest["seed"] < 2**31
            and isinstance(manifest.get("normalization"), list)
            and len(manifest["normalization"]) == 2
            and all(type(x) is float for x in manifest["normalization"])
        )
        if not ok:
            self._skip(folder, f"{MANIFEST} is not a skast snapshot manifest")
            return None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"snapshot_dir: '{folder}' was written in snapshot format version "
                f"{manifest.get('format_version')!r}; this skast reads version "
                f"{FORMAT_VERSION}. Delete the directory to start over."
            )
        if manifest.get("epoch") != epoch:
            self._skip(folder, f"{MANIFEST} is of epoch {manifest.get('epoch')!r}")
            return None
        return manifest

    def _state(self, folder: Path, manifest: dict) -> dict | None:
        path = folder / STATE
        try:
            digest, size = _sha256(path)
        except OSError as err:
            self._skip(folder, f"{STATE}: {err}")
            return None
        want = manifest["state"]
        if (size, digest) != (want.get("bytes"), want.get("sha256")):
            self._skip(folder, f"{STATE} is not the file its manifest describes")
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # an unpickling error of any kind
            self._skip(folder, f"{STATE}: {err}")
            return None

    # ------------------------------------------------------------------ training

    def bind(self, model, seed: int, normalization) -> SnapshotDir:
        """The model, seed and normalisation of the fit the snapshots are of."""
        self._bound = (model, int(seed), [float(x) for x in normalization])
        return self

    def restore(self, trainer, stopping, average) -> int:
        """:func:`skast._training.train`'s ``resume``: put the snapshot's
        state (if any) into the model, ``trainer``, ``stopping`` and
        ``average``; the first epoch of the fit to run."""
        snap = self.snapshot
        if grouped():
            self._check_ranks(snap)
        if snap is None:
            return 1
        model, state = self._bound[0], snap.state
        model.load_state_dict(state["model"])
        trainer.load_state_dict(state["trainer"])
        trainer.micro_batch = state["micro_batch"]
        if stopping is not None:
            for k, v in state["stopping"].items():
                setattr(stopping, k, v)
            stopping.scores = list(stopping.scores)
        if average is not None:
            average.epochs = list(state["average"]["epochs"])
            average.total = state["average"]["total"]
        if snap.manifest["finished"]:
            return trainer.config.max_epochs + 1
        return snap.epoch + 1

    def _check_ranks(self, snap) -> None:
        dist = torch.distributed
        mine = None if snap is None else (snap.epoch, snap.manifest["state"]["sha256"])
        found = [None] * dist.get_world_size()
        dist.all_gather_object(found, mine)
        if any(f != found[0] for f in found):
            raise ValueError(
                f"snapshot_dir='{self.directory}': the ranks found different "
                f"snapshots ({found}); every rank must read the same directory "
                "(on several machines, a shared filesystem)"
            )

    def write(self, epoch, trainer, stopping, average, history, done) -> None:
        """:func:`skast._training.train`'s ``on_epoch_end``: the snapshot of
        the end of ``epoch`` (of this fit); on rank 0 only, then a barrier.
        A snapshot that cannot be written (an OSError: a full disk) is a
        warning, not an error."""
        if leader():
            try:
                self._write(epoch, trainer, stopping, average, history, done)
            except OSError as err:  # a full disk: the training is not lost
                warnings.warn(
                    f"snapshot_dir: cannot write the snapshot of epoch {epoch} to "
                    f"'{self.directory}' ({err}); training goes on, and the "
                    "previous snapshot stays",
                    UserWarning,
                    stacklevel=6,  # the caller of fit (through _fit_context)
                )
        if grouped():
            torch.distributed.barrier()

    def _write(self, epoch, trainer, stopping, average, history, done) -> None:
        model, seed, normalization = self._bound
        state = {
            "model": _cpu(model.state_dict()),
            "trainer": trainer.state_dict(),
            "micro_batch": trainer.micro_batch,
            "stopping": None,
            "average": None,
            "history": [_record(h) for h in history],
        }
        if stopping is not None:
            names = ("scores", "best_score", "best_epoch", "best_state")
            state["stopping"] = {k: _cpu(getattr(stopping, k)) for k in names}
            state["stopping"]["no_improvement_count"] = stopping.no_improvement_count
        if average is not None:
            state["average"] = {"epochs": list(average.epochs), "total": average.total}
        import skast

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "skast_version": skast.__version__,
            "epoch": epoch,
            "finished": bool(done or epoch >= trainer.config.max_epochs),
            "seed": seed,
            "normalization": normalization,
            "fingerprint": self.key,
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"epoch-{epoch:04d}"
        tmp = Path(
            tempfile.mkdtemp(dir=self.directory, prefix=f".{name}.", suffix=".tmp")
        )
        try:
            with open(tmp / STATE, "wb") as f:
                hashed = _Hashed(f)  # hashed as it is written: not read again
                torch.save(state, hashed)
                f.flush()
                os.fsync(f.fileno())
            manifest["state"] = {
                "file": STATE,
                "bytes": hashed.size,
                "sha256": hashed.sha256.hexdigest(),
            }
            with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, allow_nan=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            final = self.directory / name
            if final.exists():  # a corrupt one, or one of a fit resumed before it
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for p in self.directory.iterdir():  # the previous snapshot, leftovers
            stale = _FOLDER.fullmatch(p.name) or (
                p.name.startswith(".epoch-") and p.name.endswith(".tmp")
            )
            if stale and p.name != name and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
