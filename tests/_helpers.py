"""Helpers shared by the test files: clips, estimator factories, and the
before/after comparison of an estimator and of the user's input.

:func:`snapshot` and :func:`assert_unchanged` check the rule that a call that
fails leaves the estimator as it was (docs/user_guide/robustness.rst): every
attribute equal, and the model the same object with the same weights.
"""

import copy
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from numpy.testing import assert_array_equal

from skast import ASTClassifier, ASTFeaturizer
from skast._recipes import SAMPLE_RATE
from tests.conftest import FAST


def clips(n, seed=0, seconds=0.3):
    """``n`` float32 clips of white noise, ``seconds`` long."""
    rng = np.random.default_rng(seed)
    return [
        (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
        for _ in range(n)
    ]


def write(path, data, rate=SAMPLE_RATE, **kw):
    """``data`` written to the audio file ``path`` (soundfile); the path."""
    sf.write(path, data, rate, **kw)
    return path


def featurizer(**params):
    """An ``ASTFeaturizer`` of the FAST model on the CPU."""
    return ASTFeaturizer(**{"model_config": FAST, "device": "cpu", **params})


# the classifier of ``classifier()``: two short epochs of the FAST model
CLASSIFIER = dict(
    model_config=FAST,
    device="cpu",
    max_epochs=2,
    batch_size=8,
    learning_rate=1e-3,
    random_state=0,
)


def classifier(**params):
    """An ``ASTClassifier`` of :data:`CLASSIFIER`, with ``params`` over it."""
    return ASTClassifier(**{**CLASSIFIER, **params})


def same(a, b) -> bool:
    """Deep equality of estimator attributes (tensors, arrays, containers)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.equal(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b))
        )
    return type(a) is type(b) and a == b


def snapshot(est) -> dict:
    """A copy of the estimator's state: the model as (object id, its tensors)."""
    snap = {}
    for name, value in est.__dict__.items():
        if isinstance(value, torch.nn.Module):
            tensors = {k: v.detach().clone() for k, v in value.state_dict().items()}
            snap[name] = ("module", id(value), tensors)
        else:
            snap[name] = copy.deepcopy(value)
    return snap


def assert_unchanged(est, snap) -> None:
    """``est`` equals its :func:`snapshot` ``snap``."""
    assert est.__dict__.keys() == snap.keys()
    for name, before in snap.items():
        now = est.__dict__[name]
        if isinstance(now, torch.nn.Module):
            assert before[:2] == ("module", id(now)), f"{name} was replaced"
            assert same(
                {k: v.detach() for k, v in now.state_dict().items()}, before[2]
            ), f"the weights of {name} changed"
        else:
            assert same(now, before), f"{name} changed"


def assert_same_input(X, X_copy) -> None:
    """The user's ``X`` equals its deep copy ``X_copy``, taken before a call:
    the same types, values, dtypes and writeable flags."""
    assert type(X) is type(X_copy)
    if isinstance(X, np.ndarray):
        assert X.dtype == X_copy.dtype and X.shape == X_copy.shape
        if X.dtype == object:
            for a, b in zip(X.ravel(), X_copy.ravel()):
                assert_same_input(a, b)
        else:
            assert_array_equal(X, X_copy)
            assert X.flags.writeable == X_copy.flags.writeable
    elif isinstance(X, (list, tuple)):
        assert len(X) == len(X_copy)
        for a, b in zip(X, X_copy):
            assert_same_input(a, b)
    else:
        assert X == X_copy or (X != X and X_copy != X_copy)


def log_encoder_clips(folder):
    """Count the clips through every AST encoder of this process from now on:
    each forward pass of a patch embedding (torch's global forward pre-hook,
    which every pass runs first) appends its batch size to
    ``<folder>/<pid>.clips``. Returns the hook's handle."""
    from torch.nn.modules.module import register_module_forward_pre_hook

    from skast._model import PatchEmbed

    def hook(module, args):
        if isinstance(module, PatchEmbed):
            with open(f"{folder}/{os.getpid()}.clips", "a") as f:
                f.write(f"{len(args[0])}\n")

    return register_module_forward_pre_hook(hook)


def logged_clips(folder) -> dict:
    """The clips :func:`log_encoder_clips` counted in ``folder``, per process id."""
    return {
        int(p.stem): sum(int(n) for n in p.read_text().split())
        for p in Path(folder).glob("*.clips")
    }
