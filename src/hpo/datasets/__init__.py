"""Loading the built-in datasets and splitting them honestly (the trainer side; numpy, never TensorFlow or Keras).

:func:`load` returns a :class:`Splits`:

- ``x_train`` / ``y_train`` and ``x_val`` / ``y_val`` come from the dataset's *official training split*, divided
  stratified by class and seeded (same seed -> identical split);
- ``x_test`` / ``y_test`` are the *official test split*, untouched and never mixed into train or validation;
- ``data_fraction`` subsamples only the training part (after the validation split), stratified and seeded.

Array conventions: images are ``float32`` in ``[0, 1]`` with shape ``(N, H, W, C)`` (grayscale gets ``C == 1``);
text is ``int32`` with shape ``(N, sequence_length)`` and ids in ``[0, vocab_size)``; labels are ``int32`` class ids
of shape ``(N,)``.

The package, by job: ``registry`` (which loader makes each dataset, checks against the catalog, the per-process
cache), ``readers`` (file formats, archives), ``loaders`` (the file datasets), ``synthetic`` (the generated ones),
``splits`` (:class:`Splits`, :func:`load`). What a dataset is (names, shapes, classes, options: :func:`info`,
:func:`default_options`) is the light core's :mod:`hpo.catalog`; where its files live and downloading them
(:func:`locate`, :func:`ensure_available`, :func:`keras_cache_dir`) is :mod:`hpo.datafiles`. Both are re-exported
here, so ``hpo.datasets.info``, ``hpo.datasets.locate`` etc. keep working.
"""

from __future__ import annotations

from pathlib import Path

from .. import datafiles
from ..catalog import DATASET_NAMES, DatasetInfo, DatasetName, default_options, info
from ..datafiles import keras_cache_dir, locate
from .registry import clear_cache
from .splits import Splits, load

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


def _download(url: str, dest: Path) -> None:
    """Fetch ``url`` into ``dest`` (:func:`hpo.datafiles._download`). Tests replace this (or that) to simulate being
    offline; every download of this package goes through here."""
    datafiles._download(url, dest)


def ensure_available(name: str) -> None:
    """Make sure dataset ``name`` is on disk (:func:`hpo.datafiles.ensure_available`), downloading through
    :func:`_download`. Generated datasets: no-op.

    Raises:
        DatasetError: unknown dataset, or the download failed or was incomplete; the message says which files to put
            in which directory ($HPO_DATA_DIR or the Keras cache).
    """
    datafiles.ensure_available(name, download=_download)
