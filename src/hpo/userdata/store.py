"""The held-out test part and the one canonical ``.npz`` of prepared data.

The file is a zip of ``.npy`` arrays (readable with ``numpy.load``), written byte for byte the same for the same
data: a fixed key order (x_train, y_train, x_test, y_test, meta), uncompressed entries with a fixed date, little-endian
C-order arrays, and ``meta`` as a JSON string with sorted keys. (``numpy.savez`` stamps every entry with the current
time, so two saves of the same arrays differ.) It is named by the SHA-256 of its bytes and written atomically: a
temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..datafiles import sha256_file
from .common import HOLDOUT_FRACTION, HOLDOUT_SEED

__all__ = ["KEYS", "holdout", "write_canonical", "sha256_of"]

KEYS = ("x_train", "y_train", "x_test", "y_test", "meta")
_DATE = (1980, 1, 1, 0, 0, 0)


def holdout(y: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, test) indices into ``y`` (each in increasing order): about :data:`HOLDOUT_FRACTION` of every class goes
    to the test part, at least one, and at least two stay for training and validation (the caller checked that
    every class has three). Seeded by :data:`HOLDOUT_SEED` alone, so the held-out part never moves."""
    rng = np.random.default_rng(HOLDOUT_SEED)
    test = []
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        n = int(np.floor(len(members) * HOLDOUT_FRACTION + 0.5))
        n = min(max(n, 1), len(members) - 2)
        test.append(rng.permutation(members)[:n])
    test_idx = np.sort(np.concatenate(test)) if test else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask), test_idx


def _little_endian(a: np.ndarray) -> np.ndarray:
    if not a.flags.c_contiguous:
        a = np.array(a, order="C")
    if a.dtype.kind in "iufU" and a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a


sha256_of = sha256_file  # the one file hash of hpo (hpo.datafiles)


def write_canonical(out_dir: Path, arrays: dict[str, np.ndarray], meta: dict) -> tuple[Path, str]:
    """Write ``arrays`` (keys of :data:`KEYS` but meta) and ``meta`` as ``out_dir/<sha256>.npz``; (path, sha256).
    A file of that name that is already there is the same data, and is kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".hpo-data-", suffix=".tmp", dir=out_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as archive:
            values = dict(arrays, meta=np.array(json.dumps(meta, sort_keys=True, separators=(",", ":"))))
            for key in KEYS:
                if key not in values:
                    continue
                entry = zipfile.ZipInfo(key + ".npy", date_time=_DATE)
                entry.create_system = 3  # what "made" the entry, fixed: the same bytes on every platform
                entry.external_attr = 0o644 << 16
                entry.compress_type = zipfile.ZIP_STORED
                with archive.open(entry, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, _little_endian(values[key]), allow_pickle=False)
        sha = sha256_of(tmp)
        final = out_dir / f"{sha}.npz"
        if final.is_file() and sha256_of(final) == sha:
            tmp.unlink()
        else:
            os.replace(tmp, final)
        return final, sha
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
