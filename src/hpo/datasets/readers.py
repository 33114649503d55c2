"""Reading the built-in datasets' file formats with numpy (never TensorFlow or Keras): ``.npz`` (object arrays through
a restricted unpickler), idx (MNIST / Fashion-MNIST, gzip or plain), CIFAR's pickled batches, and extracting zip/tar
archives safely. :func:`prepare_files` turns a dataset's located files (:func:`hpo.datafiles.locate`, downloaded when
missing) into the paths the raw loaders (:mod:`hpo.datasets.loaders`) read.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import tarfile
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..datafiles import GTSRB_GT, keras_cache_dir, locate
from ..exceptions import DatasetError

#: what every raw loader returns: (x_train, y_train, x_test, y_test); images uint8 NHWC, text int32, labels any int
Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# Globals needed to rebuild the numpy arrays inside Keras' pickled datasets (object arrays in imdb/reuters .npz,
# CIFAR batches), plus the few that pickles written by Python 3 / numpy 2 use for the same data (numpy scalars,
# protocol-2 bytes, protocol-5 buffers). Anything else is refused, so a tampered file cannot run code through pickle.
_ALLOWED_PICKLE_GLOBALS = frozenset({
    ("_codecs", "encode"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
})


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Refusing to unpickle {module}.{name} from a dataset file.")


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz``; object arrays go through the restricted unpickler."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if not member.endswith(".npy"):
                    continue
                buf = io.BytesIO(archive.read(member))
                try:
                    arr = np.lib.format.read_array(buf, allow_pickle=False)
                except ValueError:
                    buf.seek(0)
                    major, _ = np.lib.format.read_magic(buf)
                    if major == 1:
                        np.lib.format.read_array_header_1_0(buf)
                    else:
                        np.lib.format.read_array_header_2_0(buf)
                    arr = _RestrictedUnpickler(buf).load()
                arrays[member[: -len(".npy")]] = arr
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, EOFError) as exc:
        raise DatasetError(f"Cannot read {path}: {exc}. Delete it and let hpo download it again.") from exc
    return arrays


def _npz_keys(arrays: dict[str, np.ndarray], keys: tuple[str, ...], path: Path) -> list[np.ndarray]:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DatasetError(f"{path} lacks the array(s) {', '.join(missing)}; expected {', '.join(keys)}.")
    return [arrays[k] for k in keys]


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (MNIST / Fashion-MNIST format), gzip-compressed or plain."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"Cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an idx file (bad magic number).")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(f"{path} is truncated or corrupt: header says {dims}, "
                           f"found {len(data) - header} data bytes instead of {expected}.")
    return np.frombuffer(data, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            d = _RestrictedUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetError(f"Cannot read {path}: {exc}") from exc
    if not isinstance(d, dict):
        raise DatasetError(f"{path} does not hold a CIFAR batch dict.")
    return {k.decode("utf8") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    if "data" not in d or label_key not in d:
        raise DatasetError(f"{path} lacks 'data' or '{label_key}'.")
    data = np.asarray(d["data"], dtype=np.uint8)
    x = data.reshape(data.shape[0], 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), np.asarray(d[label_key]).reshape(-1)


def _extract(archive: Path, product: str) -> Path:
    """Extract ``archive`` (zip or tar) and return the path of ``product`` (relative path inside the archive).

    Extraction goes next to the archive (or, if that is read-only, into the Keras cache) through a temporary folder
    that is then renamed into place, so concurrent processes never see half-extracted data.
    """
    errors = []
    for dest in (archive.parent, keras_cache_dir()):
        target = dest / product
        if target.exists():
            return target
        tmp = dest / f".hpo-extract-{uuid.uuid4().hex}"
        try:
            tmp.mkdir(parents=True)
            if zipfile.is_zipfile(archive):
                with zipfile.ZipFile(archive) as zf:
                    zf.extractall(tmp)
            elif tarfile.is_tarfile(archive):
                with tarfile.open(archive, "r:*") as tf:
                    if hasattr(tarfile, "data_filter"):
                        tf.extractall(tmp, filter="data")
                    else:  # pragma: no cover - old Python
                        tf.extractall(tmp)  # noqa: S202
            else:
                raise DatasetError(f"{archive} is neither a zip nor a tar archive. Delete it and run again.")
            if not (tmp / product).exists():
                raise DatasetError(f"{archive} does not contain {product}. Delete it and run again.")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp / product, target)
            except OSError:
                if not target.exists():
                    raise
            return target
        except (OSError, zipfile.BadZipFile, tarfile.TarError) as exc:
            errors.append(f"{dest}: {exc}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise DatasetError(f"Cannot extract {archive} ({'; '.join(errors)}). Extract it by hand next to the archive.")



def prepare_files(name: str) -> dict[str, Path]:
    """ensure_available + locate + extract archives; returns the paths the raw loaders read."""
    from . import ensure_available  # the package's: it honours the hpo.datasets._download hook

    ensure_available(name)
    paths = locate(name)
    if paths is None:  # pragma: no cover - ensure_available raises first
        raise DatasetError(f"Dataset '{name}' is not available.")
    if "archive" in paths:
        folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
        paths = {"dir": _extract(paths.pop("archive"), folder), **paths}
    if "train_zip" in paths:
        paths["train_dir"] = _extract(paths.pop("train_zip"), "GTSRB/Final_Training/Images")
    if "test_images_zip" in paths:
        paths["test_dir"] = _extract(paths.pop("test_images_zip"), "GTSRB/Final_Test/Images")
    if "test_gt_zip" in paths:
        paths["test_gt"] = _extract(paths.pop("test_gt_zip"), GTSRB_GT)
    return paths
