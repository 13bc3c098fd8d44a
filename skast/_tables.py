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

__all__ = ["PARQUET_KEY", "write_table"]

#: The parquet key-value metadata that describes the rows (JSON).
PARQUET_KEY = b"skast"
# rows per parquet row group: about 128 MB of float32 embeddings
_GROUP_BYTES = 1 << 27


def _npy(path: Path, job, parts) -> int:
    """One float32 array, as ``np.save`` writes it, filled through a memory map."""
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


def _csv(path: Path, job, parts) -> int:
    """A header, then ``file[, start], values...`` rows."""
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


def _parquet(path: Path, job, parts) -> int:
    """``file``, ``start`` (with ``per_window``) and float32 columns, in row groups
    of about 128 MB, with the embedding settings under :data:`PARQUET_KEY`."""
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


_WRITERS = {".npy": _npy, ".csv": _csv, ".parquet": _parquet}


def write_table(path: Path, job, parts, *, suffix: str) -> int:
    """Write the rows of ``parts`` to ``path`` in the format of ``suffix``.

    Parameters
    ----------
    path : pathlib.Path
        The file to write (a temporary name: the format is ``suffix``'s).
    job : skast._jobs.Job
        ``columns``, ``n_files``, ``per_window``, and for ``.parquet`` the
        ``embedding`` settings and ``info`` recorded in its metadata.
    parts : iterable of (list of str, ndarray or None, ndarray)
        Each part's file names (one per row), window starts in seconds (with
        ``per_window``) and float32 embeddings, in order.
    suffix : {".npy", ".csv", ".parquet"}
        The format.

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
    >>> from skast._tables import write_table
    >>> job = Job.of(["a.wav", "b.wav", "c.wav"], part_size=2, per_window=False,
    ...              embedding={"pooling": "mean"}, columns=["e0", "e1"])
    >>> parts = [(["a.wav", "b.wav"], None, np.ones((2, 2), np.float32)),
    ...          (["c.wav"], None, np.zeros((1, 2), np.float32))]
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(write_table(Path(d) / "t", job, parts, suffix=".csv"))
    ...     print((Path(d) / "t").read_text().split())
    3
    ['file,e0,e1', 'a.wav,1.0,1.0', 'b.wav,1.0,1.0', 'c.wav,0.0,0.0']

    A ``.parquet`` table (pyarrow) has the same columns and records the
    embedding settings as JSON under :data:`PARQUET_KEY` in its metadata
    (tests/test_embed_jobs.py reads them back).
    """
    return _WRITERS[suffix](path, job, parts)
