"""skast._runtime: device and precision resolution, loading on a machine
without the fitted device, the evaluation loop and its out-of-memory halving,
also through ``transform`` and ``predict_proba``.

Out-of-memory errors are injected with the ``oom`` fixture (tests/conftest.py):
torch's global forward pre-hook on the model's patch embedding. Out of memory
in ``fit`` is in tests/test_training.py.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

import skast
from skast import _runtime
from tests._helpers import assert_unchanged, classifier, clips, featurizer, snapshot


def test_resolve_device(monkeypatch):
    assert _runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _runtime.resolve_device(None) == torch.device("cpu")
    assert _runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        _runtime.resolve_device("cuda")
    with pytest.raises(ValueError, match="not a valid torch device"):
        _runtime.resolve_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _runtime.resolve_device(None) == torch.device("cuda")
    with pytest.raises(ValueError, match="only 1 CUDA"):
        _runtime.resolve_device("cuda:3")


def test_resolve_autocast(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _runtime.resolve_autocast("auto", cpu) is None
    assert _runtime.resolve_autocast("float32", cuda) is None
    assert _runtime.resolve_autocast("float16", cpu) is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert _runtime.resolve_autocast("auto", cuda) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert _runtime.resolve_autocast("auto", cuda) is torch.float16
    with pytest.raises(ValueError, match="precision"):
        _runtime.resolve_autocast("int8", cpu)


def test_autocast_context_on_cpu():
    x = torch.randn(4, 4)
    with _runtime.autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype is torch.bfloat16
    with _runtime.autocast(torch.device("cpu"), None):
        assert (x @ x).dtype is torch.float32


def test_device_on_load_falls_back_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    match = "not available here; it will run on the CPU"
    with pytest.warns(skast.DeviceWarning, match=match) as record:
        assert _runtime.device_on_load("cuda:0") == "cpu"
    assert [w.filename for w in record] == [__file__]  # the first frame not ours
    assert _runtime.device_on_load("cpu") == "cpu"


def test_device_warning_is_public_and_imported_lazily():
    assert issubclass(skast.DeviceWarning, UserWarning)
    assert skast.DeviceWarning is _runtime.DeviceWarning
    assert "DeviceWarning" in skast.__all__ and "DeviceWarning" in dir(skast)
    code = (
        "import sys, skast; assert 'torch' not in sys.modules; "
        "skast.DeviceWarning; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_is_out_of_memory():
    assert _runtime.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
    assert _runtime.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not _runtime.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not _runtime.is_out_of_memory(ValueError("out of memory"))


def test_map_in_pieces_halves_and_goes_on_from_the_failed_piece():
    calls = []

    def fn(piece):
        calls.append(len(piece))
        if len(piece) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return piece.clone()

    x = torch.arange(7)
    out, limit = _runtime.map_in_pieces(fn, x, "cpu")
    assert calls == [7, 4, 2, 2, 2, 1]  # no piece that ran is run again
    assert torch.equal(torch.cat(out), x) and limit == 2
    calls.clear()
    out, kept = _runtime.map_in_pieces(fn, x[:5], "cpu", limit)
    assert calls == [2, 2, 1] and kept == 2
    # no error: a smaller input does not lower the limit
    assert _runtime.map_in_pieces(fn, x[:2], "cpu")[1] is None


def test_retry_halving_on_oom_raises_at_one_and_on_other_errors():
    sizes = []

    def attempt(size):
        sizes.append(size)
        raise torch.OutOfMemoryError("CUDA out of memory.")

    with pytest.raises(torch.OutOfMemoryError):
        _runtime.retry_halving_on_oom(attempt, 5, "cpu")
    assert sizes == [5, 3, 2, 1]

    def other_error(size):
        sizes.append(size)
        raise RuntimeError("shape mismatch")

    sizes.clear()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _runtime.retry_halving_on_oom(other_error, 4, "cpu")
    assert sizes == [4]  # not retried


def test_evaluate_fills_rows_in_order_and_restores_the_mode():
    model = torch.nn.Linear(3, 2).train()
    x = torch.randn(5, 3)
    batches = [([4, 0], x[[4, 0]]), ([2], x[[2]]), ([1, 3], x[[1, 3]])]
    out = _runtime.evaluate(model, model, batches, 5, device="cpu", dtype=None)
    # each batch's rows, as the model gives them for that batch (a batch of
    # other rows may round differently), at their indices
    want = torch.empty(5, 2)
    with torch.no_grad():
        for indices, batch in batches:
            want[indices] = model(batch)
    torch.testing.assert_close(torch.from_numpy(out), want, atol=0, rtol=0)
    assert out.dtype == "float32" and model.training


# ---------------------------------------------------------------- through the estimators

OOM_ERRORS = {
    "OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory."),
    "RuntimeError": lambda: RuntimeError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"
    ),
}

# Rows are computed independently of the others in a batch, so a piece of
# another size changes an embedding only by float32 rounding: the matrix
# products may sum in another order for another number of rows. A sum of K
# terms in another order differs by at most about K * eps * sum|terms|; the
# reductions run over at most the hidden and intermediate widths (64 here)
# and the tokens (< 2**7), so relative to the largest output the difference
# stays below 2**12 * eps.
ROWS_ATOL = 2**12 * float(torch.finfo(torch.float32).eps)


def assert_rounding_equal(got, want):
    assert_allclose(got, want, rtol=0, atol=ROWS_ATOL * np.abs(want).max())


@pytest.mark.parametrize("error", list(OOM_ERRORS))
def test_oom_in_transform_and_predict_halves_the_batch(error, oom):
    X = clips(7)
    est = featurizer(batch_size=8).fit(X)
    clf = classifier(max_epochs=1).fit(X + X[:1], ["a", "b"] * 4)
    oom.error = OOM_ERRORS[error]
    for run in (est.transform, clf.predict_proba):
        ref = run(X)
        oom.limit, oom.calls = 2, []
        try:
            assert_rounding_equal(run(X), ref)
        finally:
            oom.limit = None
        assert oom.sizes(ran=False) and max(oom.sizes(ran=True)) <= 2
        assert sum(oom.sizes(ran=True)) == len(X)  # each clip run once


def test_oom_batch_size_is_kept_for_the_next_batches(oom):
    X = clips(7)
    est = featurizer(batch_size=3).fit(X)
    ref = est.transform(X)
    oom.limit = 2
    assert_rounding_equal(est.transform(X), ref)
    # after the first piece that ran, no piece is too large: later batches
    # start from the size that fitted
    ran = [ok for _, ok, _ in oom.calls]
    assert all(ran[ran.index(True) :])
    assert max(oom.sizes(ran=True)) <= 2 and sum(oom.sizes(ran=True)) == len(X)
    oom.calls.clear()
    est.transform(X)  # a new call starts again from batch_size
    assert oom.calls[0] == (3, False, "eval")


def test_oom_on_a_single_clip_and_other_errors_are_raised(oom):
    X = clips(3)
    est = featurizer(batch_size=4).fit(X)
    snap = snapshot(est)
    oom.limit = 0  # not even one clip fits
    with pytest.raises(torch.OutOfMemoryError):
        est.transform(X)
    assert oom.sizes(ran=True) == [] and min(oom.sizes(ran=False)) == 1
    oom.calls.clear()
    oom.error = lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        est.transform(X)
    assert oom.calls == [(3, False, "eval")]  # not retried: not out of memory
    oom.limit = None
    assert_unchanged(est, snap)


def test_what_is_made_for_one_model_does_not_wait_for_another():
    # skast._derived: the table behind the replicas, the low-precision copy
    # and the ONNX Runtime session; a slow make (an export) for one model
    # must not hold up another model's
    import threading

    from skast._derived import Derived

    table, slow, fast = Derived(), torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    started, release = threading.Event(), threading.Event()

    def slow_make():
        started.set()
        assert release.wait(30)
        return "slow"

    thread = threading.Thread(target=table.get, args=(slow, "x", slow_make))
    thread.start()
    try:
        assert started.wait(30)
        got = []
        other = threading.Thread(
            target=lambda: got.append(table.get(fast, "x", lambda: "fast"))
        )
        other.start()
        other.join(10)
        assert got == ["fast"]  # while the slow one is still being made
    finally:
        release.set()
        thread.join(30)
    assert table.get(slow, "x", lambda: "again") == "slow"  # made once, kept
