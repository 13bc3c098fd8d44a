"""What ``snapshot_dir`` costs per epoch: the size of a snapshot, the seconds
to write one and to read it back, and the seconds of the fit's fingerprint.

The snapshot is that of the base AST (or ``--layers`` blocks) after one Adam
step (so Adam's two moments are there), with weight averaging's running sum
(``--average``) or none; it is written by the code a fit runs at the end of
an epoch (:meth:`skast._snapshots.SnapshotDir.write`: ``torch.save``, fsync,
sha256, rename) and read by the code a resuming fit runs
(:meth:`~skast._snapshots.SnapshotDir.latest`: the sha256 check and
``torch.load(weights_only=True)``). The fingerprint is timed for
``--paths`` file paths (names only: no file is read) and for ``--arrays``
ten-second float32 waveforms (their bytes are hashed).

Usage::

    python benchmarks/bench_snapshots.py [--layers 12] [--average]
        [--paths 100000] [--arrays 1000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from skast import ASTClassifier
from skast._audio import check_audio_input
from skast._model import AST, ASTConfig
from skast._snapshots import SnapshotDir, fingerprint
from skast._stopping import WeightAverage
from skast._training import Trainer, TrainingConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--average", action="store_true")
    ap.add_argument("--paths", type=int, default=100_000)
    ap.add_argument("--arrays", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    labels = {i: f"LABEL_{i}" for i in range(527)}
    model = AST(ASTConfig(num_hidden_layers=args.layers, id2label=labels))
    clf = ASTClassifier()
    params = {**clf.get_params(deep=False), **clf._resolve_recipe()}
    config = TrainingConfig.from_params(
        params,
        multilabel=True,
        normalization=(-4.27, 4.57),
        device=torch.device("cpu"),
        autocast_dtype=None,
        seed=0,
    )
    trainer = Trainer(model, list(model.parameters()), config)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    trainer.optimizer.step()
    average = None
    if args.average:
        average = WeightAverage(1, 5)
        average.update(1, model)
    n_params = sum(p.numel() for p in model.parameters())

    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        audio = check_audio_input(
            [f"/data/audioset/{i:07d}.flac" for i in range(args.paths)]
        )
        targets = torch.zeros(args.paths, dtype=torch.long)
        t = time.perf_counter()
        key = fingerprint(params, np.arange(2), audio, targets)
        rows.append((f"fingerprint, {args.paths} paths", time.perf_counter() - t, ""))
        rng = np.random.default_rng(0)
        clips = [
            rng.standard_normal(160_000, dtype=np.float32) for _ in range(args.arrays)
        ]
        t = time.perf_counter()
        fingerprint(
            params, np.arange(2), check_audio_input(clips), targets[: args.arrays]
        )
        mb = args.arrays * 160_000 * 4 / 2**20
        rows.append(
            (
                f"fingerprint, {args.arrays} arrays of 10 s",
                time.perf_counter() - t,
                f"{mb:.0f} MB",
            )
        )
        snapshots = SnapshotDir(d, key).bind(model, 0, config.normalization)
        writes, reads, size = [], [], 0
        for epoch in range(1, args.repeats + 1):
            t = time.perf_counter()
            snapshots.write(epoch, trainer, None, average, [], False)
            writes.append(time.perf_counter() - t)
            t = time.perf_counter()
            snap = SnapshotDir(d, key).latest()
            reads.append(time.perf_counter() - t)
            size = (snap.folder / "state.pt").stat().st_size
        gb = f"{size / 2**30:.2f} GiB"
        rows.append(("write a snapshot (median)", float(np.median(writes)), gb))
        rows.append(("read and check it (median)", float(np.median(reads)), gb))

    print(f"AST with {args.layers} blocks: {n_params / 1e6:.1f} M parameters")
    print(f"{'':42s} {'seconds':>8s}  size")
    for what, seconds, note in rows:
        print(f"{what:42s} {seconds:8.3f}  {note}")


if __name__ == "__main__":
    main()
