"""Own data, prepared (hpo.userdata.prepare) and loaded on the trainer side (hpo.datasets.custom.load_custom): every
modality from numpy arrays, an image folder of PNGs, CSV/TSV texts, .npz files; modality inference and override;
a vocabulary of the training part only; byte-identical output for the same input; honest splits."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpo import userdata
from hpo.datasets import custom
from hpo.datasets.custom import load_custom
from hpo.exceptions import DatasetError
from hpo.userdata import text as tok
from hpo.userdata.store import write_canonical


@pytest.fixture(autouse=True)
def _fresh_cache():
    custom.clear_custom_cache()
    yield
    custom.clear_custom_cache()


def stored(prepared: userdata.Prepared) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(prepared.path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    return arrays, meta


def labels(n_per_class: int, classes=("a", "b", "c")) -> np.ndarray:
    return np.repeat(np.array(classes), n_per_class)


# -- numpy arrays: each modality ---------------------------------------------------------------------------------------

def test_grayscale_images_nhw_uint8_are_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 12, 10), dtype=np.uint8)
    p = userdata.prepare((x, labels(10)), out_dir=tmp_path)
    arrays, meta = stored(p)
    assert p.info.modality == "image" and p.info.input_shape == (12, 10, 1) and p.info.num_classes == 3
    assert p.info.name == "custom" and meta["modality"] == "image" and meta["input_shape"] == [12, 10, 1]
    assert arrays["x_train"].dtype == np.uint8 and arrays["x_train"].shape[1:] == (12, 10, 1)
    assert p.n_train + p.n_test == 30 and p.n_test == 6 and not p.has_test  # 20 % of each class held out
    everything = np.concatenate([arrays["x_train"], arrays["x_test"]])[..., 0]
    assert sorted(map(bytes, everything)) == sorted(map(bytes, x))  # nothing lost, nothing altered


@pytest.mark.parametrize("scale", [1.0, 255.0])
def test_colour_float_images_are_stored_as_uint8(tmp_path: Path, scale: float) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (24, 9, 9, 3))
    x = (pixels / 255.0 * scale).astype(np.float32) if scale == 1.0 else pixels.astype(np.float64)
    p = userdata.prepare({"train": (x[:18], labels(6)), "test": (x[18:], labels(2))}, out_dir=tmp_path)
    arrays, meta = stored(p)
    assert p.info.input_shape == (9, 9, 3) and p.has_test and meta["test"] == "given"
    np.testing.assert_array_equal(arrays["x_test"], pixels[18:].astype(np.uint8))
    np.testing.assert_array_equal(arrays["x_train"], pixels[:18].astype(np.uint8))


def test_token_ids_are_text_with_vocab_above_the_largest_id(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 50, (40, 7))
    x[0, 0] = 57
    p = userdata.prepare((x, labels(20, ("neg", "pos"))), out_dir=tmp_path)
    arrays, meta = stored(p)
    assert p.info.modality == "text" and p.info.input_shape == (7,) and p.info.vocab_size == 58
    assert arrays["x_train"].dtype == np.int32 and meta["vocab_size"] == 58
    assert userdata.prepare((x, labels(20, ("neg", "pos"))), out_dir=tmp_path, vocab_size=100).info.vocab_size == 100


def test_real_valued_sequences_2d_and_3d(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    two = rng.normal(size=(30, 16))
    p2 = userdata.prepare((two, labels(10)), out_dir=tmp_path)
    assert p2.info.modality == "sequence" and p2.info.input_shape == (16, 1) and p2.info.vocab_size is None
    arrays, _ = stored(p2)
    assert arrays["x_train"].dtype == np.float32 and arrays["x_train"].shape[1:] == (16, 1)
    three = rng.normal(size=(30, 20, 4)).astype(np.float32)
    p3 = userdata.prepare((three, labels(10)), out_dir=tmp_path)
    assert p3.info.modality == "sequence" and p3.info.input_shape == (20, 4)
    negative_ints = rng.integers(-5, 5, (30, 6))  # integers with negative values are measurements, not token ids
    assert userdata.prepare((negative_ints, labels(10)), out_dir=tmp_path).info.modality == "sequence"


def test_modality_override_when_compatible(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    float_images = rng.random((30, 12, 12))
    assert userdata.prepare((float_images, labels(10)), out_dir=tmp_path).info.modality == "sequence"
    p = userdata.prepare((float_images, labels(10)), out_dir=tmp_path, modality="image")
    assert p.info.modality == "image" and p.info.input_shape == (12, 12, 1)
    ids = rng.integers(0, 9, (30, 5))
    q = userdata.prepare((ids, labels(10)), out_dir=tmp_path, modality="sequence")
    assert q.info.modality == "sequence" and q.info.input_shape == (5, 1)
    ints = rng.integers(0, 256, (30, 12, 12))  # integer pixels of one channel: an image unless told otherwise
    assert userdata.prepare((ints, labels(10)), out_dir=tmp_path).info.modality == "image"
    assert userdata.prepare((ints, labels(10)), out_dir=tmp_path, modality="sequence").info.input_shape == (12, 12)


def test_labels_strings_sorted_integers_mapped_floats_without_fraction(tmp_path: Path) -> None:
    x = np.random.default_rng(5).normal(size=(30, 4))
    y = np.array(["dog", "cat", "bird"] * 10)
    p = userdata.prepare((x, y), out_dir=tmp_path)
    arrays, meta = stored(p)
    assert p.class_names == ("bird", "cat", "dog") and meta["class_names"] == ["bird", "cat", "dog"]
    everything = np.concatenate([arrays["y_train"], arrays["y_test"]])
    assert np.bincount(everything).tolist() == [10, 10, 10] and arrays["y_train"].dtype == np.int32
    q = userdata.prepare((x, [7, 3, 3] * 10), out_dir=tmp_path)
    assert q.class_names == ("3", "7") and q.info.num_classes == 2
    r = userdata.prepare((x, np.array([1.0, 0.0, 2.0] * 10)), out_dir=tmp_path)
    assert r.class_names == ("0", "1", "2")
    column = userdata.prepare((x, np.array([[1], [0], [2]] * 10)), out_dir=tmp_path)  # a (N, 1) column
    assert column.class_names == ("0", "1", "2")


# -- image folders -----------------------------------------------------------------------------------------------------

COLOURS = {"blue": (0, 0, 255), "green": (0, 200, 0), "red": (255, 0, 0)}


def write_folder(root: Path, per_class: int, size=(12, 12), mode: str = "RGB", sizes: list | None = None) -> Path:
    for c, colour in COLOURS.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            value = colour if mode == "RGB" else colour[0] // 2 + i
            wh = sizes[i % len(sizes)] if sizes else size
            Image.new(mode, wh, value).save(root / c / f"{i:03d}.png")
    return root


def test_image_folder_of_pngs(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "pics", 5, size=(14, 10))
    p = userdata.prepare(folder, out_dir=tmp_path / "out")
    arrays, meta = stored(p)
    assert p.info.modality == "image" and p.info.input_shape == (10, 14, 3)  # one size: kept (H, W, C)
    assert p.class_names == ("blue", "green", "red") and p.n_train + p.n_test == 15 and p.n_test == 3
    for x, y in ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])):
        for img, label in zip(x, y):
            assert tuple(img[0, 0]) == COLOURS[p.class_names[label]]  # pixels and labels belong together
    assert "image folder 'pics'" in meta["source"] and str(tmp_path) not in meta["source"]
    small = userdata.prepare(folder, out_dir=tmp_path / "out", image_size=8)
    assert small.info.input_shape == (8, 8, 3)


def test_image_folder_grayscale_different_sizes_and_train_test_layout(tmp_path: Path) -> None:
    mixed = write_folder(tmp_path / "gray", 4, mode="L", sizes=[(12, 12), (20, 16)])
    p = userdata.prepare(mixed, out_dir=tmp_path / "out")
    assert p.info.input_shape == (32, 32, 1)  # different sizes, no image_size: the default 32x32
    assert "resized to the default 32x32" in stored(p)[1]["source"]
    Image.new("L", (12, 12), 7).save(mixed / "red" / "photo.JPG")  # JPEG too, any suffix case
    assert userdata.prepare(mixed, out_dir=tmp_path / "out").n_train + 3 == 13
    write_folder(tmp_path / "split" / "train", 3)
    write_folder(tmp_path / "split" / "test", 1)
    q = userdata.prepare(tmp_path / "split", out_dir=tmp_path / "out")
    assert q.has_test and q.n_train == 9 and q.n_test == 3 and q.test_note.startswith("test = your test set")


# -- texts: CSV / TSV / strings ----------------------------------------------------------------------------------------

def write_table(path: Path, rows: list[tuple[str, str]], delimiter: str, header=("review", "sentiment")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_csv_vocabulary_from_the_training_part_only(tmp_path: Path) -> None:
    # every row has a word of its own (w0, w1, ...): a held-out row's word was never seen in training
    rows = [(f"A {'great' if i % 2 else 'awful'}, movie! w{i}", "pos" if i % 2 else "neg") for i in range(40)]
    path = write_table(tmp_path / "reviews.csv", rows, ",")
    p = userdata.prepare(path, out_dir=tmp_path / "out", text_column="review", label_column="sentiment")
    arrays, meta = stored(p)
    assert p.info.modality == "text" and p.class_names == ("neg", "pos") and p.n_test == 8 and not p.has_test
    own_words = [w for w in meta["vocabulary"] if w.startswith("w")]
    assert len(own_words) == p.n_train  # the training rows' words, and not one of the held-out rows'
    assert (arrays["x_test"] == tok.OOV).any(axis=1).all()  # each held-out row: its own word is out of vocabulary
    assert not (arrays["x_train"] == tok.OOV).any()
    assert meta["vocabulary"][:4] == ["a", "movie", "awful", "great"]  # by frequency, ties alphabetical
    assert (arrays["x_train"][:, 0] == tok.START).all()  # 95th percentile length fits all: start token first
    assert p.info.input_shape == (meta["sequence_length"],) and meta["sequence_length"] == 5
    assert meta["tokenizer"]["vocabulary_from"] == "training part only"


def test_tsv_with_integer_labels_and_fixed_length(tmp_path: Path) -> None:
    rows = [("one two three four five", "10"), ("six", "2")] * 6
    path = write_table(tmp_path / "t.tsv", rows, "\t", header=("text", "label"))
    p = userdata.prepare(path, out_dir=tmp_path / "out", text_column="text", label_column="label",
                         sequence_length=4, vocab_size=5)
    arrays, meta = stored(p)
    assert p.class_names == ("2", "10")  # numbers sort as numbers
    assert p.info.vocab_size == 5 and meta["vocabulary"] == ["five", "four"]  # 5 - 3 words fit; ties alphabetical
    long_row = arrays["x_train"][arrays["y_train"] == 1][0]
    short_row = arrays["x_train"][arrays["y_train"] == 0][0]
    assert long_row.tolist() == [tok.OOV, tok.OOV, 4, 3]  # truncated in front: the last tokens stay
    assert short_row.tolist() == [0, 0, tok.START, tok.OOV]  # padded in front


def test_texts_from_python_lists_with_a_test_set(tmp_path: Path) -> None:
    train = ["good film", "bad film", "good plot", "bad plot"] * 3
    y = ["p", "n", "p", "n"] * 3
    test = ["good unseenword", "bad film"]
    p = userdata.prepare({"train": (train, y), "test": (test, ["p", "n"])}, out_dir=tmp_path)
    arrays, meta = stored(p)
    assert p.has_test and p.n_train == 12 and p.n_test == 2 and "unseenword" not in meta["vocabulary"]
    assert arrays["x_test"][0].tolist()[-1] == tok.OOV and tok.OOV not in arrays["x_train"]


# -- .npz files --------------------------------------------------------------------------------------------------------

def test_npz_with_and_without_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(30, 8, 2)), np.arange(30) % 3
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    p = userdata.prepare(tmp_path / "plain.npz", out_dir=tmp_path / "out")
    assert not p.has_test and p.n_test == 6 and p.info.input_shape == (8, 2) and "plain.npz" in p.info.description
    np.savez(tmp_path / "split.npz", x=x, y=y, x_test=x[:5], y_test=y[:5])
    q = userdata.prepare(str(tmp_path / "split.npz"), out_dir=tmp_path / "out")
    arrays, meta = stored(q)
    assert q.has_test and q.n_train == 30 and q.n_test == 5 and meta["has_test"] is True
    np.testing.assert_array_equal(arrays["x_test"], x[:5].astype(np.float32))


# -- the canonical file ------------------------------------------------------------------------------------------------

def test_same_input_same_bytes_same_sha256(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    data = (rng.integers(0, 256, (40, 10, 10, 3), dtype=np.uint8), labels(20, ("x", "y")))
    first = userdata.prepare(data, out_dir=tmp_path / "one")
    second = userdata.prepare(data, out_dir=tmp_path / "two")
    again = userdata.prepare(data, out_dir=tmp_path / "one")
    assert first.sha256 == second.sha256 == again.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.path.name == f"{first.sha256}.npz" and hashlib.sha256(first.path.read_bytes()).hexdigest() == \
        first.sha256
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [first.path.name]  # no temporary files left
    with zipfile.ZipFile(first.path) as archive:
        assert [i.filename for i in archive.infolist()] == ["x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy",
                                                            "meta.npy"]
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    other = userdata.prepare((data[0][::-1], data[1]), out_dir=tmp_path / "one")
    assert other.sha256 != first.sha256
    assert first.uri == first.path.as_uri() and first.uri.startswith("file:///")


# -- load_custom: honest splits ----------------------------------------------------------------------------------------

def indexed(n_per_class: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Sequences whose value is the sample's index, so every split can be traced back to the samples."""
    n = n_per_class * k
    x = np.repeat(np.arange(n, dtype=np.float64)[:, None], 4, axis=1)
    return x, np.arange(n) % k


def ids_of(x: np.ndarray) -> set[int]:
    return {int(v) for v in x[:, 0, 0]}


def test_load_custom_held_out_test_never_overlaps_and_never_moves(tmp_path: Path) -> None:
    x, y = indexed(20)
    p = userdata.prepare((x, y), out_dir=tmp_path)
    a = load_custom(p.uri, p.sha256, validation_split=0.25, seed=1, data_fraction=1.0)
    b = load_custom(p.uri, p.sha256, validation_split=0.25, seed=2, data_fraction=1.0)
    for s in (a, b):
        train, val, test = ids_of(s.x_train), ids_of(s.x_val), ids_of(s.x_test)
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(range(60))
        assert np.bincount(s.y_val).tolist() == [4, 4, 4] and np.bincount(s.y_test).tolist() == [4, 4, 4]
        assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
        assert not s.has_test and s.test_note.startswith("test = held out 20 % of your data")
    assert ids_of(a.x_test) == ids_of(b.x_test)  # fixed seed of its own
    assert ids_of(a.x_val) != ids_of(b.x_val)  # validation follows the split seed
    again = load_custom(p.uri, p.sha256, validation_split=0.25, seed=1, data_fraction=1.0)
    assert ids_of(again.x_val) == ids_of(a.x_val)
    small = load_custom(p.uri, p.sha256, validation_split=0.25, seed=1, data_fraction=0.5)
    assert ids_of(small.x_val) == ids_of(a.x_val) and ids_of(small.x_train) < ids_of(a.x_train)
    assert a.info.name == "custom" and a.info.input_shape == (4, 1) and a.class_names == ("0", "1", "2")


def test_load_custom_given_test_set_is_only_reported(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    x = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    x_test = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    p = userdata.prepare({"train": (x, labels(10)), "test": (x_test, labels(2))}, out_dir=tmp_path)
    s = load_custom(p.uri, p.sha256, validation_split=0.2, seed=0, data_fraction=1.0)
    np.testing.assert_allclose(s.x_test[..., 0], x_test / 255.0, atol=1e-6)
    assert s.has_test and s.test_note.startswith("test = your test set") and len(s.x_train) + len(s.x_val) == 30
    assert s.x_train.dtype == np.float32 and s.x_train.max() <= 1.0 and s.info.modality == "image"


def test_load_custom_text_ids_and_a_file_without_test_arrays(tmp_path: Path) -> None:
    p = userdata.prepare((["good", "bad", "fine"] * 5, [1, 0, 1] * 5), out_dir=tmp_path)
    s = load_custom(p.uri, p.sha256, validation_split=0.2, seed=0, data_fraction=1.0)
    assert s.x_train.dtype == np.int32 and s.info.vocab_size == p.info.vocab_size
    # a canonical file made without a test part: the test part is held out at load time, fixed
    x, y = indexed(10)
    meta = {"modality": "sequence", "input_shape": [4, 1], "num_classes": 3, "vocab_size": None,
            "class_names": ["a", "b", "c"], "has_test": False}
    path, sha = write_canonical(tmp_path / "bare", {"x_train": x[..., None].astype(np.float32),
                                                    "y_train": y.astype(np.int32)}, meta)
    a = load_custom(path.as_uri(), sha, validation_split=0.2, seed=3, data_fraction=1.0)
    b = load_custom(path.as_uri(), sha, validation_split=0.2, seed=4, data_fraction=1.0)
    assert ids_of(a.x_test) == ids_of(b.x_test) and len(a.x_test) == 6 and not a.has_test
    assert not (ids_of(a.x_test) & (ids_of(a.x_train) | ids_of(a.x_val)))
    assert "held out 20 %" in a.test_note


def test_load_custom_caches_by_sha256(tmp_path: Path) -> None:
    x, y = indexed(5)
    p = userdata.prepare((x, y), out_dir=tmp_path)
    load_custom(p.uri, p.sha256, validation_split=0.2, seed=0, data_fraction=1.0)
    p.path.unlink()
    cached = load_custom(p.uri, p.sha256, validation_split=0.2, seed=0, data_fraction=1.0)
    assert len(cached.x_train) + len(cached.x_val) + len(cached.x_test) == 15
    custom.clear_custom_cache()
    with pytest.raises(DatasetError, match="no data file"):
        load_custom(p.uri, p.sha256, validation_split=0.2, seed=0, data_fraction=1.0)


def test_load_custom_s3_goes_through_objectstore_fetch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The s3:// branch hands uri, sha256 and cache_dir to hpo.objectstore.fetch (tested against a real S3 server
    in the object store's own tests) and checks the hash of what it returns once more."""
    x, y = indexed(5)
    p = userdata.prepare((x, y), out_dir=tmp_path)
    calls = []

    def fetch(uri, sha256, cache_dir=None):
        calls.append((uri, sha256, cache_dir))
        return p.path

    stand_in = types.ModuleType("hpo.objectstore")
    stand_in.fetch = fetch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hpo.objectstore", stand_in)
    monkeypatch.setattr(sys.modules["hpo"], "objectstore", stand_in, raising=False)
    s = load_custom(f"s3://bucket/hpo-data/{p.sha256}.npz", p.sha256, validation_split=0.2, seed=0,
                    data_fraction=1.0, cache_dir=tmp_path / "cache")
    assert calls == [(f"s3://bucket/hpo-data/{p.sha256}.npz", p.sha256, tmp_path / "cache")]
    assert len(s.x_test) == 3


def test_holdout_constants_agree_between_the_two_sides() -> None:
    assert (custom.HOLDOUT_FRACTION, custom.HOLDOUT_SEED) == (userdata.HOLDOUT_FRACTION, userdata.HOLDOUT_SEED)
