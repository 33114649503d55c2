"""A run's own data and own model, set up by the session before any trial (and before anything is written when the
input is bad).

- :func:`prepare_data`: reads and checks the user's data (:mod:`hpo.userdata`), writes the one canonical ``.npz``
  into ``RUN_DIR/data/`` and records its SHA-256 and description in the config; a resumed run of arrays given in a
  notebook reuses the file it prepared before.
- :func:`check_model`: imports the user's ``package.module:function`` in a child interpreter (the orchestrator never
  loads Keras), so a module that cannot be imported is an error before the first trial.
- :func:`data_uri`: where the trials read the data: the file here, or the bucket for remote workers (uploaded once,
  content-addressed; :mod:`hpo.objectstore`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import own
from .config import OptimizationConfig
from .exceptions import ConfigError

__all__ = ["prepare_data", "check_model", "data_uri", "data_file", "remove_new_run_dir", "data_notes", "DATA_DIR"]

#: the run folder's sub-folder holding the prepared data
DATA_DIR = "data"
#: share of own data held out as the test set when none is given (hpo.datasets.custom does the split)
HELD_OUT = 0.2


def _stored(run_dir: Path) -> dict[str, Any] | None:
    from .rundir import read_config_doc

    doc = read_config_doc(run_dir)
    return doc["config"] if doc is not None else None


def prepare_data(config: OptimizationConfig, run_dir: Path, data: Any = None) -> OptimizationConfig:
    """``config`` with ``data_sha256`` and ``data_info`` of the prepared data (unchanged for built-in datasets)."""
    if not config.own_data:
        if data is not None:
            raise ConfigError(f"data= is given but dataset={config.dataset!r} is built in; give dataset='custom' "
                              "(or leave dataset out) to train on your arrays", field="data")
        return config
    if config.data_info is not None and config.data_sha256 and (run_dir / DATA_DIR /
                                                                f"{config.data_sha256}.npz").is_file():
        return config
    folder = run_dir / DATA_DIR
    if config.dataset == own.CUSTOM:
        if data is None:  # a resumed notebook run: the arrays it prepared before
            stored = _stored(run_dir) or {}
            sha, info = stored.get("data_sha256"), stored.get("data_info")
            if sha and info and (folder / f"{sha}.npz").is_file():
                return config.replace(data_sha256=sha, data_info=info)
            raise ConfigError("dataset='custom' needs your arrays: hpo.optimize(data=(x, y)) or "
                              "data={'train': (x, y), 'test': (x_test, y_test)}", field="data")
        source: Any = data
    else:
        if data is not None:
            raise ConfigError("give your data once: either dataset=PATH or data=(x, y)", field="data")
        source = Path(config.dataset).expanduser()
    from .userdata import prepare

    prepared = prepare(source, out_dir=folder, modality=config.modality, text_column=config.text_column,
                       label_column=config.label_column, image_size=config.image_size,
                       vocab_size=config.vocab_size, sequence_length=config.sequence_length)
    info = dict(own.info_to_dict(prepared.info), has_test=bool(prepared.has_test), test_note=prepared.test_note,
                class_names=[str(c) for c in prepared.class_names][:1000])
    return config.replace(data_sha256=prepared.sha256, data_info=info)


def data_notes(config: OptimizationConfig) -> list[str]:
    """What a reader of the results must know about own data (where the test figures come from)."""
    if not config.own_data or not config.data_info:
        return []
    note = config.data_info.get("test_note") or ("test = your test set" if config.data_info.get("has_test") else
                                                 f"test = held out {int(HELD_OUT * 100)} % of your data")
    return [f"{note}; test figures are only reported, never used to choose"]


def data_file(config: OptimizationConfig, run_dir: Path) -> Path:
    return run_dir / DATA_DIR / f"{config.data_sha256}.npz"


def data_uri(config: OptimizationConfig, run_dir: Path) -> str | None:
    """The URI trials read own data from: the run folder's file, or (RunPod) its copy in the bucket."""
    if not config.own_data:
        return None
    path = data_file(config, run_dir)
    if not config.use_runpod_service:
        return path.resolve().as_uri()
    from . import objectstore

    from .config import load_dotenv_values

    env = {k: v for k, v in load_dotenv_values().items() if k.startswith("BUCKET_")}  # .env, then the environment
    env.update({k: v for k, v in os.environ.items() if k.startswith("BUCKET_")})
    bucket = objectstore.BucketConfig.from_env(env)
    if bucket is None:
        raise ConfigError("own data on RunPod travels through object storage: set BUCKET_ENDPOINT_URL, "
                          "BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY (and BUCKET_NAME, default 'hpo') here "
                          "and on the endpoint, as RunPod's own tools expect", field="use_runpod_service")
    store = objectstore.ObjectStore(bucket)
    store.check()
    return objectstore.upload_data(path, config.data_sha256, store)


def check_model(ref: str | None) -> None:
    """Import the user's build function in a child interpreter; ConfigError (field ``model``) when it fails."""
    if ref is None:
        return
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]])
    code = ("import sys\nfrom hpo.exceptions import ConfigError\nfrom hpo.user_model import check_build\n"
            "try:\n    check_build(sys.argv[1], execute=True)\nexcept ConfigError as exc:\n    print(exc, file=sys.stderr)\n"
            "    sys.exit(2)\n")
    try:
        done = subprocess.run([sys.executable, "-c", code, ref], env=env, capture_output=True, text=True,
                              timeout=300, cwd=os.getcwd())
    except subprocess.TimeoutExpired:
        raise ConfigError(f"model={ref!r}: importing it took more than 300 s", field="model") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise ConfigError(reason if done.returncode == 2 else f"model={ref!r} cannot be imported: {reason}",
                          field="model")


def remove_new_run_dir(run_dir: Path, existed: bool) -> None:
    """Undo a run folder made for a run that failed its checks (nothing half-written is left)."""
    if existed:
        return
    import shutil

    shutil.rmtree(run_dir, ignore_errors=True)
