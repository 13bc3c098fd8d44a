"""The ``skast`` command: ``demo``, ``embed``, ``tag``, ``finetune``, ``predict``
and ``export``.

Exit codes: 0 success, 1 a runtime failure (a model or file that cannot be
read, ...), 2 a usage error (bad arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from skast._commands import (
    _EMBED_MODEL,
    _TAG_MODEL,
    UsageError,
    cmd_demo,
    cmd_embed,
    cmd_export,
    cmd_finetune,
    cmd_predict,
    cmd_tag,
)
from skast._recipes import CHECKPOINT, EMBED_PART_SIZE, POOLINGS, RECIPES

# ---------------------------------------------------------------------- parser


def device_spec(text: str) -> str | list[str]:
    """``--device``'s value: one device, or a list of them separated by commas.

    Examples
    --------
    >>> from skast.cli import device_spec
    >>> device_spec("cuda:1"), device_spec("cuda:0, cuda:1")
    ('cuda:1', ['cuda:0', 'cuda:1'])
    """
    if "," not in text:
        return text
    devices = [part.strip() for part in text.split(",")]
    if not all(devices):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a list of devices names one device between each comma"
        )
    return devices


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="skast",
        description="scikit-learn estimators on the Audio Spectrogram Transformer.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def device_args(p):
        p.add_argument(
            "--device",
            type=device_spec,
            default=None,
            help="cpu, cuda, cuda:1 ..., or a comma-separated list such as "
            "cuda:0,cuda:1 (one model per device) (default: CUDA when available)",
        )
        p.add_argument(
            "--num-workers", type=int, default=0, help="processes decoding audio files"
        )
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser(
        "demo",
        help="the main job end to end on the built-in sound set (CPU, small model)",
        description="Cross-validate Pipeline(ASTFeaturizer, LogisticRegression) and "
        "fine-tune an ASTClassifier on the built-in synthetic sound set, with a "
        "small randomly initialised model, then print a results table.",
    )
    p.add_argument(
        "--n-per-class", type=int, default=30, help="clips per class (default 30)"
    )
    p.add_argument(
        "--epochs", type=int, default=20, help="fine-tuning epochs (default 20)"
    )
    p.add_argument("--device", default="cpu", help="device (default cpu)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "embed", help="embed audio files", description="Embed audio files with an AST."
    )
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS")
    p.add_argument(
        "-o", "--output", required=True, help="OUT.npy, OUT.csv or OUT.parquet"
    )
    p.add_argument(
        "--checkpoint",
        default=_EMBED_MODEL["checkpoint"],
        help="hub id, Hugging Face directory or original .pth",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="input frames (default: the checkpoint's)",
    )
    p.add_argument("--pooling", default=_EMBED_MODEL["pooling"], choices=POOLINGS)
    p.add_argument(
        "--layer", type=int, default=None, help="hidden state to pool (default: last)"
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="a fitted featurizer saved with ASTFeaturizer.save (read without "
        "running code), instead of --checkpoint and its settings",
    )
    p.add_argument(
        "--window-hop",
        type=float,
        default=None,
        metavar="S",
        help="cut files longer than one window into windows starting every S "
        "seconds; a file's embedding is the mean of its windows' (default: "
        "keep each file's first window)",
    )
    p.add_argument(
        "--per-window",
        action="store_true",
        help="with --window-hop and a .csv/.parquet -o: one row per window, "
        "with its start in seconds",
    )
    p.add_argument("--batch-size", type=int, default=16)
    job = p.add_argument_group(
        "corpus jobs",
        "The files are embedded in parts written to OUT.parts/ as they are "
        "done; the same command after a kill resumes from them, and joins them "
        "into OUT at the end.",
    )
    job.add_argument(
        "--part-size",
        type=int,
        default=EMBED_PART_SIZE,
        metavar="N",
        help=f"files per part (default {EMBED_PART_SIZE})",
    )
    job.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="embed only shard I of N (the parts k with k %% N == I) and join "
        "nothing (default: torchrun's RANK/WORLD_SIZE when set, else all)",
    )
    job.add_argument(
        "--merge",
        action="store_true",
        help="join the parts the shards wrote into OUT, loading no model",
    )
    job.add_argument(
        "--restart",
        action="store_true",
        help="discard the parts in OUT.parts (another job's) and start over",
    )
    device_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "tag",
        help="tag audio files with a published head",
        description="Print (or write) the top labels of audio files and their "
        "scores, from a checkpoint's own classification head "
        "(ASTClassifier.from_pretrained): a sigmoid per label for a "
        "multi-label head such as AudioSet's, else a softmax.",
    )
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS")
    p.add_argument(
        "--checkpoint",
        default=_TAG_MODEL["checkpoint"],
        help="hub id, Hugging Face directory or original .pth, with its head "
        f"(default {CHECKPOINT})",
    )
    p.add_argument("--top-k", type=int, default=5, help="labels per file (default 5)")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="OUT.csv (file, rank, label, score) or OUT.json (default: print)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="input frames (default: the checkpoint's)",
    )
    p.add_argument(
        "--window-hop",
        type=float,
        default=None,
        metavar="S",
        help="tag files longer than one window by windows every S seconds: a "
        "file's scores aggregate its windows', and each window's tags follow "
        "(default: a file's first window only)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="DIR",
        help="a fitted classifier saved with ASTClassifier.save (read without "
        "running code; skast finetune -o DIR writes one), instead of --checkpoint",
    )
    p.add_argument("--batch-size", type=int, default=16)
    device_args(p)
    p.set_defaults(func=cmd_tag)

    p = sub.add_parser(
        "finetune",
        help="fine-tune on a folder of class folders",
        description="Fine-tune an ASTClassifier on ROOT/<class>/<audio files> and "
        "save it: as a directory that loads without running code (skast.load), "
        "or with joblib when OUTPUT ends in .joblib.",
    )
    p.add_argument("root", metavar="ROOT")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="where to save the fitted model: a directory (the format to share), "
        "or FILE.joblib (a pickle)",
    )
    p.add_argument("--checkpoint", default=CHECKPOINT)
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--random-state", type=int, default=0)
    p.add_argument(
        "--snapshot-dir",
        default=None,
        metavar="DIR",
        help="write a resumable snapshot to DIR after each epoch; the same "
        "command with the same DIR goes on after the last complete epoch (also "
        "under torchrun --max-restarts)",
    )
    device_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser(
        "predict",
        help="predict with a saved model",
        description="Predict audio files with a model saved by 'skast finetune': a "
        "directory written by save(), read without running code, or a .joblib "
        "file, which is unpickled (load only joblib files you trust).",
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a directory written by 'skast finetune -o DIR' or save(), or a .joblib file",
    )
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_DIRS")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="OUT.csv, OUT.npy or OUT.parquet of probabilities (default: print labels)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        help="write a saved model as ONNX, to run without skast",
        description="Write a fitted model (a directory written by save(), read "
        "without running code, or a .joblib file, which is unpickled) as "
        "DIR/model.onnx, run by ONNX Runtime without skast, and DIR/model.json, "
        "which names its input and output and says how to compute the input "
        'features (needs the onnx extra: pip install "skast[onnx]").',
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="a directory written by save() or 'skast finetune -o DIR', or a "
        ".joblib file",
    )
    p.add_argument("directory", metavar="DIR", help="where to write the files")
    p.add_argument(
        "--onnx", action="store_true", help="write ONNX (the one format for now)"
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="with --onnx: int8 weights (onnxruntime's dynamic quantisation)",
    )
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``skast`` command line; returns the exit code.

    Examples
    --------
    >>> from skast.cli import main
    >>> main(["embed", "missing.wav", "-o", "x.npy"])  # the error goes to stderr
    2
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as err:
        print(f"skast: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("skast: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"skast: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
