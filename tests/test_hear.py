"""skast.hear: the HEAR 2021 API (load_model, scene and timestamp embeddings)
and hearbenchmark's own validator on a tiny checkpoint."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

from skast import ASTFeaturizer, hear
from skast._checkpoints import save_pretrained
from skast._model import AST, ASTConfig
from tests.conftest import TINY, randomize_

# TINY: 64 frames, 10x10 strides -> 12 x 5 patches; a window's 5 columns
# start every 10 frames, so consecutive windows start 50 frames apart.
COLUMNS, STRIDE, HOP = 5, 10, 50
FRAME = 160  # samples per 10 ms frame

# The same float32 operations on batches of other sizes: the matrix products
# may sum in another order, so results agree to float32 rounding of sums of a
# few dozen terms of order 1, not bit for bit.
TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny checkpoint with random weights written by save_pretrained."""
    path = tmp_path_factory.mktemp("hear_tiny")
    save_pretrained(randomize_(AST(ASTConfig(**TINY)).eval()), path)
    return path


@pytest.fixture(scope="module")
def model(checkpoint):
    return hear.load_model(str(checkpoint), device="cpu")


def noise(n, seconds, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, int(seconds * 16000), generator=gen) * 2 - 1


def patch_inputs(model):
    """Record the normalised spectrograms that reach the encoder (a forward
    pre-hook on its patch embedding); the list and the hook's handle."""
    seen = []
    handle = model.encoder.patch_embed.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].detach().clone())
    )
    return seen, handle


def column_means(model, x, layer=None):
    """The mean over frequency of each time column of patch tokens, from
    forward_features directly: (B, COLUMNS, hidden_size)."""
    with torch.no_grad():
        patches = model.encoder.forward_features(x, layer)[:, 2:]
    f, t = model.encoder.config.grid
    return patches.reshape(len(x), f, t, -1).mean(dim=1).numpy()


# ---------------------------------------------------------------- load_model


def test_load_model_attributes(model):
    assert isinstance(model, torch.nn.Module)
    assert model.sample_rate == 16000
    assert model.scene_embedding_size == TINY["hidden_size"]
    assert model.timestamp_embedding_size == TINY["hidden_size"]
    assert isinstance(model.scene_embedding_size, int)
    assert isinstance(model.featurizer, ASTFeaturizer)
    assert model.encoder is model.featurizer.model_


def test_load_model_passes_kwargs_to_the_featurizer(checkpoint):
    model = hear.load_model(
        checkpoint, pooling="cls", layer=1, batch_size=3, device="cpu"
    )
    params = model.featurizer.get_params()
    assert (params["pooling"], params["layer"], params["batch_size"]) == ("cls", 1, 3)
    assert params["checkpoint"] == str(checkpoint)
    # parameters the featurizer does not have fail as they do there
    with pytest.raises(TypeError, match="no_such_parameter"):
        hear.load_model(checkpoint, no_such_parameter=1)


def test_load_model_default_is_the_audioset_checkpoint(monkeypatch):
    from skast._recipes import CHECKPOINT

    # stop at the featurizer's fit: no download in the test
    seen = {}

    def fit(self, X, y=None):
        seen["checkpoint"] = self.checkpoint
        raise RuntimeError("stop")

    monkeypatch.setattr(ASTFeaturizer, "fit", fit)
    with pytest.raises(RuntimeError, match="stop"):
        hear.load_model()
    assert seen["checkpoint"] == CHECKPOINT


def test_load_model_refuses_fitted_normalization(checkpoint):
    with pytest.raises(ValueError, match='normalize="fit"'):
        hear.load_model(checkpoint, normalize="fit")


def test_to_moves_the_featurizer(checkpoint):
    model = hear.load_model(checkpoint, device="cpu")
    assert model.to("cpu") is model
    assert model.featurizer.device_ == "cpu"
    assert model.featurizer.model_.pos_embed.device.type == "cpu"


def test_pickles_with_one_encoder(model):
    import pickle

    copy = pickle.loads(pickle.dumps(model))
    assert copy.encoder is copy.featurizer.model_  # one model, as loaded
    x = noise(2, 0.5)
    assert_array_equal(
        hear.get_scene_embeddings(x, copy), hear.get_scene_embeddings(x, model)
    )
    # the weights are pickled once: the featurizer's pickle and a little more
    alone = len(pickle.dumps(model.featurizer))
    assert len(pickle.dumps(model)) < alone + 4096


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_gives_outputs_on_the_audios_device(checkpoint):
    cpu = hear.load_model(checkpoint, device="cpu", precision="float32")
    model = hear.load_model(checkpoint, device="cpu", precision="float32")
    assert model.to("cuda") is model
    assert model.featurizer.device_.startswith("cuda")
    audio = noise(2, 1.5)
    for on in (audio.cuda(), audio):  # the validator's case, then CPU audio
        scene = hear.get_scene_embeddings(on, model)
        emb, times = hear.get_timestamp_embeddings(on, model)
        assert scene.device == emb.device == times.device == on.device
    # float32 on two devices: other kernels (and TF32 where enabled) round
    # differently, to about 1e-4 of these order-1 values
    assert_allclose(
        emb.numpy(), hear.get_timestamp_embeddings(audio, cpu)[0], atol=1e-3
    )
    assert_allclose(
        scene.numpy(), hear.get_scene_embeddings(audio, cpu).numpy(), atol=1e-3
    )


# ---------------------------------------------------------------- scene embeddings


def test_scene_embeddings_are_the_featurizers_transform(model):
    audio = noise(3, 0.8)
    scene = hear.get_scene_embeddings(audio, model)
    assert scene.dtype == torch.float32
    assert scene.shape == (3, model.scene_embedding_size)
    assert scene.device == audio.device
    assert_array_equal(scene.numpy(), model.featurizer.transform(audio))
    assert_array_equal(model(audio).numpy(), scene.numpy())


def test_scene_embeddings_past_one_window_are_the_mean_of_windows(model, checkpoint):
    audio = noise(2, 3.0)  # TINY's 64 frames are 0.64 s: several windows
    hop = model.featurizer.model_.config.max_length / 100  # one window, in s
    assert model.featurizer.window_hop == hop
    windows, starts = model.featurizer.transform_windows(audio)
    assert all(len(w) > 1 for w in windows)
    assert starts[0][1] == pytest.approx(hop)  # side by side
    scene = hear.get_scene_embeddings(audio, model).numpy()
    np.testing.assert_allclose(scene, np.stack([w.mean(0) for w in windows]), atol=1e-6)
    first = hear.load_model(str(checkpoint), device="cpu", window_hop=None)
    assert first.featurizer.window_hop is None  # the first window only
    np.testing.assert_array_equal(
        hear.get_scene_embeddings(audio, first).numpy(),
        first.featurizer.transform(audio[:, : 64 * 160 + 240]),
    )


def test_scene_embeddings_of_float64_audio(model):
    audio = noise(2, 0.5)
    scene = hear.get_scene_embeddings(audio.double(), model)
    assert scene.dtype == torch.float32
    assert_array_equal(scene.numpy(), hear.get_scene_embeddings(audio, model).numpy())


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.zeros(16000), ValueError),
        (torch.zeros(0, 16000), ValueError),
        (torch.zeros(2, 0), ValueError),
        (torch.zeros(2, 16000, dtype=torch.int16), TypeError),
    ],
)
def test_bad_audio(model, bad, error):
    with pytest.raises(error, match="audio"):
        hear.get_timestamp_embeddings(bad, model)
    with pytest.raises(error, match="audio"):
        hear.get_scene_embeddings(bad, model)


# ---------------------------------------------------------------- timestamp embeddings


@pytest.mark.parametrize("seconds", [0.02, 0.3, 0.62, 2.0, 3.74])
def test_timestamp_shapes_and_spacing(model, seconds):
    audio = noise(3, seconds)
    emb, times = hear.get_timestamp_embeddings(audio, model)
    n_frames = 1 + (max(audio.shape[1], 400) - 400) // FRAME
    n_cols = math.ceil(n_frames / STRIDE)  # columns that start inside the clip
    assert emb.dtype == times.dtype == torch.float32
    assert emb.shape == (3, n_cols, model.timestamp_embedding_size)
    assert times.shape == (3, n_cols)
    assert emb.device == times.device == audio.device
    # the same timestamps for every clip, the first column's centre first
    assert_array_equal(times.numpy(), np.broadcast_to(times[0].numpy(), times.shape))
    assert times[0, 0].item() == pytest.approx(87.5)
    if n_cols > 1:
        diff = torch.diff(times.double(), dim=1)
        assert (diff - STRIDE * 10).abs().max().item() < 1.0
    # the last column starts inside the clip, the next one would not
    last_start = (n_cols - 1) * STRIDE
    assert last_start < n_frames <= last_start + STRIDE


def test_timestamps_of_a_long_recording_stay_evenly_spaced(model):
    audio = torch.zeros(1, 600 * 16000)  # ten minutes: 1200 windows
    emb, times = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[1] == times.shape[1] == 6000
    diff = torch.diff(times, dim=1)
    assert (diff - diff.mean()).abs().max().item() < 1.0


def test_a_column_is_the_mean_of_its_patch_tokens(model):
    audio = noise(2, 0.5)  # one window: 48 frames, columns start at 0 .. 40
    seen, handle = patch_inputs(model)
    try:
        model.featurizer.transform(audio)
    finally:
        handle.remove()
    expected = column_means(model, torch.cat(seen))
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[1] == COLUMNS
    assert_allclose(emb.numpy(), expected, **TOL)


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_columns_at_the_layer_chosen(checkpoint, layer):
    model = hear.load_model(checkpoint, layer=layer, device="cpu")
    audio = noise(2, 0.5, seed=1)
    seen, handle = patch_inputs(model)
    try:
        model.featurizer.transform(audio)
    finally:
        handle.remove()
    emb, _ = hear.get_timestamp_embeddings(audio, model)
    assert_allclose(emb.numpy(), column_means(model, torch.cat(seen), layer), **TOL)


ONE_WINDOW = (TINY["max_length"] - 1) * 160 + 400  # samples of max_length frames


def test_long_audio_concatenates_windows(model):
    # 2 s: 198 frames, 20 columns, windows starting at frames 0, 50, 100, 150
    audio = noise(2, 2.0, seed=2)
    emb, times = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape[1] == 20
    for w in range(4):
        # window w equals transform's input of the audio cut at its start
        seen, handle = patch_inputs(model)
        try:
            # one window's samples: the featurizer windows longer audio
            start = w * HOP * FRAME
            model.featurizer.transform(audio[:, start : start + ONE_WINDOW])
        finally:
            handle.remove()
        expected = column_means(model, torch.cat(seen))
        cols = slice(w * COLUMNS, (w + 1) * COLUMNS)
        assert_allclose(emb[:, cols].numpy(), expected, **TOL)
        starts = (times[0, cols] - 87.5) / 10  # frames
        assert_allclose(starts.numpy(), w * HOP + STRIDE * np.arange(COLUMNS))


def test_batching_does_not_change_timestamp_embeddings(checkpoint):
    audio = noise(5, 1.3, seed=3)
    one = hear.load_model(checkpoint, batch_size=1, device="cpu")
    many = hear.load_model(checkpoint, batch_size=7, device="cpu")
    a, _ = hear.get_timestamp_embeddings(audio, one)
    b, _ = hear.get_timestamp_embeddings(audio, many)
    assert_allclose(a.numpy(), b.numpy(), **TOL)
    assert_allclose(
        a[2:3].numpy(), hear.get_timestamp_embeddings(audio[2:3], many)[0], **TOL
    )


# ---------------------------------------------------------------- the validator


@pytest.mark.skipif(
    importlib.util.find_spec("hearvalidator") is None,
    reason="hearvalidator is not installed",
)
def test_hearvalidator_accepts_the_module(checkpoint, tmp_path):
    # The validator imports tensorflow only for isinstance(model, tf.Module):
    # a stub module stands in for it (tensorflow itself is a 500 MB install).
    stub = tmp_path / "stub" / "tensorflow"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("class Module:\n    pass\n")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    paths = [str(root), str(stub.parent), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    command = [sys.executable, "-m", "hearvalidator.validate", "skast.hear"]
    done = subprocess.run(
        [*command, "--model", str(checkpoint), "--device", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Looks good!" in done.stdout
