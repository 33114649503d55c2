"""Raw loaders of the built-in datasets that come from files: each takes the prepared paths
(:func:`hpo.datasets.readers.prepare_files`) and the resolved options and returns (x_train, y_train, x_test, y_test)
as found in the official splits: images uint8 NHWC, text int32 token ids, labels any integer type.

Text preprocessing follows ``keras.datasets.imdb/reuters`` exactly (``start_char=1``, ``oov_char=2``,
``index_from=3``, ids ``>= vocab_size`` become ``2``), then every sequence is fitted to ``sequence_length`` like
``keras.utils.pad_sequences`` with its defaults: ``truncating='pre'`` (long sequences keep their *last* tokens) and
``padding='pre'`` (zeros in front). No sequence is ever dropped. GTSRB images are cropped to the sign's ROI and resized
to ``image_size`` with PIL (imported lazily).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from ..exceptions import DatasetError
from . import readers
from .readers import Raw, _cifar_batch, _npz_keys, _read_idx


def _raw_mnist(paths: dict[str, Path], opts: dict) -> Raw:
    arrays = readers._load_npz(paths["npz"])
    x_tr, y_tr, x_te, y_te = _npz_keys(arrays, ("x_train", "y_train", "x_test", "y_test"), paths["npz"])
    return x_tr[..., None], y_tr, x_te[..., None], y_te


def _raw_fashion(paths: dict[str, Path], opts: dict) -> Raw:
    return (_read_idx(paths["train_images"])[..., None], _read_idx(paths["train_labels"]),
            _read_idx(paths["test_images"])[..., None], _read_idx(paths["test_labels"]))


def _raw_cifar10(paths: dict[str, Path], opts: dict) -> Raw:
    parts = [_cifar_batch(paths["dir"] / f"data_batch_{i}", "labels") for i in range(1, 6)]
    x_te, y_te = _cifar_batch(paths["dir"] / "test_batch", "labels")
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_te, y_te)


def _raw_cifar100(paths: dict[str, Path], opts: dict) -> Raw:
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


def _raw_imdb(paths: dict[str, Path], opts: dict) -> Raw:
    arrays = readers._load_npz(paths["npz"])
    x_tr, y_tr, x_te, y_te = _npz_keys(arrays, ("x_train", "y_train", "x_test", "y_test"), paths["npz"])
    v, L = opts["vocab_size"], opts["sequence_length"]
    return (_fit_sequences(x_tr, v, L, paths["npz"]), y_tr, _fit_sequences(x_te, v, L, paths["npz"]), y_te)


def _raw_reuters(paths: dict[str, Path], opts: dict) -> Raw:
    """Reuters ships as one pool; the official split is keras' (shuffle with RandomState(113), last 20 % test)."""
    arrays = readers._load_npz(paths["npz"])
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


def _raw_gtsrb(paths: dict[str, Path], opts: dict) -> Raw:
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
