"""Data-parallel fits: 2 CPU ranks under torchrun, a device list, a lost rank.

Each torchrun start costs seconds here, so the file starts two jobs in all:
torchrun runs every fit of tests/_ranks.py, ``skast finetune`` and a fit
that loses a rank, and a ``device=["cpu", "cpu"]`` fit spawns two workers.
The 2-rank models are compared with the same fits in this process: the step
is the same sum of the same per-clip gradients in another order, so they
agree to float32 rounding amplified over a few Adam steps (1e-4 on the
probabilities, as the issue sets), while the ranks' weights are the same
all-reduced sums, bit for bit.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from skast import ASTClassifier
from skast._checkpoints import save_pretrained
from skast._model import AST, ASTConfig
from tests import _ranks
from tests._helpers import classifier
from tests.conftest import FAST

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for a whole torchrun job (2 shared cores)

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="torch.distributed with gloo is needed",
)


def torchrun(*args, env=None, timeout=TIMEOUT):
    """``torchrun --standalone --nproc-per-node 2 tests/_ranks.py ARGS``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", "2", "--monitor-interval", "1"]
    cmd += [str(ROOT / "tests" / "_ranks.py"), *map(str, args)]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        **(env or {}),
    }
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


def ranks(out, name):
    return [torch.load(out / f"{name}-{r}.pt", weights_only=False) for r in (0, 1)]


def same_state(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def one_process():
    """The fits of tests/_ranks.py in this process."""
    return {
        name: _ranks.fit(_ranks.FITS[name])
        for name in ("plain", "stopping", "partial", "normalize")
    }


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """tests/_ranks.py's job on 2 ranks: its output folder and process."""
    tmp = tmp_path_factory.mktemp("ranks")
    checkpoint = tmp / "ckpt"
    torch.manual_seed(0)
    save_pretrained(AST(ASTConfig(**FAST)), checkpoint)
    for label, freq in (("low", 300), ("high", 3000)):
        (tmp / "data" / label).mkdir(parents=True)
        for i in range(4):
            wave = 0.5 * np.sin(2 * np.pi * (freq + 20 * i) * np.arange(8000) / 16000)
            sf.write(tmp / "data" / label / f"{i}.wav", wave.astype(np.float32), 16000)
    out = tmp / "out"
    out.mkdir()
    proc = torchrun(
        out, checkpoint, tmp / "data", env={"SKAST_DISTRIBUTED_TIMEOUT": "120"}
    )
    # the last fit kills rank 1: the job fails, after the others' files
    assert (out / "error-0.txt").is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_two_ranks_train_the_one_process_model(job, one_process):
    out, _ = job
    expected = one_process["plain"].predict_proba(_ranks.X)
    # "oom": rank 0 ran its steps one clip at a time, rank 1 whole shares
    for name in ("plain", "oom"):
        r0, r1 = ranks(out, name)
        assert same_state(r0["state"], r1["state"])
        np.testing.assert_allclose(r0["proba"], expected, atol=1e-4)
        assert r0["history"] == r1["history"]  # the seconds too: the longest
        losses = [h["train_loss"] for h in one_process["plain"].history_]
        np.testing.assert_allclose(
            [h["train_loss"] for h in r0["history"]], losses, rtol=1e-5
        )


def test_partial_fit_goes_on_alike(job, one_process):
    out, _ = job
    r0, r1 = ranks(out, "partial")
    assert same_state(r0["state"], r1["state"]) and r0["n_iter"] == 2
    expected = one_process["partial"].predict_proba(_ranks.X)
    np.testing.assert_allclose(r0["proba"], expected, atol=1e-4)


def test_fitted_normalization_is_shared_among_the_ranks(job, one_process):
    # each rank reads its share of the clips; the sums of all of them give
    # one process's statistics, to the rounding of a float64 sum of N values
    # in another order: at most N * 2**-53 of the sum of their magnitudes,
    # which for these clips is 3.0 times the sum itself (and E[x^2] is 1.03
    # times the variance the std comes from): 4 * N * 2**-53 of each
    out, proc = job
    totals = re.findall(r"normalization:\s+\d+%\|[^|]*\|\s*\d+/(\d+)", proc.stderr)
    assert sorted(set(totals)) == ["5"], totals  # 5 of the 10 clips on each rank
    r0, r1 = ranks(out, "normalize")
    assert r0["normalization"] == r1["normalization"]
    expected = one_process["normalize"].normalization_
    n_values = len(_ranks.X) * FAST["max_length"] * FAST["num_mel_bins"]
    np.testing.assert_allclose(
        r0["normalization"], expected, rtol=4 * n_values * 2.0**-53
    )
    assert same_state(r0["state"], r1["state"])


def test_early_stopping_and_augmentation_agree_across_ranks(job, one_process):
    out, _ = job
    r0, r1 = ranks(out, "stopping")
    clf = one_process["stopping"]
    assert r0["n_iter"] == r1["n_iter"] == clf.n_iter_ == 3
    assert r0["scores"] == r1["scores"]
    np.testing.assert_allclose(r0["scores"], clf.validation_scores_, atol=1e-6)
    valid_losses = [h["valid_loss"] for h in clf.history_]
    np.testing.assert_allclose(
        [h["valid_loss"] for h in r0["history"]], valid_losses, rtol=1e-4
    )
    assert same_state(r0["state"], r1["state"])
    np.testing.assert_allclose(r0["proba"], clf.predict_proba(_ranks.X), atol=1e-4)
    # SpecAugment and mixup draw on each rank: the weights still agree
    r0, r1 = ranks(out, "augment")
    assert same_state(r0["state"], r1["state"])
    assert np.isfinite([h["train_loss"] for h in r0["history"]]).all()


def test_a_ctrl_c_on_one_rank_stops_both_after_the_same_batch(job):
    out, _ = job
    r0, r1 = ranks(out, "interrupt")
    assert r0["n_iter"] == r1["n_iter"] == 1  # of max_epochs=3
    assert same_state(r0["state"], r1["state"])
    for r in (r0, r1):
        assert any("training was interrupted" in w for w in r["warnings"])


def test_finetune_command_under_torchrun_reports_once(job):
    out, proc = job
    assert proc.stdout.count("fine-tuned on 8 clips of 2 classes") == 1
    assert (out / "model" / "skast.json").is_file()


def test_a_killed_rank_makes_the_other_fail_within_the_timeout(job):
    out, proc = job
    assert proc.returncode != 0
    seconds, message = (out / "error-0.txt").read_text().split("\n", 1)
    assert "rank 0 of 2" in message and "rank 1 died" in message
    assert float(seconds) < 120, message  # SKAST_DISTRIBUTED_TIMEOUT
    assert not (out / "killed-0.pt").exists()


def test_device_list_fits_in_spawned_workers(one_process):
    devices = ["cpu", "cpu"]
    clf = classifier(device=devices, **_ranks.FITS["plain"]).fit(_ranks.X, _ranks.Y)
    # it predicts on the devices of the list too (a replica on each)
    assert clf.device is devices and clf.device_ == ["cpu", "cpu"]
    expected = one_process["plain"]
    np.testing.assert_allclose(
        clf.predict_proba(_ranks.X), expected.predict_proba(_ranks.X), atol=1e-4
    )
    assert clf.n_iter_ == expected.n_iter_ and list(clf.classes_) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "device, error, match",
    [
        ([], ValueError, "at least one device"),
        (["cpu", 3], TypeError, r"device\[1\]=3: each entry"),
        (["cpu", "meta"], ValueError, "mixes device types"),
        (["meta", "meta"], ValueError, "on CPUs .gloo. or on CUDA devices"),
        (("cpu", "nope"), ValueError, "not a valid torch device"),
    ],
)
def test_a_bad_device_list_is_refused(device, error, match):
    with pytest.raises(error, match=match):
        ASTClassifier(device=device).fit(_ranks.X, _ranks.Y)
