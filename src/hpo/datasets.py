"""Dataset registry, loading and honest splits.

Every dataset ``hpo`` can optimize on is registered here with its modality, input shape and number of classes
(:func:`info`, no file access). :func:`load` returns a :class:`Splits`:

- ``x_train`` / ``y_train`` and ``x_val`` / ``y_val`` come from the dataset's *official training split*, divided
  stratified by class and seeded (same seed -> identical split);
- ``x_test`` / ``y_test`` are the *official test split*, untouched and never mixed into train or validation;
- ``data_fraction`` subsamples only the training part (after the validation split), stratified and seeded.

Array conventions: images are ``float32`` in ``[0, 1]`` with shape ``(N, H, W, C)`` (grayscale gets ``C == 1``);
text is ``int32`` with shape ``(N, sequence_length)`` and ids in ``[0, vocab_size)``; labels are ``int32`` class ids
of shape ``(N,)``.

Files are looked up locally, in this order, and only downloaded when missing (:func:`ensure_available`):

1. ``$HPO_DATA_DIR`` (same layout as the Keras cache, e.g. ``$HPO_DATA_DIR/mnist.npz``),
2. the Keras cache ``$KERAS_HOME/datasets`` (``~/.keras/datasets`` when ``KERAS_HOME`` is unset),
3. for ``fashion_mnist`` also ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

Downloads go into the Keras cache with :mod:`urllib` (sha256-checked where the hash is known). This module never
imports TensorFlow or Keras; it reads the Keras file formats with numpy (and PIL, lazily, for GTSRB).

Local layouts understood (``B`` is ``$HPO_DATA_DIR`` or the Keras cache dir)::

    mnist          B/mnist.npz                                   (x_train, y_train, x_test, y_test)
    fashion_mnist  B/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz   (idx format)
    cifar10        B/cifar-10-batches-py/{data_batch_1..5,test_batch}   or B/cifar-10-python.tar.gz
                   (also Keras' B/cifar-10-batches-py-target/... and B/cifar-10-batches-py.tar.gz)
    cifar100       B/cifar-100-python/{train,test}  (fine labels)   or B/cifar-100-python.tar.gz
    imdb           B/imdb.npz        reuters  B/reuters.npz  (split like keras: seed 113, last 20 % is test)
    gtsrb          B/GTSRB/Final_Training/Images/000NN/{GT-000NN.csv,*.ppm}
                   B/GTSRB/Final_Test/Images/*.ppm  + GT-final_test.csv (in Images/, Final_Test/, GTSRB/ or B/)
                   or the official zips GTSRB_Final_Training_Images.zip, GTSRB_Final_Test_Images.zip,
                   GTSRB_Final_Test_GT.zip in B (extracted into B on first use)

Text preprocessing follows ``keras.datasets.imdb/reuters`` exactly (``start_char=1``, ``oov_char=2``,
``index_from=3``, ids ``>= vocab_size`` become ``2``), then every sequence is fitted to ``sequence_length`` like
``keras.utils.pad_sequences`` with its defaults: ``truncating='pre'`` (long sequences keep their *last* tokens) and
``padding='pre'`` (zeros in front). No sequence is ever dropped.

Loaded raw arrays (uint8 images, int32 token ids) are cached per process, keyed by dataset, options and the files
they came from; the split is recomputed on every :func:`load` call (cheap), so different seeds and fractions work.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import tarfile
import threading
import urllib.request
import uuid
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, get_args

import numpy as np

from hpo.exceptions import ConfigError, DatasetError

__all__ = [
    "DatasetName",
    "DATASET_NAMES",
    "DatasetInfo",
    "Splits",
    "info",
    "default_options",
    "locate",
    "ensure_available",
    "load",
    "keras_cache_dir",
    "clear_cache",
]

DatasetName = Literal[
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "gtsrb",
    "imdb",
    "reuters",
    "synthetic_images",
    "synthetic_text",
]
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)

# ----------------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset (no data).

    ``input_shape`` excludes the batch axis: ``(H, W, C)`` for images, ``(sequence_length,)`` for text.
    ``vocab_size`` is set for text only: every token id in the loaded data is ``< vocab_size``.
    """

    name: str
    modality: Literal["image", "text"]
    input_shape: tuple[int, ...]
    num_classes: int
    description: str
    vocab_size: int | None = None


@dataclass(frozen=True)
class _Spec:
    name: str
    modality: Literal["image", "text"]
    num_classes: int
    description: str
    image_shape: tuple[int, ...] | None = None  # fixed-size image datasets
    defaults: dict[str, int] = field(default_factory=dict)


_REGISTRY: dict[str, _Spec] = {
    s.name: s
    for s in (
        _Spec("mnist", "image", 10, "MNIST handwritten digits, 28x28 grayscale, 60k train / 10k test", (28, 28, 1)),
        _Spec("fashion_mnist", "image", 10, "Fashion-MNIST clothing, 28x28 grayscale, 60k train / 10k test",
              (28, 28, 1)),
        _Spec("cifar10", "image", 10, "CIFAR-10 objects, 32x32 RGB, 50k train / 10k test", (32, 32, 3)),
        _Spec("cifar100", "image", 100, "CIFAR-100 objects (fine labels), 32x32 RGB, 50k train / 10k test",
              (32, 32, 3)),
        _Spec("gtsrb", "image", 43, "German Traffic Sign Recognition Benchmark, RGB cropped to the sign's ROI and "
              "resized to image_size, 39,209 train / 12,630 test", None, {"image_size": 32}),
        _Spec("imdb", "text", 2, "IMDB movie review sentiment, word ids, 25k train / 25k test", None,
              {"vocab_size": 10000, "sequence_length": 200}),
        _Spec("reuters", "text", 46, "Reuters newswire topics, word ids, 8,982 train / 2,246 test (keras split)",
              None, {"vocab_size": 10000, "sequence_length": 200}),
        _Spec("synthetic_images", "image", 4, "generated oriented bars (class = orientation) on noisy backgrounds, "
              "16x16 RGB, 1,600 train / 400 test (for smoke runs and tests)", (16, 16, 3)),
        _Spec("synthetic_text", "text", 4, "generated token sequences with class-specific signal tokens, "
              "1,600 train / 400 test (for smoke runs and tests)", None, {"vocab_size": 200, "sequence_length": 32}),
    )
}
assert tuple(_REGISTRY) == DATASET_NAMES

_OPTION_MIN = {"vocab_size": 3, "sequence_length": 1, "image_size": 8}
#: the most a job may ask for (a larger embedding or input would exhaust a worker's memory, not train)
_OPTION_MAX = {"vocab_size": 1_000_000, "sequence_length": 100_000, "image_size": 1024}
_OPTION_HELP = {
    "vocab_size": "integer >= 3 (ids 0, 1, 2 are padding, start and out-of-vocabulary)",
    "sequence_length": "integer >= 1",
    "image_size": "integer >= 8 (images are resized to image_size x image_size)",
}


def _spec(name: str) -> _Spec:
    if not isinstance(name, str):
        raise DatasetError(f"Dataset name must be a string, got {name!r}. Allowed: {', '.join(DATASET_NAMES)}.")
    key = name.strip().lower().replace("-", "_")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, DATASET_NAMES, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DatasetError(f"Unknown dataset '{name}'.{hint} Allowed: {', '.join(DATASET_NAMES)}.")


def default_options(name: str) -> dict:
    """The dataset's options and their default values (a fresh dict), e.g. ``{"image_size": 32}`` for gtsrb.

    Datasets without options return ``{}``.
    """
    return dict(_spec(name).defaults)


def _resolve_options(spec: _Spec, options: Mapping | None) -> dict[str, int]:
    """Validate ``options`` against the dataset's option set and fill defaults (missing or None -> default)."""
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        raise ConfigError(f"Dataset options must be a dict, got {type(options).__name__}.")
    unknown = sorted(str(k) for k in options if k not in spec.defaults)
    if unknown:
        allowed = ", ".join(f"{k} ({_OPTION_HELP[k]})" for k in spec.defaults) or "none"
        raise ConfigError(f"Unknown option(s) {', '.join(unknown)} for dataset '{spec.name}'. "
                          f"Options it accepts: {allowed}.")
    out = dict(spec.defaults)
    for key, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"Dataset option {key} must be an {_OPTION_HELP[key]}, got {value!r}.")
        value = int(value)
        if value < _OPTION_MIN[key]:
            raise ConfigError(f"Dataset option {key}={value} is too small for '{spec.name}': "
                              f"must be an {_OPTION_HELP[key]}.")
        if value > _OPTION_MAX[key]:
            raise ConfigError(f"Dataset option {key}={value} is too large for '{spec.name}': "
                              f"allowed at most {_OPTION_MAX[key]}.")
        out[key] = value
    return out


def info(name: str, options: dict | None = None) -> DatasetInfo:
    """Describe dataset ``name`` with ``options`` applied. No file access, no TensorFlow.

    Options: ``vocab_size`` and ``sequence_length`` (text), ``image_size`` (gtsrb); a missing or ``None`` option
    takes the dataset's default (:func:`default_options`).

    Raises:
        DatasetError: unknown dataset (the message lists the allowed names and the closest match).
        ConfigError: unknown option for this dataset or a value out of range.
    """
    spec = _spec(name)
    opts = _resolve_options(spec, options)
    if spec.modality == "text":
        return DatasetInfo(spec.name, "text", (opts["sequence_length"],), spec.num_classes, spec.description,
                           opts["vocab_size"])
    if "image_size" in opts:
        shape = (opts["image_size"], opts["image_size"], 3)
    else:
        assert spec.image_shape is not None
        shape = spec.image_shape
    return DatasetInfo(spec.name, "image", shape, spec.num_classes, spec.description, None)


# ----------------------------------------------------------------------------------------------------------------------
# Where files live
# ----------------------------------------------------------------------------------------------------------------------

_DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
_KERAS_ORIGIN = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
_GTSRB_ORIGIN = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"
_FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
_GTSRB_GT = "GT-final_test.csv"


def keras_cache_dir() -> Path:
    """The Keras dataset cache: ``$KERAS_HOME/datasets``, or ``~/.keras/datasets`` when KERAS_HOME is unset."""
    home = os.environ.get("KERAS_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".keras") / "datasets"


def _hpo_data_dir() -> Path | None:
    value = os.environ.get("HPO_DATA_DIR")
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class _Download:
    filename: str
    url: str
    sha256: str | None = None


@dataclass(frozen=True)
class _Part:
    """One independently located piece of a dataset (GTSRB has three; the others one)."""

    finder: Callable[[Path], dict[str, Path] | None]  # given a directory, the files found there (or None)
    downloads: tuple[_Download, ...]
    files_help: str  # what to put in the directory, for error messages
    subdir: str = ""  # relative to $HPO_DATA_DIR and the Keras cache
    extra_dirs: tuple[Path, ...] = ()

    def dirs(self) -> list[Path]:
        bases = [d for d in (_hpo_data_dir(), keras_cache_dir()) if d is not None]
        return [b / self.subdir if self.subdir else b for b in bases] + list(self.extra_dirs)

    def find(self) -> dict[str, Path] | None:
        for d in self.dirs():
            try:
                found = self.finder(d)
            except OSError:
                found = None
            if found:
                return found
        return None


def _file(path: Path) -> Path | None:
    return path if path.is_file() else None


def _find_single(filename: str, key: str) -> Callable[[Path], dict[str, Path] | None]:
    def finder(d: Path) -> dict[str, Path] | None:
        f = _file(d / filename)
        return {key: f} if f else None

    return finder


def _find_fashion(d: Path) -> dict[str, Path] | None:
    found = {k: d / f for k, f in _FASHION_FILES.items()}
    return found if all(p.is_file() for p in found.values()) else None


def _find_cifar(folder: str, members: list[str], archives: list[str]) -> Callable[[Path], dict[str, Path] | None]:
    def finder(d: Path) -> dict[str, Path] | None:
        for cand in (d / folder, d / f"{folder}-target" / folder):
            if all((cand / m).is_file() for m in members):
                return {"dir": cand}
        for a in archives:
            if (d / a).is_file():
                return {"archive": d / a}
        return None

    return finder


def _find_gtsrb_train(d: Path) -> dict[str, Path] | None:
    images = d / "GTSRB" / "Final_Training" / "Images"
    if images.is_dir() and any(p.is_dir() for p in images.iterdir()):
        return {"train_dir": images}
    z = _file(d / "GTSRB_Final_Training_Images.zip")
    return {"train_zip": z} if z else None


def _find_gtsrb_test_images(d: Path) -> dict[str, Path] | None:
    images = d / "GTSRB" / "Final_Test" / "Images"
    if images.is_dir() and any(images.glob("*.ppm")):
        return {"test_dir": images}
    z = _file(d / "GTSRB_Final_Test_Images.zip")
    return {"test_images_zip": z} if z else None


def _find_gtsrb_test_gt(d: Path) -> dict[str, Path] | None:
    for cand in (d / "GTSRB" / "Final_Test" / "Images", d / "GTSRB" / "Final_Test", d / "GTSRB", d):
        if (cand / _GTSRB_GT).is_file():
            return {"test_gt": cand / _GTSRB_GT}
    z = _file(d / "GTSRB_Final_Test_GT.zip")
    return {"test_gt_zip": z} if z else None


_PARTS: dict[str, tuple[_Part, ...]] = {
    "mnist": (
        _Part(_find_single("mnist.npz", "npz"),
              (_Download("mnist.npz", _KERAS_ORIGIN + "mnist.npz",
                         "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),),
              "mnist.npz"),
    ),
    "fashion_mnist": (
        _Part(_find_fashion,
              tuple(_Download(f, _KERAS_ORIGIN + f) for f in _FASHION_FILES.values()),
              ", ".join(_FASHION_FILES.values()) + " (or install the Debian package dataset-fashion-mnist, "
              f"which provides them in {_DEBIAN_FASHION_DIR})",
              subdir="fashion-mnist", extra_dirs=(_DEBIAN_FASHION_DIR,)),
    ),
    "cifar10": (
        _Part(_find_cifar("cifar-10-batches-py", _CIFAR10_FILES,
                          ["cifar-10-python.tar.gz", "cifar-10-batches-py.tar.gz",
                           "cifar-10-batches-py-target_archive"]),
              (_Download("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                         "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
              "cifar-10-python.tar.gz (or its extracted folder cifar-10-batches-py/ with data_batch_1..5 and "
              "test_batch)"),
    ),
    "cifar100": (
        _Part(_find_cifar("cifar-100-python", ["train", "test"],
                          ["cifar-100-python.tar.gz", "cifar-100-python-target_archive"]),
              (_Download("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                         "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
              "cifar-100-python.tar.gz (or its extracted folder cifar-100-python/ with train and test)"),
    ),
    "imdb": (
        _Part(_find_single("imdb.npz", "npz"),
              (_Download("imdb.npz", _KERAS_ORIGIN + "imdb.npz",
                         "69664113be75683a8fe16e3ed0ab59fda8886cb3cd7ada244f7d9544e4676b9f"),),
              "imdb.npz"),
    ),
    "reuters": (
        _Part(_find_single("reuters.npz", "npz"),
              (_Download("reuters.npz", _KERAS_ORIGIN + "reuters.npz",
                         "d6586e694ee56d7a4e65172e12b3e987c03096cb01eab99753921ef915959916"),),
              "reuters.npz"),
    ),
    "gtsrb": (
        _Part(_find_gtsrb_train,
              (_Download("GTSRB_Final_Training_Images.zip", _GTSRB_ORIGIN + "GTSRB_Final_Training_Images.zip"),),
              "GTSRB_Final_Training_Images.zip (training set; or its extracted GTSRB/Final_Training/Images/)"),
        _Part(_find_gtsrb_test_images,
              (_Download("GTSRB_Final_Test_Images.zip", _GTSRB_ORIGIN + "GTSRB_Final_Test_Images.zip"),),
              "GTSRB_Final_Test_Images.zip (test set images; or its extracted GTSRB/Final_Test/Images/)"),
        _Part(_find_gtsrb_test_gt,
              (_Download("GTSRB_Final_Test_GT.zip", _GTSRB_ORIGIN + "GTSRB_Final_Test_GT.zip"),),
              f"GTSRB_Final_Test_GT.zip (test set labels; or the extracted {_GTSRB_GT})"),
    ),
}


def _is_synthetic(name: str) -> bool:
    return name.startswith("synthetic_")


def locate(name: str) -> dict[str, Path] | None:
    """The local files of dataset ``name`` if all are present, else ``None``. Never downloads, never extracts.

    Keys name the files found, e.g. ``{"npz": .../mnist.npz}``, ``{"dir": .../cifar-10-batches-py}`` or
    ``{"archive": .../cifar-10-python.tar.gz}`` (extracted by :func:`load`). Generated (synthetic) datasets need
    no files and return ``{}`` -- test the result with ``is None``, not by truthiness.
    """
    spec = _spec(name)
    if _is_synthetic(spec.name):
        return {}
    found: dict[str, Path] = {}
    for part in _PARTS[spec.name]:
        got = part.find()
        if got is None:
            return None
        found.update(got)
    return found


def _put_help(parts: list[_Part]) -> str:
    """'Put <files> into <$HPO_DATA_DIR/...> or into the Keras cache (<path>)', once per target sub-directory."""
    hpo_dir = _hpo_data_dir()
    sentences = []
    for subdir in dict.fromkeys(p.subdir for p in parts):
        files = "; ".join(p.files_help for p in parts if p.subdir == subdir)
        keras_dir = keras_cache_dir() / subdir if subdir else keras_cache_dir()
        if hpo_dir is not None:
            first = f"HPO_DATA_DIR ({hpo_dir / subdir if subdir else hpo_dir})"
        else:
            sub = f"/{subdir}" if subdir else ""
            first = f"the directory named by the HPO_DATA_DIR environment variable (not set; use $HPO_DATA_DIR{sub})"
        sentences.append(f"Put {files} into {first} or into the Keras cache ({keras_dir}).")
    return " ".join(sentences)


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` (written atomically). Tests replace this to simulate being offline."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:  # noqa: S310 (https)
            shutil.copyfileobj(response, out, length=1 << 20)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_available(name: str) -> None:
    """Make sure dataset ``name`` is on disk: use local files (:func:`locate`), else download the missing pieces into
    the Keras cache (:func:`keras_cache_dir`) and check their sha256 where known. Generated datasets: no-op.

    Raises:
        DatasetError: the download failed or was incomplete; the message says which files to put in which
            directory ($HPO_DATA_DIR or the Keras cache).
    """
    spec = _spec(name)
    if _is_synthetic(spec.name) or locate(spec.name) is not None:
        return
    missing = [p for p in _PARTS[spec.name] if p.find() is None]
    for part in missing:
        target_dir = keras_cache_dir() / part.subdir if part.subdir else keras_cache_dir()
        for dl in part.downloads:
            dest = target_dir / dl.filename
            if dest.is_file():
                continue
            try:
                _download(dl.url, dest)
                if dl.sha256 is not None and _sha256(dest) != dl.sha256:
                    dest.unlink(missing_ok=True)
                    raise OSError(f"sha256 mismatch for {dl.url} (file removed)")
            except Exception as exc:  # noqa: BLE001 - any failure becomes the same actionable message
                still = [p for p in _PARTS[spec.name] if p.find() is None]
                raise DatasetError(
                    f"Dataset '{spec.name}' is not available locally and downloading {dl.url} failed ({exc}). "
                    + _put_help(still) + " Then run again."
                ) from exc
    still = [p for p in _PARTS[spec.name] if p.find() is None]
    if still:
        raise DatasetError(f"Dataset '{spec.name}' is still incomplete after downloading. "
                           + _put_help(still) + " Then run again.")


# ----------------------------------------------------------------------------------------------------------------------
# File formats (numpy only)
# ----------------------------------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------------------------------
# Per-dataset raw loaders: return (x_train, y_train, x_test, y_test); images uint8 NHWC, text int32, labels any int
# ----------------------------------------------------------------------------------------------------------------------

_Raw = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _prepare_files(name: str) -> dict[str, Path]:
    """ensure_available + locate + extract archives; returns the paths the raw loaders read."""
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
        paths["test_gt"] = _extract(paths.pop("test_gt_zip"), _GTSRB_GT)
    return paths


def _raw_mnist(paths: dict[str, Path], opts: dict) -> _Raw:
    arrays = _load_npz(paths["npz"])
    x_tr, y_tr, x_te, y_te = _npz_keys(arrays, ("x_train", "y_train", "x_test", "y_test"), paths["npz"])
    return x_tr[..., None], y_tr, x_te[..., None], y_te


def _raw_fashion(paths: dict[str, Path], opts: dict) -> _Raw:
    return (_read_idx(paths["train_images"])[..., None], _read_idx(paths["train_labels"]),
            _read_idx(paths["test_images"])[..., None], _read_idx(paths["test_labels"]))


def _raw_cifar10(paths: dict[str, Path], opts: dict) -> _Raw:
    parts = [_cifar_batch(paths["dir"] / f"data_batch_{i}", "labels") for i in range(1, 6)]
    x_te, y_te = _cifar_batch(paths["dir"] / "test_batch", "labels")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_te, y_te)


def _raw_cifar100(paths: dict[str, Path], opts: dict) -> _Raw:
    x_tr, y_tr = _cifar_batch(paths["dir"] / "train", "fine_labels")
    x_te, y_te = _cifar_batch(paths["dir"] / "test", "fine_labels")
    return x_tr, y_tr, x_te, y_te


_START_CHAR, _OOV_CHAR, _INDEX_FROM = 1, 2, 3


def _fit_sequences(seqs: np.ndarray, vocab_size: int, sequence_length: int, path: Path) -> np.ndarray:
    """keras.datasets.imdb/reuters id treatment, then keras pad_sequences(truncating='pre', padding='pre')."""
    out = np.zeros((len(seqs), sequence_length), dtype=np.int32)
    for i, s in enumerate(seqs):
        a = np.asarray(s, dtype=np.int64)
        if a.ndim != 1:
            raise DatasetError(f"{path}: sequence {i} is not a flat list of word ids.")
        seq = np.empty(a.size + 1, dtype=np.int64)
        seq[0] = _START_CHAR
        seq[1:] = a + _INDEX_FROM
        seq = seq[-sequence_length:]  # truncating='pre': keep the last tokens
        seq[(seq >= vocab_size) | (seq < 0)] = _OOV_CHAR
        out[i, sequence_length - seq.size:] = seq  # padding='pre': zeros in front
    return out


def _raw_imdb(paths: dict[str, Path], opts: dict) -> _Raw:
    arrays = _load_npz(paths["npz"])
    x_tr, y_tr, x_te, y_te = _npz_keys(arrays, ("x_train", "y_train", "x_test", "y_test"), paths["npz"])
    v, L = opts["vocab_size"], opts["sequence_length"]
    return (_fit_sequences(x_tr, v, L, paths["npz"]), y_tr, _fit_sequences(x_te, v, L, paths["npz"]), y_te)


def _raw_reuters(paths: dict[str, Path], opts: dict) -> _Raw:
    """Reuters ships as one pool; the official split is keras' (shuffle with RandomState(113), last 20 % test)."""
    arrays = _load_npz(paths["npz"])
    xs, ys = _npz_keys(arrays, ("x", "y"), paths["npz"])
    order = np.arange(len(xs))
    np.random.RandomState(113).shuffle(order)
    xs, ys = xs[order], np.asarray(ys)[order]
    cut = int(len(xs) * (1 - 0.2))
    x = _fit_sequences(xs, opts["vocab_size"], opts["sequence_length"], paths["npz"])
    return x[:cut], ys[:cut], x[cut:], ys[cut:]


def _gtsrb_rows(csv_path: Path) -> list[dict[str, str]]:
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except OSError as exc:
        raise DatasetError(f"Cannot read {csv_path}: {exc}") from exc
    need = {"Filename", "ClassId"}
    if rows and not need <= set(rows[0]):
        raise DatasetError(f"{csv_path} lacks the columns {sorted(need)} (';'-separated GTSRB ground truth).")
    return rows


def _gtsrb_image(path: Path, roi: tuple[int, int, int, int] | None, size: int) -> np.ndarray:
    from PIL import Image  # lazy: only GTSRB needs PIL

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if roi is not None:
                x1, y1, x2, y2 = roi  # inclusive corners, as in the GTSRB annotations
                x1, y1 = max(0, x1), max(0, y1)
                x2, y2 = min(im.width - 1, x2), min(im.height - 1, y2)
                if x2 >= x1 and y2 >= y1:
                    im = im.crop((x1, y1, x2 + 1, y2 + 1))
            im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"Cannot read GTSRB image {path}: {exc}") from exc


def _roi(row: dict[str, str]) -> tuple[int, int, int, int] | None:
    try:
        return (int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]), int(row["Roi.Y2"]))
    except (KeyError, TypeError, ValueError):
        return None


def _gtsrb_images(items: list[tuple[Path, tuple[int, int, int, int] | None]], size: int) -> np.ndarray:
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = list(pool.map(lambda it: _gtsrb_image(it[0], it[1], size), items, chunksize=64))
    return np.stack(images)


def _raw_gtsrb(paths: dict[str, Path], opts: dict) -> _Raw:
    size = opts["image_size"]
    train_items: list[tuple[Path, tuple[int, int, int, int] | None]] = []
    train_labels: list[int] = []
    for class_dir in sorted(p for p in paths["train_dir"].iterdir() if p.is_dir()):
        csvs = sorted(class_dir.glob("GT-*.csv"))
        if csvs:
            for row in _gtsrb_rows(csvs[0]):
                train_items.append((class_dir / row["Filename"], _roi(row)))
                train_labels.append(int(row["ClassId"]))
        elif class_dir.name.isdigit():  # no annotation file: label from the folder name, no crop
            for img in sorted(class_dir.glob("*.ppm")):
                train_items.append((img, None))
                train_labels.append(int(class_dir.name))
    if not train_items:
        raise DatasetError(f"No GTSRB training images found in {paths['train_dir']} (expected 000NN/ class folders "
                           "with GT-000NN.csv and .ppm files).")
    test_items, test_labels = [], []
    for row in _gtsrb_rows(paths["test_gt"]):
        test_items.append((paths["test_dir"] / row["Filename"], _roi(row)))
        test_labels.append(int(row["ClassId"]))
    if not test_items:
        raise DatasetError(f"The GTSRB test ground truth {paths['test_gt']} is empty.")
    return (_gtsrb_images(train_items, size), np.array(train_labels), _gtsrb_images(test_items, size),
            np.array(test_labels))


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic datasets: fixed generator seed, independent of the run seed (which only decides the split)
# ----------------------------------------------------------------------------------------------------------------------

_SYNTH_SEED = 20_240_607
_SYNTH_TRAIN, _SYNTH_TEST = 1600, 400


def _raw_synthetic_images(paths: dict[str, Path], opts: dict) -> _Raw:
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


def _raw_synthetic_text(paths: dict[str, Path], opts: dict) -> _Raw:
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


_RAW_LOADERS: dict[str, Callable[[dict[str, Path], dict], _Raw]] = {
    "mnist": _raw_mnist,
    "fashion_mnist": _raw_fashion,
    "cifar10": _raw_cifar10,
    "cifar100": _raw_cifar100,
    "gtsrb": _raw_gtsrb,
    "imdb": _raw_imdb,
    "reuters": _raw_reuters,
    "synthetic_images": _raw_synthetic_images,
    "synthetic_text": _raw_synthetic_text,
}

_CACHE: dict[tuple, _Raw] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every dataset loaded in this process (the next :func:`load` reads the files again)."""
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


def _check_raw(ds: DatasetInfo, raw: _Raw, source: str) -> _Raw:
    """Normalize dtypes and reject data that does not match the registry (wrong shapes, labels, ids)."""
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
        fixed += [x, y.astype(np.int32)]
    if not len(fixed[0]):
        raise DatasetError(f"{source}: the training split is empty.")
    return tuple(fixed)  # type: ignore[return-value]


def _raw(name: str, opts: dict) -> _Raw:
    paths = {} if _is_synthetic(name) else _prepare_files(name)
    key = (name, tuple(sorted(opts.items())), _fingerprint(paths))
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            source = ", ".join(str(p) for p in paths.values()) or f"generated {name}"
            cached = _check_raw(info(name, opts), _RAW_LOADERS[name](paths, opts), source)
            _CACHE[key] = cached
    return cached


# ----------------------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------------------


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
    opts = _resolve_options(_spec(name), options)
    for arg, value, ok, allowed in (
        ("validation_split", validation_split, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"),
        ("data_fraction", data_fraction, lambda v: 0.0 < v <= 1.0, "a number in (0, 1]"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                or not math.isfinite(value) or not ok(value):
            raise ConfigError(f"{arg} must be {allowed}, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")

    x_tr, y_tr, x_te, y_te = _raw(ds.name, opts)
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
