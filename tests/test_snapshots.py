"""Resumable snapshots (``snapshot_dir``): a fit killed after its second
epoch of four goes on in a new process and ends with the model of an
uninterrupted fit; snapshots of other fits, incomplete or corrupt ones, and
``partial_fit``."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

import skast
from skast.cli import main
from tests._helpers import classifier, clips
from tests.conftest import SHORT

ROOT = Path(__file__).resolve().parents[1]
# four short epochs of the SHORT model, with SpecAugment, mixup and a decay
# of the learning rate after epoch 2: each epoch's randomness and the
# schedule's state must be carried over
BASE = dict(
    model_config=SHORT,
    max_epochs=4,
    batch_size=4,
    freqm=8,
    timem=8,
    mixup=0.5,
    lr_decay_start=2,
    lr_decay=0.5,
)
VARIANTS = {
    "early_stopping": dict(
        BASE, early_stopping=True, validation_fraction=0.25, n_iter_no_change=10
    ),
    "weight_averaging": dict(BASE, weight_averaging=(2, 4)),
}
# the child fits, and waits at the first forward pass after the snapshot of
# epoch 2 is complete, until it is killed
CHILD = """
import os, sys, time
import torch
from torch.nn.modules.module import register_module_forward_pre_hook
torch.set_num_threads(1)
from tests.test_snapshots import VARIANTS, data
from tests._helpers import classifier

variant, directory = sys.argv[1], sys.argv[2]
done = os.path.join(directory, "epoch-0002")

def hold(module, args):
    if os.path.isdir(done):
        time.sleep(300)
        os._exit(3)

register_module_forward_pre_hook(hold)
classifier(**VARIANTS[variant], snapshot_dir=directory).fit(*data())
os._exit(4)
"""

# one of two ranks of a gloo process group: a fit in which rank 0 alone
# writes, one whose ranks see different snapshots, one that resumes
RANK = """
import datetime, json, os, sys
import torch
import torch.distributed as dist
torch.set_num_threads(1)
from tests.test_snapshots import data
from tests._helpers import classifier
from tests.conftest import SHORT

rank, root = int(sys.argv[1]), sys.argv[2]
dist.init_process_group(
    "gloo", init_method="file://" + os.path.join(root, "rendezvous"), rank=rank,
    world_size=2, timeout=datetime.timedelta(seconds=60),
)
params = dict(model_config=SHORT, max_epochs=2)
shared, own = os.path.join(root, "shared"), os.path.join(root, f"rank{rank}")
out = {}
first = classifier(**params, snapshot_dir=shared if rank == 0 else own).fit(*data())
out["own"] = sorted(os.listdir(own)) if rank else None
try:
    classifier(**params, snapshot_dir=shared if rank == 0 else own).fit(*data())
except ValueError as err:
    out["error"] = str(err)
again = classifier(**params, snapshot_dir=shared).fit(*data())
w = again.model_.state_dict()
out["same"] = all(torch.equal(v, w[k]) for k, v in first.model_.state_dict().items())
with open(os.path.join(root, f"rank{rank}.json"), "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
"""


def child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    return env


def data():
    """Eight noise clips of two classes."""
    return clips(8), np.array(["a", "b"] * 4)


@pytest.fixture
def one_thread():
    """Training in one CPU thread, as the killed child does, so that its
    epochs and the ones here round alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """For each variant, the snapshot directory of a fit killed (SIGKILL) in
    its third epoch of four, once the snapshot of epoch 2 is complete (and
    the one of epoch 1 deleted). The children run at once."""
    env = child_env()
    dirs = {v: tmp_path_factory.mktemp(v) / "snapshots" for v in VARIANTS}
    procs = {
        v: subprocess.Popen(
            [sys.executable, "-c", CHILD, v, str(d)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for v, d in dirs.items()
    }
    try:
        deadline = time.monotonic() + 240
        waiting = set(procs)
        while waiting and time.monotonic() < deadline:
            for v in sorted(waiting):
                d = dirs[v]
                if (d / "epoch-0002").is_dir() and not (d / "epoch-0001").exists():
                    procs[v].send_signal(signal.SIGKILL)
                    waiting.discard(v)
                elif procs[v].poll() is not None:
                    pytest.fail(procs[v].stderr.read().decode())
            time.sleep(0.02)
        assert not waiting, f"no snapshot of epoch 2 within 240 s: {waiting}"
        for p in procs.values():
            assert p.wait(timeout=30) == -signal.SIGKILL
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
    return dirs


def weights(clf) -> dict:
    return clf.model_.state_dict()


def assert_same_model(a, b, X):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    drop = [{k: v for k, v in h.items() if k != "seconds"} for h in a.history_]
    assert drop == [{k: v for k, v in h.items() if k != "seconds"} for h in b.history_]
    assert a.best_validation_score_ == b.best_validation_score_
    assert a.validation_scores_ == b.validation_scores_
    assert a.n_iter_ == b.n_iter_ == 4
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_killed_fit_resumes_to_the_model_of_an_uninterrupted_fit(
    variant, killed, one_thread
):
    directory = killed[variant]
    assert sorted(p.name for p in directory.iterdir()) == ["epoch-0002"]
    X, y = data()
    partial = directory / "epoch-0002" / "state.pt"
    decoys = []
    if variant == "early_stopping":
        # what a kill between the parts of the next snapshot leaves (a
        # temporary folder without its manifest), and a folder of epoch 3
        # whose files are not a complete snapshot of epoch 3
        tmp = directory / ".epoch-0003.x1y2.tmp"
        tmp.mkdir()
        (tmp / "state.pt").write_bytes(partial.read_bytes()[:1000])
        bad = directory / "epoch-0003"
        bad.mkdir()
        shutil.copy(directory / "epoch-0002" / "snapshot.json", bad)
        (bad / "state.pt").write_bytes(partial.read_bytes()[:-10])
        decoys = [bad]
    seen = []

    def count(module, args):
        seen.append(module.training)

    handle = register_module_forward_pre_hook(count)
    try:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            resumed = classifier(**VARIANTS[variant], snapshot_dir=directory)
            resumed.fit(X, y)
    finally:
        handle.remove()
    skipped = [str(w.message) for w in record if "snapshot_dir" in str(w.message)]
    assert len(skipped) == len(decoys)
    assert all(str(d) in m for d, m in zip(decoys, skipped))
    assert seen and any(seen)  # it trained: epochs 3 and 4
    # the same as a fit that was never killed, in this process
    reference = classifier(**VARIANTS[variant]).fit(X, y)
    assert_same_model(resumed, reference, X)
    # the final snapshot is left, alone
    assert sorted(p.name for p in directory.iterdir()) == ["epoch-0004"]


def test_ctrl_c_keeps_the_last_complete_snapshot_and_the_fit_resumes(tmp_path):
    X, y = data()
    params = dict(BASE, normalize="fit")
    directory = tmp_path / "snapshots"

    def interrupt(module, args):  # in epoch 3, once
        if (directory / "epoch-0002").is_dir() and not seen:
            seen.append(module)
            raise KeyboardInterrupt

    seen = []
    handle = register_module_forward_pre_hook(interrupt)
    try:
        with pytest.warns(UserWarning, match="training was interrupted"):
            stopped = classifier(**params, snapshot_dir=directory).fit(X, y)
    finally:
        handle.remove()
    assert stopped.n_iter_ == 2 and seen  # in the first batch of epoch 3
    assert sorted(p.name for p in directory.iterdir()) == ["epoch-0002"]
    resumed = classifier(**params, snapshot_dir=directory).fit(X, y)
    reference = classifier(**params).fit(X, y)
    assert resumed.normalization_ == reference.normalization_
    assert all(
        torch.equal(v, weights(resumed)[k]) for k, v in weights(reference).items()
    )
    assert [h["train_loss"] for h in resumed.history_] == reference.loss_curve_


def test_a_completed_fit_returns_its_model_at_once(tmp_path):
    X, y = clips(4), ["a", "b"] * 2
    params = dict(model_config=SHORT, max_epochs=2, random_state=None)
    first = classifier(**params, snapshot_dir=tmp_path).fit(X, y)
    seen = []
    handle = register_module_forward_pre_hook(lambda m, a: seen.append(m))
    try:
        again = classifier(**params, snapshot_dir=tmp_path).fit(X, y)
    finally:
        handle.remove()
    assert seen == []  # no training, and no random_state: the snapshot's seed
    assert again.history_ == first.history_  # the seconds too: the snapshot's
    assert all(torch.equal(v, weights(again)[k]) for k, v in weights(first).items())


def test_a_snapshot_of_another_fit_is_refused(tmp_path):
    X, y = clips(4), np.array(["a", "b"] * 2)
    params = dict(model_config=SHORT, max_epochs=1, snapshot_dir=tmp_path)
    classifier(**params).fit(X, y)
    other = [
        ({"learning_rate": 1e-2}, X, y, r"other parameters \(learning_rate\)"),
        ({"random_state": 1, "mixup": 0.5}, X, y, r"\(mixup, random_state\)"),
        ({}, clips(4, seed=1), y, r"as many clips, 4, but other clips or labels"),
        ({}, X, y[::-1], "other clips or labels"),
        ({}, X[:3], y[:3], "3 clips, not the snapshot's 4"),
        ({}, X, np.array(["a", "c"] * 2), "other classes"),
    ]
    for change, X2, y2, match in other:
        clf = classifier(**{**params, **change})
        with pytest.raises(ValueError, match=match) as err:
            clf.fit(X2, y2)
        assert "delete the directory" in str(err.value)
        assert not hasattr(clf, "n_iter_")  # unfitted, as it was
    # what does not change the fit may
    clf = classifier(**params, verbose=0, num_workers=1, device=torch.device("cpu"))
    clf.fit(X, y)
    # a warm start is another fit: its model has trained before
    with pytest.raises(ValueError, match=r"starts after 1 epoch\(s\) \(warm_start\)"):
        clf.set_params(warm_start=True).fit(X, y)


def test_a_corrupt_snapshot_is_never_loaded(tmp_path):
    X, y = clips(4), ["a", "b"] * 2
    params = dict(model_config=SHORT, max_epochs=2)
    reference = classifier(**params).fit(X, y)
    classifier(**params, snapshot_dir=tmp_path).fit(X, y)
    state = tmp_path / "epoch-0002" / "state.pt"
    raw = bytearray(state.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte: same size, other contents
    state.write_bytes(bytes(raw))
    match = "epoch-0002.*not the file its manifest"
    with pytest.warns(UserWarning, match=match) as record:
        clf = classifier(**params, snapshot_dir=tmp_path).fit(X, y)
    assert [w.filename for w in record] == [__file__]  # the caller of fit
    # started over, and trained as an uninterrupted fit
    assert all(torch.equal(v, weights(clf)[k]) for k, v in weights(reference).items())
    (tmp_path / "epoch-0002" / "snapshot.json").write_text("{not json")
    with pytest.warns(UserWarning, match="snapshot.json"):
        classifier(**params, snapshot_dir=tmp_path).fit(X, y)


def test_a_snapshot_that_cannot_be_written_is_a_warning(tmp_path):
    X, y = clips(4), ["a", "b"] * 2
    params = dict(model_config=SHORT, max_epochs=2)
    directory = tmp_path / "snapshots"

    def block(module, args):  # after the first snapshot: a file in the way
        if (directory / "epoch-0001").is_dir():
            shutil.rmtree(directory)
            directory.write_text("")

    handle = register_module_forward_pre_hook(block)
    try:
        match = "cannot write the snapshot of epoch 2"
        with pytest.warns(UserWarning, match=match) as record:
            clf = classifier(**params, snapshot_dir=directory).fit(X, y)
    finally:
        handle.remove()
    assert [w.filename for w in record] == [__file__]  # the caller of fit
    assert clf.n_iter_ == 2 and directory.is_file()
    reference = classifier(**params).fit(X, y)
    assert all(torch.equal(v, weights(clf)[k]) for k, v in weights(reference).items())


def test_rank_0_writes_and_every_rank_resumes_from_the_same_snapshot(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK, str(rank), str(tmp_path)],
            cwd=ROOT,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for rank in (0, 1)
    ]
    try:
        for p in procs:
            assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
    out = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert out[1]["own"] == []  # rank 1 wrote nothing
    assert sorted(os.listdir(tmp_path / "shared")) == ["epoch-0002"]
    for o in out:  # one rank found rank 0's snapshot, the other none: both fail
        assert "the ranks found different snapshots" in o["error"]
        assert o["same"]  # and then both resumed the finished fit


def test_partial_fit_and_bad_values_are_refused(tmp_path):
    clf = classifier(model_config=SHORT, snapshot_dir=tmp_path)
    with pytest.raises(
        ValueError, match="snapshot_dir is not supported by partial_fit"
    ):
        clf.partial_fit(clips(2), ["a", "b"], classes=["a", "b"])
    assert not any(tmp_path.iterdir())
    with pytest.raises(ValueError, match="snapshot_dir"):
        classifier(snapshot_dir=3).fit(clips(2), ["a", "b"])
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        classifier(model_config=SHORT, snapshot_dir=file).fit(clips(2), ["a", "b"])
    with pytest.raises(ValueError, match="cannot be created"):
        classifier(model_config=SHORT, snapshot_dir=file / "sub").fit(
            clips(2), ["a", "b"]
        )


def test_finetune_command_writes_snapshots(tmp_path):
    from skast._checkpoints import save_pretrained
    from skast._model import AST, ASTConfig
    from tests._helpers import write

    checkpoint = tmp_path / "ckpt"
    save_pretrained(AST(ASTConfig(**SHORT)), checkpoint)
    for label in ("low", "high"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i, clip in enumerate(clips(2, seed=len(label))):
            write(tmp_path / "data" / label / f"{i}.wav", clip)
    argv = ["finetune", str(tmp_path / "data"), "--checkpoint", str(checkpoint)]
    argv += ["--epochs", "2", "--device", "cpu", "-q"]
    argv += ["--snapshot-dir", str(tmp_path / "snap")]
    assert main([*argv, "-o", str(tmp_path / "m1")]) == 0
    assert (tmp_path / "snap" / "epoch-0002" / "snapshot.json").is_file()
    # again: the finished snapshot's model
    assert main([*argv, "-o", str(tmp_path / "m2")]) == 0
    a, b = (skast.load(tmp_path / m) for m in ("m1", "m2"))
    assert all(torch.equal(v, weights(b)[k]) for k, v in weights(a).items())
