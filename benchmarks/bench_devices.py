"""Embedding throughput on 1, 2, ..., N devices of one machine.

``ASTFeaturizer(device=devices[:k])`` for k = 1 .. N embeds the same random
clips with the same random-weight AST; one DataLoader decodes (with
``--files``: WAV files, in ``--num-workers`` worker processes) and feeds every
device. The table gives clips/s (median of ``--repeats`` runs after a warm-up),
the speed-up over one device, and the largest difference of the embeddings
from one device's (they should agree to float32 rounding; under bfloat16 they
are the same batches through the same kernels, so equal on identical GPUs).

On a machine with several GPUs (the default there is every visible one)::

    python benchmarks/bench_devices.py --precision bfloat16 --clips 2048 \
        --batch-size 64 --files --num-workers 8

On the CPU it runs ``["cpu"] * k`` (``--devices cpu cpu``) to show that the
path works; the replicas share the machine's cores, so speed is not the point
there::

    python benchmarks/bench_devices.py --devices cpu cpu --clips 16 --seconds 2 \
        --max-length 192 --layers 2 --batch-size 4

Usage::

    python benchmarks/bench_devices.py [--devices cuda:0 cuda:1 ...] [--clips 512]
        [--seconds 10] [--max-length 1024] [--layers 12] [--batch-size 32] [--precision auto]
        [--files] [--num-workers 4] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    alternate,
    environment,
    markdown_table,
    random_hf_checkpoint,
    write_json,
)


def default_devices() -> list[str]:
    """Every visible CUDA device, else two CPU replicas."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu", "cpu"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", nargs="+", default=None)
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-length", type=int, default=1024, help="frames")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
    )
    parser.add_argument("--files", action="store_true", help="embed WAV files")
    parser.add_argument("--num-workers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import soundfile as sf

    from skast import ASTFeaturizer
    from skast._recipes import SAMPLE_RATE

    devices = args.devices or default_devices()
    max_length = args.max_length
    ckpt = random_hf_checkpoint(max_length=max_length, num_hidden_layers=args.layers)
    rng = np.random.default_rng(0)
    n_samples = int(args.seconds * SAMPLE_RATE)
    clips = (0.1 * rng.standard_normal((args.clips, n_samples))).astype(np.float32)
    X, num_workers = clips, 0
    folder = tempfile.TemporaryDirectory(prefix="skast-bench-devices-")
    if args.files:
        X = []
        for i, clip in enumerate(clips):
            path = Path(folder.name) / f"{i}.wav"
            sf.write(path, clip, SAMPLE_RATE, subtype="FLOAT")
            X.append(str(path))
        num_workers = args.num_workers

    first = torch.device(devices[0])
    featurizers, outputs = {}, {}
    for k in range(1, len(devices) + 1):
        featurizers[k] = ASTFeaturizer(
            str(ckpt),
            device=devices[:k],
            batch_size=args.batch_size,
            precision=args.precision,
            num_workers=num_workers,
        ).fit(X[:1])

    def run(k):
        def call():
            outputs[k] = featurizers[k].transform(X)

        return call

    # alternate one device count after another, so that drift hits all alike
    seconds = alternate(
        {k: run(k) for k in featurizers}, args.repeats, torch.device(devices[-1])
    )
    for device in {torch.device(d) for d in devices}:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows, records = [], []
    for k, s in seconds.items():
        rate = args.clips / s
        diff = float(np.abs(outputs[k] - outputs[1]).max())
        speedup = seconds[1] / s
        rows.append(
            [
                k,
                ", ".join(devices[:k]),
                f"{rate:.1f}",
                f"{speedup:.2f}x",
                f"{diff:.1e}",
            ]
        )
        records.append(
            {
                "devices": devices[:k],
                "seconds": s,
                "clips_per_second": rate,
                "speedup": speedup,
                "max_abs_diff": diff,
            }
        )
    env = environment(first)
    source = f"files, {num_workers} workers" if args.files else "arrays"
    print(
        f"\n## {args.clips} clips of {args.seconds:g} s ({max_length} frames, "
        f"{args.layers} layers, batch {args.batch_size}, precision "
        f"{args.precision}, {source}) on {env['device_name']}\n"
    )
    print(
        markdown_table(
            ["devices", "which", "clips/s", "speed-up", "max |diff| vs 1"], rows
        )
    )
    write_json(args.json, {"environment": env, "args": vars(args), "runs": records})
    folder.cleanup()


if __name__ == "__main__":
    main()
