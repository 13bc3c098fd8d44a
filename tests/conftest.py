"""Shared fixtures: the tests' tiny model configs and random-weight checkpoints."""

import numpy as np
import pytest
import torch

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
