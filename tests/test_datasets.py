"""Tests for hpo.datasets: registry, local file formats, honest splits, errors. No network, no TensorFlow.

Every test runs with HPO_DATA_DIR and KERAS_HOME pointing into tmp_path and with the download function replaced by
one that raises, so nothing is ever fetched and the user's ~/.keras is never read. The real-data test uses the
Debian Fashion-MNIST files in /usr/share/datasets/fashion-mnist (package dataset-fashion-mnist, installed in CI).
"""

from __future__ import annotations

import csv
import gzip
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import hpo.datasets as ds
from hpo import catalog, datafiles
from hpo.datasets import readers
from hpo.exceptions import ConfigError, DatasetError

SRC = Path(__file__).resolve().parents[1] / "src"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------------


PACKAGE_DOWNLOAD = ds._download


def _no_network(url, dest):  # replaces hpo.datasets._download (every download of the package goes through it)
    raise OSError(f"network disabled in tests (tried {url})")


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Isolated data dirs and no downloads for every test. Returns (hpo_data_dir, keras_datasets_dir)."""
    hpo_dir, keras_home = tmp_path / "hpo_data", tmp_path / "keras_home"
    hpo_dir.mkdir()
    (keras_home / "datasets").mkdir(parents=True)
    monkeypatch.setenv("HPO_DATA_DIR", str(hpo_dir))
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setattr(ds, "_download", _no_network)
    return hpo_dir, keras_home / "datasets"


def _row_keys(x: np.ndarray) -> list[bytes]:
    """One bytes key per example (for set / multiset comparisons of rows)."""
    return [r.tobytes() for r in np.ascontiguousarray(x).reshape(len(x), -1)]


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.round(x * 255).astype(np.uint8)


def write_mnist_npz(path: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """A Keras-format mnist.npz with balanced labels and unique rows (the row index is encoded in 2 pixels)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        x[:, 0, 0], x[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
        arrays[f"x_{split}"] = x
        arrays[f"y_{split}"] = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return arrays


def _ragged(seqs: list[list[int]]) -> np.ndarray:
    out = np.empty(len(seqs), dtype=object)
    for i, s in enumerate(seqs):
        out[i] = [int(w) for w in s]  # plain Python ints, like the real files
    return out


def _expected_text(seq: list[int], vocab: int, length: int) -> list[int]:
    """Reference: keras imdb id treatment + pad_sequences(truncating='pre', padding='pre')."""
    ids = [1] + [w + 3 for w in seq]
    ids = [w if w < vocab else 2 for w in ids]
    ids = ids[-length:]
    return [0] * (length - len(ids)) + ids


def _cifar_batch(path: Path, x: np.ndarray, labels: list[int], label_key: bytes = b"labels", protocol: int = 2):
    """Write a CIFAR python batch: x is (N, 32, 32, 3) uint8, stored row-major as (N, 3*32*32) channels-first."""
    data = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(len(x), -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"test", label_key: labels, b"data": data}, f, protocol=protocol)


GT_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def _ppm_with_roi(path: Path, w: int, h: int, roi: tuple[int, int, int, int]) -> None:
    """A blue image whose ROI (inclusive corners) is red."""
    from PIL import Image

    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[..., 2] = 255
    x1, y1, x2, y2 = roi
    a[y1 : y2 + 1, x1 : x2 + 1] = (255, 0, 0)
    Image.fromarray(a).save(path)


def write_gtsrb(base: Path, classes=(0, 1, 2), per_class: int = 4, n_test: int = 6, with_test=True) -> list[int]:
    """GTSRB layout under base/GTSRB: Final_Training/Images/000NN/{GT-000NN.csv,*.ppm}, Final_Test/Images/*.ppm and
    Final_Test/GT-final_test.csv. Returns the test labels in file order."""
    train = base / "GTSRB" / "Final_Training" / "Images"
    for c in classes:
        d = train / f"{c:05d}"
        d.mkdir(parents=True)
        with open(d / f"GT-{c:05d}.csv", "w", newline="") as f:
            w = csv.writer(f, delimiter=";")
            w.writerow(GT_HEADER)
            for i in range(per_class):
                width, height = 20 + 3 * i, 24 + 2 * c
                roi = (3, 2 + i % 2, width - 4, height - 3)
                name = f"{i:05d}_{c:05d}.ppm"
                _ppm_with_roi(d / name, width, height, roi)
                w.writerow([name, width, height, *roi, c])
    labels = [classes[i % len(classes)] for i in range(n_test)]
    if with_test:
        test = base / "GTSRB" / "Final_Test" / "Images"
        test.mkdir(parents=True)
        with open(base / "GTSRB" / "Final_Test" / "GT-final_test.csv", "w", newline="") as f:
            w = csv.writer(f, delimiter=";")
            w.writerow(GT_HEADER)
            for i, c in enumerate(labels):
                width, height = 30 + i, 26
                roi = (5, 4, width - 6, height - 5)
                _ppm_with_roi(test / f"{i:05d}.ppm", width, height, roi)
                w.writerow([f"{i:05d}.ppm", width, height, *roi, c])
    return labels


# ----------------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------------


def test_registry_names_and_info_need_no_tensorflow():
    code = (
        "import hpo.datasets, sys\n"
        "infos = [hpo.datasets.info(n) for n in hpo.datasets.DATASET_NAMES]\n"
        "assert len(infos) == 11, infos\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF/Keras imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert ds.DATASET_NAMES == ("mnist", "fashion_mnist", "cifar10", "cifar100", "gtsrb", "imdb", "reuters",
                                "mnist1d", "synthetic_images", "synthetic_text", "synthetic_sequence")


def test_metadata_and_file_locations_come_from_the_light_core():
    """hpo.catalog (what a dataset is) and hpo.datafiles (where its files are) need no numpy; the package re-exports
    them, so hpo.datasets.info / locate / ... are the very same functions."""
    for name in ("DATASET_NAMES", "DatasetInfo", "DatasetName", "info", "default_options"):
        assert getattr(ds, name) is getattr(catalog, name), name
    for name in ("locate", "keras_cache_dir"):
        assert getattr(ds, name) is getattr(datafiles, name), name
    assert [n for n in catalog.DATASET_NAMES if catalog.is_generated(n)] == ["mnist1d", "synthetic_images",
                                                                             "synthetic_text", "synthetic_sequence"]
    assert catalog.is_generated("Synthetic-Images") and not catalog.is_generated("nope")
    assert not catalog.is_generated(None)  # type: ignore[arg-type]
    code = (
        "import sys\n"
        "from hpo import catalog, datafiles\n"
        "rows = [(catalog.info(n), datafiles.locate(n)) for n in catalog.DATASET_NAMES]\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'tensorflow', 'keras', 'optuna'))\n"
        "assert not heavy, heavy\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_numpy_integer_options_are_accepted_and_bad_ones_name_their_field():
    t = ds.info("imdb", {"vocab_size": np.int64(500), "sequence_length": np.int32(16)})
    assert t.vocab_size == 500 and type(t.vocab_size) is int and t.input_shape == (16,)
    for options, field in (({"vocab_size": 2}, "vocab_size"), ({"sequence_length": 10**6}, "sequence_length"),
                           ({"sequence_length": "8"}, "sequence_length"), ({"image_size": 32}, "image_size")):
        with pytest.raises(ConfigError) as e:
            ds.info("imdb", options)
        assert e.value.field == field


@pytest.mark.parametrize(
    "name, modality, shape, classes",
    [
        ("mnist", "image", (28, 28, 1), 10),
        ("fashion_mnist", "image", (28, 28, 1), 10),
        ("cifar10", "image", (32, 32, 3), 10),
        ("cifar100", "image", (32, 32, 3), 100),
        ("gtsrb", "image", (32, 32, 3), 43),
        ("imdb", "text", (200,), 2),
        ("reuters", "text", (200,), 46),
        ("synthetic_images", "image", (16, 16, 3), 4),
        ("synthetic_text", "text", (32,), 4),
        ("mnist1d", "sequence", (40, 1), 10),
        ("synthetic_sequence", "sequence", (32, 2), 4),
    ],
)
def test_info_defaults(name, modality, shape, classes):
    i = ds.info(name)
    assert (i.name, i.modality, i.input_shape, i.num_classes) == (name, modality, shape, classes)
    assert i.description
    assert (i.vocab_size is not None) == (modality == "text")


def test_info_options_and_defaults():
    assert ds.default_options("imdb") == {"vocab_size": 10000, "sequence_length": 200}
    assert ds.default_options("synthetic_text") == {"vocab_size": 200, "sequence_length": 32}
    assert ds.default_options("gtsrb") == {"image_size": 32}
    assert ds.default_options("mnist") == {}
    ds.default_options("gtsrb")["image_size"] = 1  # a fresh dict each time
    assert ds.default_options("gtsrb") == {"image_size": 32}

    t = ds.info("imdb", {"vocab_size": 500, "sequence_length": 64})
    assert t.input_shape == (64,) and t.vocab_size == 500
    t = ds.info("reuters", {"vocab_size": None, "sequence_length": 10})  # None -> default
    assert t.input_shape == (10,) and t.vocab_size == 10000
    assert ds.info("gtsrb", {"image_size": 48}).input_shape == (48, 48, 3)
    assert ds.info("synthetic_text", {"sequence_length": 5}).input_shape == (5,)
    assert ds.info("Fashion-MNIST").name == "fashion_mnist"  # case and '-' are forgiven


def test_unknown_dataset_names_allowed_and_closest():
    with pytest.raises(DatasetError) as e:
        ds.info("cifar_10")
    msg = str(e.value)
    assert "cifar_10" in msg and "Did you mean 'cifar10'" in msg
    assert all(n in msg for n in ds.DATASET_NAMES)
    for fn in (ds.default_options, ds.locate, ds.ensure_available, ds.load):
        with pytest.raises(DatasetError, match="Allowed: mnist"):
            fn("nope")


@pytest.mark.parametrize(
    "name, options, needle",
    [
        ("imdb", {"vocab_size": 2}, "vocab_size"),
        ("synthetic_text", {"sequence_length": 0}, "sequence_length"),
        ("gtsrb", {"image_size": 7}, "image_size"),
        ("gtsrb", {"image_size": 16.0}, "image_size"),
        ("imdb", {"vocab_size": "1000"}, "vocab_size"),
        ("imdb", {"sequence_length": True}, "sequence_length"),
        ("imdb", {"image_size": 32}, "vocab_size"),  # unknown key: message lists what is accepted
        ("mnist", {"vocab_size": 100}, "none"),
        ("cifar10", ["image_size"], "dict"),
    ],
)
def test_bad_options_raise_config_error(name, options, needle):
    with pytest.raises(ConfigError) as e:
        ds.info(name, options)
    assert needle in str(e.value)
    with pytest.raises(ConfigError):
        ds.load(name, options=options)


@pytest.mark.parametrize(
    "kwargs",
    [{"validation_split": 1.0}, {"validation_split": -0.1}, {"data_fraction": 0.0}, {"data_fraction": 1.5},
     {"data_fraction": float("nan")}, {"seed": -1}, {"seed": 1.5}],
)
def test_bad_load_arguments(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        ds.load("synthetic_images", **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Synthetic datasets
# ----------------------------------------------------------------------------------------------------------------------


def test_synthetic_images_shapes_determinism_and_seed_only_moves_the_split():
    assert ds.locate("synthetic_images") == {}
    ds.ensure_available("synthetic_images")  # no-op
    a = ds.load("synthetic_images", seed=1)
    assert a.x_train.shape == (1280, 16, 16, 3) and a.x_val.shape == (320, 16, 16, 3)
    assert a.x_test.shape == (400, 16, 16, 3)
    assert a.x_train.dtype == np.float32 and a.y_train.dtype == np.int32
    assert 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert set(np.unique(a.y_train)) == {0, 1, 2, 3}
    assert np.bincount(a.y_val).min() >= 75  # balanced + stratified

    ds.clear_cache()
    b = ds.load("synthetic_images", seed=1)  # regenerated from scratch
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_val, b.y_val)

    c = ds.load("synthetic_images", seed=2)
    np.testing.assert_array_equal(a.x_test, c.x_test)  # the data does not depend on the run seed...
    assert sorted(_row_keys(np.concatenate([a.x_train, a.x_val]))) == sorted(
        _row_keys(np.concatenate([c.x_train, c.x_val])))
    assert set(_row_keys(a.x_val)) != set(_row_keys(c.x_val))  # ...only the split does


def test_synthetic_text_shapes_options_and_padding():
    s = ds.load("synthetic_text")
    assert s.x_train.shape == (1280, 32) and s.x_test.shape == (400, 32) and s.x_train.dtype == np.int32
    assert s.info.vocab_size == 200 and 0 <= s.x_train.min() and s.x_train.max() < 200
    assert (s.x_train[:, -1] != 0).all()  # 'pre' padding: sequences end at the last position

    small = ds.load("synthetic_text", options={"vocab_size": 50, "sequence_length": 10})
    assert small.x_train.shape[1] == 10 and small.x_train.max() < 50 and small.info.input_shape == (10,)
    tiny = ds.load("synthetic_text", options={"vocab_size": 3, "sequence_length": 1})
    assert tiny.x_train.shape[1] == 1 and tiny.x_train.max() < 3


def _nearest_centroid_accuracy(f_train, y_train, f_val, y_val) -> float:
    centroids = np.stack([f_train[y_train == k].mean(0) for k in range(4)])
    pred = np.argmin(((f_val[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((pred == y_val).mean())


def test_synthetic_images_learnable():
    """Orientation features (mean absolute gradient along 4 directions) + nearest centroid beat chance (0.25)."""

    def features(x):
        g = x.mean(-1)
        f = np.stack([
            np.abs(np.diff(g, axis=2)).mean((1, 2)),
            np.abs(np.diff(g, axis=1)).mean((1, 2)),
            np.abs(g[:, 1:, 1:] - g[:, :-1, :-1]).mean((1, 2)),
            np.abs(g[:, 1:, :-1] - g[:, :-1, 1:]).mean((1, 2)),
        ], axis=1)
        return f / f.sum(1, keepdims=True)

    s = ds.load("synthetic_images")
    acc = _nearest_centroid_accuracy(features(s.x_train), s.y_train, features(s.x_val), s.y_val)
    assert acc >= 0.6, acc


def test_synthetic_text_learnable():
    """Bag of words + nearest centroid beats chance (0.25)."""
    s = ds.load("synthetic_text")

    def bow(x):
        counts = np.zeros((len(x), s.info.vocab_size))
        np.add.at(counts, (np.repeat(np.arange(len(x)), x.shape[1]), x.ravel()), 1.0)
        counts[:, 0] = 0.0  # padding
        return counts

    acc = _nearest_centroid_accuracy(bow(s.x_train), s.y_train, bow(s.x_val), s.y_val)
    assert acc >= 0.6, acc


# ----------------------------------------------------------------------------------------------------------------------
# MNIST (.npz): honest splits
# ----------------------------------------------------------------------------------------------------------------------


def test_mnist_npz_splits(offline):
    _, keras_dir = offline
    raw = write_mnist_npz(keras_dir / "mnist.npz")
    assert ds.locate("mnist") == {"npz": keras_dir / "mnist.npz"}

    s = ds.load("mnist", validation_split=0.2, seed=3)
    assert s.x_train.shape == (160, 28, 28, 1) and s.x_val.shape == (40, 28, 28, 1)
    assert s.x_test.shape == (50, 28, 28, 1)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32 and s.y_train.shape == (160,)
    assert 0.0 <= s.x_train.min() and s.x_train.max() <= 1.0 and s.x_train.max() > 0.99

    # test split untouched, in file order
    np.testing.assert_array_equal(_to_uint8(s.x_test[..., 0]), raw["x_test"])
    np.testing.assert_array_equal(s.y_test, raw["y_test"])
    # train + val is exactly the official train split (no loss, no overlap, labels travel with rows)
    official = dict(zip(_row_keys(raw["x_train"]), raw["y_train"]))
    tr, va = _row_keys(_to_uint8(s.x_train[..., 0])), _row_keys(_to_uint8(s.x_val[..., 0]))
    assert sorted(tr + va) == sorted(official) and not set(tr) & set(va)
    assert all(official[k] == y for k, y in zip(tr + va, np.concatenate([s.y_train, s.y_val])))
    assert not (set(tr) | set(va)) & set(_row_keys(raw["x_test"]))
    # stratified: 20 per class in train -> 4 per class in val
    assert np.bincount(s.y_val, minlength=10).tolist() == [4] * 10
    assert np.bincount(s.y_train, minlength=10).tolist() == [16] * 10

    same = ds.load("mnist", validation_split=0.2, seed=3)
    np.testing.assert_array_equal(same.x_val, s.x_val)
    np.testing.assert_array_equal(same.y_train, s.y_train)
    other = ds.load("mnist", validation_split=0.2, seed=4)
    assert set(_row_keys(other.x_val)) != set(_row_keys(s.x_val))


def test_mnist_data_fraction_subsamples_train_only(offline):
    _, keras_dir = offline
    write_mnist_npz(keras_dir / "mnist.npz")
    full = ds.load("mnist", seed=5)
    half = ds.load("mnist", seed=5, data_fraction=0.5)
    assert len(half.x_train) == 80 and np.bincount(half.y_train).tolist() == [8] * 10
    np.testing.assert_array_equal(half.x_val, full.x_val)  # validation does not depend on data_fraction
    np.testing.assert_array_equal(half.x_test, full.x_test)
    assert set(_row_keys(half.x_train)) <= set(_row_keys(full.x_train))
    tiny = ds.load("mnist", seed=5, data_fraction=0.001)
    assert np.bincount(tiny.y_train).tolist() == [1] * 10  # at least one per class
    none = ds.load("mnist", validation_split=0.0)
    assert len(none.x_train) == 200 and none.x_val.shape == (0, 28, 28, 1)


def test_load_caches_raw_arrays(offline, monkeypatch):
    _, keras_dir = offline
    write_mnist_npz(keras_dir / "mnist.npz")
    ds.clear_cache()
    reads = []
    real = readers._load_npz
    monkeypatch.setattr(readers, "_load_npz", lambda p: reads.append(p) or real(p))
    ds.load("mnist", seed=1)
    ds.load("mnist", seed=2, data_fraction=0.5)
    assert len(reads) == 1
    write_mnist_npz(keras_dir / "mnist.npz", n_train=100, seed=1)  # a changed file is read again
    os.utime(keras_dir / "mnist.npz", ns=(1, 1))
    assert len(ds.load("mnist").x_train) == 80 and len(reads) == 2


def test_hpo_data_dir_comes_before_keras_cache(offline):
    hpo_dir, keras_dir = offline
    write_mnist_npz(keras_dir / "mnist.npz", n_train=100)
    write_mnist_npz(hpo_dir / "mnist.npz", n_train=150)
    assert ds.locate("mnist") == {"npz": hpo_dir / "mnist.npz"}
    s = ds.load("mnist")
    assert len(s.x_train) + len(s.x_val) == 150


# ----------------------------------------------------------------------------------------------------------------------
# IMDB / Reuters (.npz with ragged object arrays)
# ----------------------------------------------------------------------------------------------------------------------


def test_imdb_npz_nothing_dropped_truncated_oov(offline):
    hpo_dir, _ = offline
    rng = np.random.default_rng(0)
    lengths = [1, 5, 49, 50, 51, 300, 7, 120] * 5
    train = [list(rng.integers(1, 300, n)) for n in lengths]
    train[0] = [96, 97]  # -> [1, 99, 100 -> oov 2]
    test = [list(rng.integers(1, 300, n)) for n in (3, 60, 500, 20)]
    np.savez(hpo_dir / "imdb.npz", x_train=_ragged(train), y_train=np.arange(40) % 2,
             x_test=_ragged(test), y_test=np.array([0, 1, 1, 0]))

    s = ds.load("imdb", options={"vocab_size": 100, "sequence_length": 50}, seed=0)
    assert s.info.input_shape == (50,) and s.info.vocab_size == 100 and s.x_train.dtype == np.int32
    assert len(s.x_train) + len(s.x_val) == 40  # nothing dropped, although many are longer than 50
    assert s.x_val.shape == (8, 50) and s.x_test.shape == (4, 50)
    for x in (s.x_train, s.x_val, s.x_test):
        assert 0 <= x.min() and x.max() < 100
    assert s.x_test.tolist() == [_expected_text(t, 100, 50) for t in test]
    assert s.y_test.tolist() == [0, 1, 1, 0]
    expected_train = Counter(tuple(_expected_text(t, 100, 50)) for t in train)
    assert Counter(map(tuple, np.concatenate([s.x_train, s.x_val]).tolist())) == expected_train
    assert [0] * 47 + [1, 99, 2] in np.concatenate([s.x_train, s.x_val]).tolist()  # start char, shift, oov
    # 'pre' truncation keeps the last 50 tokens of the 500-token review (the start char is cut off, like keras)
    assert s.x_test[2].tolist() == [w + 3 if w + 3 < 100 else 2 for w in test[2][-50:]]


def test_reuters_npz_uses_keras_split(offline):
    hpo_dir, _ = offline
    rng = np.random.default_rng(1)
    xs = [list(rng.integers(1, 50, rng.integers(1, 30))) for _ in range(100)]
    ys = np.arange(100) % 46
    np.savez(hpo_dir / "reuters.npz", x=_ragged(xs), y=ys)
    s = ds.load("reuters", options={"vocab_size": 30, "sequence_length": 20})
    order = np.arange(100)
    np.random.RandomState(113).shuffle(order)
    assert s.x_test.tolist() == [_expected_text(xs[i], 30, 20) for i in order[80:]]
    assert s.y_test.tolist() == ys[order[80:]].tolist()
    assert len(s.x_train) + len(s.x_val) == 80 and s.info.num_classes == 46


# ----------------------------------------------------------------------------------------------------------------------
# CIFAR (pickled batches, folder or tar.gz)
# ----------------------------------------------------------------------------------------------------------------------


def _cifar10_files(folder: Path, per_batch: int = 10) -> np.ndarray:
    rng = np.random.default_rng(2)
    xs = []
    for i, name in enumerate([f"data_batch_{j}" for j in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, (per_batch, 32, 32, 3), dtype=np.uint8)
        x[0, ..., 0], x[0, ..., 1:] = 255, 0  # first image of each batch: pure red
        _cifar_batch(folder / name, x, [k % 10 for k in range(per_batch)], protocol=2 if i % 2 else 5)
        xs.append(x)
    return np.stack(xs)


def test_cifar10_batches_folder(offline):
    _, keras_dir = offline
    xs = _cifar10_files(keras_dir / "cifar-10-batches-py")
    s = ds.load("cifar10", validation_split=0.2)
    assert s.x_train.shape == (40, 32, 32, 3) and s.x_val.shape == (10, 32, 32, 3)
    assert s.x_test.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(_to_uint8(s.x_test), xs[5])  # channels-last, test untouched
    assert s.x_test[0, ..., 0].min() == 1.0 and s.x_test[0, ..., 1:].max() == 0.0


def test_cifar10_tar_archive_is_extracted(offline):
    hpo_dir, _ = offline
    staging = hpo_dir / "staging"
    xs = _cifar10_files(staging / "cifar-10-batches-py")
    with tarfile.open(hpo_dir / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(staging / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    shutil.rmtree(staging)
    assert ds.locate("cifar10") == {"archive": hpo_dir / "cifar-10-python.tar.gz"}
    s = ds.load("cifar10")
    np.testing.assert_array_equal(_to_uint8(s.x_test), xs[5])
    assert (hpo_dir / "cifar-10-batches-py" / "test_batch").is_file()
    assert ds.locate("cifar10") == {"dir": hpo_dir / "cifar-10-batches-py"}


def test_cifar100_fine_labels(offline):
    _, keras_dir = offline
    rng = np.random.default_rng(3)
    folder = keras_dir / "cifar-100-python"
    _cifar_batch(folder / "train", rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
                 [k % 100 * 3 % 100 for k in range(30)], label_key=b"fine_labels")
    _cifar_batch(folder / "test", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), [99, 0, 50, 3, 7],
                 label_key=b"fine_labels")
    s = ds.load("cifar100", validation_split=0.1)
    assert s.x_test.shape == (5, 32, 32, 3) and s.y_test.tolist() == [99, 0, 50, 3, 7]
    assert len(s.x_train) + len(s.x_val) == 30 and s.info.num_classes == 100


# ----------------------------------------------------------------------------------------------------------------------
# GTSRB (PPM + GT csv, folder or official zips)
# ----------------------------------------------------------------------------------------------------------------------


def _check_gtsrb(s, test_labels):
    assert s.x_train.shape[1:] == (16, 16, 3) and s.x_test.shape == (len(test_labels), 16, 16, 3)
    assert len(s.x_train) + len(s.x_val) == 12
    assert sorted(np.concatenate([s.y_train, s.y_val]).tolist()) == [0] * 4 + [1] * 4 + [2] * 4
    assert s.y_test.tolist() == test_labels
    for x in (s.x_train, s.x_val, s.x_test):  # cropped to the red ROI: no blue border left
        assert x[..., 0].mean() > 0.95 and x[..., 2].mean() < 0.05


def test_gtsrb_folder_roi_crop_and_resize(offline):
    hpo_dir, _ = offline
    labels = write_gtsrb(hpo_dir)
    s = ds.load("gtsrb", options={"image_size": 16}, validation_split=0.25)
    _check_gtsrb(s, labels)
    assert s.info.input_shape == (16, 16, 3) and s.info.num_classes == 43
    assert np.bincount(s.y_val).tolist() == [1, 1, 1]


def test_gtsrb_official_zips_are_extracted(offline, tmp_path):
    _, keras_dir = offline
    staging = tmp_path / "staging"
    labels = write_gtsrb(staging)
    train_root = staging / "GTSRB" / "Final_Training"
    with zipfile.ZipFile(keras_dir / "GTSRB_Final_Training_Images.zip", "w") as z:
        for p in sorted(train_root.rglob("*")):
            z.write(p, p.relative_to(staging).as_posix())
    with zipfile.ZipFile(keras_dir / "GTSRB_Final_Test_Images.zip", "w") as z:
        for p in sorted((staging / "GTSRB" / "Final_Test" / "Images").rglob("*")):
            z.write(p, p.relative_to(staging).as_posix())
    with zipfile.ZipFile(keras_dir / "GTSRB_Final_Test_GT.zip", "w") as z:
        z.write(staging / "GTSRB" / "Final_Test" / "GT-final_test.csv", "GT-final_test.csv")
    assert set(ds.locate("gtsrb")) == {"train_zip", "test_images_zip", "test_gt_zip"}
    _check_gtsrb(ds.load("gtsrb", options={"image_size": 16}), labels)
    assert set(ds.locate("gtsrb")) == {"train_dir", "test_dir", "test_gt"}


def test_gtsrb_missing_test_set_is_named(offline):
    hpo_dir, _ = offline
    write_gtsrb(hpo_dir, with_test=False)
    assert ds.locate("gtsrb") is None
    with pytest.raises(DatasetError) as e:
        ds.load("gtsrb", options={"image_size": 16})
    msg = str(e.value)
    assert "GTSRB_Final_Test_Images.zip" in msg and "GTSRB_Final_Test_GT.zip" in msg
    assert "GTSRB_Final_Training_Images.zip" not in msg  # the training set is there
    assert str(hpo_dir) in msg


# ----------------------------------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package (real data)
# ----------------------------------------------------------------------------------------------------------------------


def _official_idx(name: str, offset: int) -> np.ndarray:
    with gzip.open(DEBIAN_FASHION / name, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


@pytest.fixture(scope="module")
def fashion():
    with pytest.MonkeyPatch.context() as mp:  # keep ~/.keras out of it: only the Debian files can match
        mp.setenv("HPO_DATA_DIR", "/nonexistent/hpo")
        mp.setenv("KERAS_HOME", "/nonexistent/keras")
        mp.setattr(ds, "_download", _no_network)
        assert ds.locate("fashion_mnist")["train_images"].parent == DEBIAN_FASHION
        yield ds.load("fashion_mnist", seed=7), ds.load("fashion_mnist", seed=7, data_fraction=0.1)


def test_fashion_mnist_debian_files_honest_split(fashion):
    s, _ = fashion
    assert len(s.x_train) + len(s.x_val) == 60000 and len(s.x_val) == 12000
    assert s.x_test.shape == (10000, 28, 28, 1) and s.x_train.shape[1:] == (28, 28, 1)
    official_train = _official_idx("train-images-idx3-ubyte.gz", 16).reshape(60000, 28, 28)
    official_test = _official_idx("t10k-images-idx3-ubyte.gz", 16).reshape(10000, 28, 28)
    np.testing.assert_array_equal(_to_uint8(s.x_test[..., 0]), official_test)  # test split untouched
    np.testing.assert_array_equal(s.y_test, _official_idx("t10k-labels-idx1-ubyte.gz", 8))
    seen = _row_keys(_to_uint8(np.concatenate([s.x_train, s.x_val])))
    assert Counter(seen) == Counter(_row_keys(official_train))  # exactly the official train rows
    assert not set(seen) & set(_row_keys(official_test))  # no test image in train / val
    assert np.bincount(s.y_val).tolist() == [1200] * 10


def test_fashion_mnist_data_fraction(fashion):
    full, tenth = fashion
    assert len(tenth.x_train) == 4800 and np.bincount(tenth.y_train).tolist() == [480] * 10
    assert len(tenth.x_val) == 12000 and len(tenth.x_test) == 10000
    np.testing.assert_array_equal(tenth.y_val, full.y_val)


# ----------------------------------------------------------------------------------------------------------------------
# Missing files and downloads
# ----------------------------------------------------------------------------------------------------------------------


def test_missing_files_and_failed_download_say_where_to_put_them(offline, monkeypatch):
    hpo_dir, keras_dir = offline
    calls = []

    def fail(url, dest):
        calls.append((url, dest))
        raise OSError("offline")

    monkeypatch.setattr(ds, "_download", fail)
    assert ds.locate("mnist") is None
    with pytest.raises(DatasetError) as e:
        ds.load("mnist")
    msg = str(e.value)
    assert "mnist.npz" in msg and str(hpo_dir) in msg and str(keras_dir) in msg and "HPO_DATA_DIR" in msg
    assert calls == [("https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
                      keras_dir / "mnist.npz")]

    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        ds.ensure_available("cifar10")
    monkeypatch.delenv("HPO_DATA_DIR")
    with pytest.raises(DatasetError) as e:
        ds.ensure_available("imdb")
    assert "imdb.npz" in str(e.value) and "HPO_DATA_DIR" in str(e.value) and str(keras_dir) in str(e.value)


def test_download_lands_in_keras_cache_and_is_hash_checked(offline, monkeypatch):
    _, keras_dir = offline
    monkeypatch.setattr(ds, "_download", lambda url, dest: write_mnist_npz(dest))
    with pytest.raises(DatasetError, match="sha256"):
        ds.ensure_available("mnist")
    assert not (keras_dir / "mnist.npz").exists()  # a bad download is removed

    mnist_sha256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
    monkeypatch.setattr(datafiles, "sha256_file", lambda p: mnist_sha256)
    s = ds.load("mnist")
    assert (keras_dir / "mnist.npz").is_file() and len(s.x_test) == 50


def test_both_download_hooks_reach_every_download(offline, monkeypatch):
    """Downloads of hpo.datasets go through hpo.datasets._download, which calls hpo.datafiles._download: replacing
    either keeps a test offline; hpo.datafiles.ensure_available (the light core's) uses its own or the one given."""
    monkeypatch.setattr(ds, "_download", PACKAGE_DOWNLOAD)  # the package's own hook, not the fixture's
    calls = []

    def record(url, dest):
        calls.append(url)
        raise OSError("offline")

    monkeypatch.setattr(datafiles, "_download", record)
    with pytest.raises(DatasetError, match="mnist.npz"):
        ds.ensure_available("mnist")
    with pytest.raises(DatasetError, match="imdb.npz"):
        ds.load("imdb")
    with pytest.raises(DatasetError, match="reuters.npz"):
        datafiles.ensure_available("reuters")
    given = []
    with pytest.raises(DatasetError, match="cifar-100-python.tar.gz"):
        datafiles.ensure_available("cifar100", download=lambda url, dest: given.append(url) or record(url, dest))
    assert [u.rsplit("/", 1)[1] for u in calls] == ["mnist.npz", "imdb.npz", "reuters.npz", "cifar-100-python.tar.gz"]
    assert given == calls[-1:]


def test_locate_never_downloads(offline, monkeypatch):
    def boom(url, dest):
        raise AssertionError("locate must not download")

    monkeypatch.setattr(ds, "_download", boom)
    for name in ("mnist", "cifar10", "cifar100", "gtsrb", "imdb", "reuters"):
        assert ds.locate(name) is None


def test_corrupt_file_is_a_dataset_error(offline):
    hpo_dir, _ = offline
    (hpo_dir / "mnist.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="mnist.npz"):
        ds.load("mnist")
