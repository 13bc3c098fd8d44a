"""The outputs of ``skast embed``, written part by part: ``.npy``, ``.csv``
and ``.parquet``.

Each writer takes the job (:class:`skast._jobs.Job`: its ``columns``,
``n_files``, ``per_window``, ``embedding`` settings) and an iterable of
``(names, starts or None, embeddings)``, one per part in order, and never
holds more than one part (a parquet row group) in memory. The rows are those
of one ``transform``: ``.npy`` only the float32 values, ``.csv`` a ``file``
column (and ``start`` with ``--per-window``) before them, ``.parquet`` the
same columns (float32 embeddings, float64 starts) and, under the key-value
metadata key ``skast``, a JSON object with the model's fingerprint and the
embedding settings.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

__all__ = ["PARQUET_KEY", "WRITERS", "write_csv", "write_npy", "write_parquet"]

#: The parquet key-value metadata that describes the rows (JSON).
PARQUET_KEY = b"skast"
# rows per parquet row group: about 128 MB of float32 embeddings
_GROUP_BYTES = 1 << 27


def write_npy(path: Path, job, parts) -> int:
    """Write the embeddings as one float32 ``.npy`` array (as ``np.save``),
    filled part by part through a memory map.

    Parameters
    ----------
    path : pathlib.Path
        The file to write.
    job : skast._jobs.Job
        ``columns``, ``n_files``, ``per_window`` (and ``embedding``, ``info``
        for the parquet metadata).
    parts : iterable of (list of str, ndarray or None, ndarray)
        Each part's file names (one per row), window starts (with
        ``per_window``) and float32 embeddings, in order.

    Returns
    -------
    int
        The number of rows written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skast._jobs import Job
    >>> from skast._tables import write_npy
    >>> job = Job.of(["a.wav", "b.wav", "c.wav"], part_size=2, per_window=False,
    ...              embedding={}, columns=["e0", "e1"])
    >>> parts = [(["a.wav", "b.wav"], None, np.ones((2, 2), np.float32)),
    ...          (["c.wav"], None, np.zeros((1, 2), np.float32))]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "emb.npy"
    ...     print(write_npy(path, job, parts), np.load(path).tolist())
    3 [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]
    """
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(job.n_files, len(job.columns))
    )
    row = 0
    for _, _, embeddings in parts:
        out[row : row + len(embeddings)] = embeddings
        row += len(embeddings)
    out.flush()
    del out
    return row


def write_csv(path: Path, job, parts) -> int:
    """Write a ``.csv``: a header, then ``file[, start], values...`` rows.

    Parameters
    ----------
    path : pathlib.Path
        The file to write.
    job : skast._jobs.Job
        ``columns``, ``n_files``, ``per_window`` (and ``embedding``, ``info``
        for the parquet metadata).
    parts : iterable of (list of str, ndarray or None, ndarray)
        Each part's file names (one per row), window starts (with
        ``per_window``) and float32 embeddings, in order.

    Returns
    -------
    int
        The number of rows written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skast._jobs import Job
    >>> from skast._tables import write_csv
    >>> job = Job.of(["a.wav", "b.wav", "c.wav"], part_size=2, per_window=False,
    ...              embedding={}, columns=["e0", "e1"])
    >>> parts = [(["a.wav", "b.wav"], None, np.ones((2, 2), np.float32)),
    ...          (["c.wav"], None, np.zeros((1, 2), np.float32))]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "emb.csv"
    ...     print(write_csv(path, job, parts), path.read_text().split())
    3 ['file,e0,e1', 'a.wav,1.0,1.0', 'b.wav,1.0,1.0', 'c.wav,0.0,0.0']
    """
    rows = 0
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *(["start"] if job.per_window else []), *job.columns])
        for names, starts, embeddings in parts:
            lead = [[n] for n in names]
            if starts is not None:
                lead = [[n, s] for n, s in zip(names, starts.tolist())]
            writer.writerows(a + e for a, e in zip(lead, embeddings.tolist()))
            rows += len(names)
    return rows


def write_parquet(path: Path, job, parts) -> int:
    """Write a ``.parquet``: ``file`` (string), ``start`` (float64, with
    ``per_window``) and float32 value columns, in row groups of about 128 MB,
    with the job's embedding settings as JSON under :data:`PARQUET_KEY`.

    Parameters
    ----------
    path : pathlib.Path
        The file to write.
    job : skast._jobs.Job
        ``columns``, ``n_files``, ``per_window`` (and ``embedding``, ``info``
        for the parquet metadata).
    parts : iterable of (list of str, ndarray or None, ndarray)
        Each part's file names (one per row), window starts (with
        ``per_window``) and float32 embeddings, in order.

    Returns
    -------
    int
        The number of rows written.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> import pyarrow.parquet as pq
    >>> from skast._jobs import Job
    >>> from skast._tables import write_parquet
    >>> job = Job.of(["a.wav", "b.wav", "c.wav"], part_size=2, per_window=False,
    ...              embedding={}, columns=["e0", "e1"])
    >>> parts = [(["a.wav", "b.wav"], None, np.ones((2, 2), np.float32)),
    ...          (["c.wav"], None, np.zeros((1, 2), np.float32))]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = Path(d) / "emb.parquet"
    ...     print(write_parquet(path, job, parts), pq.read_table(path).column("file").to_pylist())
    3 ['a.wav', 'b.wav', 'c.wav']
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field("file", pa.string())]
    if job.per_window:
        fields.append(pa.field("start", pa.float64()))
    fields += [pa.field(c, pa.float32()) for c in job.columns]
    metadata = {
        **job.embedding,
        **job.info,
        "per_window": job.per_window,
        "n_files": job.n_files,
    }
    schema = pa.schema(fields, metadata={PARQUET_KEY: json.dumps(metadata)})
    group = max(1, _GROUP_BYTES // (4 * max(1, len(job.columns))))
    buffered, rows = [], 0

    def flush(writer):
        names, starts, embeddings = zip(*buffered)
        columns = [pa.array([n for chunk in names for n in chunk], pa.string())]
        if job.per_window:
            columns.append(pa.array(np.concatenate(starts)))
        columns += list(np.ascontiguousarray(np.concatenate(embeddings).T))
        writer.write_table(pa.Table.from_arrays(columns, schema=schema))
        buffered.clear()

    with pq.ParquetWriter(path, schema) as writer:
        for names, starts, embeddings in parts:
            buffered.append((names, starts, embeddings))
            rows += len(names)
            if sum(len(b[0]) for b in buffered) >= group:
                flush(writer)
        if buffered:
            flush(writer)
    return rows


WRITERS = {".npy": write_npy, ".csv": write_csv, ".parquet": write_parquet}
