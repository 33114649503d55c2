"""The built-in real-valued sequence datasets (modality "sequence"): float32 arrays of shape ``(N, T, F)``.

- ``mnist1d``: MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package's ``make_dataset`` with the
  package's default arguments (5,000 samples, 80 % train, seed 42). Its download path (``get_dataset``) is never
  used. The package imports matplotlib.pyplot and scipy, so it is imported here, inside the loader, only when the
  dataset is loaded; and since ``make_dataset`` seeds Python's and numpy's *global* random generators, their states
  are restored afterwards (loading the dataset never changes the caller's random streams).
- ``synthetic_sequence``: small generated waveforms for smoke runs and tests (below).

Both are deterministic: the same arrays in every process, whatever the run's seed (which decides only the split).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..exceptions import DatasetError
from .readers import Raw

_SEQ_SEED = 20_240_608
_SEQ_TRAIN, _SEQ_TEST, _SEQ_STEPS = 1600, 400, 32


def _raw_mnist1d(paths: dict[str, Path], opts: dict) -> Raw:
    """MNIST-1D as (4000, 40, 1) train and (1000, 40, 1) test float32 sequences, labels 0-9."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise DatasetError(f"mnist1d needs the 'mnist1d' package (pip install mnist1d), which could not be "
                           f"imported: {exc}") from None
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def seqs(x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)[..., None]

    return seqs(data["x"]), np.asarray(data["y"]), seqs(data["x_test"]), np.asarray(data["y_test"])


def _raw_synthetic_sequence(paths: dict[str, Path], opts: dict) -> Raw:
    """32 steps x 2 features. Feature 0 is a waveform whose shape is the class -- sine, square, sawtooth, or a chirp
    (a sine whose frequency triples or falls to a third along the sequence) -- with a random frequency (1.2-3
    cycles), phase, amplitude and offset plus noise; feature 1 is a distracting sine of random frequency plus noise."""
    rng = np.random.default_rng(_SEQ_SEED)
    n, steps = _SEQ_TRAIN + _SEQ_TEST, _SEQ_STEPS
    labels = rng.permutation(np.arange(n) % 4)
    t = np.linspace(0.0, 1.0, steps, endpoint=False)[None, :]
    cycles = rng.uniform(1.2, 3.0, (n, 1))
    phase = rng.uniform(0.0, 1.0, (n, 1))
    ramp = np.where(rng.random((n, 1)) < 0.5, 2.0, -2.0 / 3.0)  # chirp: frequency x3 or x1/3 by the end
    position = np.where(labels[:, None] == 3, cycles * (t + ramp * t * t / 2), cycles * t) + phase
    frac = position % 1.0
    waves = np.stack([np.sin(2 * np.pi * position),  # sine
                      np.where(frac < 0.5, 1.0, -1.0),  # square
                      2.0 * frac - 1.0,  # sawtooth
                      np.sin(2 * np.pi * position)])  # chirp (its position bends)
    signal = waves[labels, np.arange(n)] * rng.uniform(0.6, 1.4, (n, 1)) + rng.uniform(-0.3, 0.3, (n, 1))
    signal += rng.normal(0.0, 0.2, (n, steps))
    distractor = rng.uniform(0.3, 1.0, (n, 1)) * np.sin(2 * np.pi * (rng.uniform(0.5, 4.0, (n, 1)) * t
                                                                     + rng.uniform(0.0, 1.0, (n, 1))))
    distractor += rng.normal(0.0, 0.2, (n, steps))
    x = np.stack([signal, distractor], axis=-1).astype(np.float32)
    return x[:_SEQ_TRAIN], labels[:_SEQ_TRAIN], x[_SEQ_TRAIN:], labels[_SEQ_TRAIN:]
