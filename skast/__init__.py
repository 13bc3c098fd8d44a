"""scikit-learn estimators built on the Audio Spectrogram Transformer (AST)."""

import importlib

__version__ = "0.1.0.dev0"

__all__ = ["ASTClassifier", "ASTFeaturizer", "DeviceWarning", "__version__", "load"]

# Imported on first use, so that ``import skast._model`` (or the command
# line's --help) does not load scikit-learn, torch and the whole stack.
_LAZY = {
    "ASTClassifier": "skast._classifier",
    "ASTFeaturizer": "skast._featurizer",
    "DeviceWarning": "skast._runtime",
    "load": "skast._persist",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'skast' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
