"""Checking the user's arrays and bringing them to the stored form: labels to class ids, features to the modality's
dtype and shape (images uint8 ``(N, H, W, C)``, token ids int32 ``(N, T)``, real-valued sequences float32
``(N, T, F)``).

Which modality an array is (when ``modality=`` is not given), by the axes of one sample:

- texts as strings (a 1-D array or list of str): ``text`` (tokenized by :mod:`hpo.userdata.text`);
- ``(T,)`` integers, all >= 0: ``text`` (token ids); other numbers: ``sequence`` with one feature per step;
- ``(H, W)`` integers within [0, 255] and H, W >= 8: ``image`` (grayscale); floats: ``sequence`` ``(T, F)``
  (give ``modality="image"`` for float images of this shape);
- ``(H, W, C)``: ``image`` with C in {1, 3, 4} channels and H, W >= 8.

Images are stored as uint8: integers in [0, 255] as they are, floats in [0, 1] scaled by 255, floats in [0, 255]
rounded; anything else is refused.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from .common import MAX_DIM, MODALITIES, fail, plural, sample

__all__ = ["as_array", "is_texts", "labels_to_ids", "features", "check_finite", "MIN_IMAGE_SIDE"]

MIN_IMAGE_SIDE = 8
_INT_TEXT = re.compile(r"^-?[1-9][0-9]*$|^0$")
_IMAGE_RULE = ("images are (N, H, W) or (N, H, W, C) with C in 1, 3 or 4 channels, H and W >= "
               f"{MIN_IMAGE_SIDE}, values within [0, 1] or [0, 255]")


def as_array(value: Any, what: str) -> np.ndarray:
    """``value`` (an array or nested lists) as a numpy array; DatasetError when the samples' shapes differ."""
    if isinstance(value, np.ndarray):
        return value
    try:
        return np.asarray(value)
    except ValueError:  # ragged nested lists
        shapes: list = []
        for item in value if isinstance(value, (list, tuple)) else ():
            shape = np.shape(item) if not isinstance(item, (str, bytes)) else ()
            if shape not in shapes:
                shapes.append(shape)
            if len(shapes) == 2:
                break
        found = f" (e.g. {shapes[0]} and {shapes[1]})" if len(shapes) == 2 else ""
        raise fail(f"{what}: the samples have inconsistent shapes{found}; every sample must have the same shape "
                   "(pad or resize them first)") from None


def is_texts(x: np.ndarray) -> bool:
    """A 1-D array of strings (raw texts to tokenize)."""
    if x.ndim != 1:
        return False
    if x.dtype.kind == "U":
        return True
    return x.dtype == object and len(x) > 0 and all(isinstance(v, str) for v in x)


# -- labels ------------------------------------------------------------------------------------------------------------

def _label_values(y: np.ndarray, what: str) -> tuple[np.ndarray, str]:
    """(values, kind) with kind "int" or "str"; DatasetError for every other kind of label."""
    allowed = "allowed: integers (e.g. 0, 1, 2) or strings (e.g. 'cat', 'dog'), one per sample"
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot labels? pass y.argmax(axis=1))" if y.ndim == 2 else ""
        raise fail(f"{what} have shape {y.shape}; labels must be one value per sample, shape (N,){hint}; {allowed}")
    kind = y.dtype.kind
    if kind == "b":
        raise fail(f"{what} are booleans (True/False); {allowed} -- e.g. y.astype(int)")
    if kind in "iu":
        return y.astype(np.int64), "int"
    if kind == "f":
        bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise fail(f"{what} are floats with fractions or NaN/inf (e.g. {float(y[i])!r} at index {i}); {allowed}")
        return y.astype(np.int64), "int"
    if kind == "U":
        return y.astype(str), "str"
    if kind == "O":
        if all(isinstance(v, str) for v in y):
            return y.astype(str), "str"
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in y):
            return y.astype(np.int64), "int"
        kinds = sorted({type(v).__name__ for v in y})
        odd = [v for v in y if isinstance(v, (bool, np.bool_)) or not isinstance(v, (str, int, np.integer))]
        if odd:
            raise fail(f"{what} hold values of type {type(odd[0]).__name__} (e.g. {odd[0]!r:.40}); {allowed}")
        raise fail(f"{what} mix kinds ({', '.join(kinds)}); {allowed}, all of one kind")
    raise fail(f"{what} have dtype {y.dtype}; {allowed}")


def _ints_from_strings(values: np.ndarray) -> np.ndarray | None:
    """Strings that are all plain integers ('0', '12', '-3') as ints, else None."""
    if len(values) and all(_INT_TEXT.match(v) for v in values):
        return values.astype(np.int64)
    return None


def labels_to_ids(y_train: Any, y_test: Any | None, *, numeric_strings: bool = False
                  ) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """Class ids (int32, 0..K-1 in the sorted order of the distinct training labels), the test set's (which may
    hold only labels that occur in training) and the class names (the labels as text).

    ``numeric_strings``: labels read from files (a CSV column, folder names) that are all integers count as
    integers (sorted as numbers: '2' before '10')."""
    values, kind = _label_values(as_array(y_train, "the labels"), "the labels")
    if numeric_strings and kind == "str":
        ints = _ints_from_strings(values)
        if ints is not None:
            values, kind = ints, "int"
    classes = np.unique(values)
    ids = np.searchsorted(classes, values).astype(np.int32)
    names = tuple(str(c) for c in classes)
    test_ids = None
    if y_test is not None:
        t_values, t_kind = _label_values(as_array(y_test, "the test labels"), "the test labels")
        if numeric_strings and t_kind == "str" and kind == "int":
            t_ints = _ints_from_strings(t_values)
            if t_ints is not None:
                t_values, t_kind = t_ints, "int"
        if t_kind != kind:
            raise fail(f"the test labels are {'strings' if t_kind == 'str' else 'integers'} but the training labels "
                       f"are {'strings' if kind == 'str' else 'integers'}; both must be of the same kind")
        unknown = np.setdiff1d(t_values, classes)
        if unknown.size:
            raise fail(f"the test set's classes differ from the training data's: test labels that never occur in "
                       f"training: {sample(unknown)}; training classes: {sample(names, 10)}")
        test_ids = np.searchsorted(classes, t_values).astype(np.int32)
    return ids, test_ids, names


# -- features ----------------------------------------------------------------------------------------------------------

def check_finite(x: np.ndarray, what: str) -> None:
    if x.dtype.kind in "fc":
        bad = ~np.isfinite(x.reshape(len(x), -1))
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))
            raise fail(f"{what} hold NaN or inf: {plural(int(bad.sum()), 'value')} in {plural(rows.size, 'sample')} "
                       f"(first at sample index {int(rows[0])}); allowed: finite numbers only (drop or impute them)")


def _infer(x: np.ndarray) -> str:
    dims = x.shape[1:]
    integral = x.dtype.kind in "iu"
    if len(dims) == 1:
        return "text" if integral and (x.size == 0 or x.min() >= 0) else "sequence"
    if len(dims) == 2:
        if integral and min(dims) >= MIN_IMAGE_SIDE and x.min() >= 0 and x.max() <= 255:
            return "image"
        return "sequence"
    if len(dims) == 3:
        return "image"
    raise fail(f"the features have shape {x.shape}, {len(dims)} axes per sample; allowed: (N, T) token ids or "
               f"sequences, (N, T, F) sequences, or {_IMAGE_RULE}")


def _image(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise fail(f"{what} have shape {x.shape}, which is not an image shape; {_IMAGE_RULE}")
    n, h, w, c = x.shape
    if c not in (1, 3, 4):
        hint = (" (channels first? use np.moveaxis(x, 1, -1))" if h in (1, 3, 4) else "")
        raise fail(f"{what} have {c} channels (shape {x.shape}){hint}; {_IMAGE_RULE}")
    if min(h, w) < MIN_IMAGE_SIDE:
        raise fail(f"{what} are {h}x{w} pixels (shape {x.shape}); {_IMAGE_RULE}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if x.dtype.kind == "f" and lo >= 0.0 and hi <= 1.0:
        return np.rint(x * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(x).astype(np.uint8)
    raise fail(f"{what} have values in [{lo:g}, {hi:g}]; {_IMAGE_RULE}")


def _tokens(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim != 2:
        raise fail(f"{what} have shape {x.shape}; token ids for text are (N, T) integers >= 0 (or give the texts "
                   "as strings)")
    if x.dtype.kind not in "iu":
        raise fail(f"{what} are {x.dtype} numbers; token ids for text must be integers >= 0 (x.astype(int)), or "
                   "give the texts as strings")
    if x.size and x.min() < 0:
        raise fail(f"{what} hold negative token ids (smallest {int(x.min())}); token ids must be integers >= 0 "
                   "(0 = padding)")
    if x.size and x.max() >= 2**31 - 1:
        raise fail(f"{what} hold token ids up to {int(x.max())}; allowed: below {2**31 - 1}")
    return np.ascontiguousarray(x, dtype=np.int32)


def _sequence(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 2:
        x = x[..., np.newaxis]
    if x.ndim != 3:
        raise fail(f"{what} have shape {x.shape}; real-valued sequences are (N, T) or (N, T, F)")
    out = np.ascontiguousarray(x, dtype=np.float32)
    check_finite(out, what + " (as float32)")
    return out


def features(x: np.ndarray, modality: str | None, what: str = "the features") -> tuple[np.ndarray, str]:
    """(``x`` in its stored form, its modality). ``modality`` given: it is used when ``x`` fits it, else
    DatasetError saying why; None: inferred (see the module's docstring). ``x`` must not be texts (strings)."""
    if x.dtype.kind == "b":
        raise fail(f"{what} are booleans; allowed: numbers (images, token ids, real-valued sequences) or texts "
                   "(strings) -- e.g. x.astype(np.float32)")
    if x.dtype.kind not in "iuf":
        raise fail(f"{what} have dtype {x.dtype}; allowed: numbers (images, token ids, real-valued sequences) or "
                   "texts as a 1-D array of strings")
    if x.ndim < 2:
        raise fail(f"{what} have shape {x.shape}: no features per sample; allowed: (N, T) token ids or sequences, "
                   f"(N, T, F) sequences, or {_IMAGE_RULE}")
    if len(x) == 0:
        raise fail(f"{what} hold no samples (shape {x.shape})")
    check_finite(x, what)
    big = [d for d in x.shape[1:] if d > MAX_DIM]
    if big:
        raise fail(f"{what} have shape {x.shape}; each axis of a sample may have at most {MAX_DIM:,} entries")
    if modality is None:
        modality = _infer(x)
    elif modality not in MODALITIES:
        raise fail(f"modality={modality!r} is not allowed; allowed: {', '.join(MODALITIES)}")
    if modality == "image":
        return _image(x, what), "image"
    if modality == "text":
        return _tokens(x, what), "text"
    if x.ndim > 3:
        raise fail(f"{what} have shape {x.shape}; real-valued sequences are (N, T) or (N, T, F)")
    return _sequence(x, what), "sequence"
