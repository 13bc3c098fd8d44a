"""The built-in synthetic sound set: :func:`make_sounds`.

Each class is one kind of sound made with NumPy (a tone, a chirp, band noise,
clicks, AM, FM, a harmonic buzz, drips), so that examples and tests run
anywhere without a download.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, validate_params


def _fade(n, sample_rate, seconds=0.01):
    """A raised-cosine fade in and out over ``seconds`` (at most n // 4)."""
    k = max(1, min(int(seconds * sample_rate), n // 4))
    env = np.ones(n)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(k) / k)
    env[:k] = ramp
    env[n - k :] = np.minimum(env[n - k :], ramp[::-1])
    return env


def _tone(rng, t, sr):
    f = rng.uniform(250, 350)
    return np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) * _fade(t.size, sr)


def _chirp(rng, t, sr):
    f0, f1 = rng.uniform(400, 500), rng.uniform(750, 900)
    span = max(t[-1], 1.0 / sr)
    k = np.log(f1 / f0)
    phase = 2 * np.pi * f0 * span / k * (np.exp(k * t / span) - 1)
    return np.sin(phase + rng.uniform(0, 2 * np.pi)) * _fade(t.size, sr)


def _noise(rng, t, sr):
    # burst: only part of the sounding span
    n = max(8, int(t.size * rng.uniform(0.5, 0.9)))
    n = min(n, t.size)
    centre, width = rng.uniform(2900, 3300), rng.uniform(600, 900)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[np.abs(freqs - centre) > width / 2] = 0
    out = np.zeros(t.size)
    out[:n] = np.fft.irfft(spec, n) * _fade(n, sr)
    return out


def _clicks(rng, t, sr):
    rate = rng.uniform(8, 20)
    tau = rng.uniform(0.002, 0.004)
    click = np.exp(-np.arange(int(6 * tau * sr)) / (tau * sr))
    out = np.zeros(t.size)
    # the first click falls within the sounding span, however short
    start = rng.uniform(0, 0.5) * min(1.0 / rate, t[-1])
    for s in np.arange(start, t[-1] + 1e-9, 1.0 / rate):
        i = int((s + rng.uniform(-0.1, 0.1) / rate) * sr)
        i = min(max(i, 0), t.size - 1)
        m = min(click.size, t.size - i)
        # a random +-1 sequence under a fast decay: short, loud and broadband
        out[i : i + m] += click[:m] * rng.choice((-1.0, 1.0), size=m)
    return out


def _am(rng, t, sr):
    f, rate, depth = rng.uniform(1000, 1200), rng.uniform(3, 8), rng.uniform(0.6, 1)
    env = 1 + depth * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    carrier = np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    return env * carrier * _fade(t.size, sr)


def _fm(rng, t, sr):
    f, rate, depth = rng.uniform(1500, 1700), rng.uniform(4, 8), rng.uniform(40, 80)
    vibrato = depth / rate * np.sin(2 * np.pi * rate * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * f * t + vibrato + rng.uniform(0, 2 * np.pi)
    return np.sin(phase) * _fade(t.size, sr)


def _harmonic(rng, t, sr):
    f0 = rng.uniform(100, 150)
    out = np.zeros(t.size)
    for k in range(1, int(3000 // f0) + 1):
        out += np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k
    return out * _fade(t.size, sr)


def _drip(rng, t, sr):
    out = np.zeros(t.size)
    starts = np.sort(rng.uniform(0, t[-1], size=rng.randint(2, 6)))
    starts[0] = 0.0
    for s in starts:
        i = int(s * sr)
        u = t[: t.size - i]
        f, tau = rng.uniform(1900, 2100), rng.uniform(0.015, 0.04)
        # a short tone, gliding up a little as it decays, like a water drop
        phase = 2 * np.pi * f * (u + 0.5 * u**2)
        out[i:] += rng.uniform(0.5, 1) * np.exp(-u / tau) * np.sin(phase)
    return out


# name -> (generator, one-line description); make_sounds takes the first n.
_SOUNDS = {
    "tone": (_tone, "a steady sine, 250-350 Hz"),
    "chirp": (_chirp, "an exponential sweep rising from 400-500 Hz to 750-900 Hz"),
    "noise": (_noise, "a burst of noise band-limited around 2.9-3.3 kHz"),
    "clicks": (_clicks, "a train of 8-20 short broadband clicks per second"),
    "am": (_am, "a 1.0-1.2 kHz tone, amplitude-modulated at 3-8 Hz"),
    "fm": (_fm, "a 1.5-1.7 kHz tone with a 4-8 Hz vibrato of 40-80 Hz"),
    "harmonic": (_harmonic, "a buzz: 100-150 Hz and its harmonics up to 3 kHz"),
    "drip": (_drip, "2 to 5 decaying 1.9-2.1 kHz tones at random times"),
}
_MIN_SAMPLE_RATE = 8000  # every class stays below 4 kHz


@validate_params(
    {
        "n_per_class": [Interval(Integral, 1, None, closed="left")],
        "n_classes": [Interval(Integral, 2, len(_SOUNDS), closed="both")],
        "duration": [Interval(Real, 0.05, None, closed="left")],
        "sample_rate": [Interval(Integral, _MIN_SAMPLE_RATE, None, closed="left")],
        "noise": [Interval(Real, 0, 1, closed="both")],
        "random_state": ["random_state"],
        "return_X_y": ["boolean"],
        "shuffle": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def make_sounds(
    n_per_class=20,
    *,
    n_classes=6,
    duration=1.0,
    sample_rate=16000,
    noise=0.05,
    random_state=None,
    return_X_y=False,
    shuffle=True,
):
    """Generate a synthetic set of clearly different sounds.

    Each class is a kind of sound with its own frequency band and time
    structure, so that a small spectrogram model separates them. Within a
    class, every clip draws its frequencies from the class's band and its
    phase, amplitude and onset at random; light white noise is added to all
    of it. The clips are made in memory: nothing is read or downloaded.

    ==========  ========================================================
    class       sound
    ==========  ========================================================
    tone        a steady sine, 250-350 Hz
    chirp       an exponential sweep rising from 400-500 Hz to 750-900 Hz
    noise       a burst of noise band-limited around 2.9-3.3 kHz
    clicks      a train of 8-20 short broadband clicks per second
    am          a 1.0-1.2 kHz tone, amplitude-modulated at 3-8 Hz
    fm          a 1.5-1.7 kHz tone with a 4-8 Hz vibrato of 40-80 Hz
    harmonic    a buzz: 100-150 Hz and its harmonics up to 3 kHz
    drip        2 to 5 decaying 1.9-2.1 kHz tones at random times
    ==========  ========================================================

    Parameters
    ----------
    n_per_class : int, default=20
        Number of clips of each class.

    n_classes : int, default=6
        Number of classes, from 2 to 8: the first ``n_classes`` rows of the
        table above.

    duration : float, default=1.0
        Length of every clip in seconds (at least 0.05).

    sample_rate : int, default=16000
        Sample rate of the waveforms in Hz (at least 8000).

    noise : float, default=0.05
        Standard deviation of the white noise added to every clip (the
        sounds themselves peak between 0.3 and 0.8).

    random_state : int, RandomState instance or None, default=None
        Determines the clips. Pass an int for the same clips across calls.

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch.

    shuffle : bool, default=True
        Shuffle the clips. If False they are ordered by class.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object, with the following attributes.

        data : ndarray of shape (n_per_class * n_classes, n_samples)
            The waveforms, float32 in [-1, 1], with
            ``n_samples = round(duration * sample_rate)``.
        target : ndarray of shape (n_per_class * n_classes,)
            The class name of each clip (str).
        target_names : ndarray of shape (n_classes,)
            The class names, in the order of the table above.
        sample_rate : int
            The sample rate of ``data``.
        DESCR : str
            A description of the sound set.

    (data, target) : tuple if ``return_X_y`` is True
        The waveforms and their class names.

    See Also
    --------
    load_esc50 : Environmental sound clips read from disk.
    fetch_esc50 : Download ESC-50 and load it.

    Examples
    --------
    >>> from skast.datasets import make_sounds
    >>> sounds = make_sounds(n_per_class=4, n_classes=3, random_state=0)
    >>> sounds.data.shape, sounds.data.dtype
    ((12, 16000), dtype('float32'))
    >>> sounds.target_names.tolist()
    ['tone', 'chirp', 'noise']
    >>> sounds.target[:4].tolist()
    ['chirp', 'tone', 'tone', 'chirp']
    >>> X, y = make_sounds(n_per_class=2, duration=0.5, random_state=0,
    ...                    return_X_y=True)
    >>> X.shape, y.shape
    ((12, 8000), (12,))
    """
    rng = check_random_state(random_state)
    names = list(_SOUNDS)[:n_classes]
    n_samples = int(round(duration * sample_rate))
    data = np.zeros((n_classes * n_per_class, n_samples), dtype=np.float32)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    for row, label in enumerate(labels):
        generate = _SOUNDS[names[label]][0]
        onset = int(rng.uniform(0, 0.2) * n_samples)
        offset = n_samples - int(rng.uniform(0, 0.1) * n_samples)
        t = np.arange(offset - onset) / sample_rate
        sound = generate(rng, t, sample_rate)
        peak = np.max(np.abs(sound))
        clip = np.zeros(n_samples)
        if peak > 0:
            clip[onset:offset] = rng.uniform(0.3, 0.8) / peak * sound
        clip += noise * rng.standard_normal(n_samples)
        data[row] = np.clip(clip, -1.0, 1.0)
    if shuffle:
        order = rng.permutation(labels.size)
        data, labels = data[order], labels[order]
    target_names = np.asarray(names)
    target = target_names[labels]
    if return_X_y:
        return data, target

    rows = "\n".join(f"  {name:<9} {_SOUNDS[name][1]}" for name in names)
    descr = (
        "Synthetic sounds (skast.datasets.make_sounds)\n"
        "---------------------------------------------\n\n"
        f"{n_classes} classes x {n_per_class} clips of {duration:g} s at "
        f"{sample_rate} Hz, float32 in [-1, 1]:\n\n{rows}\n\n"
        "Per clip the frequencies are drawn within the class's band, and the "
        "phase, amplitude (peak 0.3-0.8), onset (first 20% of the clip) and "
        f"end (last 10%) at random; white noise of standard deviation {noise:g} "
        "is added to the whole clip.\n"
    )
    return Bunch(
        data=data,
        target=target,
        target_names=target_names,
        sample_rate=sample_rate,
        DESCR=descr,
    )
