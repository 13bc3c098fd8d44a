"""Data and model settings the examples share.

By default: the built-in synthetic sound set and a small randomly initialised
AST, so that every example runs on a CPU in seconds (fine-tuning: about a
minute). With the environment variable ``SKAST_ESC50`` set to an ESC-50
folder: the real data, its five folds, and the AudioSet checkpoint at ESC-50's
512 frames (the paper's setting).
"""

import os

import numpy as np

from skast import _recipes
from skast.datasets import load_esc50, make_sounds

ESC50 = os.environ.get("SKAST_ESC50")
# the AudioSet model of the AST paper (skast._recipes.CHECKPOINT)
CHECKPOINT = _recipes.CHECKPOINT
# the small randomly initialised AST of `skast demo` (skast._recipes.TINY)
TINY = _recipes.TINY


def dataset():
    """``(X, y, groups, target_names)``: clips, labels, folds and class names."""
    if ESC50:
        esc = load_esc50(ESC50)
        return esc.data, esc.target, esc.folds, esc.target_names
    sounds = make_sounds(n_per_class=20, n_classes=6, random_state=0)
    folds = np.arange(len(sounds.target)) % 5 + 1  # five folds, as ESC-50 has
    return sounds.data, sounds.target, folds, sounds.target_names


def model_params():
    """Constructor arguments for ASTFeaturizer / ASTClassifier."""
    if ESC50:  # the ESC-50 recipe's 512 frames and feature statistics
        recipe = _recipes.RECIPES["esc50"]
        return {
            "checkpoint": CHECKPOINT,
            "max_length": recipe["max_length"],
            "normalize": recipe["normalize"],
        }
    return {
        "model_config": TINY,
        "max_length": 128,
        "normalize": "fit",
        "device": "cpu",
    }
