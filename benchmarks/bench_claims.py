"""What the cache's exclusive claims cost, and that racing processes share out
the work.

``skast._cache.embed_cached`` on ``--clips`` distinct short arrays, with a
stand-in ``embed`` that costs ``--embed-ms`` milliseconds per clip (a sleep, so
that the cache's own work is what is left to time), run by 1, 2 and 4
processes at once on one fresh cache folder (started together at a barrier).
For each: the wall time of the slowest process, the clips the stand-in
embedded in all (the claims make it ``--clips`` whatever the number of
processes), and the same call again on the filled cache (reads only).
``cache per clip`` is the wall time less the embedding, per clip: fingerprint,
claim, write, release (or wait and read).

Usage::

    python benchmarks/bench_claims.py [--clips 2000] [--embed-ms 0.2]
        [--processes 1 2 4] [--folder /path/on/the/file/system] [--json out.json]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import markdown_table, write_json  # noqa: E402

N_FEATURES = 768


def _clips(n):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(160).astype(np.float32) for _ in range(n)]


def _run(folder, n, embed_ms, barrier, results):
    from skast._audio import check_audio_input
    from skast._cache import embed_cached

    audio = check_audio_input(_clips(n))
    embedded = []

    def embed(subset, desc):
        time.sleep(embed_ms * len(subset) / 1000)
        embedded.append(len(subset))
        return np.zeros((len(subset), N_FEATURES), np.float32)

    kw = dict(folder=Path(folder), key="0" * 64, n_features=N_FEATURES)
    barrier.wait(timeout=120)
    start = time.perf_counter()
    embed_cached(audio, embed, **kw)
    cold = time.perf_counter() - start
    barrier.wait(timeout=600)
    start = time.perf_counter()
    embed_cached(audio, embed, **kw)
    warm = time.perf_counter() - start
    results.put((cold, warm, sum(embedded)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=2000)
    parser.add_argument("--embed-ms", type=float, default=0.2)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--folder", default=None, help="where the caches go")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for k in args.processes:
        with tempfile.TemporaryDirectory(dir=args.folder) as folder:
            barrier, results = ctx.Barrier(k), ctx.Queue()
            procs = [
                ctx.Process(
                    target=_run,
                    args=(folder, args.clips, args.embed_ms, barrier, results),
                )
                for _ in range(k)
            ]
            for p in procs:
                p.start()
            out = [results.get(timeout=900) for _ in procs]
            for p in procs:
                p.join(timeout=60)
        cold = max(o[0] for o in out)
        warm = max(o[1] for o in out)
        embedded = sum(o[2] for o in out)
        work = embedded * args.embed_ms / 1000 / k  # if shared out evenly
        rows.append(
            {
                "processes": k,
                "clips": args.clips,
                "embedded in all": embedded,
                "cold cache (s)": round(cold, 3),
                "cache per clip (us)": round(1e6 * (cold - work) / args.clips, 1),
                "filled cache (s)": round(warm, 3),
            }
        )
    print(markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
    write_json(args.json, {"rows": rows, "args": vars(args)})


if __name__ == "__main__":
    main()
