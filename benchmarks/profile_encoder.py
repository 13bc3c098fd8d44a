"""Where the CPU encoder's time goes: a torch.profiler table by op.

Runs ``forward_features`` + ``pool`` of the base AST (random weights) at
``--frames`` under ``torch.profiler`` and groups the ops: the Linear layers'
GEMMs (``addmm``), the bias broadcast inside them (the ``copy_`` that
``addmm`` makes to initialise its output: a first write of a fresh buffer),
attention (SDPA), GELU, LayerNorm, residual adds, the patch embedding. Each
group's share of the time is set against its share of the FLOPs, which is
what bounds the encoder's fraction of the matmul throughput:
``fraction = (FLOPs / GEMM FLOPs) * (GEMM time share) * (GEMM efficiency)``.

``--malloc`` also times the forward with glibc's default allocation of large
blocks (fresh ``mmap`` pages per tensor, zeroed by the kernel on first touch)
against a heap that keeps and reuses them (``mallopt``: mmap threshold 1 GiB,
no trimming), alternating in one process (Linux/glibc only).

Usage::

    python benchmarks/profile_encoder.py [--frames 1024] [--batch-size 2]
        [--repeats 3] [--malloc] [--json out.json]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import alternate, environment, markdown_table, write_json  # noqa: E402

GROUPS = {
    "aten::addmm": "Linear GEMMs (addmm, without its copy)",
    "aten::copy_": "bias broadcast into addmm's output (copy_)",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "attention (SDPA)",
    "aten::gelu": "GELU",
    "aten::native_layer_norm": "LayerNorm",
    "aten::add": "residual adds",
    "aten::mkldnn_convolution": "patch embedding (conv)",
}

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def flops(config) -> dict:
    """Forward FLOPs per clip of the Linear layers and of attention."""
    n, d, i = config.num_patches + 2, config.hidden_size, config.intermediate_size
    layers = config.num_hidden_layers
    return {
        "linear": layers * 2 * n * (4 * d * d + 2 * d * i),
        "attention": layers * 4 * n * n * d,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--malloc", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from torch.profiler import ProfilerActivity, profile

    from skast._model import AST, ASTConfig

    device = torch.device("cpu")
    torch.manual_seed(0)
    model = AST(ASTConfig(max_length=args.frames)).eval()
    x = torch.randn(args.batch_size, args.frames, 128)

    def encode():
        with torch.inference_mode():
            model.pool(model.forward_features(x))

    encode()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        encode()
    self_us = {}
    for evt in prof.key_averages():
        self_us[evt.key] = self_us.get(evt.key, 0) + evt.self_cpu_time_total
    total = sum(self_us.values())
    f = flops(model.config)
    f_total = model.flops_per_clip()
    share_of_flops = {
        "aten::addmm": f["linear"] / f_total,
        "aten::_scaled_dot_product_flash_attention_for_cpu": f["attention"] / f_total,
    }
    rows, groups = [], {}
    for key, name in GROUPS.items():
        t = self_us.get(key, 0) / total
        groups[name] = {"time_share": t, "flop_share": share_of_flops.get(key, 0.0)}
        fs = share_of_flops.get(key)
        rows.append(
            [name, f"{100 * t:.1f}%", "-" if fs is None else f"{100 * fs:.1f}%"]
        )
    other = 1 - sum(g["time_share"] for g in groups.values())
    rows.append(["everything else", f"{100 * other:.1f}%", "-"])
    env = environment(device)
    print(
        f"\n## Encoder profile ({env['device_name']}, {env['threads']} threads, "
        f"base AST at {args.frames} frames, batch {args.batch_size}, "
        f"{model.config.num_patches + 2} tokens)\n"
    )
    print(markdown_table(["ops", "share of time", "share of FLOPs"], rows))
    print("\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    results = {"groups": groups, "seconds_profiled": total / 1e6}

    if args.malloc:
        libc = ctypes.CDLL("libc.so.6")

        def default_heap():
            libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
            libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
            libc.malloc_trim(0)
            encode()

        def reuse_heap():
            libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
            libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)
            encode()

        med = alternate(
            {"mmap": default_heap, "heap": reuse_heap}, args.repeats, device
        )
        results["malloc"] = {
            "seconds_mmap": med["mmap"],
            "seconds_heap": med["heap"],
            "speedup": med["mmap"] / med["heap"],
        }
        print(
            f"\nglibc large blocks by mmap: {med['mmap']:.2f} s; kept in the heap: "
            f"{med['heap']:.2f} s ({med['mmap'] / med['heap']:.2f}x)"
        )
    write_json(args.json, {"environment": env, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
