"""The script every rank of tests/test_distributed.py's torchrun job runs.

``python -m torch.distributed.run --standalone --nproc-per-node 2
tests/_ranks.py OUT CHECKPOINT FOLDER``, in this order:

* the fits of :data:`FITS` (the tests run them in one process too), with
  faults on one rank: device out-of-memory errors on rank 0 for more than
  one clip at once (``"oom"``), a SIGINT that rank 1 sends itself at its
  second training forward (``"interrupt"``); each rank writes what it ended
  with to ``OUT/<fit>-<rank>.pt``;
* ``skast finetune`` of FOLDER from CHECKPOINT (``cli.main``, as the command
  runs it) to ``OUT/model``;
* a fit whose rank 1 kills itself (SIGKILL) at its second training forward,
  rank 0 ignoring the agent's SIGTERM (as a rank on another machine would
  not get it): rank 0 writes the seconds it took to fail and its error to
  ``OUT/error-0.txt``, and the job fails.
"""

import os
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from skast._model import PatchEmbed
from tests._helpers import classifier, clips

#: 10 clips in batches of 3: shares of 2 and 1, and a last batch whose one
#: clip leaves rank 1 none
X = clips(10, seconds=0.35)
Y = np.array(["a", "b", "c"] * 3 + ["a"])
FITS = {
    "plain": dict(batch_size=3),
    # 3 validation clips (shares of 2 and 1), 7 trained; stops at epoch 3
    # (no gain of 10)
    "stopping": dict(
        batch_size=3,
        early_stopping=True,
        validation_fraction=0.3,
        n_iter_no_change=1,
        tol=10.0,
        max_epochs=8,
    ),
    "augment": dict(batch_size=3, freqm=8, timem=8, mixup=0.5),
    "oom": dict(batch_size=3),
    "interrupt": dict(batch_size=3, max_epochs=3),
    # two partial_fit calls: the optimizer's state goes on between them
    "partial": dict(batch_size=3, partial=True),
    # the statistics pass shared among the ranks, then summed (verbose: its
    # progress bars show how many clips each rank read)
    "normalize": dict(batch_size=3, normalize="fit", max_epochs=1, verbose=True),
}


def fit(params):
    """The fit of a :data:`FITS` entry."""
    params = dict(params)
    if params.pop("partial", False):
        clf = classifier(**params).partial_fit(X, Y, classes=["a", "b", "c"])
        return clf.partial_fit(X, Y)
    return classifier(**params).fit(X, Y)


def on_training_forward(action):
    """Run ``action(n_clips, count)`` before each training forward."""
    count = [0]

    def hook(module, args):
        if isinstance(module, PatchEmbed) and torch.is_grad_enabled():
            count[0] += 1
            action(len(args[0]), count[0])

    return register_module_forward_pre_hook(hook)


def out_of_memory(n, count):
    if n > 1:
        raise torch.OutOfMemoryError("CUDA out of memory.")


def sigint_at_second(n, count):
    if count == 2:
        os.kill(os.getpid(), signal.SIGINT)


def kill_at_second(n, count):
    if count == 2:
        os.kill(os.getpid(), signal.SIGKILL)


def record(clf, caught) -> dict:
    return {
        "proba": clf.predict_proba(X),
        "state": clf.model_.state_dict(),
        "history": clf.history_,
        "scores": clf.validation_scores_,
        "n_iter": clf.n_iter_,
        "normalization": tuple(clf.normalization_),
        "warnings": [str(w.message) for w in caught],
    }


def main(out, checkpoint, folder):
    out, rank = Path(out), int(os.environ["RANK"])
    faults = {"oom": (0, out_of_memory), "interrupt": (1, sigint_at_second)}
    fit_all(out, rank, FITS, faults)
    from skast.cli import main as skast

    argv = ["finetune", folder, "-o", str(out / "model"), "--checkpoint"]
    argv += [checkpoint, "--epochs", "1", "--batch-size", "3", "-q"]
    assert skast(argv) == 0
    if rank == 0:
        # torchrun's agent sends SIGTERM to the other ranks as soon as it sees
        # rank 1 die (within --monitor-interval), which raced rank 0's own
        # report; ignored here, rank 0 is what it is when the lost rank is on
        # another machine: it learns of it from its next collective alone
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fit_all(out, rank, {"killed": FITS["plain"]}, {"killed": (1, kill_at_second)})


def fit_all(out, rank, fits, faults):
    for name, params in fits.items():
        on, fault = faults.get(name, (None, None))
        fault = fault if rank == on else None
        handle = on_training_forward(fault) if fault else None
        start = time.monotonic()
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                clf = fit(params)
        except Exception as err:
            took = time.monotonic() - start
            (out / f"error-{rank}.txt").write_text(f"{took:.1f}\n{err}")
            raise
        finally:
            if handle is not None:
                handle.remove()
        torch.save(record(clf, caught), out / f"{name}-{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
