"""Windowed throughput: ``window_hop`` windows per second against plain
``transform`` clips per second, on the same total audio.

The plain side embeds clips of exactly one window (``max_length`` frames);
the windowed side embeds long recordings of the same total duration, cut into
windows of ``max_length`` frames every ``hop`` seconds (hops of one window,
no overlap, then half a window). Both run the same random-weight AST in one
process, alternating, several repeats; medians. Windowing should cost no more
than the extra frames it computes: windows per second close to clips per
second (ratio near 1), whatever the hop.

Usage::

    python benchmarks/bench_windows.py [--size tiny|base] [--max-length 1024]
        [--audio-seconds 120] [--recordings 2] [--batch-size 8] [--repeats 3]
        [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, environment, markdown_table, write_json  # noqa: E402

from skast import ASTFeaturizer  # noqa: E402
from skast._recipes import SAMPLE_RATE, TINY  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--audio-seconds", type=float, default=120.0)
    parser.add_argument("--recordings", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    config = dict(TINY if args.size == "tiny" else {}, max_length=args.max_length)
    window_samples = (args.max_length - 1) * 160 + 400
    window_seconds = window_samples / SAMPLE_RATE
    rng = np.random.default_rng(0)
    n_clips = max(1, round(args.audio_seconds / window_seconds))
    plain_X = (0.1 * rng.standard_normal((n_clips, window_samples))).astype(np.float32)
    per_recording = int(args.audio_seconds * SAMPLE_RATE / args.recordings)
    long_X = [
        (0.1 * rng.standard_normal(per_recording)).astype(np.float32)
        for _ in range(args.recordings)
    ]

    def make(**params):
        return ASTFeaturizer(
            model_config=config,
            batch_size=args.batch_size,
            device=device,
            precision="float32",
            **params,
        ).fit(plain_X[:1])

    plain = make()
    hops = {"one window": args.max_length / 100, "half a window": args.max_length / 200}
    windowed = {name: make(window_hop=hop) for name, hop in hops.items()}
    counts = {"plain": n_clips}
    for name, est in windowed.items():
        _, starts = est.transform_windows(long_X[:1])
        counts[name] = len(starts[0]) * args.recordings  # recordings are alike
    fns = {"plain": lambda: plain.transform(plain_X)}
    for name, est in windowed.items():
        fns[name] = lambda est=est: est.transform(long_X)
    seconds = alternate(fns, args.repeats, device)

    plain_rate = counts["plain"] / seconds["plain"]
    rows = []
    for name in fns:
        rate = counts[name] / seconds[name]
        hop = "-" if name == "plain" else f"{hops[name]:.2f} s ({name})"
        rows.append([
            "transform of one-window clips" if name == "plain" else "window_hop",
            hop,
            counts[name],
            f"{seconds[name]:.3f}",
            f"{rate:.1f}",
            f"{rate / plain_rate:.2f}",
        ])  # fmt: skip
    total = args.audio_seconds
    print(f"{total:.0f} s of audio; windows of {args.max_length} frames "
          f"({window_seconds:.2f} s); {args.size} model on {device}\n")  # fmt: skip
    header = ["input", "hop", "windows or clips", "seconds", "per second", "ratio"]
    print(markdown_table(header, rows))
    write_json(
        args.json,
        {
            "environment": environment(device),
            "args": vars(args),
            "counts": counts,
            "seconds": seconds,
        },
    )


if __name__ == "__main__":
    main()
