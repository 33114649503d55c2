"""Honest splits: the official training split divided into train and validation, stratified by class and seeded, the
official test split untouched, and :func:`load`, which returns them as model inputs.

- ``x_train`` / ``y_train`` and ``x_val`` / ``y_val`` come from the dataset's *official training split*, divided
  stratified by class and seeded (same seed -> identical split);
- ``x_test`` / ``y_test`` are the *official test split*, untouched and never mixed into train or validation;
- ``data_fraction`` subsamples only the training part (after the validation split), stratified and seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..catalog import DatasetInfo, info, resolve_options
from ..exceptions import ConfigError
from .registry import raw


@dataclass
class Splits:
    """The three splits of one dataset. ``x_test`` / ``y_test`` are the official test split, untouched."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: DatasetInfo

    def __repr__(self) -> str:
        return (f"Splits({self.info.name}: train {self.x_train.shape}, val {self.x_val.shape}, "
                f"test {self.x_test.shape}, {self.info.num_classes} classes)")


def _allocate(counts: np.ndarray, fraction: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Per-class sample counts ~ fraction * counts (largest remainder), within [lo, hi], summing to
    round(fraction * total) where the bounds allow it."""
    exact = counts * fraction
    n = np.clip(np.floor(exact).astype(np.int64), lo, hi)
    total = int(np.clip(round(float(counts.sum()) * fraction), lo.sum(), hi.sum()))
    remainder = exact - n
    while n.sum() < total:
        open_ = np.flatnonzero(n < hi)
        best = open_[np.argsort(-remainder[open_], kind="stable")][: total - n.sum()]
        n[best] += 1
        remainder[best] -= 1
    while n.sum() > total:
        open_ = np.flatnonzero(n > lo)
        worst = open_[np.argsort(remainder[open_], kind="stable")][: n.sum() - total]
        n[worst] -= 1
        remainder[worst] += 1
    return n


def _split_indices(y: np.ndarray, validation_split: float, seed: int,
                   data_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded (train, val) indices into the official training split; then the stratified
    ``data_fraction`` subsample of the train part (>= 1 per class). The validation set does not depend on
    ``data_fraction``, and smaller fractions are subsets of larger ones for the same seed."""
    rng = np.random.default_rng(seed)
    _, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse)
    order = np.argsort(inverse, kind="stable")
    groups = [rng.permutation(g) for g in np.split(order, np.cumsum(counts)[:-1])]
    n_val = _allocate(counts, validation_split, np.zeros_like(counts), np.maximum(counts - 1, 0))
    val = np.concatenate([g[:k] for g, k in zip(groups, n_val)])
    train_groups = [g[k:] for g, k in zip(groups, n_val)]
    if data_fraction < 1.0:
        sizes = np.array([len(g) for g in train_groups])
        keep = _allocate(sizes, data_fraction, np.minimum(sizes, 1), sizes)
        train_groups = [g[:k] for g, k in zip(train_groups, keep)]
    val = rng.permutation(val)
    train = rng.permutation(np.concatenate(train_groups))
    return train, val


def _as_model_input(x: np.ndarray, modality: str) -> np.ndarray:
    if modality == "image":
        out = x.astype(np.float32)
        out /= 255.0
        return out
    if modality == "sequence":  # real-valued sequences (N, T, F)
        return np.array(x, dtype=np.float32, copy=True)
    return np.array(x, dtype=np.int32, copy=True)


def load(name: str, *, options: dict | None = None, validation_split: float = 0.2, seed: int = 42,
         data_fraction: float = 1.0) -> Splits:
    """Load dataset ``name`` and split it honestly.

    Args:
        name: one of :data:`DATASET_NAMES`.
        options: dataset options (see :func:`info`); missing ones take the defaults.
        validation_split: share of the official training split held out for validation, in ``[0, 1)``;
            stratified by class and seeded (each class keeps at least one training example).
        seed: decides the split (same seed -> identical split). Generated datasets do not depend on it.
        data_fraction: share of the train part (after the validation split) to keep, in ``(0, 1]``; stratified,
            seeded, at least one example per class. Validation and test are never subsampled.

    Returns:
        :class:`Splits` with images as float32 in [0, 1] (N, H, W, C), text as int32 (N, sequence_length),
        labels as int32 (N,). ``x_test`` / ``y_test`` are the official test split in file order.

    Raises:
        DatasetError: unknown dataset, files missing and not downloadable, or unreadable files.
        ConfigError: bad options, ``validation_split``, ``seed`` or ``data_fraction``.
    """
    ds = info(name, options)
    opts = resolve_options(name, options)
    for arg, value, ok, allowed in (
        ("validation_split", validation_split, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
        ("data_fraction", data_fraction, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{arg} must be {allowed}, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")

    x_tr, y_tr, x_te, y_te = raw(ds.name, opts)
    train_idx, val_idx = _split_indices(y_tr, float(validation_split), int(seed), float(data_fraction))
    return Splits(
        x_train=_as_model_input(x_tr[train_idx], ds.modality),
        y_train=y_tr[train_idx],
        x_val=_as_model_input(x_tr[val_idx], ds.modality),
        y_val=y_tr[val_idx],
        x_test=_as_model_input(x_te, ds.modality),
        y_test=y_te.copy(),
        info=ds,
    )
