"""Original ``.pth`` checkpoints against the original code.

The reference is the original repository's own model, ``src/models/ast_models.py``
of ``YuanGongND/ast`` (BSD-3-Clause) at :data:`ORIGINAL_COMMIT`, on timm 0.4.5:
see tests/reference/README.md for where the file goes. A random full-size
model (base384: 768 wide, 12 blocks of 12 heads) built by that code is saved
as the released files are (its ``DataParallel`` state dict, ``module.``
keys) and loaded by skast; the pooled vector and the logits agree to 1e-4 and
the top labels are the same. The tests of the epsilons' round trip through
``config.json`` and skast's own format need neither timm nor the file.
"""

import contextlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import skast
from skast import ASTFeaturizer
from skast._checkpoints import load_checkpoint, save_pretrained
from skast._features import fbank, normalize
from skast._labels import label_table
from skast._model import AST, ASTConfig
from skast._recipes import NORM_STATS
from tests._helpers import clips
from tests.conftest import TINY, randomize_

# timm 0.4.5 and the original code on today's torch
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`torch.cuda.amp.autocast:FutureWarning"),
    pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning"),
]

ORIGINAL_COMMIT = "2e00ccbb62c7cc2e1775f5d846464132fc23ae5d"
ORIGINAL_URL = (
    "https://raw.githubusercontent.com/YuanGongND/ast/"
    f"{ORIGINAL_COMMIT}/src/models/ast_models.py"
)
REFERENCE = Path(
    os.environ.get("SKAST_AST_REFERENCE")
    or Path(__file__).parent / "reference" / "ast_models.py"
)


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ValueError:  # in sys.modules without a spec
        return False


@contextlib.contextmanager
def _shims():
    """What timm 0.4.5 and ast_models.py import and torch 2 (or this
    environment) lacks, in ``sys.modules`` only while they are imported."""
    with pytest.MonkeyPatch.context() as mp:
        # torch._six went with torch 2.0; timm 0.4.5 reads these three from it
        if _missing("torch._six"):
            six = types.ModuleType("torch._six")
            six.container_abcs = __import__("collections.abc").abc
            six.string_classes = (str, bytes)
            six.int_classes = int
            six.inf = float("inf")
            mp.setitem(sys.modules, "torch._six", six)
        # timm.data imports torchvision's transforms at import time; the ViT
        # never uses them (and torchvision would pull another torch)
        if _missing("torchvision"):
            tv = types.ModuleType("torchvision")
            tv.transforms = types.ModuleType("torchvision.transforms")
            tv.transforms.functional = types.ModuleType(
                "torchvision.transforms.functional"
            )
            mp.setitem(sys.modules, "torchvision", tv)
            mp.setitem(sys.modules, "torchvision.transforms", tv.transforms)
            mp.setitem(
                sys.modules,
                "torchvision.transforms.functional",
                tv.transforms.functional,
            )
        # only the audioset_pretrain=True branch downloads with wget
        if _missing("wget"):
            mp.setitem(sys.modules, "wget", types.ModuleType("wget"))
        # ast_models.py sets TORCH_HOME when imported
        if "TORCH_HOME" in os.environ:
            mp.setenv("TORCH_HOME", os.environ["TORCH_HOME"])
        else:
            mp.delenv("TORCH_HOME", raising=False)
        yield


@pytest.fixture(scope="module")
def original():
    """The original code's ``ASTModel`` class."""
    if not REFERENCE.is_file():
        pytest.skip(
            f"the original ast_models.py is not at {REFERENCE} "
            "(tests/reference/README.md says how to get it)"
        )
    if _missing("timm"):
        pytest.skip("timm is not installed (pip install --no-deps timm==0.4.5)")
    with _shims():
        try:
            import timm

            if timm.__version__ != "0.4.5":
                pytest.skip(
                    f"the original code needs timm 0.4.5, not {timm.__version__}"
                )
            spec = importlib.util.spec_from_file_location("ast_models", REFERENCE)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except ImportError as err:
            pytest.skip(f"timm 0.4.5 or the original code does not import here: {err}")
    return module.ASTModel


# (file name, classes, frames): the AudioSet file's 10x10 strides at 256
# frames (its position embeddings built for that length) and the Speech
# Commands one at its own 128
FILES = [
    ("audioset_10_10_0.4593.pth", 527, 256),
    ("speechcommands_10_10_0.9812.pth", 35, 128),
]


@pytest.fixture(scope="module", params=FILES, ids=[f[0].split("_")[0] for f in FILES])
def released(request, original, tmp_path_factory):
    """A random full-size original model, saved as the released files are."""
    name, n_classes, frames = request.param
    torch.manual_seed(0)
    ref = original(
        label_dim=n_classes,
        fstride=10,
        tstride=10,
        input_fdim=128,
        input_tdim=frames,
        imagenet_pretrain=False,
        audioset_pretrain=False,
        model_size="base384",
        verbose=False,
    )
    # non-trivial values everywhere, LayerNorm weights and biases included
    ref = randomize_(ref).eval()
    path = tmp_path_factory.mktemp("original") / name
    torch.save(nn.DataParallel(ref).state_dict(), path)
    x = torch.randn(3, frames, 128, generator=torch.Generator().manual_seed(1))
    return ref, path, x


def _original_outputs(ref, x):
    """The original's pooled vector (the input of its ``mlp_head``) and logits."""
    seen = []
    hook = ref.mlp_head.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            logits = ref(x)
    finally:
        hook.remove()
    return seen[0].float(), logits.float()


def test_original_pth_gives_the_original_code_s_numbers(released):
    ref, path, x = released
    pooled_ref, logits_ref = _original_outputs(ref, x)
    model = load_checkpoint(path).model
    assert model.config.max_length == x.shape[1]
    with torch.no_grad():
        tokens = model.forward_features(x)
        pooled = model.forward_head(tokens, pre_logits=True)
        logits = model.forward_head(tokens)
    assert logits_ref.abs().max() > 1e-2  # not a comparison of zeros
    torch.testing.assert_close(pooled, pooled_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits, logits_ref, atol=1e-4, rtol=0)
    # the same tags: the best label and the top five, in order
    top = logits.topk(5, dim=1).indices
    assert torch.equal(top, logits_ref.topk(5, dim=1).indices)


def test_from_pretrained_tags_as_the_original_code(released):
    """The tags of the original code on a clip's features, and those of
    from_pretrained on the clip itself, are the same labels in the same order."""
    ref, path, x = released
    frames = x.shape[1]
    rng = np.random.default_rng(2)
    n_samples = (frames - 1) * 160 + 400  # exactly `frames` kaldi frames
    waves = [
        (0.1 * rng.standard_normal(n_samples)).astype(np.float32) for _ in range(3)
    ]
    feats = normalize(
        fbank([torch.from_numpy(w) for w in waves], max_length=frames),
        *NORM_STATS["audioset"],  # from_pretrained's default normalisation
    )
    with torch.no_grad():
        logits_ref = ref(feats)
    names = label_table(logits_ref.shape[1])
    expected = [[names[int(j)] for j in row] for row in logits_ref.topk(5, 1).indices]
    clf = skast.ASTClassifier.from_pretrained(path, device="cpu")
    proba = clf.predict_proba(waves)
    got = [
        [str(clf.classes_[j]) for j in np.argsort(-p, kind="stable")[:5]] for p in proba
    ]
    assert got == expected


def test_original_pth_has_the_original_code_s_epsilons(released):
    ref, path, _ = released
    model = load_checkpoint(path).model

    def eps(module):
        return [m.eps for m in module.modules() if isinstance(m, nn.LayerNorm)]

    # blocks (two each), the final norm, the head's: in the same order
    assert eps(model) == eps(ref)
    assert eps(model)[-2:] == [1e-6, 1e-5]
    assert model.config.layer_norm_eps == 1e-6
    assert model.config.classifier_layer_norm_eps == 1e-5


# ------------------------------------------- the epsilons' round trips (no timm)


@pytest.fixture
def tiny_pth(tmp_path):
    """A tiny original-layout file (``module.v.*``, ``module.mlp_head.*``)."""
    torch.manual_seed(0)
    model = randomize_(AST(ASTConfig(**TINY, id2label={0: "a", 1: "b", 2: "c"})))
    sd = {}
    for k, v in model.state_dict().items():
        head = k.startswith("head.")
        sd[("module.mlp_head." + k[5:]) if head else ("module.v." + k)] = v
    torch.save(sd, tmp_path / "audioset_10_10_tiny.pth")
    return tmp_path / "audioset_10_10_tiny.pth"


def test_save_pretrained_keeps_the_original_epsilons(tiny_pth, tmp_path):
    ckpt = load_checkpoint(tiny_pth)
    save_pretrained(ckpt.model, tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert written["layer_norm_eps"] == 1e-6
    assert written["classifier_layer_norm_eps"] == 1e-5
    back = load_checkpoint(tmp_path / "hf").model
    assert back.config == ckpt.config
    assert back.head[0].eps == 1e-5 and back.norm.eps == 1e-6
    x = torch.randn(2, 64, 128)
    with torch.no_grad():
        assert torch.equal(back(x), ckpt.model(x))


def test_transformers_keeps_both_epsilons(tiny_pth, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_pretrained(load_checkpoint(tiny_pth).model, tmp_path / "ours")
    hf = transformers.ASTForAudioClassification.from_pretrained(tmp_path / "ours")
    # transformers has one epsilon: the blocks' one, in every LayerNorm
    # (the head's too, as skast's ASTConfig documents)
    assert {m.eps for m in hf.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    hf.save_pretrained(tmp_path / "theirs")
    back = load_checkpoint(tmp_path / "theirs").model
    assert back.norm.eps == 1e-6 and back.head[0].eps == 1e-5


def test_a_hugging_face_config_keeps_its_epsilon(hf_tiny_dir):
    model = load_checkpoint(hf_tiny_dir).model
    assert model.config.classifier_layer_norm_eps is None
    assert "classifier_layer_norm_eps" not in model.config.to_dict()
    assert {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)} == {1e-12}


def test_skast_save_and_load_keep_the_original_epsilons(tiny_pth, tmp_path):
    est = ASTFeaturizer(checkpoint=str(tiny_pth), device="cpu").fit(clips(2))
    est.save(tmp_path / "est")
    back = skast.load(tmp_path / "est")
    assert back.model_.config == est.model_.config
    assert back.model_.head[0].eps == 1e-5
    np.testing.assert_array_equal(back.transform(clips(2)), est.transform(clips(2)))


@pytest.mark.parametrize("eps", [-1e-6, float("nan"), "1e-6", True])
def test_config_rejects_a_bad_epsilon(eps):
    with pytest.raises(ValueError, match="layer_norm_eps"):
        ASTConfig(classifier_layer_norm_eps=eps)
    with pytest.raises(ValueError, match="layer_norm_eps"):
        ASTConfig(layer_norm_eps=eps)
