"""Bad own data: one clear error each, naming the problem (and what is allowed), raised before anything is written
-- the output folder stays empty (no data file, no temporary file)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpo import userdata
from hpo.datasets import custom
from hpo.datasets.custom import load_custom
from hpo.exceptions import ConfigError, DatasetError


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "prepared"
    folder.mkdir()
    return folder


def refused(out: Path, source, *patterns: str, error=DatasetError, **options) -> str:
    """prepare(source) raises ``error`` whose message holds every pattern (case-insensitive); nothing written."""
    with pytest.raises(error) as info:
        userdata.prepare(source, out_dir=out, **options)
    message = str(info.value)
    for pattern in patterns:
        assert pattern.lower() in message.lower(), (pattern, message)
    assert list(out.iterdir()) == [], "something was written"
    return message


RNG = np.random.default_rng(0)
X = RNG.normal(size=(30, 6))
Y = np.arange(30) % 3


def test_features_and_labels_of_different_lengths(out: Path) -> None:
    refused(out, (X, Y[:-2]), "differ in length", "30 samples", "28 labels")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_features(out: Path, bad: float) -> None:
    x = X.copy()
    x[7, 2] = bad
    refused(out, (x, Y), "NaN or inf", "sample index 7", "finite")


def test_one_class_only(out: Path) -> None:
    refused(out, (X, ["cat"] * 30), "only one class", "'cat'", "at least 2 classes")


def test_a_class_with_too_few_samples(out: Path) -> None:
    y = np.array(["a"] * 15 + ["b"] * 13 + ["rare"] * 2)
    refused(out, (X, y), "class 'rare' has 2 samples", "at least 3", "held-out test")
    test = (X[:3], np.array(["a", "b", "a"]))
    y2 = np.array(["a"] * 15 + ["b"] * 14 + ["rare"])
    refused(out, {"train": (X, y2), "test": test}, "class 'rare' has 1 sample", "at least 2",
            "one for training, one for validation")


@pytest.mark.parametrize("labels, problem", [
    (np.linspace(0, 1, 30), "floats with fractions"),
    (np.array([{"k": 1}] * 30, dtype=object), "dict"),
    (np.array([True, False] * 15), "booleans"),
    (np.array(["a", 1] * 15, dtype=object), "mix kinds (int, str)"),
    (np.eye(3)[np.arange(30) % 3], "one-hot"),
])
def test_labels_that_are_not_integers_or_strings(out: Path, labels, problem: str) -> None:
    refused(out, (X, labels), problem, "integers", "strings")


def test_arrays_of_inconsistent_shapes(out: Path) -> None:
    ragged = [np.zeros(5), np.zeros(6)] * 15
    refused(out, (ragged, Y), "inconsistent shapes", "(5,) and (6,)", "same shape")


def test_modality_that_does_not_fit(out: Path) -> None:
    refused(out, (X, Y), "not an image shape", "(N, H, W, C)", modality="image")
    refused(out, (X, Y), "token ids", "integers", modality="text")
    refused(out, (np.zeros((30, 8, 8, 5)), Y), "5 channels", "1, 3 or 4")
    refused(out, (X, Y), "modality", "image, text, sequence", error=ConfigError, modality="video")


def test_image_values_out_of_range(out: Path) -> None:
    refused(out, (np.full((30, 8, 8, 3), 300.0), Y), "values in [300, 300]", "[0, 255]", modality="image")


def png(path: Path, mode: str = "RGB", size=(10, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 100 if mode == "L" else (100, 50, 0)).save(path)


def test_image_folder_with_mixed_channel_counts(tmp_path: Path, out: Path) -> None:
    for i in range(4):
        png(tmp_path / "pics" / "cat" / f"{i}.png", "RGB")
        png(tmp_path / "pics" / "dog" / f"{i}.png", "L" if i == 2 else "RGB")
    refused(out, tmp_path / "pics", "mixes channel counts", "1 grayscale image", "dog/2.png", "7 colour images")


def test_empty_folder(tmp_path: Path, out: Path) -> None:
    (tmp_path / "empty").mkdir()
    refused(out, tmp_path / "empty", "'empty' is empty", "one sub-folder per class")


def test_folder_without_class_sub_folders(tmp_path: Path, out: Path) -> None:
    for i in range(3):
        png(tmp_path / "flat" / f"{i}.png")
    refused(out, tmp_path / "flat", "no class sub-folders", "0.png", "one sub-folder per class")


def test_class_folder_without_images(tmp_path: Path, out: Path) -> None:
    png(tmp_path / "pics" / "cat" / "0.png")
    (tmp_path / "pics" / "dog").mkdir()
    refused(out, tmp_path / "pics", "class folder 'dog'", "holds no images")


def test_unreadable_image(tmp_path: Path, out: Path) -> None:
    for i in range(3):
        png(tmp_path / "pics" / "cat" / f"{i}.png")
        png(tmp_path / "pics" / "dog" / f"{i}.png")
    (tmp_path / "pics" / "dog" / "broken.png").write_bytes(b"not a png at all")
    refused(out, tmp_path / "pics", "cannot read the image dog/broken.png", "PNG or JPEG")


def test_unsupported_file_in_a_class_folder(tmp_path: Path, out: Path) -> None:
    png(tmp_path / "pics" / "cat" / "0.png")
    (tmp_path / "pics" / "cat" / "notes.txt").write_text("hello")
    refused(out, tmp_path / "pics", "unsupported file type", "cat/notes.txt", ".png, .jpg, .jpeg")


def test_unsupported_file_type(tmp_path: Path, out: Path) -> None:
    (tmp_path / "data.json").write_text("{}")
    refused(out, tmp_path / "data.json", "unsupported file type .json", ".csv or .tsv", ".npz")
    refused(out, tmp_path / "missing.npz", "no file or folder 'missing.npz'")
    refused(out, 42, "unsupported data of type int", "(x, y)")


def table(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return path


def test_csv_without_the_named_columns(tmp_path: Path, out: Path) -> None:
    path = table(tmp_path / "r.csv", [["review", "stars"], ["fine", "5"], ["bad", "1"]])
    refused(out, path, "no column for label_column='label'", "its columns: 'review', 'stars'",
            text_column="review", label_column="label")
    refused(out, path, "text_column (not given)", "'review', 'stars'", label_column="stars")


def test_empty_csv(tmp_path: Path, out: Path) -> None:
    (tmp_path / "empty.csv").write_text("")
    refused(out, tmp_path / "empty.csv", "'empty.csv' is empty", "header row", text_column="t", label_column="l")
    header_only = table(tmp_path / "head.csv", [["t", "l"]])
    refused(out, header_only, "no rows", text_column="t", label_column="l")


def test_csv_row_without_a_label(tmp_path: Path, out: Path) -> None:
    path = table(tmp_path / "r.csv", [["t", "l"], ["good", "1"], ["bad", ""]])
    refused(out, path, "line 3", "empty label", text_column="t", label_column="l")


def test_test_set_whose_shape_differs(out: Path) -> None:
    refused(out, {"train": (X, Y), "test": (np.zeros((4, 7)), [0, 1, 2, 0])}, "test set's shape differs",
            "(7, 1)", "(6, 1)")


def test_test_set_whose_classes_differ(out: Path) -> None:
    refused(out, {"train": (X, Y), "test": (X[:4], [0, 1, 2, 9])}, "test set's classes differ", "never occur in training: 9")
    refused(out, {"train": (X, Y), "test": (X[:4], ["a", "b", "c", "d"])}, "test labels are strings")


def test_npz_without_x_and_y(tmp_path: Path, out: Path) -> None:
    np.savez(tmp_path / "d.npz", features=X, y=Y)
    refused(out, tmp_path / "d.npz", "lacks x", "features", "x and y")
    np.savez(tmp_path / "o.npz", x=np.array([object()] * 30, dtype=object), y=Y)
    refused(out, tmp_path / "o.npz", "object arrays")


def test_options_that_do_not_apply(out: Path) -> None:
    refused(out, (X, Y), "image_size applies only to image folders", error=ConfigError, image_size=16)
    refused(out, (X, Y), "vocab_size applies only to texts", "'sequence'", error=ConfigError, vocab_size=100)
    refused(out, (X, Y), "sequence_length applies to texts", error=ConfigError, sequence_length=10)
    refused(out, (X, Y), "image_size", ">= 8", error=ConfigError, image_size=4)


def test_file_hash_mismatch(tmp_path: Path) -> None:
    custom.clear_custom_cache()
    p = userdata.prepare((X, Y), out_dir=tmp_path)
    wrong = "0" * 64
    with pytest.raises(DatasetError) as info:
        load_custom(p.uri, wrong, validation_split=0.2, seed=0, data_fraction=1.0)
    message = str(info.value)
    assert f"SHA-256 {p.sha256[:12]}" in message and f"expected {wrong[:12]}" in message
    with pytest.raises(DatasetError, match="64 lowercase hexadecimal"):
        load_custom(p.uri, "ABC", validation_split=0.2, seed=0, data_fraction=1.0)
    with pytest.raises(DatasetError, match="unsupported data URI"):
        load_custom("http://example.invalid/x.npz", p.sha256, validation_split=0.2, seed=0, data_fraction=1.0)
    not_prepared = tmp_path / "raw.npz"
    np.savez(not_prepared, x=X, y=Y)
    import hashlib

    sha = hashlib.sha256(not_prepared.read_bytes()).hexdigest()
    with pytest.raises(DatasetError, match="not prepared data of hpo"):
        load_custom(not_prepared.as_uri(), sha, validation_split=0.2, seed=0, data_fraction=1.0)


def test_out_dir_that_cannot_be_written(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match="cannot write the prepared data into out_dir") as info:
        userdata.prepare((X, Y), out_dir=tmp_path / "a_file" / "sub")
    assert info.value.field == "out_dir"
