"""``skast embed`` as a corpus job: killed and rerun, it writes what one
uninterrupted run writes; shards (``--shard``, torchrun's ``RANK`` /
``WORLD_SIZE``) joined with ``--merge`` equal one process; a rerun with
other files or another model is refused; bad job options are usage errors.

The killed run is a real process (``python -c`` running
:func:`skast.cli.main`, this checkout on ``PYTHONPATH``); the reference runs
and the other runs call :func:`skast.cli.main` in this process, where a global
forward pre-hook counts the items the encoder sees.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

import skast
from skast._checkpoints import save_pretrained
from skast._model import AST, ASTConfig, PatchEmbed
from skast.cli import main
from tests._helpers import clips, write
from tests.conftest import FAST

pq = pytest.importorskip("pyarrow.parquet", exc_type=ImportError)

N_FILES, PART = 24, 2  # 12 parts
ROOT = Path(skast.__file__).resolve().parents[1]
MAIN = "import sys; from skast.cli import main; sys.exit(main())"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """24 clips of 2 s (8 windows each at a hop of 0.2 s) and two tiny
    random-weight checkpoints."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "clips").mkdir()
    for i, clip in enumerate(clips(N_FILES, seed=3, seconds=2.0)):
        write(d / "clips" / f"{i:02d}.wav", clip)
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_pretrained(AST(ASTConfig(**FAST)), d / f"ckpt{seed}")
    return d


def embed_args(corpus, out, *more, ckpt="ckpt0"):
    return [
        "embed",
        str(corpus / "clips"),
        "-o",
        str(out),
        "--checkpoint",
        str(corpus / ckpt),
        "--device",
        "cpu",
        "--part-size",
        str(PART),
        "-q",
        *more,
    ]


def files_of(corpus):
    return sorted(str(p) for p in (corpus / "clips").glob("*.wav"))


def start(argv, **env):
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        **env,
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        if name not in env:
            environ.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-c", MAIN, *argv],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class EncoderItems:
    """Counts the items (clips or windows) through the encoder's patch
    embedding, in this process."""

    def __init__(self):
        self.n = 0

    def __call__(self, module, args):
        if isinstance(module, PatchEmbed):
            self.n += len(args[0])

    def __enter__(self):
        self.handle = register_module_forward_pre_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def parts_in(folder):
    return sorted(folder.glob("part-*.npz")) if folder.is_dir() else []


@pytest.fixture(autouse=True)
def no_torchrun_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_a_killed_run_resumes_to_the_output_of_one_run(corpus, tmp_path):
    more = ["--window-hop", "0.2"]  # 8 windows a file: parts take a while
    ref = tmp_path / "ref.parquet"
    with EncoderItems() as whole:
        assert main(embed_args(corpus, ref, *more)) == 0
    out = tmp_path / "out.parquet"
    folder = out.with_name("out.parquet.parts")
    k = int(np.random.default_rng(17).integers(1, N_FILES // PART // 2))
    proc = start(embed_args(corpus, out, *more))
    deadline = time.monotonic() + 120
    while len(parts_in(folder)) < k:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no parts written"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    written = len(parts_in(folder))
    assert not out.exists() and k <= written < N_FILES // PART
    with EncoderItems() as resumed:  # the same command again
        assert main(embed_args(corpus, out, *more)) == 0
    assert out.read_bytes() == ref.read_bytes()
    assert not folder.exists()
    # only the parts not written before the kill went through the encoder
    missing = N_FILES - PART * written
    assert resumed.n * N_FILES == whole.n * missing
    table = pq.read_table(out)
    assert table.column("file").to_pylist() == files_of(corpus)  # each once, in order


def test_shards_joined_by_merge_equal_one_process(
    corpus, tmp_path, capsys, monkeypatch
):
    more = ["--window-hop", "0.5", "--per-window"]
    ref = tmp_path / "ref.parquet"
    assert main(embed_args(corpus, ref, *more)) == 0
    out = tmp_path / "out.parquet"
    # one process told its shard, one by torchrun's variables
    assert main([*embed_args(corpus, out, *more), "--shard", "0/2"]) == 0
    assert "--merge" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(embed_args(corpus, out, *more)) == 0
    assert "shard 1/2" in capsys.readouterr().out
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert not out.exists()
    assert len(parts_in(out.with_name("out.parquet.parts"))) == N_FILES // PART
    assert main([*embed_args(corpus, out, *more), "--merge"]) == 0
    assert out.read_bytes() == ref.read_bytes()
    table = pq.read_table(out)
    names = table.column("file").to_pylist()
    starts = table.column("start").to_numpy()
    files, counts = np.unique(names, return_counts=True)
    assert files.tolist() == files_of(corpus)
    assert names == np.repeat(files, counts).tolist()  # a file's windows together
    assert (counts == 4).all()  # 2 s at a hop of 0.5 s, windows of 64 of its 198 frames
    np.testing.assert_allclose(starts[:4], [0.0, 0.5, 1.0, 1.34])
    # the rows record the model: its fingerprint is in the file's metadata
    import json

    meta = json.loads(pq.read_schema(out).metadata[b"skast"])
    assert len(meta["model_fingerprint"]) == 64 and meta["window_hop"] == 0.5
    other = tmp_path / "other.parquet"
    assert main(embed_args(corpus, other, *more, ckpt="ckpt1")) == 0
    other_meta = json.loads(pq.read_schema(other).metadata[b"skast"])
    assert other_meta["model_fingerprint"] != meta["model_fingerprint"]


def test_another_job_is_refused_and_a_plain_rerun_finishes_a_shard(
    corpus, tmp_path, capsys
):
    ref = tmp_path / "ref.npy"
    assert main(embed_args(corpus, ref)) == 0
    out = tmp_path / "out.npy"
    folder = out.with_name("out.npy.parts")
    assert main([*embed_args(corpus, out), "--shard", "1/3"]) == 0
    assert [p.name for p in parts_in(folder)] == [
        f"part-{k:06d}.npz"
        for k in (1, 4, 7, 10)  # the parts k % 3 == 1
    ]
    assert not out.exists()
    capsys.readouterr()
    # other files: one fewer
    fewer = embed_args(corpus, out)
    fewer[1:2] = files_of(corpus)[:-1]
    assert main(fewer) == 2
    err = capsys.readouterr().err
    assert "holds the parts of another job: other files (24 there, 23 here)" in err
    assert "--restart" in err
    assert main([*embed_args(corpus, out), "--pooling", "cls"]) == 2
    assert "--pooling mean there, cls here" in capsys.readouterr().err
    assert main(embed_args(corpus, out, ckpt="ckpt1")) == 2
    assert "another model" in capsys.readouterr().err
    assert main([*embed_args(corpus, out), "--merge"]) == 2
    assert "8 of the 12 parts" in capsys.readouterr().err
    assert len(parts_in(folder)) == 4  # none of it touched them
    # the command without a shard embeds the 8 missing parts and joins them all
    with EncoderItems() as items:
        assert main(embed_args(corpus, out)) == 0
    assert items.n == N_FILES - 4 * PART
    assert out.read_bytes() == ref.read_bytes() and not folder.exists()
    # --restart discards another job's parts
    assert main([*embed_args(corpus, out), "--shard", "0/3"]) == 0
    with EncoderItems() as items:
        assert main([*embed_args(corpus, out, ckpt="ckpt1"), "--restart"]) == 0
    assert items.n == N_FILES and not folder.exists()
    assert main(embed_args(corpus, ref, ckpt="ckpt1")) == 0
    assert out.read_bytes() == ref.read_bytes()


@pytest.mark.parametrize("shard", ["3/2", "a/b", "0/0", "-1/2", "1/2/3", "2/2"])
def test_bad_shards_are_usage_errors(shard, corpus, tmp_path, capsys):
    assert main([*embed_args(corpus, tmp_path / "x.npy"), f"--shard={shard}"]) == 2
    err = capsys.readouterr().err
    assert (
        f"--shard takes I/N, shard I of N with 0 <= I < N (such as 0/4), got '{shard}'"
        in err
    )


@pytest.mark.parametrize(
    "env, more, message",
    [
        (
            {"RANK": "2", "WORLD_SIZE": "2"},
            [],
            "RANK/WORLD_SIZE (set by torchrun) takes I/N",
        ),
        ({"RANK": "0"}, [], "got '0/None'"),
        ({}, ["--part-size", "0"], "--part-size must be at least 1, got 0"),
        ({}, ["--merge", "--shard", "0/2"], "--merge joins the parts of every shard"),
        ({}, ["--restart", "--shard", "0/2"], "--restart with a shard would discard"),
        ({}, ["--merge"], "no job to merge"),
    ],
)
def test_bad_job_options_are_usage_errors(
    env, more, message, corpus, tmp_path, capsys, monkeypatch
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "x.npy"
    assert main([*embed_args(corpus, out), *more]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not out.with_name("x.npy.parts").exists()
