"""What the ``skast`` command runs: one function per command, and the
helpers they share (finding audio files, checking and writing outputs,
loading saved models). :mod:`skast.cli` holds the parser and ``main``.

Nothing here imports torch or scikit-learn at import time: each command
imports what it needs, so that ``skast --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path

from skast._recipes import CHECKPOINT, TINY

OUTPUT_SUFFIXES = (".npy", ".csv", ".parquet")
TAG_SUFFIXES = (".csv", ".json")
PICKLE_SUFFIXES = (".joblib", ".pkl", ".pickle")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif")


class UsageError(Exception):
    """Bad arguments: exit code 2."""


def _audio_files(paths: list[str]) -> list[str]:
    """Files named, plus audio files found (recursively, sorted) in directories."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(
                str(f) for f in p.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES
            )
        elif p.is_file():
            found.append(str(p))
        else:
            raise UsageError(f"no such file or directory: {p}")
    if not found:
        raise UsageError("no audio files found in " + ", ".join(paths))
    return found


def _check_output(path: Path) -> None:
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise UsageError(
            f"output must end in .npy, .csv or .parquet, got '{path.name}'"
        )


def _write_table(path: Path, names: list[str], values, columns: list[str]) -> None:
    import numpy as np

    _check_output(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, np.asarray(values))
        return
    if suffix == ".csv":
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", *columns])
            for name, row in zip(names, values):
                writer.writerow([name, *np.atleast_1d(row).tolist()])
        return
    if suffix == ".parquet":  # the last of OUTPUT_SUFFIXES
        try:
            import pandas as pd
        except ImportError as err:  # pragma: no cover - pandas is a dev dependency
            raise UsageError("writing .parquet needs pandas and pyarrow") from err
        frame = pd.DataFrame(
            np.asarray(values).reshape(len(names), -1), columns=columns
        )
        frame.insert(0, "file", names)
        try:
            frame.to_parquet(path, index=False)
        except ImportError as err:
            raise UsageError(
                "writing .parquet needs pyarrow: pip install pyarrow"
            ) from err


def _print_table(rows: list[tuple], header: tuple) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |")


# ---------------------------------------------------------------------- commands


def cmd_demo(args) -> int:
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import (
        StratifiedKFold,
        cross_val_score,
        train_test_split,
    )
    from sklearn.pipeline import make_pipeline

    from skast import ASTClassifier, ASTFeaturizer
    from skast.datasets import make_sounds

    sounds = make_sounds(
        n_per_class=args.n_per_class, n_classes=6, duration=1.0, random_state=0
    )
    X, y = sounds.data, sounds.target
    print(
        f"built-in sound set: {len(X)} clips of 1 s, {len(sounds.target_names)} "
        f"classes ({', '.join(sounds.target_names)})"
    )
    common = dict(
        model_config=TINY,
        max_length=128,
        normalize="fit",
        device=args.device,
        verbose=True,
    )
    rows = []

    t0 = time.perf_counter()
    pipe = make_pipeline(
        ASTFeaturizer(**common), LogisticRegression(C=100, max_iter=5000)
    )
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = cross_val_score(pipe, X, y, cv=cv)
    rows.append(
        (
            "ASTFeaturizer + LogisticRegression",
            "5-fold CV",
            f"{scores.mean():.3f} ± {scores.std():.3f}",
            f"{time.perf_counter() - t0:.1f}",
        )
    )

    t0 = time.perf_counter()
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=0
    )
    clf = ASTClassifier(
        **common,
        learning_rate=1e-3,
        max_epochs=args.epochs,
        lr_decay_start=max(1, args.epochs // 2),
        batch_size=16,
        random_state=0,
    ).fit(X_train, y_train)
    rows.append(
        (
            "ASTClassifier (fine-tuned from scratch)",
            "held-out 25%",
            f"{clf.score(X_test, y_test):.3f}",
            f"{time.perf_counter() - t0:.1f}",
        )
    )
    print()
    _print_table(rows, ("model", "evaluation", "accuracy", "seconds"))
    print(f"\nchance level: {1 / len(np.unique(y)):.3f}")
    return 0


def cmd_embed(args) -> int:
    """Embed in parts that a rerun resumes (skast._jobs), then join them."""
    import os

    from skast import _jobs, _shards

    files = _audio_files(args.inputs)
    out = Path(args.output)
    _check_output(out)  # before the embedding work, not after it
    if args.per_window and (
        args.window_hop is None or out.suffix.lower() not in (".csv", ".parquet")
    ):
        raise UsageError("--per-window needs --window-hop and a .csv or .parquet -o")
    shard = _shards.check_job_args(args, out, os.environ)
    if args.merge:  # joins the parts: no model
        done = _jobs.merge(files, out, per_window=args.per_window)
    else:
        done = _jobs.run(
            _embed_featurizer(args, files),
            files,
            out,
            part_size=args.part_size,
            per_window=args.per_window,
            shard=shard,
            restart=args.restart,
            verbose=not args.quiet,
        )
    if done is None:
        print(
            f"shard {shard[0]}/{shard[1]}: its parts are in {_jobs.parts_dir(out)}; "
            "once every shard is done, join them with the same command and --merge"
        )
    else:
        print(f"wrote {done[0]} x {done[1]} embeddings to {out}")
    return 0


def _embed_featurizer(args, files):
    """embed's fitted featurizer: ``--model DIR``'s, or one of ``--checkpoint``
    (its progress bar off: the job shows one over all the files)."""
    from skast import ASTFeaturizer

    if args.model is not None:
        return _saved_model(args, "ASTFeaturizer", _EMBED_MODEL, verbose=False)
    return ASTFeaturizer(
        args.checkpoint,
        max_length=args.max_length,
        pooling=args.pooling,
        layer=args.layer,
        window_hop=args.window_hop,
        batch_size=args.batch_size,
        device=args.device,
        num_workers=args.num_workers,
    ).fit(files)


def cmd_tag(args) -> int:
    from skast import ASTClassifier

    out = Path(args.output) if args.output else None
    if out is not None and out.suffix.lower() not in TAG_SUFFIXES:
        raise UsageError(f"output must end in .csv or .json, got '{out.name}'")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    files = _audio_files(args.inputs)  # before loading the model, not after
    verbose = not args.quiet and len(files) > args.batch_size  # a long list
    if args.model is not None:
        clf = _saved_model(args, "ASTClassifier", _TAG_MODEL, verbose=verbose)
    else:
        clf = ASTClassifier.from_pretrained(
            args.checkpoint,
            max_length=args.max_length,
            window_hop=args.window_hop,
            batch_size=args.batch_size,
            device=args.device,
            num_workers=args.num_workers,
            verbose=verbose,
        )
    if args.window_hop is None:
        proba = clf.predict_proba(files)
    else:  # the windows are run once, for the files' tags and their own
        proba, (windows, starts) = clf._proba_and_windows(files)
    tags = _top_tags(proba, clf.classes_, args.top_k)
    # (file, window start in seconds or None for the whole file, tags)
    rows = [(f, None, t) for f, t in zip(files, tags)]
    if args.window_hop is not None:  # each file's windows after the file
        by_file = [
            [
                (f, float(s), t)
                for s, t in zip(st, _top_tags(p, clf.classes_, args.top_k))
            ]
            for f, p, st in zip(files, windows, starts)
        ]
        rows = [r for row, more in zip(rows, by_file) for r in (row, *more)]
    if out is None:
        for f, start, file_tags in rows:
            print(f if start is None else f"  window at {start:.2f} s")
            indent = "  " if start is None else "    "
            for label, score in file_tags:
                print(f"{indent}{score:.3f}  {label}")
        return 0
    if out.suffix.lower() == ".json":
        import json

        def tag_list(t):
            return [{"label": lb, "score": s} for lb, s in t]

        records = []
        for f, start, t in rows:
            if start is None:
                records.append({"file": f, "tags": tag_list(t)})
            else:
                window = {"start": start, "tags": tag_list(t)}
                records[-1].setdefault("windows", []).append(window)
        out.write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n")
    else:
        import numpy as np

        columns = ["rank", "label", "score"]
        if args.window_hop is not None:
            columns = ["start", *columns]
        table = [
            np.array(
                ([] if args.window_hop is None else ["" if start is None else start])
                + [rank, label, score],
                dtype=object,
            )
            for _, start, t in rows
            for rank, (label, score) in enumerate(t, 1)
        ]
        names = [f for f, _, t in rows for _ in t]
        _write_table(out, names, table, columns)
    print(f"wrote the top {args.top_k} tags of {len(files)} files to {out}")
    return 0


def _top_tags(proba, classes, k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` best ``(label, score)`` of each row of ``proba``, best first
    (ties in the order of ``classes``)."""
    import numpy as np

    order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    return [
        [(str(classes[j]), float(row[j])) for j in best]
        for row, best in zip(proba, order)
    ]


# embed's model settings and their defaults: a saved featurizer (--model)
# brings its own, so none of them may be given with it
_EMBED_MODEL = {
    "checkpoint": CHECKPOINT,
    "max_length": None,
    "pooling": "mean",
    "layer": None,
    "device": None,
}


# tag's model settings and their defaults, which --model DIR brings instead
_TAG_MODEL = {"checkpoint": CHECKPOINT, "max_length": None, "device": None}


def _saved_model(args, kind: str, settings: dict, *, verbose: bool):
    """The fitted ``kind`` (ASTFeaturizer or ASTClassifier) of ``--model DIR``
    (``skast.load``, no unpickling), with this run's window hop (when given),
    batch size, workers and progress bar. ``settings`` (name -> default) are
    what a saved model brings: giving one of them too is a usage error."""
    given = [
        f"--{name.replace('_', '-')}"
        for name, default in settings.items()
        if getattr(args, name) != default
    ]
    if given:
        raise UsageError(
            f"--model brings its own model and device; drop {', '.join(given)}"
        )
    if not Path(args.model).is_dir():
        raise UsageError(
            f"--model takes a directory written by {kind}.save, got '{args.model}'"
        )
    import skast

    est = skast.load(args.model)
    if type(est).__name__ != kind:
        raise ValueError(f"'{args.model}' holds a {type(est).__name__}, not an {kind}")
    if args.window_hop is not None:  # else the saved model's own
        est.set_params(window_hop=args.window_hop)
    return est.set_params(
        batch_size=args.batch_size, num_workers=args.num_workers, verbose=verbose
    )


def _is_pickle_name(path: Path) -> bool:
    """Whether ``-o`` names a joblib file (``model.joblib``, ``model.joblib.gz``
    ...) rather than a directory for ``save``."""
    return any(s.lower() in PICKLE_SUFFIXES for s in path.suffixes)


def cmd_finetune(args) -> int:
    from skast import ASTClassifier, _distributed

    output = Path(args.output)
    as_joblib = _is_pickle_name(output)
    if not as_joblib and output.exists() and not output.is_dir():
        raise UsageError(
            f"{output} is a file; the model is saved as a directory (name the "
            "output *.joblib to write a joblib file)"
        )
    root = Path(args.root)
    if not root.is_dir():
        raise UsageError(f"{root} is not a directory of class folders")
    files, labels = [], []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        clips = _audio_files([str(class_dir)]) if any(class_dir.iterdir()) else []
        files += clips
        labels += [class_dir.name] * len(clips)
    if len(set(labels)) < 2:
        raise UsageError(f"{root} must hold at least two class folders with audio")
    clf = ASTClassifier(
        args.checkpoint,
        recipe=args.recipe,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        device=args.device,
        num_workers=args.num_workers,
        random_state=args.random_state,
        verbose=not args.quiet,
        snapshot_dir=args.snapshot_dir,
    )
    clf.fit(files, labels)
    if not _distributed.leader():  # under torchrun: rank 0 writes and reports
        return 0
    if as_joblib:
        import joblib

        joblib.dump(clf, output)
    else:
        clf.save(output)
    print(
        f"fine-tuned on {len(files)} clips of {len(clf.classes_)} classes; "
        f"saved to {output}"
    )
    return 0


def _load_model(path: str):
    """A directory written by ``save`` (read without running code), or a
    joblib file (unpickled)."""
    if Path(path).is_dir():
        import skast

        return skast.load(path)
    import joblib

    try:
        return joblib.load(path)
    except OSError:
        raise
    except Exception as err:  # truncated or not a joblib file: many errors
        raise ValueError(
            f"cannot load the model file '{path}' (truncated, or not "
            f"saved by joblib?): {type(err).__name__}: {err}"
        ) from err


def cmd_predict(args) -> int:
    out = Path(args.output) if args.output else None
    if out is not None:
        _check_output(out)  # before the prediction work, not after it
    model = _load_model(args.model)
    if not (hasattr(model, "predict_proba") and hasattr(model, "classes_")):
        raise ValueError(
            f"'{args.model}' does not hold a fitted classifier (it holds a "
            f"{type(model).__name__}); save one with 'skast finetune'"
        )
    files = _audio_files(args.inputs)
    proba = model.predict_proba(files)
    labels = model.classes_[proba.argmax(axis=1)]
    if out is None:
        for f, label, p in zip(files, labels, proba.max(axis=1)):
            print(f"{f}\t{label}\t{p:.3f}")
        return 0
    _write_table(out, files, proba, [str(c) for c in model.classes_])
    print(f"wrote predictions for {len(files)} files to {out}")
    return 0


def cmd_export(args) -> int:
    if not args.onnx:
        raise UsageError("give the format to export: --onnx")
    out = Path(args.directory)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; export writes a directory")
    model = _load_model(args.model)
    if not hasattr(model, "model_"):
        raise ValueError(
            f"'{args.model}' does not hold a fitted ASTFeaturizer or ASTClassifier "
            f"(it holds a {type(model).__name__})"
        )
    from skast._deploy import export_estimator

    onnx_path, json_path = export_estimator(model, out, int8=args.int8)
    print(f"wrote {onnx_path} and {json_path}")
    return 0
