"""scikit-learn estimators built on the Audio Spectrogram Transformer."""

__version__ = "0.1.0.dev0"
