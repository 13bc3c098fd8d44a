"""Helpers the benchmark scripts share: environment record, timing, tables."""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def environment(device: torch.device) -> dict:
    """What the numbers were measured on."""
    import sklearn

    import skast

    env = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scikit-learn": sklearn.__version__,
        "skast": skast.__version__,
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (device work included)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def alternate(fns: dict, repeats: int, device: torch.device) -> dict:
    """Run each function once per round, alternating, ``repeats`` rounds after a
    warm-up round; the median seconds of each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {name: statistics.median(t) for name, t in times.items()}


def matmul_tflops(
    device: torch.device, dtype=torch.float32, n: int | None = None
) -> float:
    """Measured dense matmul throughput (TFLOP/s) of ``dtype`` on ``device``
    (``n``: the square size; default 2048 on the CPU, 8192 on a GPU)."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    reps = 20 if device.type == "cuda" else 5

    def run():
        for _ in range(reps):
            a @ b

    seconds = alternate({"mm": run}, 3, device)["mm"]
    return 2 * n**3 * reps / seconds / 1e12


def random_hf_checkpoint(
    max_length: int = 1024, num_labels: int = 527, **config
) -> Path:
    """A full-size AST with random weights, saved by transformers (``config``:
    other ``ASTConfig`` fields, e.g. ``num_hidden_layers`` for a smaller one)."""
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)
    model = ASTForAudioClassification(
        ASTConfig(max_length=max_length, num_labels=num_labels, **config)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    path = Path(tempfile.mkdtemp(prefix="skast-bench-"))
    model.save_pretrained(path)
    return path


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {path}")
