"""A list of devices: one replica of the model per device, fed by one
DataLoader, gives what one device gives, in input order; the batches are
dealt out in turn (batch i on device i mod N), errors in any device's thread
are raised with their own type, and pickles carry no replicas.

The CPU stands in for the devices (``["cpu", "cpu"]``): these tests prove
equality and the spreading of the work, not speed (benchmarks/bench_devices.py).
"""

import pickle
import threading

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.utils._param_validation import InvalidParameterError

import skast
from skast import ASTClassifier, DeviceWarning
from skast._checkpoints import save_pretrained
from skast._model import AST, ASTConfig, PatchEmbed
from tests._helpers import clips, featurizer, write
from tests.conftest import FAST, randomize_

# Each device runs the same batches through the same kernels as one device
# would; only the order of float32 reductions inside a kernel may differ
# between threads, a few units of float32 rounding of outputs of order one.
TOL = dict(rtol=1e-5, atol=1e-6)
X = clips(13, seed=3)  # batch_size=2: 7 batches, a multiple of neither 2 nor 3
TWO, THREE = ["cpu"] * 2, ["cpu"] * 3


@pytest.fixture(scope="module")
def one():
    return featurizer(batch_size=2).fit(X)


class Batches:
    """The sizes of the batches each replica's patch embedding ran, by
    replica (the model's own first), from a forward hook on the fitted
    ``model_``'s patch embedding, which its replicas share."""

    def __init__(self, model):
        self.model = model
        self.by_module = {}
        self.threads = set()

    def __call__(self, module, args, output):
        self.by_module.setdefault(module, []).append(len(args[0]))
        self.threads.add(threading.current_thread().name)

    def sizes(self):
        first = self.by_module.get(self.model.patch_embed, [])
        others = [
            v for m, v in self.by_module.items() if m is not self.model.patch_embed
        ]
        return [first, *others]


def counted_transform(est, X):
    """``est.transform(X)`` and the :class:`Batches` of that call."""
    counter = Batches(est.model_)
    handle = est.model_.patch_embed.register_forward_hook(counter)
    try:
        return est.transform(X), counter
    finally:
        handle.remove()


@pytest.mark.parametrize("devices", [TWO, THREE])
def test_transform_equals_one_device_and_deals_batches_in_turn(one, devices):
    est = featurizer(batch_size=2, device=devices).fit(X)
    assert est.device_ == devices
    assert next(est.model_.parameters()).device == torch.device("cpu")
    got, counter = counted_transform(est, X)
    assert_allclose(got, one.transform(X), **TOL)
    sizes = [2] * 6 + [1]  # the batches, in order: batch i on replica i mod N
    dealt = [sizes[k :: len(devices)] for k in range(len(devices))]
    first, *others = counter.sizes()  # the copies in the order they first ran
    assert [first, *sorted(others)] == [dealt[0], *sorted(dealt[1:])]
    assert len(counter.threads) == len(devices)


def test_the_replicas_are_kept_until_the_weights_change(one):
    est = featurizer(batch_size=2, device=TWO).fit(X)
    _, first = counted_transform(est, X)
    _, second = counted_transform(est, X)
    assert first.by_module.keys() == second.by_module.keys()  # the same copy
    with torch.no_grad():  # in place: the copy must follow
        est.model_.norm.weight.mul_(2.0)
        one_changed = pickle.loads(pickle.dumps(one))
        one_changed.model_.norm.weight.mul_(2.0)
    got, third = counted_transform(est, X)
    assert len(third.by_module.keys() - first.by_module.keys()) == 1  # a new copy
    assert_allclose(got, one_changed.transform(X), **TOL)
    assert not np.allclose(got, one.transform(X), **TOL)


def test_files_decoded_in_workers_feed_every_device(tmp_path):
    paths = [
        str(write(tmp_path / f"{i}.wav", clip, subtype="FLOAT"))  # the clips exactly
        for i, clip in enumerate(X[:5])
    ]
    ref = featurizer(batch_size=2, num_workers=1).fit(paths[:1]).transform(paths)
    est = featurizer(batch_size=2, num_workers=1, device=THREE).fit(paths[:1])
    assert_allclose(est.transform(paths), ref, **TOL)
    assert_allclose(est.transform(X[:5]), ref, **TOL)  # the same clips as arrays


def test_windows_equal_one_device():
    long = [*clips(2, seed=5, seconds=1.5), *clips(1, seed=7)]
    one = featurizer(batch_size=3, window_hop=0.25).fit(long)
    est = featurizer(batch_size=3, window_hop=0.25, device=TWO).fit(long)
    assert_allclose(est.transform(long), one.transform(long), **TOL)
    (got, got_starts), (ref, ref_starts) = [
        e.transform_windows(long) for e in (est, one)
    ]
    for a, b, a_starts, b_starts in zip(got, ref, got_starts, ref_starts):
        assert_allclose(a, b, **TOL)
        assert_array_equal(a_starts, b_starts)
    assert sum(len(a) for a in got) > len(long)  # windows, not clips


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A directory holding a random FAST model with a head of three labels."""
    path = tmp_path_factory.mktemp("pretrained")
    torch.manual_seed(0)
    save_pretrained(
        randomize_(AST(ASTConfig(**FAST, id2label={0: "a", 1: "b", 2: "c"}))), path
    )
    return path


def test_predictions_equal_one_device(pretrained):
    long = [*clips(2, seed=5, seconds=1.5), *X[:5]]
    kw = dict(batch_size=2, window_hop=0.25)
    one = ASTClassifier.from_pretrained(pretrained, device="cpu", **kw)
    est = ASTClassifier.from_pretrained(pretrained, device=THREE, **kw)
    assert est.device_ == THREE
    for method in ("predict_proba", "decision_function", "predict_log_proba"):
        got, ref = getattr(est, method)(long), getattr(one, method)(long)
        assert_allclose(got, ref, **TOL)
    assert_array_equal(est.predict(long), one.predict(long))
    got, got_starts = est.predict_proba_windows(long)
    ref, ref_starts = one.predict_proba_windows(long)
    for a, b, a_starts, b_starts in zip(got, ref, got_starts, ref_starts):
        assert_allclose(a, b, **TOL)
        assert_array_equal(a_starts, b_starts)


def test_out_of_memory_halves_on_each_device(one, oom):
    est = featurizer(batch_size=2, device=TWO).fit(X)
    ref = one.transform(X)
    oom.limit = 1
    got = est.transform(X)
    assert set(oom.sizes(ran=True)) == {1}
    assert len(oom.sizes(ran=True)) == len(X)
    # each device halves its own batches: its first failed, then it kept 1
    assert oom.sizes(ran=False) == [2, 2]
    assert_allclose(got, ref, **TOL)


class ReplicaFault(Exception):
    """Raised in the second replica's thread."""


def skast_threads():
    return [t for t in threading.enumerate() if t.name.startswith("skast-")]


def test_an_error_on_one_device_is_raised_with_its_type_and_stops_all():
    est = featurizer(batch_size=2, device=THREE).fit(X)
    first = est.model_.patch_embed

    def fail(module, args):
        if module is not first and isinstance(module, PatchEmbed):
            raise ReplicaFault("batch on a replica")

    handle = first.register_forward_pre_hook(fail)
    try:
        with pytest.raises(ReplicaFault, match="batch on a replica"):
            est.transform(X)
    finally:
        handle.remove()
    assert skast_threads() == []
    assert_allclose(
        est.transform(X), featurizer(batch_size=2).fit(X).transform(X), **TOL
    )


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_bad_file_fails_as_on_one_device(audio_files, num_workers):
    paths = [str(audio_files / "good.wav")] * 4 + [str(audio_files / "truncated.wav")]
    paths += [str(audio_files / "good.wav")] * 3
    kw = dict(batch_size=2, num_workers=num_workers)
    good = paths[:1]
    with pytest.raises(Exception) as ref:
        featurizer(**kw).fit(good).transform(paths)
    with pytest.raises(type(ref.value)) as got:
        featurizer(device=TWO, **kw).fit(good).transform(paths)
    assert str(got.value) == str(ref.value)
    assert skast_threads() == []


def pickled_objects(obj):
    """The pickle of ``obj`` and the modules and tensors it holds."""
    found = []

    class Counting(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, (torch.nn.Module, torch.Tensor)):
                found.append(o)
            return None

    import io

    Counting(io.BytesIO()).dump(obj)
    return found


def test_pickles_and_saves_carry_no_replicas(one, tmp_path):
    est = featurizer(batch_size=2, device=TWO).fit(X)
    ref = est.transform(X)
    found = pickled_objects(est)
    assert not [o for o in found if isinstance(o, torch.nn.Module)]
    assert len(found) == len(est.model_.state_dict())  # one model's weights
    loaded = pickle.loads(pickle.dumps(est))
    assert loaded.device_ == TWO
    assert_array_equal(loaded.transform(X), ref)
    est.save(tmp_path)
    saved = skast.load(tmp_path)
    assert saved.device == saved.device_ == TWO
    assert_array_equal(saved.transform(X), ref)


def test_loading_where_devices_are_missing_falls_back(monkeypatch, tmp_path):
    est = featurizer(batch_size=2).fit(X[:2])
    ref = est.transform(X[:2])
    est.device_ = ["cuda:0", "cuda:1"]  # as if fitted on two GPUs
    try:
        data = pickle.dumps(est)
        est.save(tmp_path)
    finally:
        est.device_ = "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning, match=r"of which \['cuda:0', 'cuda:1'\] are"):
        loaded = pickle.loads(data)
    assert loaded.device_ == "cpu"
    assert_array_equal(loaded.transform(X[:2]), ref)
    with pytest.warns(DeviceWarning, match="it will run on the CPU"):
        assert skast.load(tmp_path).device_ == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.warns(DeviceWarning, match=r"\['cuda:1'\] are not available"):
        assert skast._runtime.device_on_load(["cuda:0", "cuda:1"]) == ["cuda:0"]


@pytest.mark.parametrize(
    "device, match",
    [
        ([], "at least one device"),
        (("cpu", "gpu0"), r"device\[1\]: device='gpu0' is not a valid torch device"),
        (["cpu", None], r"device\[1\]=None"),
        (["cpu", 3], r"device\[1\]=3"),
        (["cpu", "meta"], "mixes device types"),
    ],
)
def test_a_bad_device_list_is_refused_naming_it(device, match):
    with pytest.raises(ValueError, match=match):
        featurizer(device=device).fit(X[:1])


def test_device_must_be_a_device_or_a_list():
    with pytest.raises(InvalidParameterError, match="'device' parameter"):
        featurizer(device=3).fit(X[:1])


def test_a_tuple_is_a_list_and_a_list_of_one_is_one_device(one):
    est = featurizer(batch_size=2, device=("cpu",)).fit(X)
    assert est.device_ == ["cpu"]
    assert_array_equal(est.transform(X), one.transform(X))
    assert clone(est).device == ("cpu",)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cuda_devices_equal_one_cuda_device(precision):
    n = torch.cuda.device_count()
    devices = [f"cuda:{i}" for i in range(n)] if n > 1 else ["cuda:0"] * 2
    kw = dict(batch_size=2, precision=precision)
    one = featurizer(device="cuda:0", **kw).fit(X)
    est = featurizer(device=devices, **kw).fit(X)
    got, counter = counted_transform(est, X)
    # the same batches through the same kernels on GPUs of one model
    assert_allclose(got, one.transform(X), **TOL)
    assert len(counter.by_module) == len(devices)
    on = {next(m.parameters()).device for m in counter.by_module}
    assert on == {torch.device(d) for d in devices}
