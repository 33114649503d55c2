"""Which loader makes each dataset's raw arrays, their check against the catalog, and the per-process cache.

Loaded raw arrays (uint8 images, int32 token ids, float32 sequences) are cached per process, keyed by dataset, options
and the files they came from (path, modification time, size), so a changed file is read again; the split is
recomputed on every :func:`hpo.datasets.load` call (cheap), so different seeds and fractions work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..catalog import DatasetInfo, info, is_generated
from ..exceptions import DatasetError
from .loaders import _raw_cifar10, _raw_cifar100, _raw_fashion, _raw_gtsrb, _raw_imdb, _raw_mnist, _raw_reuters
from .readers import Raw, prepare_files
from .sequences import _raw_mnist1d, _raw_synthetic_sequence
from .synthetic import _raw_synthetic_images, _raw_synthetic_text


_RAW_LOADERS: dict[str, Callable[[dict[str, Path], dict], Raw]] = {
    "mnist": _raw_mnist,
    "fashion_mnist": _raw_fashion,
    "cifar10": _raw_cifar10,
    "cifar100": _raw_cifar100,
    "gtsrb": _raw_gtsrb,
    "imdb": _raw_imdb,
    "reuters": _raw_reuters,
    "mnist1d": _raw_mnist1d,
    "synthetic_images": _raw_synthetic_images,
    "synthetic_text": _raw_synthetic_text,
    "synthetic_sequence": _raw_synthetic_sequence,
}

_CACHE: dict[tuple, Raw] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every dataset loaded in this process (the next :func:`hpo.datasets.load` reads the files again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _fingerprint(paths: dict[str, Path]) -> tuple:
    out = []
    for key in sorted(paths):
        p = paths[key]
        try:
            st = p.stat()
            out.append((key, str(p.resolve()), st.st_mtime_ns, st.st_size if p.is_file() else 0))
        except OSError:
            out.append((key, str(p), 0, 0))
    return tuple(out)


def _check_raw(ds: DatasetInfo, raw: Raw, source: str) -> Raw:
    """Normalize dtypes and reject data that does not match the registry (wrong shapes, labels, ids; sequences that
    are not finite float32)."""
    x_tr, y_tr, x_te, y_te = raw
    fixed = []
    for split, x, y in (("train", x_tr, y_tr), ("test", x_te, y_te)):
        x = np.asarray(x)
        y = np.asarray(y).reshape(-1)
        if x.shape[1:] != ds.input_shape:
            raise DatasetError(f"{source}: {split} inputs have shape {x.shape[1:]}, expected {ds.input_shape}.")
        if len(x) != len(y):
            raise DatasetError(f"{source}: {len(x)} {split} inputs but {len(y)} labels.")
        if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= ds.num_classes):
            raise DatasetError(f"{source}: {split} labels must be integer class ids in [0, {ds.num_classes}).")
        if ds.modality == "image" and x.dtype != np.uint8:
            raise DatasetError(f"{source}: {split} images must be uint8, got {x.dtype}.")
        if ds.modality == "text" and x.size and (x.min() < 0 or x.max() >= (ds.vocab_size or 0)):
            raise DatasetError(f"{source}: {split} token ids must be in [0, {ds.vocab_size}).")
        if ds.modality == "sequence":
            if x.dtype != np.float32:
                raise DatasetError(f"{source}: {split} sequences must be float32, got {x.dtype}.")
            if not np.isfinite(x).all():
                raise DatasetError(f"{source}: {split} sequences contain NaN or infinite values.")
        fixed += [x, y.astype(np.int32)]
    if not len(fixed[0]):
        raise DatasetError(f"{source}: the training split is empty.")
    return tuple(fixed)  # type: ignore[return-value]


def raw(name: str, opts: dict) -> Raw:
    """The checked raw arrays of dataset ``name`` (canonical name) with resolved options ``opts``, cached."""
    paths = {} if is_generated(name) else prepare_files(name)
    key = (name, tuple(sorted(opts.items())), _fingerprint(paths))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            source = ", ".join(str(p) for p in paths.values()) or f"generated {name}"
            cached = _check_raw(info(name, opts), _RAW_LOADERS[name](paths, opts), source)
            _CACHE[key] = cached
    return cached
