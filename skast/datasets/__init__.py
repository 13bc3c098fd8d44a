"""Sound sets: a synthetic one built in memory, and ESC-50.

* :func:`make_sounds` generates clearly different classes of synthetic sounds
  (tones, chirps, noise bursts, click trains...), for examples, tests and
  quick experiments that must run anywhere without a download.
* :func:`load_esc50` reads an ESC-50 tree already on disk (file paths or
  decoded waveforms, labels, the five predefined folds).
* :func:`fetch_esc50` downloads ESC-50 once into scikit-learn's data home and
  loads it.

ESC-50 comes with five folds, made so that fragments of the same source
recording are in a single fold. Cross-validate with them, never with a
shuffled ``KFold``: ``LeaveOneGroupOut()`` with ``groups=esc.folds``, or
``PredefinedSplit(esc.folds - 1)``.
"""

from skast.datasets._esc50 import ESC50_SHA256, ESC50_URL, fetch_esc50, load_esc50
from skast.datasets._sounds import make_sounds

__all__ = [
    "ESC50_SHA256",
    "ESC50_URL",
    "fetch_esc50",
    "load_esc50",
    "make_sounds",
]
