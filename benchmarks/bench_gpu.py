"""The GPU levers, each alone: patch matmul, weight copy, torch.compile.

Inference: the encoder (``forward_features`` + ``pool``, random weights) on
one batch under autocast, as ``transform`` runs it, with each lever on alone
and all together, against the baseline (the patch embedding as a strided
convolution, autocast casting the float32 weights on every call, eager
blocks):

* ``patch matmul``: :class:`skast._patches.PatchProjection` as skast runs it,
  the patches gathered into one matrix product (the baseline runs torch's
  convolution, ``nn.Conv2d.forward``, in its place);
* ``weight copy``: :func:`skast._inference.low_precision_weights`, the
  weights cast once and kept (what :func:`skast._runtime.evaluate` does);
* ``torch.compile``: :func:`skast._fusion.compile_blocks`, the blocks
  compiled (``torch_compile=True``); the first call, which compiles them, is
  timed on its own and printed above the table.

Each row: milliseconds per batch (median, alternating the rows), the
encoder's TFLOP/s (``AST.flops_per_clip``) and its fraction of the dense
matrix-product rate of the same precision measured in the same run
(``_common.matmul_tflops``).

Fine-tuning: seconds per training step of ``ASTClassifier`` (baseline patch
convolution; as skast runs; with ``torch_compile=True``) against the plain
transformers loop, the two sides of ``bench_finetune.py`` (same checkpoint,
optimizer, loss and precision; the compiled fit is warmed up first).

On CUDA the default is the issue's setting: batch 64 at 1024 frames in
bfloat16, fine-tuning at batch 48. On the CPU the same rows run in float32
and bfloat16; ``--smoke`` shrinks everything (a 1-block model, 64 frames,
batch 2, dynamo's ``aot_eager`` backend) to check that the script runs.

Usage::

    python benchmarks/bench_gpu.py --device cuda [--batch-size 64]
        [--frames 1024] [--train-batch-size 48] [--precision bfloat16]
        [--repeats 5] [--layers 12] [--compile-backend inductor]
        [--no-finetune] [--smoke] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    alternate,
    environment,
    markdown_table,
    matmul_tflops,
    random_hf_checkpoint,
    timed,
    write_json,
)

SMOKE = dict(
    hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128
)


@contextlib.contextmanager
def patch_embedding(kind: str):
    """``"conv"``: the patch projection runs torch's convolution (what skast
    ran before) for the block; ``"matmul"``: as skast runs it."""
    from torch import nn

    from skast._patches import PatchProjection

    matmul = PatchProjection.forward
    if kind == "conv":
        PatchProjection.forward = nn.Conv2d.forward
    try:
        yield
    finally:
        PatchProjection.forward = matmul


LEVERS = {  # row -> (patch embedding, weight copy, compiled blocks)
    "baseline (conv, per-call casts, eager)": ("conv", False, False),
    "patch matmul": ("matmul", False, False),
    "weight copy": ("conv", True, False),
    "torch.compile": ("conv", False, True),
    "all three": ("matmul", True, True),
}


def encoder_rows(args, device, precision, config_fields, compile_options) -> dict:
    """The lever rows of the encoder at one precision."""
    from skast._fusion import compile_blocks
    from skast._inference import low_precision_weights
    from skast._model import AST, ASTConfig
    from skast._runtime import autocast, resolve_autocast

    dtype = resolve_autocast(precision, device)
    torch.manual_seed(0)
    config = ASTConfig(max_length=args.frames, **config_fields)
    eager = AST(config).to(device).eval()
    compiled = AST(config).to(device).eval()
    compiled.load_state_dict(eager.state_dict())
    compiles = compile_blocks(compiled, compile_options, device)
    x = torch.randn(args.batch_size, args.frames, config.num_mel_bins, device=device)

    def runner(patch, copy, fused):
        model = compiled if fused else eager

        def run():
            weights = low_precision_weights(model, dtype) if copy else None
            with (
                patch_embedding(patch),
                torch.inference_mode(),
                autocast(device, dtype),
                weights or contextlib.nullcontext(),
            ):
                model.pool(model.forward_features(x))

        return run

    levers = {name: lever for name, lever in LEVERS.items() if compiles or not lever[2]}
    if dtype is None:  # float32: no casts, no copy
        levers = {name: lever for name, lever in levers.items() if not lever[1]}
    fns = {name: runner(*lever) for name, lever in levers.items()}
    # the first call of the compiled blocks compiles them (for this batch size)
    first_call = timed(fns["torch.compile"], device) if compiles else None
    seconds = alternate(fns, args.repeats, device)
    rate = matmul_tflops(device, dtype or torch.float32, args.matmul_size)
    flops = eager.flops_per_clip() * args.batch_size
    base = seconds[next(iter(LEVERS))]
    return {
        "matmul_tflops": rate,
        "compiled": compiles,
        "first_compiled_call_seconds": first_call,
        "rows": {
            name: {
                "ms": 1e3 * s,
                "tflops": flops / s / 1e12,
                "fraction": flops / s / 1e12 / rate,
                "speedup": base / s,
            }
            for name, s in seconds.items()
        },
    }


def finetune_rows(args, device, precision, config_fields, compile_options) -> dict:
    """Seconds per step: the transformers loop, skast three ways."""
    from bench_finetune import N_CLASSES, SkastSide, TransformersSide, make_data

    bs = args.train_batch_size
    ckpt = random_hf_checkpoint(
        max_length=args.frames, num_labels=N_CLASSES, **config_fields
    )
    try:
        X, y = make_data(args.train_clips or 2 * bs, args.frames)
        hf = TransformersSide(ckpt, X, y, device, precision, args.frames)
        skast = SkastSide(ckpt, X, y, device, precision)
        sides = {
            "transformers": (hf, {}, "matmul"),
            "skast, patch convolution": (skast, {}, "conv"),
            "skast": (skast, {}, "matmul"),
            "skast, torch_compile": (
                skast,
                {"torch_compile": compile_options},
                "matmul",
            ),
        }
        steps = {name: [] for name in sides}
        for rnd in range(args.repeats + 1):  # round 0: warm-up (and compiling)
            for name, (side, params, patch) in sides.items():
                side.params = params
                with patch_embedding(patch):
                    result = side.epoch(bs)
                if rnd:
                    steps[name] += result["steps"]
    finally:
        shutil.rmtree(ckpt, ignore_errors=True)
    base = statistics.median(steps["transformers"])
    return {
        name: {
            "step_seconds": statistics.median(s),
            "speedup": base / statistics.median(s),
        }
        for name, s in steps.items()
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--train-batch-size", type=int, default=None)
    parser.add_argument("--train-clips", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=None)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", default=None)
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    fields = dict(num_hidden_layers=args.layers)
    if args.smoke:
        fields = dict(SMOKE)
        args.repeats, args.matmul_size = 1, args.matmul_size or 256
        if args.compile_backend == "inductor":
            args.compile_backend = "aot_eager"
    args.precision = args.precision or (
        ["bfloat16"] if cuda else ["float32", "bfloat16"]
    )
    args.frames = args.frames or (64 if args.smoke else 1024 if cuda else 512)
    args.batch_size = args.batch_size or (2 if args.smoke else 64 if cuda else 4)
    args.train_batch_size = args.train_batch_size or (
        2 if args.smoke else 48 if cuda else 4
    )
    options = {"backend": args.compile_backend}
    if args.compile_mode:
        options["mode"] = args.compile_mode

    env = environment(device)
    results = {}
    for precision in args.precision:
        enc = encoder_rows(args, device, precision, fields, options)
        results[precision] = {"encoder": enc}
        print(
            f"\n## Encoder levers ({env['device_name']}, {env['threads']} threads, "
            f"{precision}, {fields['num_hidden_layers']}-layer AST at {args.frames} "
            f"frames, batch {args.batch_size}, median of {args.repeats}; matrix "
            f"product {enc['matmul_tflops']:.2f} TFLOP/s)\n"
        )
        if not enc["compiled"]:
            print("torch.compile does not run here: its rows are left out\n")
        else:
            print(
                f"first call of the compiled blocks (compiling them): "
                f"{enc['first_compiled_call_seconds']:.1f} s\n"
            )
        rows = [
            [
                name,
                f"{r['ms']:.1f}",
                f"{r['tflops']:.3g}",
                f"{100 * r['fraction']:.1f}%",
                f"{r['speedup']:.2f}x",
            ]
            for name, r in enc["rows"].items()
        ]
        header = ["levers", "ms / batch", "TFLOP/s", "of matmul rate", "speed-up"]
        print(markdown_table(header, rows))
        if args.no_finetune:
            continue
        ft = finetune_rows(args, device, precision, fields, options)
        results[precision]["finetune"] = ft
        print(
            f"\n## Fine-tuning step ({precision}, batch {args.train_batch_size}, "
            f"{args.frames} frames, median of {args.repeats} epochs' steps)\n"
        )
        rows = [
            [name, f"{r['step_seconds']:.4f}", f"{r['speedup']:.2f}x"]
            for name, r in ft.items()
        ]
        print(markdown_table(["side", "s / step", "vs transformers"], rows))
    write_json(args.json, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
