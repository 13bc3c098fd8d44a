"""``bench_finetune.py --ranks N``: data-parallel fine-tuning throughput.

The same ``ASTClassifier.fit`` (random-weight AST of ``--layers`` blocks at
``--frames`` frames, ``--clips`` clips, global batch ``--batch-sizes[0]``,
SpecAugment and mixup off) under ``torchrun --standalone`` on 1 and on N
ranks: gloo on the CPU, one GPU per rank with NCCL (``--device cuda``). Each
configuration is a fresh torchrun job of ``--repeats + 1`` epochs; the first
epoch (warm-up) is left out and the clips per second are ``--clips`` over
the median of the other epochs' ``history_[i]["seconds"]`` (the slowest
rank's; the whole training loop: decoding, features, forward, backward, the
all-reduce and the optimizer step). Peak memory per rank: the process's peak
resident set size (VmHWM, imports and model included) on the CPU,
``torch.cuda.max_memory_allocated`` on a GPU; the largest over the ranks.

On the CPU each rank runs ``--threads`` intra-op threads (torchrun's default
is 1); the 1-rank job is also run with N threads, the same cores used by
threads instead of ranks.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent


def rank_child(args, make_data, lr, peak_rss_mib) -> None:
    """One rank of a torchrun job: fit, then write this rank's figures."""
    from skast import ASTClassifier

    torch.set_num_threads(args.threads)
    device = args.device
    X, y = make_data(args.clips, args.frames)
    clf = ASTClassifier(
        args.checkpoint,
        learning_rate=lr,
        max_epochs=args.repeats + 1,
        batch_size=args.batch_sizes[0],
        device=device,
        precision=args.precision,
        random_state=0,
    ).fit(X, y)
    if torch.device(device).type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = peak_rss_mib()
    rank = int(os.environ.get("RANK", "0"))
    seconds = [h["seconds"] for h in clf.history_[1:]]
    out = {"rank": rank, "seconds": seconds, "peak_mib": peak}
    Path(args.rank_child, f"{rank}.json").write_text(json.dumps(out))


def run_ranks(args, ckpt, write_json, markdown_table, environment) -> None:
    """The 1-rank and N-rank jobs; print the table."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and torch.cuda.device_count() < args.ranks:
        raise SystemExit(f"--ranks {args.ranks} needs as many GPUs")
    jobs = [(1, args.threads), (args.ranks, args.threads)]
    if not cuda and args.threads * args.ranks > args.threads:
        jobs.insert(1, (1, args.threads * args.ranks))
    results, rows = [], []
    for ranks, threads in jobs:
        figures = _job(args, ckpt, ranks, threads)
        epoch = statistics.median(max(s) for s in zip(*[f["seconds"] for f in figures]))
        rate = args.clips / epoch
        results.append(
            {
                "ranks": ranks,
                "threads_per_rank": threads,
                "epoch_seconds": epoch,
                "clips_per_second": rate,
                "peak_mib_per_rank": max(f["peak_mib"] for f in figures),
            }
        )
    base = results[0]["clips_per_second"]
    for r in results:
        r["scaling"] = r["clips_per_second"] / base
        rows.append(
            [
                str(r["ranks"]),
                "-" if cuda else str(r["threads_per_rank"]),
                f"{r['epoch_seconds']:.2f}",
                f"{r['clips_per_second']:.1f}",
                f"{r['scaling']:.2f}x",
                f"{r['peak_mib_per_rank']:.0f}",
            ]
        )
    env = environment(device)
    backend = "NCCL, one GPU per rank" if cuda else "gloo"
    print(
        f"\n## Data-parallel fine-tuning ({env['device_name']}, {backend}, "
        f"{os.cpu_count()} cores, {args.layers}-layer AST at {args.frames} frames, "
        f"global batch {args.batch_sizes[0]}, epoch = {args.clips} clips, "
        f"median of {args.repeats} epochs after one warm-up)\n"
    )
    memory = "max_memory_allocated" if cuda else "peak RSS (VmHWM)"
    print(
        markdown_table(
            [
                "ranks",
                "threads / rank",
                "s / epoch",
                "clips / s",
                "scaling",
                f"peak MiB per rank ({memory})",
            ],
            rows,
        )
    )
    write_json(args.json, {"environment": env, "args": vars(args), "ranks": results})


def _job(args, ckpt, ranks: int, threads: int) -> list[dict]:
    """One torchrun job of ``ranks`` ranks; each rank's figures."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(ranks), str(HERE / "bench_finetune.py")]
        cmd += ["--rank-child", out, "--checkpoint", str(ckpt)]
        cmd += ["--threads", str(threads), "--device", args.device]
        cmd += ["--frames", str(args.frames), "--clips", str(args.clips)]
        cmd += ["--batch-sizes", str(args.batch_sizes[0])]
        cmd += ["--repeats", str(args.repeats), "--precision", args.precision]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env)
        return [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]
