"""Reading the user's data files: an image folder, a CSV/TSV file of texts, an ``.npz`` of arrays.

Image folder: one sub-folder per class (its name is the class name), PNG or JPEG files in it (sub-folders of a class
folder are read too; names starting with '.' are skipped). A folder holding exactly ``train`` and ``test`` (each
with the class sub-folders) gives a test set. Images are turned upright by their EXIF orientation; grayscale modes
stay one channel, every other mode becomes RGB (an alpha channel is dropped); a folder mixing grayscale and colour
images is refused. Size: ``image_size`` given -> every image is resized to ``image_size x image_size`` (bilinear);
not given -> images that all have one size keep it, images of different sizes are resized to
:data:`DEFAULT_IMAGE_SIZE` x :data:`DEFAULT_IMAGE_SIZE` (the built-in GTSRB's default).
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common import fail, plural, sample

__all__ = ["IMAGE_SUFFIXES", "TABLE_SUFFIXES", "DEFAULT_IMAGE_SIZE", "Read", "read_image_folder", "read_table",
           "read_npz"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
DEFAULT_IMAGE_SIZE = 32
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass
class Read:
    """What a file gave: features and labels as found (images already uint8 NHWC; texts as strings), the test part
    if there is one, and a short description of the source (names only, never a full path)."""

    x: Any
    y: Any
    x_test: Any | None
    y_test: Any | None
    source: str
    extra: dict


# -- image folders -----------------------------------------------------------------------------------------------------

def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _class_files(root: Path, folder: Path) -> dict[str, list[Path]]:
    """class name -> its image files (sorted), for the class sub-folders of ``root``."""
    out: dict[str, list[Path]] = {}
    for class_dir in sorted((d for d in root.iterdir() if d.is_dir() and _visible(d)), key=lambda d: d.name):
        files = sorted((p for p in class_dir.rglob("*") if p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(class_dir).parts)),
                       key=lambda p: p.relative_to(class_dir).as_posix())
        for p in files:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise fail(f"unsupported file type: {p.relative_to(folder).as_posix()} in the image folder "
                           f"'{folder.name}'; allowed: images ({', '.join(IMAGE_SUFFIXES)}), one sub-folder per "
                           "class")
        if not files:
            raise fail(f"the class folder '{class_dir.relative_to(folder).as_posix()}' of the image folder "
                       f"'{folder.name}' holds no images; every class needs images ({', '.join(IMAGE_SUFFIXES)})")
        out[class_dir.name] = files
    stray = [p.name for p in root.iterdir() if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES]
    if stray and out:
        raise fail(f"the image folder '{folder.name}' has images outside class sub-folders ({sample(sorted(stray))}); "
                   "put each image in the sub-folder of its class")
    return out


def _layout(folder: Path) -> tuple[dict[str, list[Path]], dict[str, list[Path]] | None]:
    entries = [p for p in folder.iterdir() if _visible(p)]
    dirs = {p.name.lower(): p for p in entries if p.is_dir()}
    if not entries:
        raise fail(f"the image folder '{folder.name}' is empty; allowed: one sub-folder per class holding its "
                   f"images ({', '.join(IMAGE_SUFFIXES)})")
    if not dirs:
        raise fail(f"the folder '{folder.name}' has no class sub-folders (it holds only "
                   f"{plural(len(entries), 'file')}: {sample(sorted(p.name for p in entries))}); allowed: one "
                   f"sub-folder per class holding its images, e.g. {folder.name}/cat/1.png")
    if set(dirs) == {"train", "test"}:
        train = _class_files(dirs["train"], folder)
        test = _class_files(dirs["test"], folder)
        for part, found in (("train", train), ("test", test)):
            if not found:
                raise fail(f"'{folder.name}/{dirs[part].name}' has no class sub-folders; allowed: one sub-folder "
                           "per class holding its images")
        return train, test
    return _class_files(folder, folder), None


def _header(path: Path, folder: Path) -> tuple[int, int, int]:
    """(width, height, channels) of an image, upright, from its header; DatasetError naming an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation: rotated by 90 degrees
                w, h = h, w
            return w, h, 1 if im.mode in _GRAY_MODES else 3
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a broken file
        raise fail(f"cannot read the image {path.relative_to(folder).as_posix()} of the image folder "
                   f"'{folder.name}' ({type(exc).__name__}: {exc}); allowed: PNG or JPEG files") from None


def _pixels(path: Path, folder: Path, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None and im.size != size:
                im = im.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a broken file
        raise fail(f"cannot read the image {path.relative_to(folder).as_posix()} of the image folder "
                   f"'{folder.name}' ({type(exc).__name__}: {exc}); allowed: PNG or JPEG files") from None
    return arr.reshape(arr.shape[0], arr.shape[1], channels)


def read_image_folder(folder: Path, image_size: int | None) -> Read:
    train, test = _layout(folder)
    items = [(p, name, "train") for name, files in train.items() for p in files]
    items += [(p, name, "test") for name, files in (test or {}).items() for p in files]
    headers = [_header(p, folder) for p, _, _ in items]
    by_channels: dict[int, list[Path]] = {}
    for (p, _, _), (_, _, c) in zip(items, headers):
        by_channels.setdefault(c, []).append(p)
    if len(by_channels) > 1:
        gray, rgb = by_channels[1], by_channels[3]
        raise fail(f"the image folder '{folder.name}' mixes channel counts: {plural(len(gray), 'grayscale image')} "
                   f"(e.g. {gray[0].relative_to(folder).as_posix()}) and {plural(len(rgb), 'colour image')} (e.g. "
                   f"{rgb[0].relative_to(folder).as_posix()}); allowed: all grayscale or all RGB -- convert them to "
                   "one kind first")
    channels = next(iter(by_channels))
    sizes = sorted({(w, h) for w, h, _ in headers})
    if image_size is not None:
        size, how = (image_size, image_size), f"resized to {image_size}x{image_size}"
    elif len(sizes) == 1:
        size, how = sizes[0], f"{sizes[0][0]}x{sizes[0][1]} as found"
    else:
        size = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
        how = (f"{len(sizes)} different sizes, resized to the default {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE} "
               "(set image_size to choose)")
    x = np.empty((len(items), size[1], size[0], channels), dtype=np.uint8)
    for i, (p, _, _) in enumerate(items):
        x[i] = _pixels(p, folder, channels, size)
    labels = np.array([name for _, name, _ in items])
    is_test = np.array([part == "test" for _, _, part in items], dtype=bool)
    kind = "grayscale" if channels == 1 else "RGB"
    source = f"image folder '{folder.name}' ({plural(len(items), 'image')}, {kind}, {how})"
    extra = {"image_size": image_size, "images": how}
    if test is None:
        return Read(x, labels, None, None, source, extra)
    return Read(x[~is_test], labels[~is_test], x[is_test], labels[is_test], source, extra)


# -- CSV / TSV files of texts ------------------------------------------------------------------------------------------

def read_table(path: Path, text_column: str | None, label_column: str | None) -> Read:
    delimiter = TABLE_SUFFIXES[path.suffix.lower()]
    kind = "TSV" if delimiter == "\t" else "CSV"
    old_limit = csv.field_size_limit()
    try:
        csv.field_size_limit(1 << 30)  # long texts
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise fail(f"the {kind} file '{path.name}' is empty; allowed: a header row naming the columns, then "
                           "one row per sample")
            columns = [h.strip() for h in header]
            missing = [f"{opt}={col!r}" if col else f"{opt} (not given)"
                       for opt, col in (("text_column", text_column), ("label_column", label_column))
                       if not col or col not in columns]
            if missing:
                raise fail(f"the {kind} file '{path.name}' has no column for {' and '.join(missing)}; its columns: "
                           f"{', '.join(repr(c) for c in columns)} -- give text_column and label_column")
            t_i, l_i = columns.index(text_column), columns.index(label_column)
            texts: list[str] = []
            labels: list[str] = []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) <= max(t_i, l_i):
                    raise fail(f"line {reader.line_num} of '{path.name}' has {plural(len(row), 'field')}, fewer than "
                               f"the header's {len(columns)}; every row needs a value for {text_column!r} and "
                               f"{label_column!r}")
                label = row[l_i].strip()
                if not label:
                    raise fail(f"line {reader.line_num} of '{path.name}' has an empty label (column "
                               f"{label_column!r}); every row needs a label")
                texts.append(row[t_i])
                labels.append(label)
    except UnicodeDecodeError as exc:
        raise fail(f"the {kind} file '{path.name}' is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as "
                   "UTF-8") from None
    except csv.Error as exc:
        raise fail(f"the {kind} file '{path.name}' cannot be parsed: {exc}") from None
    finally:
        csv.field_size_limit(old_limit)
    if not texts:
        raise fail(f"the {kind} file '{path.name}' has a header but no rows; allowed: one row per sample")
    source = f"{kind} file '{path.name}' (text column {text_column!r}, label column {label_column!r})"
    return Read(np.array(texts, dtype=str), np.array(labels, dtype=str), None, None, source, {})


# -- .npz files --------------------------------------------------------------------------------------------------------

_NPZ_KEYS = (("x", "y", "x_test", "y_test"), ("x_train", "y_train", "x_test", "y_test"))


def read_npz(path: Path) -> Read:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files) - {"meta"}
            names = next((n for n in _NPZ_KEYS if n[0] in keys), _NPZ_KEYS[0])
            allowed = "x and y, optionally x_test and y_test (or x_train, y_train, x_test, y_test)"
            missing = [k for k in names[:2] if k not in keys]
            unknown = sorted(keys - set(names))
            if missing or unknown:
                problem = (f"lacks {' and '.join(missing)}" if missing else
                           f"has unexpected arrays {', '.join(unknown)}")
                raise fail(f"the .npz file '{path.name}' {problem} (it holds: {', '.join(sorted(keys)) or 'nothing'});"
                           f" allowed: {allowed}")
            if ("x_test" in keys) != ("y_test" in keys):
                raise fail(f"the .npz file '{path.name}' has only one of x_test and y_test; give both or neither")
            arrays = {k: data[k] for k in names if k in keys}
    except ValueError as exc:  # object arrays (pickles) are refused
        if "pickle" in str(exc):
            raise fail(f"the .npz file '{path.name}' holds object arrays, which hpo does not unpickle; allowed: "
                       "numeric arrays, or strings as a fixed-width str array (np.array(texts, dtype=str))") from None
        raise fail(f"the .npz file '{path.name}' cannot be read: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise fail(f"the .npz file '{path.name}' cannot be read ({type(exc).__name__}: {exc}); allowed: a file "
                   "written by numpy.savez") from None
    x, y = arrays[names[0]], arrays[names[1]]
    return Read(x, y, arrays.get("x_test"), arrays.get("y_test"), f"npz file '{path.name}'", {})
