"""Which share of a ``skast embed`` job this process does: ``--shard I/N``,
or torchrun's ``RANK`` / ``WORLD_SIZE``, checked with the job's other options
before any model work. :mod:`skast._jobs` runs the job.
"""

from __future__ import annotations

import re
from pathlib import Path

from skast._commands import UsageError
from skast._jobs import parts_dir

__all__ = ["check_job_args", "parse_shard", "shard_of"]


def parse_shard(value: str, source: str = "--shard") -> tuple[int, int]:
    """``"I/N"`` as ``(I, N)``, with ``0 <= I < N``; else a usage error.

    Examples
    --------
    >>> from skast._shards import parse_shard
    >>> parse_shard("1/4")
    (1, 4)
    >>> parse_shard("4/4")
    Traceback (most recent call last):
    ...
    skast._commands.UsageError: --shard takes I/N, shard I of N with 0 <= I < N (such as 0/4), got '4/4'
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
    if match is None or not int(match[1]) < int(match[2]):
        raise UsageError(
            f"{source} takes I/N, shard I of N with 0 <= I < N (such as 0/4), "
            f"got '{value}'"
        )
    return int(match[1]), int(match[2])


def shard_of(shard: str | None, environ) -> tuple[int, int]:
    """This process's shard: ``--shard I/N`` when given, else torchrun's
    ``RANK`` / ``WORLD_SIZE`` when set, else ``(0, 1)``, the whole job.

    Examples
    --------
    >>> from skast._shards import shard_of
    >>> shard_of(None, {}), shard_of("2/3", {}), shard_of(None, {"RANK": "1", "WORLD_SIZE": "2"})
    ((0, 1), (2, 3), (1, 2))
    """
    if shard is not None:
        return parse_shard(shard)
    rank, world = environ.get("RANK"), environ.get("WORLD_SIZE")
    if rank is None and world is None:
        return 0, 1
    return parse_shard(f"{rank}/{world}", "RANK/WORLD_SIZE (set by torchrun)")


def check_job_args(args, out: Path, environ) -> tuple[int, int]:
    """Check embed's job options before any model work; this process's shard.

    Under torchrun, CUDA's current device becomes the rank's GPU
    (:func:`skast._distributed.training_device`), so that ``--device cuda``
    (or none) means that GPU.

    Parameters
    ----------
    args : argparse.Namespace
        ``part_size``, ``shard``, ``merge`` and ``restart`` of ``skast embed``.
    out : pathlib.Path
        The ``-o`` output.
    environ : mapping
        The environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    Returns
    -------
    (int, int)
        The shard ``(I, N)``; ``(0, 1)`` is the whole job.

    Raises
    ------
    UsageError
        A bad ``--part-size`` or shard, ``--merge`` or ``--restart`` with a
        shard, or a ``.parquet`` output without pyarrow.

    Examples
    --------
    >>> from argparse import Namespace
    >>> from pathlib import Path
    >>> from skast._shards import check_job_args
    >>> args = Namespace(part_size=1024, shard=None, merge=False, restart=False)
    >>> check_job_args(args, Path("emb.npy"), {"RANK": "3", "WORLD_SIZE": "8"})
    (3, 8)
    """
    if args.part_size < 1:
        raise UsageError(f"--part-size must be at least 1, got {args.part_size}")
    if args.merge and (args.shard is not None or args.restart):
        raise UsageError(
            "--merge joins the parts of every shard: drop --shard and --restart"
        )
    shard = (0, 1) if args.merge else shard_of(args.shard, environ)
    if args.restart and shard[1] > 1:
        raise UsageError(
            "--restart with a shard would discard the other shards' parts: "
            f"remove {parts_dir(out)} before starting the shards instead"
        )
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as err:
            raise UsageError(
                "writing .parquet needs pyarrow: pip install pyarrow"
            ) from err
    if not args.merge:
        import torch

        from skast._distributed import training_device

        if torch.cuda.is_available():
            training_device(torch.device("cuda"), environ)
    return shard
