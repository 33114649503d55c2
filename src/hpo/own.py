"""The options of a run on the user's own data or with the user's own model, checked on the config's side (core:
standard library only; no data is read here).

- ``dataset``: a built-in name (:data:`hpo.catalog.DATASET_NAMES`), ``"custom"`` for arrays given in a notebook
  (``hpo.optimize(data=(x, y))``), or a path: an image folder (one sub-folder per class), a ``.csv``/``.tsv`` file
  (with ``text_column`` and ``label_column``) or an ``.npz`` (``x``, ``y``, optional ``x_test``, ``y_test``).
  Preparing the data (reading, checking, one canonical ``.npz`` named by its SHA-256) is :mod:`hpo.userdata`; the
  session records the prepared data's description in the config (``data_sha256``, ``data_info``), so everything
  downstream (search, jobs, reports) sees one :class:`~hpo.catalog.DatasetInfo` whatever the data's origin.
- ``model``: ``"package.module:function"`` building a Keras model from ``(params, input_shape, num_classes)``;
  ``space``: its search space as plain data (:mod:`hpo.user_space`), or on the command line a JSON/TOML/YAML file.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from . import catalog
from .exceptions import ConfigError, DatasetError
from .option_types import read_mapping_file

__all__ = ["CUSTOM", "OWN_SUFFIXES", "is_builtin", "check_dataset", "info_from_dict", "info_to_dict", "load_space",
           "check_model_ref", "run_label", "MODEL_REF", "MAX_MODEL_REF"]

#: the dataset name of arrays given in a notebook
CUSTOM = "custom"
OWN_SUFFIXES = (".csv", ".tsv", ".npz")
_OWN_ONLY = ("modality", "text_column", "label_column")
#: an own model's reference: "package.module:function"
MODEL_REF = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
MAX_MODEL_REF = 200


def is_builtin(dataset: str) -> bool:
    try:
        catalog.spec(dataset)
    except DatasetError:
        return False
    return True


def _describe_own() -> str:
    return ("a built-in dataset (" + ", ".join(catalog.DATASET_NAMES) + ") or your own data: an image folder "
            "(one sub-folder per class), a .csv/.tsv file (with text_column= and label_column=) or an .npz file "
            "(x, y and optionally x_test, y_test)")


def check_dataset(config: Any) -> None:
    """The own-data options of ``config`` are consistent, and a dataset path (not prepared yet) exists and is of a
    kind hpo reads; ConfigError/DatasetError naming the option otherwise."""
    dataset = config.dataset
    if is_builtin(dataset):
        for key in _OWN_ONLY:
            if getattr(config, key) is not None:
                raise ConfigError(f"{key} applies to your own data only; dataset {dataset} is built in",
                                  field=key)
        if config.data_info is not None:
            raise ConfigError("data_info applies to your own data only", field="data_info")
        return
    if config.data_info is not None:  # prepared already (a resumed or moved run: the path may be gone)
        info_from_dict(config.data_info)
        return
    if dataset == CUSTOM:
        return  # the session checks that arrays were given
    path = Path(dataset).expanduser()
    if not path.exists():
        close = difflib.get_close_matches(dataset.strip().lower().replace("-", "_"), catalog.DATASET_NAMES, n=1,
                                          cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"dataset={dataset!r} is not allowed (no built-in dataset and no file or folder of that "
                          f"name); allowed: {', '.join(catalog.DATASET_NAMES)}, or your own data: an image folder, a "
                          f".csv/.tsv or an .npz file{hint}", field="dataset")
    if path.is_dir():
        return
    suffix = path.suffix.lower()
    if suffix not in OWN_SUFFIXES:
        raise ConfigError(f"dataset={dataset!r} is a {suffix or 'suffix-less'} file; allowed: {_describe_own()}",
                          field="dataset")
    if suffix in (".csv", ".tsv"):
        missing = [k for k in ("text_column", "label_column") if not getattr(config, k)]
        if missing:
            raise ConfigError(f"dataset={dataset!r} is a {suffix} file: give {' and '.join(missing)} (the columns "
                              "that hold the text and the class label)", field=missing[0])


def run_label(dataset: str) -> str:
    """The start of a run folder's name for ``dataset``: its name, or for own data the file or folder name."""
    if is_builtin(dataset) or dataset == CUSTOM:
        return dataset
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(dataset).expanduser().resolve().stem or "data").strip("._-")
    return (stem or "data")[:60]


def info_to_dict(info: catalog.DatasetInfo) -> dict[str, Any]:
    return {"modality": info.modality, "input_shape": list(info.input_shape), "num_classes": info.num_classes,
            "vocab_size": info.vocab_size, "description": info.description}


def info_from_dict(data: Any) -> catalog.DatasetInfo:
    """The DatasetInfo recorded for own data (config.json's ``data_info``); ConfigError when it is malformed."""
    try:
        shape = tuple(int(d) for d in data["input_shape"])
        vocab = data.get("vocab_size")
        return catalog.DatasetInfo(CUSTOM, data["modality"], shape, int(data["num_classes"]),
                                   str(data.get("description") or "your data"),
                                   None if vocab is None else int(vocab))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"data_info is malformed ({type(exc).__name__}: {exc}); it must hold modality, "
                          "input_shape, num_classes and vocab_size", field="data_info") from None


def load_space(value: Any) -> dict[str, Any] | None:
    """``space`` as a dict: a mapping as it is, or a JSON / TOML / YAML file read (the command line gives a path)."""
    if value is None or isinstance(value, dict):
        return value
    if not isinstance(value, (str, Path)):
        raise ConfigError(f"space must be a dict of parameters or the path of a JSON/TOML/YAML file, got "
                          f"{type(value).__name__}", field="space")
    data = read_mapping_file(value, field="space")
    if not isinstance(data, dict):
        raise ConfigError(f"space file {Path(value).name} must hold an object of parameters, got "
                          f"{type(data).__name__}",
                          field="space")
    return data


def check_model_ref(ref: Any) -> str:
    """``ref`` is ``"package.module:function"`` (the import itself is checked by the trainer side before trials)."""
    if not isinstance(ref, str) or len(ref) > MAX_MODEL_REF or not MODEL_REF.match(ref.strip()):
        raise ConfigError(f"model={ref!r} is not allowed; allowed: 'package.module:function' naming a function "
                          "build(params, input_shape, num_classes) -> keras.Model", field="model")
    return ref.strip()
