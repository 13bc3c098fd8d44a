"""Cross-validation with and without the embedding cache.

``cross_val_score(Pipeline(ASTFeaturizer, LogisticRegression), cv=5)`` on the
same random clips with the same full-size random-weight AST (saved once as a
checkpoint, loaded by every fold's ``fit``), with ``cache=None`` and with a
cache in a fresh temporary folder (cold at the start of each run), in one
process, alternating, several repeats; medians.

Without a cache every clip goes through the encoder five times (four times as
a training clip, once as a test clip); with it, once. Encoder calls are counted
by wrapping ``AST.forward_features``: clips (rows) and forward passes.

Usage::

    python benchmarks/bench_cv.py [--clips 10] [--frames 1024] [--repeats 3]
        [--layers 12]
        [--device cpu] [--precision auto] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, markdown_table, timed, write_json  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--layers", type=int, default=12, help="transformer blocks (12: base AST)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline

    from skast import ASTFeaturizer
    from skast._checkpoints import save_pretrained
    from skast._model import AST, ASTConfig

    device = torch.device(args.device)
    workdir = Path(tempfile.mkdtemp(prefix="skast-bench-cv-"))
    torch.manual_seed(0)
    ckpt = workdir / "checkpoint"
    save_pretrained(
        AST(ASTConfig(max_length=args.frames, num_hidden_layers=args.layers)), ckpt
    )

    rng = np.random.default_rng(0)
    seconds = args.frames / 100
    X = [
        (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
        for _ in range(args.clips)
    ]
    y = np.arange(args.clips) % 2
    cv = StratifiedKFold(args.folds, shuffle=True, random_state=0)

    # count what goes through the encoder
    counts = {"clips": 0, "passes": 0}
    original = AST.forward_features

    def counting_forward_features(self, x, *a, **k):
        counts["clips"] += x.shape[0]
        counts["passes"] += 1
        return original(self, x, *a, **k)

    AST.forward_features = counting_forward_features

    def pipeline(cache):
        return make_pipeline(
            ASTFeaturizer(
                str(ckpt),
                batch_size=args.batch_size,
                device=str(device),
                precision=args.precision,
                cache=cache,
            ),
            LogisticRegression(max_iter=1000),
        )

    def run(cached: bool) -> dict:
        cache = tempfile.mkdtemp(dir=workdir, prefix="cache-") if cached else None
        counts.update(clips=0, passes=0)
        scores = []
        seconds = timed(
            lambda: scores.extend(cross_val_score(pipeline(cache), X, y, cv=cv)),
            device,
        )
        if cache:
            shutil.rmtree(cache, ignore_errors=True)
        return {"seconds": seconds, **counts, "score": float(np.mean(scores))}

    def fit_seconds(cached: bool) -> float:
        """One featurizer ``fit`` (load the checkpoint; with a cache, also
        fingerprint the weights): the fixed cost each fold pays."""
        cache = tempfile.mkdtemp(dir=workdir, prefix="cache-") if cached else None
        return timed(lambda: pipeline(cache)[0].fit(X[:1]), device)

    try:
        # warm-up: one small embedding (allocator, thread pools)
        pipeline(None)[0].fit(X[:1]).transform(X[:2])
        runs = {"uncached": [], "cached": []}
        fits = {"uncached": [], "cached": []}
        for _ in range(args.repeats):
            for name in runs:
                runs[name].append(run(name == "cached"))
                fits[name].append(fit_seconds(name == "cached"))
    finally:
        AST.forward_features = original
        shutil.rmtree(workdir, ignore_errors=True)

    results = {}
    rows = []
    for name, rs in runs.items():
        med = statistics.median(r["seconds"] for r in rs)
        results[name] = {
            "seconds": med,
            "seconds_all": [r["seconds"] for r in rs],
            "encoder_clips": rs[-1]["clips"],
            "encoder_passes": rs[-1]["passes"],
            "fit_seconds": statistics.median(fits[name]),
            "score": rs[-1]["score"],
        }
        rows.append(
            [
                name,
                f"{med:.1f}",
                str(rs[-1]["clips"]),
                str(rs[-1]["passes"]),
                f"{statistics.median(fits[name]):.2f}",
            ]
        )
    speedup = results["uncached"]["seconds"] / results["cached"]["seconds"]
    results["speedup"] = speedup
    results["cached_calls_equal_clips"] = results["cached"]["encoder_clips"] == len(X)

    env = environment(device)
    print(
        f"\n## {args.folds}-fold cross_val_score, Pipeline(ASTFeaturizer, "
        f"LogisticRegression) ({env['device_name']}, {env['threads']} threads, "
        f"precision {args.precision}, {args.layers}-layer AST, {args.clips} clips "
        f"of {seconds:g} s at {args.frames} frames, median of {args.repeats})\n"
    )
    print(
        markdown_table(
            [
                "cache",
                "wall time (s)",
                "clips through the encoder",
                "encoder forward passes",
                "featurizer fit (s)",
            ],
            rows,
        )
    )
    print(
        f"\ncached is {speedup:.2f}x faster; clips through the encoder with the "
        f"cache: {results['cached']['encoder_clips']} for {len(X)} clips"
    )
    write_json(args.json, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
