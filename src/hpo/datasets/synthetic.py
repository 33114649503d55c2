"""The generated datasets (synthetic_images, synthetic_text): small, offline, for smoke runs and tests.

A fixed generator seed, independent of the run seed (which only decides the split), so every process generates the
same arrays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .readers import Raw

_SYNTH_SEED = 20_240_607
_SYNTH_TRAIN, _SYNTH_TEST = 1600, 400


def _raw_synthetic_images(paths: dict[str, Path], opts: dict) -> Raw:
    """16x16 RGB: three parallel bars whose orientation is the class (0, 45, 90 or 135 degrees, +-11 degrees jitter),
    each at a random position with a random length, on a random background; the bars' thickness and colour (brighter
    or darker than the background) vary per image; plus a distracting blob and pixel noise."""
    rng = np.random.default_rng(_SYNTH_SEED)
    n, s, n_bars = _SYNTH_TRAIN + _SYNTH_TEST, 16, 3
    labels = rng.permutation(np.arange(n) % 4)
    angle = labels * (np.pi / 4) + rng.uniform(-0.2, 0.2, n)
    ux, uy = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    half_thick = rng.uniform(0.7, 1.2, n)[:, None, None]
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    bars = np.zeros((n, s, s))
    for _ in range(n_bars):
        cx, cy = rng.uniform(2.0, 14.0, (2, n, 1, 1))
        half_len = rng.uniform(4.0, 7.0, (n, 1, 1))
        dx, dy = xx[None] - cx, yy[None] - cy
        along, perp = dx * ux + dy * uy, -dx * uy + dy * ux
        bar = np.clip(half_len - np.abs(along) + 0.5, 0, 1) * np.clip(half_thick - np.abs(perp) + 0.5, 0, 1)
        bars = np.maximum(bars, bar)  # anti-aliased edges
    bx, by = rng.uniform(2.0, 14.0, (2, n, 1, 1))
    blob = np.exp(-((xx[None] - bx) ** 2 + (yy[None] - by) ** 2) / (2 * rng.uniform(1.0, 2.0, (n, 1, 1)) ** 2))
    bg = rng.uniform(0.2, 0.6, (n, 1, 1, 3))
    sign = rng.choice([-1.0, 1.0], (n, 1, 1, 1))
    bar_color = bg + sign * rng.uniform(0.35, 0.5, (n, 1, 1, 1)) * rng.uniform(0.6, 1.0, (n, 1, 1, 3))
    blob_color = bg + rng.uniform(-0.35, 0.35, (n, 1, 1, 3))
    img = bg + blob[..., None] * (blob_color - bg)
    img = img + bars[..., None] * (bar_color - img) + rng.normal(0.0, 0.06, (n, s, s, 3))
    x = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return x[:_SYNTH_TRAIN], labels[:_SYNTH_TRAIN], x[_SYNTH_TRAIN:], labels[_SYNTH_TRAIN:]


def _raw_synthetic_text(paths: dict[str, Path], opts: dict) -> Raw:
    """Random token sequences ('pre'-padded, lengths L/2..L); each class plants 2-4 of its own signal tokens at random
    positions. Other classes' signal tokens also occur by chance in the background, so it is not trivial."""
    vocab, L = opts["vocab_size"], opts["sequence_length"]
    rng = np.random.default_rng(_SYNTH_SEED + 1)
    n = _SYNTH_TRAIN + _SYNTH_TEST
    labels = rng.permutation(np.arange(n) % 4)
    low = 3 if vocab > 7 else 1  # keep 0 = padding, 1 = start, 2 = oov free when the vocabulary allows it
    usable = np.arange(low, vocab)
    per_class = int(np.clip(usable.size // 8, 1, 4))
    signal = np.resize(rng.permutation(usable), 4 * per_class).reshape(4, per_class)
    lengths = rng.integers(max(1, L // 2), L + 1, n)
    x = rng.choice(usable, (n, L)).astype(np.int32)
    x[np.arange(L)[None, :] < (L - lengths)[:, None]] = 0  # 'pre' padding
    planted = rng.integers(2, 5, n)
    for i in range(n):
        k = min(int(planted[i]), int(lengths[i]))
        pos = L - lengths[i] + rng.choice(lengths[i], k, replace=False)
        x[i, pos] = rng.choice(signal[labels[i]], k)
    return x[:_SYNTH_TRAIN], labels[:_SYNTH_TRAIN], x[_SYNTH_TRAIN:], labels[_SYNTH_TRAIN:]
