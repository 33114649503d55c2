"""The user's own data, prepared: read (numpy arrays, an image folder, a CSV/TSV file of texts, an ``.npz``), checked
(one clear :class:`~hpo.exceptions.DatasetError` per problem, before anything is written), and written as ONE
canonical ``.npz`` named by its SHA-256, which the trainer side reads with :func:`hpo.datasets.custom.load_custom`
(locally by ``file://`` URI, on a remote worker from object storage by ``s3://`` URI).

The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` and ``meta``, a JSON string: ``modality``,
``input_shape``, ``num_classes``, ``vocab_size``, ``class_names``, ``has_test`` (the user gave a test set),
``test`` ("given" or "held_out"), ``test_note`` (for the report), ``source``, ``description``, and for texts the
tokenizer and its vocabulary (so new texts can be encoded the same way). Stored forms: images uint8
``(N, H, W, C)``, token ids int32 ``(N, T)``, real-valued sequences float32 ``(N, T, F)``, labels int32 class ids.

Honest splits: without a test set of the user's, :data:`HOLDOUT_FRACTION` of every class is held out as the test set
by :func:`prepare` (stratified, seeded by :data:`HOLDOUT_SEED` alone, so it never moves), before a text vocabulary
is built; validation is carved later, per trial, from the rest. numpy and PIL only, never TensorFlow or Keras.

Modules: ``build`` (:func:`prepare`, :class:`Prepared`), ``files`` (image folders, CSV/TSV, .npz), ``arrays``
(labels, modality inference, stored forms), ``text`` (tokenizer), ``store`` (held-out part, the canonical file),
``common`` (errors, constants, option checks).
"""

from __future__ import annotations

from .build import FORMAT, Prepared, prepare
from .common import HOLDOUT_FRACTION, HOLDOUT_SEED, MODALITIES

__all__ = ["prepare", "Prepared", "FORMAT", "HOLDOUT_FRACTION", "HOLDOUT_SEED", "MODALITIES"]
