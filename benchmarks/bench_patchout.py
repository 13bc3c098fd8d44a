"""Structured patchout: the speed of a training step, and the accuracy it keeps.

Two tables:

* **speed**: seconds per training step (forward, loss, backward and
  ``optimizer.step``, timed by wrapping ``skast._training.Trainer.step`` as
  ``bench_finetune.py`` does) of ``ASTClassifier(checkpoint).fit`` on random
  clips, for each ``--patchout`` setting, the same random-weight AST (the
  base size unless ``--layers`` says otherwise) at ``--frames`` frames
  (default 1024, the AudioSet input), batch ``--batch-size``; in one process,
  alternating, ``--repeats`` fits of one epoch each after a warm-up; medians.
  ``(40, 4)`` is PaSST's default: at 1024 frames it keeps 61 of the 101 time
  columns and 8 of the 12 frequency rows, 488 of 1212 patches (60% dropped).
* **accuracy** (``--accuracy-seeds``, ``--runs``): a small randomly
  initialised AST (10x10 strides, a 12 x 12 grid at 128 frames) fine-tuned
  on the built-in sounds (:func:`skast.datasets.make_sounds`) with each
  ``PATCHOUT@EPOCHS`` run, test accuracy on a stratified held-out quarter;
  each seed draws its own split, initialisation and order, the same for
  every run (a paired comparison with the first run). The learning rate is
  constant (``--lr-decay 1``): the classifier's default decay, 0.85 per epoch
  after the 5th, leaves next to nothing of it after 30 epochs, so longer
  runs would not train.

Usage::

    python benchmarks/bench_patchout.py [--frames 1024] [--batch-size 4]
        [--clips 8] [--repeats 2] [--layers 12] [--threads 2]
        [--patchout none 40,4] [--accuracy-seeds 5] [--lr-decay 1.0]
        [--per-class 24] [--runs none@60 0.4,0.33@60 0.4,0.33@150 none@150 0.6,0@150]
        [--skip-speed] [--skip-accuracy] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    environment,
    markdown_table,
    random_hf_checkpoint,
    write_json,
)
from bench_finetune import N_CLASSES, SkastSide, make_data  # noqa: E402

from skast._recipes import TINY  # noqa: E402

#: the small model of the accuracy table: the demo's, with the published
#: checkpoints' 10x10 strides (overlapping patches), a 12 x 12 grid at 128 frames
SMALL = {**TINY, "frequency_stride": 10, "time_stride": 10, "max_length": 128}


def parse_patchout(text: str):
    """``none``, ``40,4`` (counts) or ``0.4,0.33`` (shares)."""
    if text.lower() == "none":
        return None
    t, f = text.split(",")
    return tuple(float(v) if "." in v else int(v) for v in (t, f))


def label(patchout) -> str:
    return "off" if patchout is None else f"({patchout[0]}, {patchout[1]})"


def kept_patches(patchout, grid) -> int:
    from skast._patchout import drop_counts

    drop_t, drop_f = drop_counts(patchout, grid)
    return (grid[0] - drop_f) * (grid[1] - drop_t)


def speed(args) -> tuple[list, dict]:
    from skast._model import ASTConfig

    device = torch.device(args.device)
    grid = ASTConfig(max_length=args.frames).grid
    ckpt = random_hf_checkpoint(
        max_length=args.frames, num_labels=N_CLASSES, num_hidden_layers=args.layers
    )
    try:
        X, y = make_data(args.clips, args.frames)
        side = SkastSide(ckpt, X, y, device, args.precision)
        side.epoch(args.batch_size, n_clips=args.batch_size)  # warm-up
        steps = {label(p): [] for p in args.patchout}
        for _ in range(args.repeats):
            for p in args.patchout:
                steps[label(p)] += side.epoch(args.batch_size, patchout=p)["steps"]
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    base = statistics.median(steps[label(args.patchout[0])])
    rows, results = [], {}
    for p in args.patchout:
        s = statistics.median(steps[label(p)])
        kept = kept_patches(p, grid)
        results[label(p)] = {"step_seconds": s, "steps": steps[label(p)], "kept": kept}
        rows.append(
            [
                label(p),
                f"{kept} / {grid[0] * grid[1]}",
                f"{1 - kept / (grid[0] * grid[1]):.0%}",
                f"{s:.2f}",
                f"{base / s:.2f}x",
            ]
        )
    header = ["patchout", "patches kept", "dropped", "s/step", "speed-up"]
    return [header, rows], results


def parse_run(text: str):
    """``PATCHOUT@EPOCHS``: ``none@40``, ``0.4,0.33@80``."""
    patchout, epochs = text.split("@")
    return parse_patchout(patchout), int(epochs)


def accuracy(args) -> tuple[list, dict]:
    from sklearn.model_selection import train_test_split

    from skast import ASTClassifier
    from skast._model import ASTConfig
    from skast.datasets import make_sounds

    X, y = make_sounds(
        n_per_class=args.per_class,
        n_classes=args.n_classes,
        noise=args.noise,
        random_state=0,
        return_X_y=True,
    )
    names = [f"{label(p)}, {e} epochs" for p, e in args.runs]
    scores = {name: [] for name in names}
    seconds = {name: [] for name in names}
    for seed in range(args.accuracy_seeds):
        X_tr, X_te, y_tr, y_te = train_test_split(
            X, y, test_size=0.25, stratify=y, random_state=seed
        )
        for name, (patchout, epochs) in zip(names, args.runs):
            clf = ASTClassifier(
                model_config=SMALL,
                normalize="fit",
                learning_rate=args.lr,
                lr_decay=args.lr_decay,
                max_epochs=epochs,
                batch_size=16,
                patchout=patchout,
                device=args.device,
                random_state=seed,
            )
            t0 = time.perf_counter()
            clf.fit(X_tr, y_tr)
            seconds[name].append(time.perf_counter() - t0)
            scores[name].append(float(clf.score(X_te, y_te)))
            print(f"seed {seed}, {name}: {scores[name][-1]:.3f}", flush=True)
    grid = ASTConfig(**SMALL).grid
    first = np.array(scores[names[0]])
    rows, results = [], {}
    for name, (patchout, _) in zip(names, args.runs):
        acc = np.array(scores[name])
        diff = acc - first
        results[name] = {
            "accuracy": acc.tolist(),
            "fit_seconds": seconds[name],
            "paired_difference": diff.tolist(),
        }
        sd = acc.std(ddof=1) if len(acc) > 1 else 0.0
        rows.append(
            [
                name,
                f"{kept_patches(patchout, grid)} / {grid[0] * grid[1]}",
                f"{acc.mean():.3f} ± {sd:.3f}",
                " ".join(f"{a:.2f}" for a in acc),
                f"{diff.mean():+.3f}",
                f"{statistics.median(seconds[name]):.1f}",
            ]
        )
    header = [
        "run",
        "patches kept",
        "test accuracy (mean ± sd)",
        "per seed",
        "paired difference to the first",
        "s/fit",
    ]
    return [header, rows], results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--patchout", type=parse_patchout, nargs="+", default=[None, (40, 4)]
    )
    parser.add_argument("--accuracy-seeds", type=int, default=5)
    parser.add_argument(
        "--runs",
        type=parse_run,
        nargs="+",
        default=[
            (None, 60),
            ((0.4, 0.33), 60),
            ((0.4, 0.33), 150),
            (None, 150),
            ((0.6, 0), 150),
        ],
        help="accuracy runs, PATCHOUT@EPOCHS (the first is the reference)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--lr-decay",
        type=float,
        default=1.0,
        help="per epoch after the 5th (1: a constant rate, so that long runs train)",
    )
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--n-classes", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "float32", "bfloat16"]
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(torch.device(args.device))
    out = {"environment": env, "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_speed:
        table, out["speed"] = speed(args)
        n_steps = len(out["speed"][label(args.patchout[0])]["steps"])
        print(
            f"\n## Training step with patchout ({env['device_name']}, "
            f"{env['threads']} threads, precision {args.precision}, "
            f"{args.layers}-layer AST at {args.frames} frames, batch "
            f"{args.batch_size}, medians of {n_steps} steps)\n"
        )
        print(markdown_table(*table))
    if not args.skip_accuracy:
        table, out["accuracy"] = accuracy(args)
        print(
            f"\n## Accuracy with patchout (make_sounds: {args.n_classes} classes x "
            f"{args.per_class} clips, noise {args.noise}, 25% held out; small AST "
            f"{SMALL}, lr {args.lr} (decay {args.lr_decay}), batch 16; "
            f"{args.accuracy_seeds} seeds, each its own split, initialisation "
            "and order, the same for every run)\n"
        )
        print(markdown_table(*table))
    write_json(args.json, out)


if __name__ == "__main__":
    main()
