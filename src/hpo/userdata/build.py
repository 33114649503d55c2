""":func:`prepare`: the user's data, from wherever it comes, checked and written as one canonical ``.npz``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..catalog import DatasetInfo
from ..exceptions import ConfigError
from . import files
from .arrays import as_array, features, is_texts, labels_to_ids
from .common import HOLDOUT_FRACTION, HOLDOUT_SEED, MODALITIES, check_option, fail, plural, sample
from .store import holdout, write_canonical
from .text import tokenize

__all__ = ["Prepared", "prepare", "FORMAT"]

#: the version of the canonical file's layout (``meta["format"]``)
FORMAT = 1


@dataclass(frozen=True)
class Prepared:
    """Prepared data: the canonical file (``path``, named by its ``sha256``) and what it holds.

    ``has_test``: the user gave a test set; False: the test set is :data:`HOLDOUT_FRACTION` of the user's data, held
    out (stratified, fixed seed) before anything else -- ``test_note`` says which, for the report."""

    path: Path
    sha256: str
    info: DatasetInfo
    class_names: tuple[str, ...]
    has_test: bool
    n_train: int
    n_test: int
    test_note: str

    @property
    def uri(self) -> str:
        """``file:///abs/<sha256>.npz``"""
        return self.path.as_uri()


def _pair(value: Any, what: str) -> tuple[Any, Any]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise fail(f"{what} must be a pair (x, y) of features and labels, got "
                   f"{type(value).__name__}{f' of {len(value)} items' if isinstance(value, (tuple, list)) else ''}")
    return value[0], value[1]


def _read(source: Any, text_column: str | None, label_column: str | None,
          image_size: int | None) -> tuple[files.Read, str]:
    """(what the source holds, its kind: arrays, folder, table or npz)."""
    if isinstance(source, tuple):
        x, y = _pair(source, "data")
        return files.Read(x, y, None, None, "numpy arrays", {}), "arrays"
    if isinstance(source, dict):
        odd = sorted(str(k) for k in source if k not in ("train", "test"))
        if odd or "train" not in source:
            problem = f"unknown keys {', '.join(odd)}" if odd else "no 'train' key"
            raise fail(f"data as a dict has {problem}; allowed: {{'train': (x, y)}} and optionally 'test': (x, y) "
                       "(validation data is always carved from 'train')")
        x, y = _pair(source["train"], "data['train']")
        test = source.get("test")
        x_test, y_test = _pair(test, "data['test']") if test is not None else (None, None)
        described = "numpy arrays (train and test)" if test is not None else "numpy arrays"
        return files.Read(x, y, x_test, y_test, described, {}), "arrays"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            return files.read_image_folder(path, image_size), "folder"
        suffix = path.suffix.lower()
        if not path.exists():
            raise fail(f"no file or folder {path.name!r} exists (at {path.parent}); allowed: an image folder, a "
                       ".csv/.tsv file or an .npz file")
        if suffix in files.TABLE_SUFFIXES:
            return files.read_table(path, text_column, label_column), "table"
        if suffix == ".npz":
            return files.read_npz(path), "npz"
        raise fail(f"unsupported file type {suffix or '(no suffix)'} of {path.name!r}; allowed: an image folder (one "
                   "sub-folder per class), a .csv or .tsv file of texts, or an .npz file of arrays")
    raise fail(f"unsupported data of type {type(source).__name__}; allowed: (x, y) arrays, {{'train': (x, y), "
               "'test': (x, y)}, or the path of an image folder, a .csv/.tsv file or an .npz file")


def _length(a: np.ndarray, what: str) -> int:
    if a.ndim == 0:
        raise fail(f"{what} is a single value, not an array with one entry per sample")
    return len(a)


def _check_counts(ids: np.ndarray, names: tuple[str, ...], has_test: bool) -> None:
    if len(names) < 2:
        only = f"one class ({names[0]!r})" if names else "no labels"
        raise fail(f"the labels hold only {only}; allowed: at least 2 classes")
    need = 2 if has_test else 3
    counts = np.bincount(ids, minlength=len(names))
    few = [f"class {names[c]!r} has {plural(int(counts[c]), 'sample')}" for c in np.flatnonzero(counts < need)]
    if few:
        why = ("one for training, one for validation" if has_test else
               "one each for training, validation and the held-out test set; 2 when you give a test set")
        raise fail(f"too few samples: {sample(few)}; each class needs at least {need} ({why})")


def prepare(source: Any, *, out_dir: str | os.PathLike, modality: str | None = None, text_column: str | None = None,
            label_column: str | None = None, image_size: int | None = None, vocab_size: int | None = None,
            sequence_length: int | None = None) -> Prepared:
    """Check the user's data and write it as one canonical ``.npz`` into ``out_dir``, named by its SHA-256.

    ``source``: ``(x, y)`` arrays (or lists), ``{"train": (x, y), "test": (x, y)}``, or the path of an image
    folder (one sub-folder per class; see :mod:`hpo.userdata.files`), a ``.csv``/``.tsv`` file (``text_column``
    and ``label_column`` name the columns) or an ``.npz`` (``x``, ``y``, optional ``x_test``, ``y_test``).
    ``modality``: "image", "text" or "sequence"; None: inferred from the arrays (:mod:`hpo.userdata.arrays`).
    Texts given as strings are tokenized with a vocabulary of the training part only (:mod:`hpo.userdata.text`;
    ``vocab_size``, default 10000, ``sequence_length``, default the 95th percentile of the lengths, at most 500).
    Labels: integers or strings; class ids follow their sorted order, ``class_names`` keep them.

    Without a test set, 20 % of every class is held out as the test set here (stratified, with a fixed seed of its
    own), before the vocabulary is built; the file then holds it as ``x_test``/``y_test`` with ``has_test`` false.
    The same input gives the same bytes, hence the same SHA-256.

    Raises:
        DatasetError: bad data (one clear message naming the problem and what is allowed); nothing is written.
        ConfigError: an option of the wrong type or range, or one that does not apply to this data.
    """
    if modality is not None and modality not in MODALITIES:
        raise ConfigError(f"modality={modality!r} is not allowed; allowed: {', '.join(MODALITIES)} (or leave it "
                          "out to infer it from the data)", field="modality")
    image_size = check_option("image_size", image_size)
    vocab_size = check_option("vocab_size", vocab_size)
    sequence_length = check_option("sequence_length", sequence_length)
    if not isinstance(out_dir, (str, os.PathLike)):
        raise ConfigError(f"out_dir must be a folder path, got {type(out_dir).__name__}", field="out_dir")
    for name, value in (("text_column", text_column), ("label_column", label_column)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a column name (a string), got {value!r}", field=name)
    read, kind = _read(source, text_column, label_column, image_size)
    for name, value, applies in (("text_column", text_column, kind == "table"),
                                 ("label_column", label_column, kind == "table"),
                                 ("image_size", image_size, kind == "folder")):
        if value is not None and not applies:
            where = "CSV/TSV files" if name != "image_size" else "image folders (arrays are used at their size)"
            raise ConfigError(f"{name} applies only to {where}; this data is {read.source}", field=name)
    from_files = kind in ("folder", "table")

    x, y = as_array(read.x, "the features"), as_array(read.y, "the labels")
    if _length(x, "the features") != _length(y, "the labels"):
        raise fail(f"the features and labels differ in length: {plural(len(x), 'sample')} but "
                   f"{plural(len(y), 'label')}; allowed: one label per sample")
    has_test = read.x_test is not None
    x_test = y_test = None
    if has_test:
        x_test, y_test = as_array(read.x_test, "the test features"), as_array(read.y_test, "the test labels")
        if _length(x_test, "the test features") != _length(y_test, "the test labels"):
            raise fail(f"the test features and labels differ in length: {plural(len(x_test), 'sample')} but "
                       f"{plural(len(y_test), 'label')}; allowed: one label per sample")
        if len(x_test) == 0:
            raise fail("the test set is empty; give test samples or leave the test set out (then 20 % of your "
                       "data is held out as the test set)")
    ids, test_ids, names = labels_to_ids(y, y_test, numeric_strings=from_files)

    texts = is_texts(x)
    if texts:
        if modality not in (None, "text"):
            raise fail(f"the features are texts (strings) but modality={modality!r}; texts are modality 'text'")
        if has_test and not is_texts(x_test):
            raise fail(f"the training features are texts (strings) but the test features are not (shape "
                       f"{x_test.shape}, dtype {x_test.dtype}); both must be texts")
        if len(x) == 0:
            raise fail("the features hold no samples")
        found = "text"
    else:
        if kind == "folder" and modality not in (None, "image"):
            raise fail(f"an image folder holds images; modality={modality!r} does not fit it")
        x, found = features(x, modality)
        if has_test:
            x_test, _ = features(x_test, found, "the test features")
            if x_test.shape[1:] != x.shape[1:]:
                raise fail(f"the test set's shape differs from the training data's: test samples are "
                           f"{x_test.shape[1:]}, training samples {x.shape[1:]}; both must have the same shape")
    if sequence_length is not None and not texts:
        raise ConfigError("sequence_length applies to texts given as strings (a CSV/TSV file or a list of "
                          f"texts); this data is {found} arrays, used at their length", field="sequence_length")
    if vocab_size is not None and found != "text":
        raise ConfigError(f"vocab_size applies only to texts; this data's modality is {found!r}", field="vocab_size")
    _check_counts(ids, names, has_test)

    if not has_test:
        kept, held = holdout(ids, len(names))
        x, x_test, ids, test_ids = x[kept], x[held], ids[kept], ids[held]
    assert x_test is not None and test_ids is not None
    extra = dict(read.extra)
    vocab = None
    if texts:
        tokens = tokenize([str(t) for t in x], [str(t) for t in x_test], vocab_size=vocab_size,
                          sequence_length=sequence_length)
        x, x_test, vocab = tokens.x_train, tokens.x_test, tokens.vocab_size
        extra.update(tokens.meta())
    elif found == "text":
        top = int(max(x.max(), x_test.max()))
        if vocab_size is not None and vocab_size <= top:
            raise fail(f"the token ids go up to {top} but vocab_size={vocab_size}; allowed: vocab_size above "
                       "every id (or leave it out: the largest id + 1)")
        vocab = vocab_size or max(3, top + 1)
    return _write(Path(out_dir).expanduser().resolve(), x, ids, x_test, test_ids, found, names, vocab, has_test,
                  read.source, extra)


def _write(out_dir: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, modality: str,
           names: tuple[str, ...], vocab: int | None, has_test: bool, source: str, extra: dict) -> Prepared:
    n_train, n_test = len(x), len(x_test)
    if has_test:
        note = f"test = your test set ({plural(n_test, 'sample')})"
    else:
        note = (f"test = held out {HOLDOUT_FRACTION:.0%} of your data ({plural(n_test, 'sample')}, stratified, "
                "fixed seed)").replace("%", " %")
    description = f"your data: {source}; {len(names)} classes, {n_train:,} train + {n_test:,} test; {note}"
    shape = tuple(int(d) for d in x.shape[1:])
    meta = dict(extra, format=FORMAT, modality=modality, input_shape=list(shape), num_classes=len(names),
                vocab_size=vocab, class_names=list(names), has_test=has_test,
                test="given" if has_test else "held_out",
                held_out_fraction=None if has_test else HOLDOUT_FRACTION,
                holdout_seed=None if has_test else HOLDOUT_SEED,
                n_train=n_train, n_test=n_test, source=source, description=description, test_note=note)
    try:
        path, sha = write_canonical(out_dir, {"x_train": x, "y_train": y.astype(np.int32), "x_test": x_test,
                                              "y_test": y_test.astype(np.int32)}, meta)
    except OSError as exc:
        raise ConfigError(f"cannot write the prepared data into out_dir={str(out_dir)!r} ({type(exc).__name__}: "
                          f"{exc.strerror or exc}); allowed: a writable folder", field="out_dir") from None
    info = DatasetInfo("custom", modality, shape, len(names), description, vocab)  # type: ignore[arg-type]
    return Prepared(path, sha, info, names, has_test, n_train, n_test, note)
