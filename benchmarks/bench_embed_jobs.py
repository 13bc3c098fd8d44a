"""What the parts of ``skast embed`` cost: the command at several
``--part-size`` against one ``transform`` of the same files and ``np.save``.

Each part is one ``transform`` call (its own decoding workers) and one synced
file, and the join reads them all back; this measures that against the plain
path, on the same audio files, in one process, alternating, medians. The
``parts`` row is the ratio of the command's time to the plain one's.

Usage::

    python benchmarks/bench_embed_jobs.py [--size tiny|base] [--files 512]
        [--seconds 1.0] [--part-sizes 64,256,1024] [--batch-size 32]
        [--num-workers 0] [--repeats 3] [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, environment, markdown_table, write_json  # noqa: E402

from skast import ASTFeaturizer  # noqa: E402
from skast._checkpoints import save_pretrained  # noqa: E402
from skast._model import AST, ASTConfig  # noqa: E402
from skast._recipes import SAMPLE_RATE, TINY  # noqa: E402
from skast.cli import main as skast_main  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--files", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--part-sizes", default="64,256,1024")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="skast-bench-jobs-"))
    torch.manual_seed(0)
    config = dict(TINY, max_length=128) if args.size == "tiny" else {}
    save_pretrained(AST(ASTConfig(**config)), work / "ckpt")
    rng = np.random.default_rng(0)
    (work / "clips").mkdir()
    n = int(args.seconds * SAMPLE_RATE)
    for i in range(args.files):
        clip = (0.1 * rng.standard_normal(n)).astype(np.float32)
        sf.write(work / "clips" / f"{i:06d}.wav", clip, SAMPLE_RATE)
    files = sorted(str(p) for p in (work / "clips").glob("*.wav"))
    common = dict(batch_size=args.batch_size, num_workers=args.num_workers)

    def plain():
        est = ASTFeaturizer(work / "ckpt", device=device, **common).fit(files)
        np.save(work / "plain.npy", est.transform(files))

    def command(part_size):
        argv = [
            "embed", str(work / "clips"), "-o", str(work / "job.npy"),
            "--checkpoint", str(work / "ckpt"), "--device", str(device),
            "--batch-size", str(args.batch_size),
            "--num-workers", str(args.num_workers),
            "--part-size", str(part_size), "-q",
        ]  # fmt: skip
        assert skast_main(argv) == 0

    sizes = [int(s) for s in args.part_sizes.split(",")]
    fns = {"transform + np.save": plain}
    for size in sizes:
        fns[f"skast embed --part-size {size}"] = lambda size=size: command(size)
    with contextlib.redirect_stdout(io.StringIO()):  # the command's "wrote ..."
        seconds = alternate(fns, args.repeats, device)
    base = seconds["transform + np.save"]
    rows = []
    for name, s in seconds.items():
        parts = (
            "-"
            if name.startswith("transform")
            else -(-args.files // int(name.split()[-1]))
        )
        rows.append([name, parts, f"{s:.2f}", f"{args.files / s:.0f}", f"{s / base:.2f}"])  # fmt: skip
    print(f"{args.files} files of {args.seconds:g} s; {args.size} model on {device}; "
          f"batch {args.batch_size}, {args.num_workers} decoding workers\n")  # fmt: skip
    header = ["run", "parts", "seconds", "files per second", "vs transform"]
    print(markdown_table(header, rows))
    write_json(
        args.json,
        {"environment": environment(device), "args": vars(args), "seconds": seconds},
    )


if __name__ == "__main__":
    main()
