"""Fine-tuning speed and memory: ASTClassifier against a plain transformers loop.

Both sides train the same random-weight AST (the base size unless
``--layers`` says otherwise; saved once by transformers) on the same clips:
skast with ``ASTClassifier(checkpoint).fit`` (one epoch per fit; SpecAugment
and mixup off, its defaults), transformers with ``ASTForAudioClassification``
(SDPA attention) on ``ASTFeatureExtractor`` features and a ``torch.optim.Adam``
loop. Same optimizer settings (Adam, lr 1e-5, betas (0.95, 0.999), weight
decay 5e-7, a fresh optimizer each epoch; skast's is torch's fused
implementation on CUDA, the loop's torch's default), cross-entropy loss, same precision
(``--precision``, autocast as skast resolves it), batch order shuffled.

* seconds per training step: forward, loss, backward and ``optimizer.step``.
  skast's are timed by wrapping ``skast._training.Trainer.step`` (the
  classifier's training step), so that ``fit``'s set-up (loading the
  checkpoint, computing the features) is not counted;
* seconds per epoch: one pass over ``--clips`` clips; skast's is the epoch's
  ``history_[i]["seconds"]`` (the training loop only), transformers' the loop
  with its batch indexing and transfers;
* peak memory: each side runs one training step in a fresh subprocess. On
  the CPU, the rise of the peak resident set size over the resident size
  (1) from after the imports and the data (so loading the model counts) and
  (2) from just before the first step (gradients, Adam's state,
  activations); read from Linux's ``VmHWM``, reset at each mark (a
  subprocess's ``ru_maxrss`` keeps its parent's peak). On CUDA,
  ``torch.cuda.max_memory_allocated`` from the same two marks.

``--ranks N`` measures data-parallel training instead: clips per second on 1
and on N ranks under torchrun (gloo on the CPU, NCCL on GPUs), the scaling,
and the peak memory per rank (benchmarks/_finetune_ranks.py).

In one process, alternating, several repeats; medians. The default input is
128 frames (the Speech Commands length) so that batch 48 of the base model
trains in seconds per step on a few CPU cores; ``--frames 1024`` is the
AudioSet input (use it on a GPU).

Usage::

    python benchmarks/bench_finetune.py [--frames 128] [--clips 48]
        [--batch-sizes 8 16 48] [--repeats 2] [--layers 12] [--device cpu]
        [--precision auto] [--no-memory] [--json out.json]
    python benchmarks/bench_finetune.py --ranks 2 [--threads 1] [--layers 2]
        [--frames 128] [--clips 48] [--batch-sizes 16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _finetune_ranks  # noqa: E402
from _common import (  # noqa: E402
    environment,
    markdown_table,
    random_hf_checkpoint,
    sync,
    write_json,
)

N_CLASSES = 4
LR, BETAS, WEIGHT_DECAY = 1e-5, (0.95, 0.999), 5e-7


def make_data(n_clips: int, frames: int):
    """Random waveforms of ``frames`` 10 ms frames and balanced labels."""
    rng = np.random.default_rng(0)
    n_samples = int(frames / 100 * 16000)
    X = [
        (0.1 * rng.standard_normal(n_samples)).astype(np.float32)
        for _ in range(n_clips)
    ]
    y = np.arange(n_clips) % N_CLASSES
    return X, y


class SkastSide:
    """ASTClassifier, one epoch per ``fit``; its steps timed through a wrapper
    of ``Trainer.step``."""

    def __init__(self, ckpt, X, y, device, precision):
        from skast import _training

        self.ckpt, self.X, self.y = ckpt, X, y
        self.device, self.precision = device, precision
        self.params: dict = {}  # more ASTClassifier parameters (bench_gpu.py)
        self.step_seconds: list[float] = []
        self.before_training = None  # called once, before the first step
        original = _training.Trainer.step

        def timed_step(trainer, x, t, *args):
            if self.before_training is not None:
                self.before_training()
                self.before_training = None
            sync(device)
            t0 = time.perf_counter()
            loss = original(trainer, x, t, *args)
            sync(device)
            self.step_seconds.append(time.perf_counter() - t0)
            return loss

        _training.Trainer.step = timed_step

    def epoch(self, batch_size: int, n_clips: int | None = None, **params) -> dict:
        """One epoch's fit (``params``: more ``ASTClassifier`` parameters)."""
        from skast import ASTClassifier

        n = n_clips or len(self.X)
        self.step_seconds = []
        clf = ASTClassifier(
            str(self.ckpt),
            learning_rate=LR,
            betas=BETAS,
            weight_decay=WEIGHT_DECAY,
            max_epochs=1,
            batch_size=batch_size,
            device=str(self.device),
            precision=self.precision,
            random_state=0,
            **{**self.params, **params},
        ).fit(self.X[:n], self.y[:n])
        return {"epoch": clf.history_[0]["seconds"], "steps": self.step_seconds}


class TransformersSide:
    """ASTForAudioClassification on ASTFeatureExtractor features, Adam loop."""

    def __init__(self, ckpt, X, y, device, precision, frames):
        from transformers import ASTFeatureExtractor, ASTForAudioClassification

        from skast._runtime import resolve_autocast

        self.device = device
        self.dtype = resolve_autocast(precision, device)
        fe = ASTFeatureExtractor(max_length=frames)
        self.features = fe(X, sampling_rate=16000, return_tensors="pt")["input_values"]
        self.labels = torch.as_tensor(y, dtype=torch.long)
        self.model = ASTForAudioClassification.from_pretrained(
            ckpt, attn_implementation="sdpa"
        ).to(device)
        self.generator = torch.Generator().manual_seed(0)
        self.before_training = None

    def epoch(self, batch_size: int, n_clips: int | None = None) -> dict:
        device, model = self.device, self.model
        n = n_clips or len(self.features)
        model.train()
        optimizer = torch.optim.Adam(
            model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY
        )
        steps = []
        if self.before_training is not None:
            self.before_training()
            self.before_training = None
        sync(device)
        start = time.perf_counter()
        order = torch.randperm(n, generator=self.generator)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x = self.features[idx].to(device, non_blocking=True)
            t = self.labels[idx].to(device, non_blocking=True)
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast(
                device.type, dtype=self.dtype, enabled=self.dtype is not None
            ):
                logits = model(x).logits
            loss = F.cross_entropy(logits.float(), t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())
            sync(device)
            steps.append(time.perf_counter() - t0)
        sync(device)
        model.eval()
        return {"epoch": time.perf_counter() - start, "steps": steps}


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (MiB), or None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:  # pragma: no cover - not Linux
        pass
    return None


def _rss_mib() -> float:
    """Current resident set size (MiB); on Linux the peak is reset here."""
    try:  # reset VmHWM (Linux >= 4.0) so that the peak is this run's
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover
        pass
    rss = _status_mib("VmRSS")
    return rss if rss is not None else _peak_rss_mib()


def _peak_rss_mib() -> float:
    """Peak resident set size (MiB): this process's VmHWM on Linux (the
    ``ru_maxrss`` of a subprocess keeps its parent's peak across exec)."""
    peak = _status_mib("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # pragma: no cover
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def child(args) -> None:
    """One training step of one side in this fresh process; print its memory."""
    # both sides import the same modules before the first mark
    import transformers  # noqa: F401

    import skast  # noqa: F401

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    X, y = make_data(args.batch_size, args.frames)
    marks = {}

    def mark(name):
        if cuda:
            sync(device)
            marks[name] = torch.cuda.memory_allocated(device) / 2**20
            torch.cuda.reset_peak_memory_stats(device)
        else:
            marks[name] = _rss_mib()

    mark("start")
    cls = SkastSide if args.child == "skast" else TransformersSide
    extra = (args.frames,) if args.child == "transformers" else ()
    side = cls(args.checkpoint, X, y, device, args.precision, *extra)
    peaks = {}

    def before_training():
        peaks["setup"] = (
            torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mib()
        )
        mark("training")

    side.before_training = before_training
    side.epoch(args.batch_size)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else _peak_rss_mib()
    out = {
        "kind": "cuda_allocated" if cuda else "rss",
        "start_mib": marks["start"],
        "before_training_mib": marks["training"],
        "peak_setup_mib": peaks["setup"],
        "peak_training_mib": peak,
        "rise_total_mib": max(peak, peaks["setup"]) - marks["start"],
        "rise_training_mib": peak - marks["training"],
    }
    print(json.dumps(out))


def measure_memory(args, ckpt, side: str, batch_size: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--checkpoint",
        str(ckpt),
        "--batch-size",
        str(batch_size),
        "--frames",
        str(args.frames),
        "--device",
        args.device,
        "--precision",
        args.precision,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=128)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 48])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--layers", type=int, default=12, help="transformer blocks (12: base AST)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--ranks", type=int, default=0, help="data-parallel: 1 and N ranks"
    )
    parser.add_argument("--threads", type=int, default=1, help="per rank (--ranks)")
    parser.add_argument("--rank-child", help=argparse.SUPPRESS)  # internal
    # internal: the memory measurement's subprocess
    parser.add_argument("--child", choices=["skast", "transformers"])
    parser.add_argument("--checkpoint")
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.rank_child:
        return _finetune_ranks.rank_child(args, make_data, LR, _peak_rss_mib)

    ckpt = random_hf_checkpoint(
        max_length=args.frames, num_labels=N_CLASSES, num_hidden_layers=args.layers
    )
    try:
        if args.ranks:
            _finetune_ranks.run_ranks(
                args, ckpt, write_json, markdown_table, environment
            )
        else:
            _run(args, ckpt)
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)


def _run(args, ckpt) -> None:
    device = torch.device(args.device)
    X, y = make_data(args.clips, args.frames)
    sides = {
        "transformers": TransformersSide(
            ckpt, X, y, device, args.precision, args.frames
        ),
        "skast": SkastSide(ckpt, X, y, device, args.precision),
    }
    # warm-up: one step of each (allocator, thread pools, lazy imports)
    smallest = min(args.batch_sizes)
    for side in sides.values():
        side.epoch(smallest, n_clips=smallest)

    results, rows = {}, []
    for bs in args.batch_sizes:
        steps = {name: [] for name in sides}
        epochs = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, side in sides.items():
                r = side.epoch(bs)
                steps[name] += r["steps"]
                epochs[name].append(r["epoch"])
        res = {
            name: {
                "step_seconds": statistics.median(steps[name]),
                "epoch_seconds": statistics.median(epochs[name]),
                "steps_per_epoch": math.ceil(args.clips / bs),
            }
            for name in sides
        }
        if not args.no_memory:
            for name in sides:
                res[name]["memory"] = measure_memory(args, ckpt, name, bs)
        ratio = res["transformers"]["step_seconds"] / res["skast"]["step_seconds"]
        res["step_speedup"] = ratio
        results[f"batch_{bs}"] = res

        def mem(name):
            m = res[name].get("memory")
            if m is None:
                return "-"
            return f"{m['rise_total_mib']:.0f} / {m['rise_training_mib']:.0f}"

        rows.append(
            [
                str(bs),
                f"{res['transformers']['step_seconds']:.2f}",
                f"{res['skast']['step_seconds']:.2f}",
                f"{ratio:.2f}x",
                f"{res['transformers']['epoch_seconds']:.1f}",
                f"{res['skast']['epoch_seconds']:.1f}",
                mem("transformers"),
                mem("skast"),
            ]
        )

    env = environment(device)
    memory_kind = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "rise of the peak RSS (VmHWM)"
    ) + (
        " in a fresh process running one step; 'all' from after the imports "
        "and data (model loading included), 'step' from just before the step"
    )
    print(
        f"\n## Fine-tuning ({env['device_name']}, {env['threads']} threads, "
        f"precision {args.precision}, {args.layers}-layer AST at {args.frames} "
        f"frames, epoch = {args.clips} clips, median of {args.repeats})\n"
    )
    print(
        markdown_table(
            [
                "batch",
                "transformers s/step",
                "skast s/step",
                "skast speed-up",
                "transformers s/epoch",
                "skast s/epoch",
                "transformers peak MiB (all / step)",
                "skast peak MiB (all / step)",
            ],
            rows,
        )
    )
    print(f"\npeak memory: {memory_kind}")
    write_json(args.json, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
