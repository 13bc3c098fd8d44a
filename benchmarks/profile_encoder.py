"""Where the encoder's time goes: a torch.profiler table by op.

Runs ``forward_features`` + ``pool`` of the base AST (random weights) at
``--frames`` under ``torch.profiler`` and groups the ops: the Linear layers'
GEMMs (``addmm``), the bias broadcast inside them (the ``copy_`` that
``addmm`` makes to initialise its output: a first write of a fresh buffer),
attention (SDPA), GELU, LayerNorm, residual adds, the patch embedding. Each
group's share of the time is set against its share of the FLOPs, which is
what bounds the encoder's fraction of the matmul throughput:
``fraction = (FLOPs / GEMM FLOPs) * (GEMM time share) * (GEMM efficiency)``.

On a GPU (``--device cuda``) the groups are timed by the device time of the
kernels each op launched, ``--precision`` runs the encoder under autocast as
the estimators do, and the script also times the same forward with the
weights cast to ``--precision`` (no autocast): the cost of casting the
weights on every call.

``--malloc`` (CPU) also times the forward with glibc's default allocation of large
blocks (fresh ``mmap`` pages per tensor, zeroed by the kernel on first touch)
against a heap that keeps and reuses them (``mallopt``: mmap threshold 1 GiB,
no trimming), alternating in one process (Linux/glibc only).

Usage::

    python benchmarks/profile_encoder.py [--frames 1024] [--batch-size 2]
        [--repeats 3] [--malloc] [--device cpu] [--precision float32]
        [--json out.json]
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
    "aten::copy_": "copies: addmm's bias broadcast; autocast's casts",
    "attention": "attention (SDPA)",
    "aten::gelu": "GELU",
    "aten::native_layer_norm": "LayerNorm",
    "aten::add": "residual adds",
    "convolution": "patch embedding (conv)",
}


def group_of(key: str) -> str | None:
    """The ``GROUPS`` key an op's profiler key belongs to."""
    if (
        key.startswith("aten::_scaled_dot_product")
        or key.startswith("aten::_flash_attention")
        or key.startswith("aten::_efficient_attention")
        or key.startswith("aten::_cudnn_attention")
    ):
        return "attention"
    if key in ("aten::mkldnn_convolution", "aten::cudnn_convolution"):
        return "convolution"
    return key if key in GROUPS else None


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
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", default="float32", choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from skast._model import AST, ASTConfig
    from skast._runtime import autocast, resolve_autocast

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = resolve_autocast(args.precision, device)
    torch.manual_seed(0)
    model = AST(ASTConfig(max_length=args.frames)).to(device).eval()
    x = torch.randn(args.batch_size, args.frames, 128, device=device)

    def encode():
        with torch.inference_mode(), autocast(device, dtype):
            model.pool(model.forward_features(x))

    encode()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        encode()
        if on_gpu:
            torch.cuda.synchronize(device)
    self_us = {}
    for evt in prof.key_averages():
        # on a GPU the kernels are listed too, beside the ops that launched
        # them (whose device time already holds theirs): count the ops only
        if on_gpu and evt.device_type != DeviceType.CPU:
            continue
        group = group_of(evt.key)
        t = evt.self_device_time_total if on_gpu else evt.self_cpu_time_total
        self_us[group or evt.key] = self_us.get(group or evt.key, 0) + t
    total = sum(self_us.values())
    f = flops(model.config)
    f_total = model.flops_per_clip()
    share_of_flops = {
        "aten::addmm": f["linear"] / f_total,
        "attention": f["attention"] / f_total,
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
        f"{args.precision}, base AST at {args.frames} frames, batch "
        f"{args.batch_size}, {model.config.num_patches + 2} tokens)\n"
    )
    print(markdown_table(["ops", "share of time", "share of FLOPs"], rows))
    sort_by = "self_device_time_total" if on_gpu else "self_cpu_time_total"
    print("\n" + prof.key_averages().table(sort_by=sort_by, row_limit=15))
    results = {"groups": groups, "seconds_profiled": total / 1e6}

    if dtype is not None:
        cast = AST(model.config).to(device, dtype).eval()
        cast.load_state_dict(model.state_dict())

        def encode_cast():
            with torch.inference_mode():
                cast.pool(cast.forward_features(x.to(dtype)))

        med = alternate({"autocast": encode, "cast": encode_cast}, args.repeats, device)
        clip_flops = model.flops_per_clip() * args.batch_size
        results["weights"] = {
            "seconds_autocast": med["autocast"],
            "seconds_cast": med["cast"],
            "tflops_autocast": clip_flops / med["autocast"] / 1e12,
            "tflops_cast": clip_flops / med["cast"] / 1e12,
        }
        print(
            f"\nautocast (fp32 weights): {med['autocast'] * 1e3:.1f} ms "
            f"({clip_flops / med['autocast'] / 1e12:.1f} TFLOP/s); weights cast to "
            f"{args.precision}: {med['cast'] * 1e3:.1f} ms "
            f"({clip_flops / med['cast'] / 1e12:.1f} TFLOP/s)"
        )

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
