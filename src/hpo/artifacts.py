"""A remote trial's trained model, brought back to the run folder.

Worker side, :func:`attach_model`: a job with ``return_model`` trains with ``save_model_to`` a temporary ``.keras``
file; the file is uploaded to the bucket (``hpo-models/<run name>/trial-<n>.keras``) and its URI set in
``TrialResult.model_uri``. Without a bucket (or when the upload fails) a file of at most
:data:`MAX_INLINE_MODEL_BYTES` travels base64-encoded in ``model_inline``; a bigger one is not returned and
``details["model_note"]`` says why. The trial completes either way.

Client side, :func:`store_model`: the model is written to the path the local backend would have written
(``save_model_to``), from ``model_inline`` or by downloading ``model_uri``; the returned result never carries the
inline bytes. Nothing here raises for a model that cannot be brought back: the reason goes to ``details``.

RunPod's documented payload limits are 10 MB for ``/run`` and 20 MB for ``/runsync``
(docs.runpod.io/serverless/references/operations); a job's output is not documented separately, so the inline model
stays well under the smaller one: 5 MiB of model are about 6.7 MiB of base64, leaving room for the rest of the result.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .protocol import TrialResult
from .redact import mask_text

if TYPE_CHECKING:
    from .objectstore import ObjectStore

__all__ = ["MAX_INLINE_MODEL_BYTES", "NOTE_KEY", "model_key", "attach_model", "store_model"]

log = logging.getLogger("hpo.artifacts")

#: Largest .keras file returned inline (base64) when no bucket is configured.
MAX_INLINE_MODEL_BYTES = 5 * 2**20
#: The details key that says why a model did not come back.
NOTE_KEY = "model_note"
_ZIP_MAGIC = b"PK\x03\x04"  # a .keras file is a zip archive
_BUCKET_HINT = ("configure object storage on the worker and here (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, "
                "BUCKET_SECRET_ACCESS_KEY, BUCKET_NAME)")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:150] or "trial"


def model_key(trial_id: str) -> str:
    """The bucket key of a trial's model: ``hpo-models/<run name>/trial-<n>.keras`` for ids "<run name>#<n>",
    ``hpo-models/<sanitized id>.keras`` otherwise."""
    from .objectstore import MODEL_PREFIX

    name, sep, number = trial_id.rpartition("#")
    if sep and name and number.isdigit():
        return f"{MODEL_PREFIX}{_safe(name)}/trial-{int(number)}.keras"
    return f"{MODEL_PREFIX}{_safe(trial_id)}.keras"


def _note(result: TrialResult, text: str) -> TrialResult:
    text = str(mask_text(text))
    log.warning("trial %s: %s", result.trial_id, text)
    return result.replace(details={**result.details, NOTE_KEY: text})


def attach_model(result: TrialResult, model_path: str | os.PathLike[str] | None, trial_id: str,
                 store: ObjectStore | None) -> TrialResult:
    """``result`` with the model saved at ``model_path`` attached: uploaded to ``store`` (model_uri), else inline
    when small enough (model_inline), else a note in details. A trial without a model file is returned as it is."""
    path = Path(model_path) if model_path else None
    size = path.stat().st_size if path is not None and path.is_file() else 0
    if size == 0:
        if result.status == "completed":
            return _note(result, "the trial saved no model file, so none was returned")
        return result
    upload_error = ""
    if store is not None:
        try:
            uri = store.upload_file(path, model_key(trial_id), skip_existing=False)  # type: ignore[arg-type]
            return result.replace(model_uri=uri, model_inline=None)
        except Exception as exc:  # noqa: BLE001 - the trial's numbers must come back even when the upload fails
            upload_error = f"the upload to {store.where} failed ({mask_text(str(exc))[:300]})"
    if size <= MAX_INLINE_MODEL_BYTES:
        encoded = base64.b64encode(path.read_bytes()).decode("ascii")  # type: ignore[union-attr]
        result = result.replace(model_inline=encoded, model_uri=None)
        return _note(result, f"{upload_error}; the model was returned inline instead") if upload_error else result
    reason = upload_error or "no object storage is configured on the worker"
    return _note(result, f"model not returned: {reason}, and the .keras file ({size:,} bytes) is larger than the "
                         f"{MAX_INLINE_MODEL_BYTES:,} bytes a RunPod answer may carry inline; {_BUCKET_HINT}")


def _write_atomically(dest: Path, fill: Callable[[Path], Any]) -> None:
    """``fill(part)`` writes a temporary file next to ``dest``; it replaces ``dest`` when it is a .keras file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        fill(part)
        with open(part, "rb") as f:
            if f.read(4) != _ZIP_MAGIC:
                raise ValueError("it is not a .keras file (not a zip archive)")
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)


def store_model(result: TrialResult, save_model_to: str | os.PathLike[str] | None,
                store: ObjectStore | None = None) -> TrialResult:
    """Write the model a remote worker returned to ``save_model_to``; the result without ``model_inline``.

    ``store`` downloads a ``model_uri`` (None: the store the environment configures). Never raises: a model that
    cannot be stored leaves ``save_model_to`` untouched and a note in ``details``."""
    inline, uri = result.model_inline, result.model_uri  # the worker's word: checked before anything is written
    result = result.replace(model_inline=None) if inline is not None else result
    if not save_model_to or (inline is None and uri is None):
        return result
    dest = Path(save_model_to)
    try:
        if inline is not None:
            try:
                data = base64.b64decode(inline, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("model_inline is not valid base64") from None
            _write_atomically(dest, lambda part: part.write_bytes(data))
        else:
            from .objectstore import MODEL_PREFIX, default_store, parse_uri

            key = parse_uri(uri)[1]  # type: ignore[arg-type]
            if not key.startswith(MODEL_PREFIX) or not key.endswith(".keras"):
                raise ValueError(f"it is not a model's key ({MODEL_PREFIX}....keras)")
            if store is None:
                store = default_store()
            if store is None:
                return _note(result, f"the model is at {uri}, but no object storage is configured here to "
                                     f"download it: {_BUCKET_HINT}")
            _write_atomically(dest, lambda part: store.download(uri, part))  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - a model that cannot be stored never fails the trial
        where = "returned inline" if inline is not None else f"at {uri}"
        return _note(result, f"the model {where} could not be stored at {dest.name}: {mask_text(str(exc))[:300]}")
    log.info("trial %s: model stored at %s", result.trial_id, dest)
    return result
