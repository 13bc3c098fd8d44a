"""Shared fixtures: the tests' tiny model configs, random-weight checkpoints,
fitted estimators with good and bad clips, and injected out-of-memory errors.

Helpers that are not fixtures (clips, estimator factories, snapshots of an
estimator) are in tests/_helpers.py.
"""

import numpy as np
import pytest
import torch
from torch.nn.modules.module import register_module_forward_pre_hook

from skast._model import PatchEmbed

# the original AST code (tests/reference/README.md) is imported by
# test_original.py, not collected: --doctest-modules would import it alone
collect_ignore_glob = ["reference/*"]

# The tests' tiny AST (``ASTConfig`` / ``model_config`` fields), random weights:
# TINY has the published checkpoints' overlapping 10x10 strides (12 x 5 = 60
# patches of 16x16 at 64 frames), FAST non-overlapping 16x16 patches (8 x 4 =
# 32, for tests that fit or transform many times), SHORT is FAST at 32
# frames (8 x 2 = 16 patches, for tests that train).
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_length=64,
    num_mel_bins=128,
)
FAST = dict(TINY, frequency_stride=16, time_stride=16)
SHORT = dict(FAST, max_length=32)


def randomize_(module, seed=0):
    """Give every parameter non-trivial random values (HF zero-inits tokens)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            std = 0.02 if p.ndim > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def hf_tiny_dir(tmp_path_factory):
    """A tiny ASTForAudioClassification saved by transformers (random weights)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ASTConfig(**TINY, num_labels=3)
    torch.manual_seed(0)
    model = randomize_(transformers.ASTForAudioClassification(cfg).eval())
    path = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(path)
    return path


# ---------------------------------------------------------------- fitted estimators


@pytest.fixture(scope="module")
def good_clips():
    """Three clips of noise, 0.3 s each."""
    from tests._helpers import clips

    return clips(3)


@pytest.fixture(scope="module")
def fitted_featurizer(good_clips):
    from tests._helpers import featurizer

    return featurizer(normalize="fit").fit(good_clips)


@pytest.fixture(scope="module")
def fitted_classifier(good_clips):
    """Fitted for one epoch on six clips labelled "a", "b", "a", "a", "b", "a"."""
    from tests._helpers import classifier, clips

    X = good_clips + clips(3, seed=1)
    y = np.array(["a", "b", "a"] * 2)
    return classifier(max_epochs=1, batch_size=4).fit(X, y)


@pytest.fixture(scope="module")
def audio_files(tmp_path_factory, good_clips):
    """A folder of audio files: ``good.wav`` (the first of ``good_clips``) and
    bad ones: ``truncated.wav``, ``corrupt.flac``, ``notes.ogg`` (text),
    ``empty.wav`` (0 frames) and ``nan.wav``."""
    from tests._helpers import write

    d = tmp_path_factory.mktemp("files")
    raw = write(d / "good.wav", good_clips[0]).read_bytes()
    (d / "truncated.wav").write_bytes(raw[:30])  # cut inside the header
    (d / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 4)
    (d / "notes.ogg").write_text("these are not audio samples")
    write(d / "empty.wav", np.zeros(0, np.float32))
    write(d / "nan.wav", np.array([0.0, np.nan], np.float32), subtype="FLOAT")
    return d


# ---------------------------------------------------------------- out of memory


class OutOfMemory:
    """Device out-of-memory errors for every AST given more than ``limit``
    clips at once (``None``: no fault).

    Injected through torch's global forward pre-hook on the model's patch
    embedding, which every forward pass runs first: in training, validation,
    ``transform`` and prediction alike. While ``limit`` is set, ``calls``
    records each forward as ``(clips, ran, phase)``, ``phase`` being
    ``"train"`` (gradients on) or ``"eval"``. ``error()`` makes the error.
    """

    def __init__(self):
        self.limit = None
        self.error = lambda: torch.OutOfMemoryError("CUDA out of memory.")
        self.calls = []

    def __call__(self, module, args):
        if self.limit is None or not isinstance(module, PatchEmbed):
            return
        n = len(args[0])
        phase = "train" if torch.is_grad_enabled() else "eval"
        self.calls.append((n, n <= self.limit, phase))
        if n > self.limit:
            raise self.error()

    def sizes(self, ran, phase=None):
        """The sizes of the pieces that ran (or failed), in order."""
        return [n for n, ok, p in self.calls if ok == ran and phase in (None, p)]


@pytest.fixture
def oom():
    """An :class:`OutOfMemory`, hooked for the test and removed after it."""
    fault = OutOfMemory()
    handle = register_module_forward_pre_hook(fault)
    yield fault
    handle.remove()
