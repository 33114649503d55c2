"""Where the built-in datasets' files live, and getting them there: paths and downloads only (standard library).

Part of the light core, so ``hpo datasets``, the REST API and a run's set-up can say whether a dataset is on disk
(:func:`locate`) and fetch it (:func:`ensure_available`) before any trial, without numpy or Keras. Reading the files
is the trainer side's job (:mod:`hpo.datasets`).

Files are looked up locally, in this order, and only downloaded when missing (:func:`ensure_available`):

1. ``$HPO_DATA_DIR`` (same layout as the Keras cache, e.g. ``$HPO_DATA_DIR/mnist.npz``),
2. the Keras cache ``$KERAS_HOME/datasets`` (``~/.keras/datasets`` when ``KERAS_HOME`` is unset),
3. for ``fashion_mnist`` also ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

Downloads go into the Keras cache with :mod:`urllib` (sha256-checked where the hash is known). Local layouts
understood (``B`` is ``$HPO_DATA_DIR`` or the Keras cache dir)::

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
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import catalog
from .exceptions import DatasetError

__all__ = ["keras_cache_dir", "hpo_data_dir", "locate", "ensure_available", "GTSRB_GT"]

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
#: the name of GTSRB's test-set ground truth file
GTSRB_GT = "GT-final_test.csv"

Downloader = Callable[[str, Path], None]


def keras_cache_dir() -> Path:
    """The Keras dataset cache: ``$KERAS_HOME/datasets``, or ``~/.keras/datasets`` when KERAS_HOME is unset."""
    home = os.environ.get("KERAS_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".keras") / "datasets"


def hpo_data_dir() -> Path | None:
    """``$HPO_DATA_DIR``, or None when it is unset."""
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
        bases = [d for d in (hpo_data_dir(), keras_cache_dir()) if d is not None]
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
        if (cand / GTSRB_GT).is_file():
            return {"test_gt": cand / GTSRB_GT}
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
              f"GTSRB_Final_Test_GT.zip (test set labels; or the extracted {GTSRB_GT})"),
    ),
}
assert set(_PARTS) == {n for n in catalog.DATASET_NAMES if not catalog.is_generated(n)}


def locate(name: str) -> dict[str, Path] | None:
    """The local files of dataset ``name`` if all are present, else ``None``. Never downloads, never extracts.

    Keys name the files found, e.g. ``{"npz": .../mnist.npz}``, ``{"dir": .../cifar-10-batches-py}`` or
    ``{"archive": .../cifar-10-python.tar.gz}`` (extracted by :func:`hpo.datasets.load`). Generated (synthetic)
    datasets need no files and return ``{}`` -- test the result with ``is None``, not by truthiness.

    Raises:
        DatasetError: unknown dataset (the message lists the allowed names).
    """
    spec = catalog.spec(name)
    if spec.generated:
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
    hpo_dir = hpo_data_dir()
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


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB chunks (dataset files, own data, models)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_available(name: str, *, download: Downloader | None = None) -> None:
    """Make sure dataset ``name`` is on disk: use local files (:func:`locate`), else download the missing pieces into
    the Keras cache (:func:`keras_cache_dir`) and check their sha256 where known. Generated datasets: no-op.

    ``download(url, dest)`` fetches one file (default: this module's ``_download``, looked up at call time).

    Raises:
        DatasetError: unknown dataset, or the download failed or was incomplete; the message says which files to put
            in which directory ($HPO_DATA_DIR or the Keras cache).
    """
    spec = catalog.spec(name)
    if spec.generated or locate(spec.name) is not None:
        return
    fetch = download or _download
    missing = [p for p in _PARTS[spec.name] if p.find() is None]
    for part in missing:
        target_dir = keras_cache_dir() / part.subdir if part.subdir else keras_cache_dir()
        for dl in part.downloads:
            dest = target_dir / dl.filename
            if dest.is_file():
                continue
            try:
                fetch(dl.url, dest)
                if dl.sha256 is not None and sha256_file(dest) != dl.sha256:
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
