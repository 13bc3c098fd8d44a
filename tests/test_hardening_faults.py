"""Hardening: faults. Device out-of-memory errors, interrupted fits, bad
checkpoints and model files (one carrying code), and two processes sharing
one embedding cache.

Already tested elsewhere: ``load_checkpoint`` on truncated files, wrong
shapes and pickles carrying code (tests/test_checkpoints.py), Ctrl-C during
the epochs (tests/test_training.py), interrupted downloads
(tests/test_datasets.py), atomic cache writes and processes embedding the
same clips into one cache (tests/test_cache.py,
tests/test_featurizer.py). Here: the same through
the estimators and the command line, and what those tests leave out.
"""

import multiprocessing
import pickle
import re
import warnings

import joblib
import numpy as np
import pytest
import soundfile as sf
import torch
from numpy.testing import assert_allclose, assert_array_equal
from torch.optim.optimizer import register_optimizer_step_pre_hook

from skast import ASTClassifier, ASTFeaturizer
from skast._audio import check_audio_input
from skast._model import AST, ASTConfig
from skast.cli import main
from tests.conftest import TINY
from tests.test_hardening import FAST, assert_unchanged, snapshot
from tests.test_training import FeaturePasses, InterruptAt

SR = 16000
LABELS = np.array(["a", "b"] * 4)


def clips(n, seed=0, seconds=0.3):
    rng = np.random.default_rng(seed)
    return [
        (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32)
        for _ in range(n)
    ]


def featurizer(**kw):
    return ASTFeaturizer(**{"model_config": FAST, "device": "cpu", **kw})


def classifier(**kw):
    base = dict(
        model_config=FAST,
        device="cpu",
        max_epochs=2,
        batch_size=8,
        learning_rate=1e-3,
        random_state=0,
    )
    return ASTClassifier(**{**base, **kw})


# ---------------------------------------------------------------- out of memory


class OOM:
    """AST.forward_features raising a device out-of-memory error for batches
    larger than ``limit``; ``calls`` records (batch size, succeeded)."""

    def __init__(self):
        self.limit = None
        self.error = torch.OutOfMemoryError
        self.calls = []

    def failed(self):
        return [n for n, ok in self.calls if not ok]

    def succeeded(self):
        return [n for n, ok in self.calls if ok]


OOM_ERRORS = {
    "OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory."),
    "RuntimeError": lambda: RuntimeError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"
    ),
}


@pytest.fixture
def oom(monkeypatch):
    spy = OOM()
    original = AST.forward_features

    def forward_features(self, x, layer=None):
        if spy.limit is not None and x.shape[0] > spy.limit:
            spy.calls.append((x.shape[0], False))
            raise spy.error()
        spy.calls.append((x.shape[0], True))
        return original(self, x, layer)

    monkeypatch.setattr(AST, "forward_features", forward_features)
    return spy


class ModelOOM:
    """A device out-of-memory error for pieces of more than ``limit`` clips,
    raised by a forward pre-hook on a fitted ``model_``'s patch embedding
    (which every forward pass runs first); ``calls`` records (piece size,
    succeeded)."""

    def __init__(self, model, limit, error=torch.OutOfMemoryError):
        self.limit, self.error, self.calls = limit, error, []
        self.handle = model.patch_embed.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        n = args[0].shape[0]
        self.calls.append((n, n <= self.limit))
        if n > self.limit:
            raise self.error("CUDA out of memory.")

    def sizes(self, ok):
        return [n for n, succeeded in self.calls if succeeded == ok]


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
def test_oom_in_transform_and_predict_halves_the_batch(error):
    X = clips(7)
    est = featurizer(batch_size=8).fit(X)
    clf = classifier(max_epochs=1).fit(X + X[:1], LABELS)
    for run, model in [(est.transform, est.model_), (clf.predict_proba, clf.model_)]:
        ref = run(X)
        oom = ModelOOM(model, limit=2, error=lambda msg: OOM_ERRORS[error]())
        try:
            assert_rounding_equal(run(X), ref)
        finally:
            oom.handle.remove()
        assert oom.sizes(ok=False) and max(oom.sizes(ok=True)) <= 2
        assert sum(oom.sizes(ok=True)) == len(X)  # each clip run once


def test_oom_batch_size_is_kept_for_the_next_batches():
    X = clips(7)
    est = featurizer(batch_size=3).fit(X)
    ref = est.transform(X)
    oom = ModelOOM(est.model_, limit=2)
    assert_rounding_equal(est.transform(X), ref)
    # after the first piece that ran, no piece is too large: later batches
    # start from the size that fitted
    first_ok = [ok for _, ok in oom.calls].index(True)
    assert all(ok for _, ok in oom.calls[first_ok:])
    assert max(oom.sizes(ok=True)) <= 2 and sum(oom.sizes(ok=True)) == len(X)
    oom.calls.clear()
    est.transform(X)  # a new call starts again from batch_size
    assert oom.calls[0] == (3, False)


def test_oom_on_a_single_clip_and_other_errors_are_raised():
    X = clips(3)
    est = featurizer(batch_size=4).fit(X)
    snap = snapshot(est)
    oom = ModelOOM(est.model_, limit=0)  # not even one clip fits
    with pytest.raises(torch.OutOfMemoryError):
        est.transform(X)
    assert oom.sizes(ok=True) == [] and min(oom.sizes(ok=False)) == 1
    oom.calls.clear()
    oom.error = lambda msg: RuntimeError("mat1 and mat2 shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        est.transform(X)
    assert oom.calls == [(3, False)]  # not retried: not an out-of-memory error
    oom.handle.remove()
    assert_unchanged(est, snap)


@pytest.fixture
def step_gradients():
    """The gradients each optimizer step is given, recorded through torch's
    global optimizer-step hook: one list of tensors (None: no gradient) per
    step, in the optimizer's parameter order."""
    steps = []

    def record(optimizer, args, kwargs):
        steps.append(
            [
                None if p.grad is None else p.grad.detach().clone()
                for group in optimizer.param_groups
                for p in group["params"]
            ]
        )

    handle = register_optimizer_step_pre_hook(record)
    yield steps
    handle.remove()


# float32 rounding of the accumulated gradient. Halving a batch changes only
# the order of float32 sums (each piece's loss is weighted by its share, so
# the sum of the pieces' gradients is the whole batch's gradient in exact
# arithmetic). A sum of K terms in another order differs by at most about
# K * eps * sum|terms| (Higham's bound); the reductions here run over the batch
# and the tokens times the hidden width, K < 2**12, so relative to the largest
# gradient of a tensor the difference stays below 2**12 * 2**-23 < 1e-3.
GRAD_RTOL = 2**12 * float(torch.finfo(torch.float32).eps)


@pytest.mark.parametrize(
    "params, limit, failed",
    [
        # batches of 4: 4 -> 2 -> 1; the next step starts at 1, never fails
        (dict(), 1, [4, 2]),
        # 6 training clips (4 + 2): 4 -> 2 -> 1; the 2 validation clips -> 1 + 1
        (dict(early_stopping=True, validation_fraction=0.25), 1, [4, 2, 2]),
        (dict(freeze="encoder"), 3, [4]),
    ],
)
def test_oom_in_fit_halves_the_batch(params, limit, failed, oom, step_gradients):
    """The training step accumulates the gradients of the halves, so each
    optimizer step is given the gradient of the whole batch.

    What the mathematics fixes is that gradient, not the weights after Adam:
    Adam's first step moves each weight by about ``lr * sign(grad)``, so a
    gradient of about zero whose rounding differs moves its weight by up to
    twice the learning rate. The learning rate is therefore tiny here (the
    weights the later steps' gradients are taken at stay equal to well below
    float32 rounding of the gradients), and the gradients are compared.
    """
    X = clips(8)
    params = dict(params, batch_size=4, max_epochs=1, learning_rate=1e-9)
    ref = classifier(**params).fit(X, LABELS)
    ref_steps = list(step_gradients)
    step_gradients.clear()
    oom.limit = limit
    oom.calls.clear()
    clf = classifier(**params).fit(X, LABELS)
    assert oom.failed() == failed
    assert max(oom.succeeded()) <= limit
    assert len(step_gradients) == len(ref_steps) > 0
    for step, (got_step, ref_step) in enumerate(zip(step_gradients, ref_steps)):
        assert len(got_step) == len(ref_step)
        for i, (got, want) in enumerate(zip(got_step, ref_step)):
            assert (got is None) == (want is None), (step, i)
            if want is not None:
                scale = float(want.abs().max())
                assert_allclose(
                    got, want, rtol=0, atol=GRAD_RTOL * scale, err_msg=f"{step}/{i}"
                )
    for a, b in zip(clf.history_, ref.history_):
        assert_allclose(a["train_loss"], b["train_loss"], rtol=GRAD_RTOL)
        assert a["valid_score"] == b["valid_score"]
    oom.limit = None
    assert_allclose(clf.predict_proba(X), ref.predict_proba(X), atol=GRAD_RTOL)


def test_oom_on_a_single_clip_in_fit_leaves_the_estimator(oom):
    X = clips(8)
    clf = classifier(max_epochs=1).fit(X, LABELS)
    snap = snapshot(clf)
    oom.limit = 0
    with pytest.raises(torch.OutOfMemoryError):
        clf.fit(X, LABELS)
    assert_unchanged(clf, snap)  # the previous model, still usable
    oom.limit = None
    assert clf.predict(X).shape == (8,)


# ---------------------------------------------------------------- interruptions


def test_interrupted_feature_extraction_keeps_the_fitted_model():
    """Ctrl-C before the epochs (while the features are computed) raises
    KeyboardInterrupt, and the estimator keeps its previous fit."""
    X = clips(8)
    clf = classifier(max_epochs=1).fit(X, LABELS)
    est = featurizer(normalize="fit").fit(X)
    proba = clf.predict_proba(X)
    snaps = snapshot(clf), snapshot(est)
    for fit in (lambda: clf.fit(X, LABELS), lambda: est.fit(X)):
        with pytest.raises(KeyboardInterrupt), FeaturePasses(KeyboardInterrupt()):
            fit()
    assert_unchanged(clf, snaps[0])
    assert_unchanged(est, snaps[1])
    assert_array_equal(clf.predict_proba(X), proba)
    fresh = featurizer(normalize="fit")
    params = dict(fresh.__dict__)
    with pytest.raises(KeyboardInterrupt), FeaturePasses(KeyboardInterrupt()):
        fresh.fit(X)
    assert fresh.__dict__ == params  # not half-fitted


def test_interrupted_first_batch_gives_a_usable_model():
    """Ctrl-C during the very first optimizer step: fitted, with 0 epochs
    and the initial weights, and it predicts."""
    X = clips(8)
    with InterruptAt(1, "raise").hooks():
        with pytest.warns(UserWarning, match=r"interrupted .* after 0 epoch"):
            clf = classifier().fit(X, LABELS)
    assert clf.n_iter_ == 0 and clf.history_ == []
    proba = clf.predict_proba(X)
    assert proba.shape == (8, 2) and np.isfinite(proba).all()


# ---------------------------------------------------------------- checkpoints


class _Payload:
    """Unpickling it creates a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, hf_tiny_dir):
    """name -> (path, pattern of the error, which names the path)."""
    d = tmp_path_factory.mktemp("checkpoints")
    sd = {"module.v." + k: v for k, v in AST(ASTConfig(**TINY)).state_dict().items()}
    out = {}

    def add(name, path, pattern):
        out[name] = (path, pattern)

    torch.save(sd, d / "audioset_10_10_good.pth")
    raw = (d / "audioset_10_10_good.pth").read_bytes()
    (d / "truncated.pth").write_bytes(raw[: len(raw) // 3])
    add("truncated .pth", d / "truncated.pth", r"truncated\.pth' is not a readable")
    hf = d / "truncated_hf"
    hf.mkdir()
    (hf / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    data = (hf_tiny_dir / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(data[: len(data) // 2])
    add("truncated safetensors", hf, r"truncated_hf.*truncated or corrupt")
    wrong = dict(sd, **{"module.v.blocks.0.mlp.fc1.weight": torch.zeros(10, 32)})
    torch.save(wrong, d / "audioset_10_10_wrong.pth")
    add("wrong shapes", d / "audioset_10_10_wrong.pth", r"wrong\.pth.*wrong shapes")
    (d / "text.pth").write_text("this is not a checkpoint")
    add("text file named .pth", d / "text.pth", r"text\.pth' is not a readable")
    add("missing file", d / "missing.pth", r"no such checkpoint file.*missing\.pth")
    marker = d / "pwned"
    evil = dict(sd, extra=_Payload(str(marker)))
    torch.save(evil, d / "audioset_10_10_evil.pth")
    add("pickle with code (.pth)", d / "audioset_10_10_evil.pth", r"refusing.*evil")
    evil_hf = d / "evil_hf"
    evil_hf.mkdir()
    (evil_hf / "config.json").write_text((hf_tiny_dir / "config.json").read_text())
    torch.save(evil, evil_hf / "pytorch_model.bin")
    add("pickle with code (.bin)", evil_hf, r"refusing to load .*evil_hf")
    (d / "plain_evil.pth").write_bytes(pickle.dumps(_Payload(str(marker))))
    add("plain pickle with code", d / "plain_evil.pth", r"plain_evil\.pth' is not a")
    (d / "bytes.pth").write_bytes(b"garbage\x00\x01" * 10)
    add("random bytes", d / "bytes.pth", r"bytes\.pth' is not a readable")
    (d / "empty.bin").write_bytes(b"")
    add("empty file", d / "empty.bin", r"empty\.bin' is not a readable.*EOFError")
    return out, marker


CHECKPOINT_CASES = [
    "truncated .pth",
    "truncated safetensors",
    "wrong shapes",
    "text file named .pth",
    "missing file",
    "pickle with code (.pth)",
    "pickle with code (.bin)",
    "plain pickle with code",
    "random bytes",
    "empty file",
]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_bad_checkpoints_through_the_estimators_and_the_cli(
    case, checkpoints, tmp_path, capsys
):
    (cases, marker), X = checkpoints, clips(8)
    path, pattern = cases[case]
    error = OSError if case == "missing file" else ValueError
    for est in (
        featurizer(checkpoint=path, model_config=None),
        classifier(checkpoint=path, model_config=None),
    ):
        params = dict(est.__dict__)
        with pytest.raises(error, match=pattern):
            est.fit(X, LABELS)
        assert est.__dict__ == params
    # a fitted estimator pointed at it keeps its model
    est = featurizer(batch_size=4).fit(X)
    est.set_params(checkpoint=path, model_config=None)
    snap = snapshot(est)
    with pytest.raises(error, match=pattern):
        est.fit(X)
    assert_unchanged(est, snap)
    # the command line: exit code 1 and a one-line message naming the file
    wav = tmp_path / "a.wav"
    sf.write(wav, X[0], SR)
    argv = ["embed", str(wav), "-o", str(tmp_path / "x.npy"), "--checkpoint"]
    capsys.readouterr()
    assert main([*argv, str(path), "--device", "cpu", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("skast: error: ") and path.name in err
    assert "Traceback" not in err
    assert not marker.exists()  # the code in the pickles never ran


def test_the_payload_is_real(tmp_path):
    """Unpickled without the guard, the payload creates its file: the
    tests above would notice if the guard were gone."""
    marker = tmp_path / "made"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pth", weights_only=False)["x"].close()
    assert marker.exists()


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"\x80\x04\x95garbage", r"cannot load the model file '.*model\.joblib'"),
        ("not a model", r"'.*model\.joblib' does not hold a fitted classifier"),
        (None, r"No such file or directory: '.*model\.joblib'"),
    ],
)
def test_cli_predict_with_a_bad_model_file(content, pattern, tmp_path, capsys):
    model = tmp_path / "model.joblib"
    if isinstance(content, bytes):
        model.write_bytes(content)
    elif content is not None:
        joblib.dump({"model": content}, model)
    wav = tmp_path / "a.wav"
    sf.write(wav, clips(1)[0], SR)
    assert main(["predict", str(model), str(wav)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("skast: error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert re.search(pattern, err), err


# ---------------------------------------------------------------- a shared cache


def _embed_into(cache, X, out, barrier):
    est = ASTFeaturizer(model_config=FAST, device="cpu", batch_size=4, cache=cache)
    est.fit(X)
    barrier.wait(timeout=300)  # both processes embed at the same time
    np.save(out, est.transform(X))


def test_two_processes_embed_same_and_different_clips_into_one_cache(tmp_path):
    shared, mine, theirs = clips(8, seed=1), clips(6, seed=2), clips(6, seed=3)
    X1 = mine + shared  # process 1
    X2 = shared[::-1] + theirs  # process 2: the shared clips in another order
    cache = tmp_path / "cache"
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_embed_into, args=(cache, X, tmp_path / f"{i}.npy", barrier))
        for i, X in enumerate([X1, X2])
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    every = mine + shared + theirs
    fresh = featurizer(batch_size=4).fit(every).transform(every)
    # the files are named by the clips' fingerprints
    audio = check_audio_input(every)
    by_name = {audio.fingerprint(i): fresh[i] for i in range(len(every))}
    # each process got what a computation without cache gives
    assert_allclose(np.load(tmp_path / "0.npy"), fresh[:14], atol=1e-6)
    expected = np.r_[fresh[6:14][::-1], fresh[14:]]
    assert_allclose(np.load(tmp_path / "1.npy"), expected, atol=1e-6)
    # nothing lost, nothing corrupt, no temporary files left
    files = sorted(p for p in cache.rglob("*") if p.is_file())
    assert all(f.suffix == ".npy" and not f.name.startswith(".") for f in files)
    assert sorted(f.stem for f in files) == sorted(by_name)
    for f in files:
        row = np.load(f, allow_pickle=False)
        assert row.dtype == np.float32 and row.shape == (TINY["hidden_size"],)
        assert_allclose(row, by_name[f.stem], atol=1e-6)
    # and a third user reads them all from the cache
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reread = featurizer(batch_size=4, cache=cache).fit(every).transform(every)
    assert_allclose(reread, fresh, atol=1e-6)
