"""Corpus jobs of ``skast embed``: parts that outlive a kill, shards, merge.

The files, in input order, are cut into parts of ``part_size`` files: part
``k`` holds files ``k * part_size`` up to ``(k + 1) * part_size``. A part's
rows go to ``OUT.parts/part-<k>.npz`` in one piece (a temporary file, synced,
then renamed), so a part file is whole or absent, however the process dies.
``OUT.parts/job.json`` says what the parts belong to: a hash of the file
paths in order, the part size, whether rows are windows, and the embedding
settings (the model's fingerprint, pooling, layer, window hop); each part
also records the job and a hash of its own files. A run of the same command
skips the parts already written, embeds the others and joins them all into
``OUT`` (a temporary file, then renamed), then removes ``OUT.parts``. A
command whose files or settings differ from the job's is refused.

With a shard ``I/N`` (``--shard``, or torchrun's ``RANK`` / ``WORLD_SIZE``:
:mod:`skast._shards`), a process embeds the parts ``k`` with ``k % N == I`` and joins nothing; the
same command with ``--merge`` (which loads no model) joins the parts once
every shard is done, and the same command without a shard embeds whatever
parts are still missing and joins them. The parts do not depend on ``N``:
shards may be restarted with another ``N``.

Nothing here imports torch at import time.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from skast._commands import UsageError
from skast._persist import replacing
from skast._tables import write_table

__all__ = ["Job", "merge", "parts_dir", "run"]

_VERSION = 1


def parts_dir(out: Path) -> Path:
    """Where the parts of the job writing ``out`` go: ``OUT.parts``, beside it.

    Examples
    --------
    >>> from pathlib import Path
    >>> from skast._jobs import parts_dir
    >>> parts_dir(Path("runs/emb.parquet")).as_posix()
    'runs/emb.parquet.parts'
    """
    return out.with_name(out.name + ".parts")


def _digest(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


@dataclass
class Job:
    """What the parts of one ``skast embed`` job belong to (``job.json``).

    Two jobs are the same when every field but ``columns`` and ``info`` is.

    Examples
    --------
    >>> from skast._jobs import Job
    >>> job = Job.of(["a.wav", "b.wav", "c.wav"], part_size=2, per_window=False,
    ...              embedding={"model_fingerprint": "ab12"}, columns=["x0"])
    >>> job.n_parts, job.span(1), job.same_as(job)
    (2, (2, 3), True)
    """

    files: str
    n_files: int
    part_size: int
    per_window: bool
    embedding: dict
    columns: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    version: int = _VERSION

    @classmethod
    def of(cls, files, *, part_size, per_window, embedding, columns, info=None):
        return cls(
            _digest(files),
            len(files),
            part_size,
            per_window,
            embedding,
            list(columns),
            dict(info or {}),
        )

    @property
    def n_parts(self) -> int:
        return -(-self.n_files // self.part_size)

    def span(self, k: int) -> tuple[int, int]:
        """The files of part ``k``: ``files[start:stop]``."""
        return k * self.part_size, min((k + 1) * self.part_size, self.n_files)

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("columns", "info")}

    def digest(self) -> str:
        return _digest([json.dumps(self.identity(), sort_keys=True)])

    def same_as(self, other: Job) -> bool:
        return self.identity() == other.identity()

    def differences(self, other: Job) -> list[str]:
        """What differs between this command's job and ``other``, the
        recorded one, in the command's words."""
        if self.version != other.version:
            return [f"written by another skast (job format {other.version})"]
        out = []
        if (self.n_files, self.files) != (other.n_files, other.files):
            out.append(
                f"other files ({other.n_files} there, {self.n_files} here)"
                if self.n_files != other.n_files
                else "other files (as many, other paths or order)"
            )
        mine, theirs = self._settings(), other._settings()
        for name in sorted(set(mine) | set(theirs) - {"model_fingerprint"}):
            if mine.get(name) != theirs.get(name):
                flag = "--" + name.replace("_", "-")
                out.append(f"{flag} {theirs.get(name)} there, {mine.get(name)} here")
        if mine.get("model_fingerprint") != theirs.get("model_fingerprint"):
            out.append(
                "another model (weights, input frames, normalisation or "
                "precision: --checkpoint, --model, --max-length, --device)"
            )
        return out

    def _settings(self) -> dict:
        return dict(
            self.embedding, part_size=self.part_size, per_window=self.per_window
        )


def _part_path(folder: Path, k: int) -> Path:
    return folder / f"part-{k:06d}.npz"


def _read_part(folder: Path, job: Job, k: int, files, *, load: bool = True):
    """Part ``k``'s arrays (with ``load``; else ``True``), or ``None`` when it
    is missing, unreadable or another job's."""
    start, stop = job.span(k)
    try:
        with np.load(_part_path(folder, k), allow_pickle=False) as part:
            if (
                str(part["job"]) != job.digest()
                or str(part["files"]) != _digest(files[start:stop])
                or "embeddings" not in part.files
            ):
                return None
            if not load:
                return True
            return {n: part[n] for n in part.files if n not in ("job", "files")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _embed_part(featurizer, files, *, per_window: bool) -> dict:
    """The arrays of one part: ``embeddings`` (rows, d) float32, and with
    ``per_window`` the windows' ``starts`` (s) and each file's ``counts``."""
    if not per_window:
        return {"embeddings": featurizer.transform(files)}
    rows, starts = featurizer.transform_windows(files)
    return {
        "embeddings": np.concatenate(rows),
        "starts": np.concatenate(starts).astype(np.float64),
        "counts": np.array([len(r) for r in rows], dtype=np.int64),
    }


def _open_job(folder: Path, job: Job, *, restart: bool) -> int:
    """Create ``folder`` for ``job``, or check that it holds ``job``'s parts;
    the number of parts there."""
    if restart:
        shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.json"
    if not path.exists():
        with replacing(path) as tmp:
            tmp.write_text(json.dumps(asdict(job), indent=1) + "\n")
    recorded = _recorded(folder)
    if not job.same_as(recorded):
        raise UsageError(
            f"{folder} holds the parts of another job: "
            + "; ".join(job.differences(recorded))
            + ". Run the command that started it to finish it, or add "
            "--restart to discard its parts and start over"
        )
    return len(list(folder.glob("part-*.npz")))


def _recorded(folder: Path) -> Job:
    try:
        return Job(**json.loads((folder / "job.json").read_text()))
    except FileNotFoundError:
        raise UsageError(
            f"no job to merge: {folder} does not exist (or holds no job.json); "
            "run the shards first"
        ) from None
    except (ValueError, TypeError) as err:
        raise UsageError(
            f"{folder / 'job.json'} is not a job of skast embed ({err}); "
            "remove the folder, or add --restart"
        ) from None


def _renumber(err: ValueError, offset: int) -> ValueError:
    """``err`` with its leading ``clip i:`` counted over all the files."""
    text = re.sub(r"^clip (\d+)", lambda m: f"clip {int(m[1]) + offset}", str(err))
    return ValueError(text) if text != str(err) else err


def run(
    featurizer, files, out: Path, *, part_size, per_window, shard, restart, verbose
):
    """Embed the parts of ``shard`` not written yet; with the whole job, join.

    Parameters
    ----------
    featurizer : ASTFeaturizer
        Fitted; its progress bar off (this shows one over the files).
    files : list of str
        The audio files, in the output's order.
    out : pathlib.Path
        The ``.npy``, ``.csv`` or ``.parquet`` output; the parts go to
        :func:`parts_dir` of it.
    part_size : int
        Files per part.
    per_window : bool
        One row per window (``transform_windows``) instead of one per file.
    shard : (int, int)
        ``(I, N)``: embed the parts ``k`` with ``k % N == I``.
    restart : bool
        Discard the parts of another job instead of refusing to run.
    verbose : bool
        Show a progress bar, and how many parts a resumed run skips.

    Returns
    -------
    (int, int) or None
        ``(rows, n_features)`` written to ``out``; ``None`` for a shard of
        several (``N > 1``), which joins nothing.

    Raises
    ------
    UsageError
        ``OUT.parts`` holds another job's parts (other files or settings).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np, soundfile as sf
    >>> from skast import ASTFeaturizer
    >>> from skast._jobs import run
    >>> tiny = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...             intermediate_size=64, max_length=64)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     files = [str(Path(d) / f"{i}.wav") for i in range(3)]
    ...     for f in files:
    ...         sf.write(f, np.zeros(8000, np.float32), 16000)
    ...     featurizer = ASTFeaturizer(model_config=tiny, device="cpu").fit(files)
    ...     out, job = Path(d) / "emb.npy", dict(part_size=2, per_window=False)
    ...     # shard 1 of 2 embeds part 1 (file 2) and joins nothing
    ...     print(run(featurizer, files, out, **job, shard=(1, 2), restart=False,
    ...               verbose=False))
    ...     print(sorted(p.name for p in (Path(d) / "emb.npy.parts").iterdir()))
    ...     # the whole job: part 0 (part 1 is written), then the join
    ...     print(run(featurizer, files, out, **job, shard=(0, 1), restart=False,
    ...               verbose=False), np.load(out).shape)
    None
    ['job.json', 'part-000001.npz']
    (3, 32) (3, 32)
    """
    from skast._runtime import progress_bar

    index, count = shard
    folder = parts_dir(out)
    job = Job.of(
        files,
        part_size=part_size,
        per_window=per_window,
        embedding={
            "model_fingerprint": featurizer._model_fingerprint(),
            "pooling": featurizer.pooling,
            "layer": featurizer.layer,
            "window_hop": featurizer.window_hop,
        },
        columns=featurizer.get_feature_names_out(),
        info={"checkpoint": str(featurizer.checkpoint)},
    )
    present = _open_job(folder, job, restart=restart)
    mine = range(index, job.n_parts, count)
    todo = [k for k in mine if not _read_part(folder, job, k, files, load=False)]
    if verbose and present:
        print(f"resuming: {len(mine) - len(todo)} of {len(mine)} parts are written")
    total = sum(job.span(k)[1] - job.span(k)[0] for k in todo)
    with progress_bar(total=total, enabled=verbose, desc="embedding") as bar:
        for k in todo:
            start, stop = job.span(k)
            try:
                arrays = _embed_part(
                    featurizer, files[start:stop], per_window=per_window
                )
            except ValueError as err:
                raise _renumber(err, start) from err
            with replacing(_part_path(folder, k), sync=True) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(
                        f,
                        job=np.array(job.digest()),
                        files=np.array(_digest(files[start:stop])),
                        **arrays,
                    )
            bar.update(stop - start)
    if count > 1:
        return None
    return _join(folder, job, files, out)


def merge(files, out: Path, *, per_window: bool):
    """Join the parts in :func:`parts_dir` of ``out`` into ``out``, loading
    no model (the job's settings are those its shards recorded).

    Parameters
    ----------
    files : list of str
        The audio files the shards ran on, in the same order.
    out : pathlib.Path
        The output the shards were given.
    per_window : bool
        As the shards ran.

    Returns
    -------
    (int, int)
        ``(rows, n_features)`` written to ``out``.

    Raises
    ------
    UsageError
        No job there, a job over other files, or parts not written yet.

    Examples
    --------
    >>> from pathlib import Path
    >>> from skast._jobs import merge
    >>> merge(["a.wav"], Path("nowhere/emb.npy"), per_window=False)
    Traceback (most recent call last):
    ...
    skast._commands.UsageError: no job to merge: nowhere/emb.npy.parts does not exist (or holds no job.json); run the shards first
    """
    folder = parts_dir(out)
    job = _recorded(folder)
    here = Job.of(
        files,
        part_size=job.part_size,
        per_window=per_window,
        embedding=job.embedding,
        columns=job.columns,
    )
    if not here.same_as(job):
        raise UsageError(
            f"{folder} holds the parts of another job: "
            + "; ".join(here.differences(job))
            + ". Merge with the files and options the shards ran with"
        )
    return _join(folder, job, files, out)


def _join(folder: Path, job: Job, files, out: Path):
    missing = [
        k
        for k in range(job.n_parts)
        if not _read_part(folder, job, k, files, load=False)
    ]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (
            ", ..." if len(missing) > 10 else ""
        )
        raise UsageError(
            f"{len(missing)} of the {job.n_parts} parts in {folder} are not "
            f"written yet (parts {shown}; part k is shard k % N's): finish the "
            "shards, or run the command without --merge and --shard to embed "
            "them here"
        )
    with replacing(out, folder=folder) as tmp:  # a kill leaves it in folder
        rows = write_table(
            tmp, job, _rows(folder, job, files), suffix=out.suffix.lower()
        )
    shutil.rmtree(folder, ignore_errors=True)
    return rows, len(job.columns)


def _rows(folder: Path, job: Job, files):
    """``(names, starts or None, embeddings)`` of each part, in order."""
    for k in range(job.n_parts):
        part = _read_part(folder, job, k, files)
        if part is None:
            raise OSError(f"part {k} in {folder} went missing while it was read")
        start, stop = job.span(k)
        names = files[start:stop]
        if job.per_window:
            names = np.repeat(np.array(names, dtype=object), part["counts"]).tolist()
        yield names, part.get("starts"), part["embeddings"]
