"""Streaming fine-tuning: peak memory against the number of training files,
and the epoch time of the streaming path against precomputed features.

``ASTClassifier.fit`` decodes each batch's clips and computes their features
when training reaches the batch (``skast._training.TrainingData``); before,
it computed the features of every clip first and kept them on the CPU.

* memory: one epoch of ``fit`` on N ten-second WAV files, for each
  ``--clips N``, each in a fresh subprocess; the rise of the peak resident
  set size (Linux ``VmHWM``) over the resident size after the imports, beside
  what the features of the N clips would take if they were kept
  (``N * frames * 128 * 4`` bytes);
* time: one epoch on ``--time-clips`` in-memory clips through the one
  training loop (``skast._training.train``), fed two ways: streaming (what
  ``fit`` runs: fbank and normalisation per batch on the device) and
  precomputed (every clip's features computed once before the epoch, kept on
  the CPU, each batch indexed and moved to the device: the former path; the
  time to compute them is reported apart). The same model, seed and batches;
  alternating, median of ``--repeats``.

Usage::

    python benchmarks/bench_streaming.py [--frames 1024] [--layers 2]
        [--tiny] [--clips 150 600] [--time-clips 32] [--batch-size 8] [--repeats 3]
        [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import environment, markdown_table, sync, write_json  # noqa: E402

SECONDS = 10


def model_config(args) -> dict:
    from skast._recipes import TINY

    config = dict(TINY) if args.tiny else {}
    return {**config, "num_hidden_layers": args.layers, "max_length": args.frames}


def classifier(args, **params):
    from skast import ASTClassifier

    return ASTClassifier(
        model_config=model_config(args),
        device=args.device,
        max_epochs=1,
        batch_size=args.batch_size,
        random_state=0,
        **params,
    )


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise OSError(f"no {field} in /proc/self/status")


def child(args) -> None:
    """One epoch of fit on the files listed in ``args.files``; print the
    rise of the peak RSS over the RSS after the imports."""
    import skast  # noqa: F401

    paths = Path(args.files).read_text().split()
    y = np.arange(len(paths)) % 2
    start = _status_mib("VmRSS")
    clf = classifier(args).fit(paths, y)
    print(json.dumps({"rise_mib": _status_mib("VmHWM") - start, "n": clf.n_iter_}))


def measure_memory(args, directory: Path) -> list[list]:
    rng = np.random.default_rng(0)
    sources = []
    for k in range(8):
        wave = (0.1 * rng.standard_normal(SECONDS * 16000)).astype(np.float32)
        sources.append(directory / f"source{k}.wav")
        sf.write(sources[-1], wave, 16000)
    rows = []
    for n in args.clips:
        listing = directory / f"files{n}.txt"
        paths = []
        for i in range(n):
            path = directory / f"clip{n}_{i}.wav"
            path.hardlink_to(sources[i % 8])
            paths.append(str(path))
        listing.write_text("\n".join(paths))
        cmd = [sys.executable, __file__, "--child", "--files", str(listing)]
        cmd += ["--frames", str(args.frames), "--layers", str(args.layers)]
        cmd += ["--batch-size", str(args.batch_size), "--device", args.device]
        cmd += ["--tiny"] if args.tiny else []
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rise = json.loads(out.stdout.strip().splitlines()[-1])["rise_mib"]
        kept = n * args.frames * 128 * 4 / 2**20
        rows.append([str(n), f"{rise:.0f}", f"{kept:.0f}"])
    return rows


def measure_time(args) -> tuple[list[list], dict]:
    from skast import _audio
    from skast._training import TrainingData, train

    rng = np.random.default_rng(1)
    n_samples = int(args.frames / 100 * 16000)
    X = [
        (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
        for _ in range(args.time_clips)
    ]
    y = np.arange(args.time_clips) % 4
    clf = classifier(args).fit(X[: args.batch_size], y[: args.batch_size])
    device = torch.device(clf.device_)
    audio = _audio.check_audio_input(X)
    targets = torch.as_tensor(y)
    config = clf._training_config(device)
    initial = copy.deepcopy(clf.model_.state_dict())
    streaming = clf._training_data(audio, targets)

    def precompute():
        feats = torch.empty((len(X), args.frames, 128))
        with torch.no_grad():
            for idx, x in clf._iter_features(audio, desc=None):
                feats[torch.as_tensor(idx)] = x.float().cpu()
        return feats

    def precomputed_data(feats):
        return TrainingData(
            targets,
            lambda batches: (
                (b, feats[b].to(device, non_blocking=True)) for b in batches
            ),
        )

    def epoch(data):
        clf.model_.load_state_dict(initial)
        history = []
        sync(device)
        train(clf.model_, data, config, history)
        return history[0]["seconds"]

    times = {"streaming": [], "precomputed": [], "features": []}
    epoch(streaming)  # warm-up
    for _ in range(args.repeats):
        times["streaming"].append(epoch(streaming))
        t0 = time.perf_counter()
        feats = precompute()
        times["features"].append(time.perf_counter() - t0)
        times["precomputed"].append(epoch(precomputed_data(feats)))
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        [
            f"{med['precomputed']:.2f}",
            f"{med['features']:.2f}",
            f"{med['streaming']:.2f}",
            f"{med['streaming'] / med['precomputed']:.3f}",
        ]
    ]
    return rows, {k: v for k, v in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the demo's tiny width (skast._recipes.TINY)",
    )
    parser.add_argument("--clips", type=int, nargs="+", default=[150, 600])
    parser.add_argument("--time-clips", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    env = environment(torch.device(args.device))
    setting = (
        f"{env['device_name']}, {env['threads']} threads, {args.layers}-layer "
        f"{'tiny ' if args.tiny else ''}AST at {args.frames} frames, "
        f"batch {args.batch_size}"
    )
    results = {}
    if not args.no_memory:
        with tempfile.TemporaryDirectory() as tmp:
            rows = measure_memory(args, Path(tmp))
        results["memory"] = rows
        print(f"\n## Peak memory of one epoch of fit on ten-second files ({setting})\n")
        print(
            markdown_table(
                ["files", "peak RSS rise MiB", "their features, if kept, MiB"], rows
            )
        )
    rows, times = measure_time(args)
    results["time"] = times
    print(
        f"\n## Epoch time, {args.time_clips} clips ({setting}, median of "
        f"{args.repeats})\n"
    )
    print(
        markdown_table(
            [
                "precomputed s/epoch",
                "(+ computing the features first, s)",
                "streaming s/epoch",
                "streaming / precomputed",
            ],
            rows,
        )
    )
    write_json(args.json, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
