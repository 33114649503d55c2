"""The user's own data on the trainer side: the canonical ``.npz`` written by :func:`hpo.userdata.prepare`, named by
URI and SHA-256, checked, cached per process and split honestly like the built-in datasets.

- ``file:///abs/<sha256>.npz`` is read where it is; ``s3://bucket/key.npz`` is downloaded (once, hash-checked,
  cached) by :func:`hpo.objectstore.fetch`. Either way the file's SHA-256 must be the expected one.
- A test set in the file (the user's, or the part :func:`~hpo.userdata.prepare` held out) is only reported. A file
  without one gets :data:`HOLDOUT_FRACTION` of every class held out here, first, with the fixed
  :data:`HOLDOUT_SEED` (never the trial's or split's seed), so it never moves.
- Validation is carved from the rest, stratified and seeded by ``seed``; ``data_fraction`` subsamples the train part
  only (:func:`hpo.datasets.splits._split_indices`, the same as for built-ins).

Model inputs as for built-ins: images float32 in [0, 1] ``(N, H, W, C)``, token ids int32 ``(N, T)``, real-valued
sequences float32 ``(N, T, F)``, labels int32.
"""

from __future__ import annotations

import json
import math
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from ..catalog import DatasetInfo
from ..datafiles import sha256_file
from ..exceptions import ConfigError, DatasetError
from ..redact import mask_text, mask_url
from .splits import Splits, _split_indices

__all__ = ["CustomSplits", "load_custom", "clear_custom_cache", "HOLDOUT_FRACTION", "HOLDOUT_SEED"]

#: the same as hpo.userdata's (the trainer side does not import it; a test checks they agree)
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 15_2024
_MODALITIES = ("image", "text", "sequence")

_CACHE: dict[str, tuple[dict[str, np.ndarray], dict]] = {}
_CACHE_LOCK = threading.Lock()


@dataclass(repr=False)  # Splits' short repr, not the arrays
class CustomSplits(Splits):
    """:class:`Splits` of own data, plus what the report says about the test set.

    ``has_test``: the user gave the test set; False: it is :data:`HOLDOUT_FRACTION` of the user's data, held out.
    ``test_note``: one line for the report, e.g. "test = held out 20 % of your data (30 samples, ...)"."""

    has_test: bool = True
    test_note: str = ""
    class_names: tuple[str, ...] = ()


def clear_custom_cache() -> None:
    """Forget every own dataset loaded in this process."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _local_path(uri: str, sha256: str, cache_dir: str | Path | None) -> Path:
    shown = mask_url(uri)
    if uri.startswith("s3://"):
        from ..objectstore import fetch  # lazy: boto3 only where own data comes from a bucket

        return Path(fetch(uri, sha256, cache_dir))
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise DatasetError(f"data URI {shown} names the host {parts.netloc!r}; a file:// URI must be local "
                               "(file:///absolute/path.npz)")
        path = Path(unquote(parts.path))
        if not path.is_file():
            raise DatasetError(f"no data file at {shown}; prepare the data again (hpo.userdata.prepare) or give the "
                               "URI of the prepared .npz")
        return path
    raise DatasetError(f"unsupported data URI {shown}; allowed: file:///absolute/path.npz or s3://bucket/key.npz")


def _bad(where: str, problem: str) -> DatasetError:
    return DatasetError(mask_text(f"the data file {where} is not prepared data of hpo: {problem}; prepare it with "
                                  "hpo.userdata.prepare"))


def _read(path: Path, where: str) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and meta of a canonical file, checked against each other."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _bad(where, f"it cannot be read ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("x_train", "y_train", "meta") if k not in arrays]
    if missing or (("x_test" in arrays) != ("y_test" in arrays)):
        raise _bad(where, f"it lacks {', '.join(missing) or 'one of x_test, y_test'}")
    try:
        raw_meta = arrays.pop("meta")
        meta = json.loads(str(raw_meta.reshape(-1)[0]) if raw_meta.size == 1 else "")
        modality, shape, k = meta["modality"], tuple(int(d) for d in meta["input_shape"]), int(meta["num_classes"])
        vocab = meta.get("vocab_size")
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(where, f"its meta data is malformed ({type(exc).__name__}: {exc})") from None
    if modality not in _MODALITIES or k < 2 or (modality == "text") != (vocab is not None):
        raise _bad(where, f"its meta data describes modality={modality!r}, num_classes={k}, vocab_size={vocab}")
    for part in ("train", "test"):
        if f"x_{part}" not in arrays:
            continue
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.shape[1:] != shape or y.shape != (len(x),):
            raise _bad(where, f"x_{part} {x.shape} / y_{part} {y.shape} do not fit input_shape {shape}")
        if y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() >= k)):
            raise _bad(where, f"y_{part} must be integer class ids in [0, {k})")
        expected_kind = {"image": "u", "text": "iu", "sequence": "f"}[modality]
        if x.dtype.kind not in expected_kind or (modality == "image" and x.dtype != np.uint8):
            raise _bad(where, f"x_{part} has dtype {x.dtype}, which does not fit modality {modality!r}")
        if modality == "text" and x.size and (x.min() < 0 or x.max() >= int(vocab)):
            raise _bad(where, f"x_{part} holds token ids outside [0, {vocab})")
    if not len(arrays["x_train"]):
        raise _bad(where, "x_train is empty")
    return arrays, meta


def _load(uri: str, sha256: str, cache_dir: str | Path | None) -> tuple[dict[str, np.ndarray], dict]:
    with _CACHE_LOCK:
        cached = _CACHE.get(sha256)
    if cached is not None:
        return cached
    path = _local_path(uri, sha256, cache_dir)
    actual = sha256_file(path)
    if actual != sha256:
        raise DatasetError(mask_text(f"the data at {mask_url(uri)} has SHA-256 {actual[:12]}..., expected "
                                     f"{sha256[:12]}...: the file changed or is not the prepared data; prepare "
                                     "it again"))
    loaded = _read(path, mask_url(uri) or "")
    with _CACHE_LOCK:
        return _CACHE.setdefault(sha256, loaded)


def _model_input(x: np.ndarray, modality: str) -> np.ndarray:
    if modality == "image":
        out = x.astype(np.float32)
        out /= 255.0
        return out
    if modality == "text":
        return np.array(x, dtype=np.int32, copy=True)
    return np.array(x, dtype=np.float32, copy=True)


def _check_args(sha256: Any, validation_split: Any, seed: Any, data_fraction: Any) -> None:
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise DatasetError(f"data_sha256={str(sha256)[:70]!r} is not allowed; allowed: 64 lowercase hexadecimal "
                           "digits (the SHA-256 of the prepared .npz)")
    for arg, value, ok, allowed in (
        ("validation_split", validation_split, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
        ("data_fraction", data_fraction, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{arg} must be {allowed}, got {value!r}.", field=arg)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.", field="seed")


def load_custom(uri: str, sha256: str, *, validation_split: float, seed: int, data_fraction: float,
                cache_dir: str | Path | None = None) -> CustomSplits:
    """The user's prepared data at ``uri`` (``file://`` or ``s3://``), checked against ``sha256`` and split honestly.

    Args:
        uri: where the canonical ``.npz`` is.
        sha256: its SHA-256 (64 lowercase hex digits); the data is cached per process under it.
        validation_split, seed, data_fraction: as for :func:`hpo.datasets.load`.
        cache_dir: where :func:`hpo.objectstore.fetch` keeps downloads (``s3://`` only).

    Raises:
        DatasetError: unsupported URI, missing file, unreachable bucket, hash mismatch (the message names the
            expected and actual hash prefixes), or a file that is not prepared data.
        ConfigError: bad ``validation_split``, ``seed`` or ``data_fraction``.
    """
    if not isinstance(uri, str) or not uri:
        raise DatasetError(f"data URI must be a string, got {uri!r}; allowed: file:///absolute/path.npz or "
                           "s3://bucket/key.npz")
    _check_args(sha256, validation_split, seed, data_fraction)
    arrays, meta = _load(uri, sha256, cache_dir)
    modality = meta["modality"]
    x_all, y_all = arrays["x_train"], arrays["y_train"].astype(np.int32)
    if "x_test" in arrays:
        pool = np.arange(len(y_all))
        x_test, y_test = arrays["x_test"], arrays["y_test"].astype(np.int32)
        has_test = bool(meta.get("has_test", True))
    else:  # held out here, first, with a seed of its own
        pool, test_idx = _split_indices(y_all, HOLDOUT_FRACTION, HOLDOUT_SEED, 1.0)
        pool = np.sort(pool)
        x_test, y_test = x_all[np.sort(test_idx)], y_all[np.sort(test_idx)]
        has_test = False
    train, val = _split_indices(y_all[pool], float(validation_split), int(seed), float(data_fraction))
    train, val = pool[train], pool[val]
    note = meta.get("test_note") or (
        f"test = your test set ({len(y_test):,} samples)" if has_test else
        f"test = held out {HOLDOUT_FRACTION:.0%} of your data ({len(y_test):,} samples, stratified, fixed seed)"
        .replace("%", " %"))
    vocab = meta.get("vocab_size")
    info = DatasetInfo("custom", modality, tuple(int(d) for d in meta["input_shape"]),  # type: ignore[arg-type]
                       int(meta["num_classes"]), str(meta.get("description") or f"your data; {note}"),
                       None if vocab is None else int(vocab))
    return CustomSplits(
        x_train=_model_input(x_all[train], modality), y_train=y_all[train],
        x_val=_model_input(x_all[val], modality), y_val=y_all[val],
        x_test=_model_input(x_test, modality), y_test=y_test.copy(),
        info=info, has_test=has_test, test_note=note,
        class_names=tuple(str(c) for c in meta.get("class_names") or range(info.num_classes)),
    )
