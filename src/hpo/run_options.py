"""What a POST /runs body may ask for: the CLI's options, validated by the CLI's code, minus what is the operator's.

- ``output_dir`` is the server's; a ``sqlite`` storage URL and ``initial_configs`` (files on the server) are refused.
- The RunPod endpoint is the operator's (:class:`EndpointPolicy`): the server's own RUNPOD_ENDPOINT_URL /
  RUNPOD_ENDPOINT_ID (environment or ``.env``) or an allow-list given to ``hpo serve runpod_endpoints=URL1,URL2``.
  A body naming any other endpoint gets a 422 entry for that field; ``use_runpod_service=true`` on a server without
  an endpoint gets one for ``use_runpod_service``. RUNPOD_API_KEY thus only ever goes where the operator said.
- Every other ConfigError becomes one 422 entry naming its field (:func:`validate_options`).

Imports nothing heavy: the config and the catalog (light core) are loaded when a body is validated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import catalog, own
from .exceptions import ConfigError
from .redact import SECRET_QUERY_KEYS, mask_text, register_secret

__all__ = ["OptionsInvalid", "EndpointPolicy", "validate_options", "check_endpoint_entry", "server_owned_options",
           "register_url_secrets"]

_ENDPOINT_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
ENDPOINT_FIELDS = ("runpod_endpoint_url", "runpod_endpoint_id")


class OptionsInvalid(Exception):
    """POST /runs options that do not validate; ``errors`` lists each bad field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


def _error(loc: list[str], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "config_error"}


# -- the operator's RunPod endpoints --------------------------------------------------------------------------------

def check_endpoint_entry(entry: str) -> tuple[str, str]:
    """``(field, value)`` of one allow-list entry: an http(s) base URL (``runpod_endpoint_url``, trailing '/'
    dropped) or an endpoint id (``runpod_endpoint_id``). ConfigError for anything else."""
    entry = entry.strip()
    if "://" in entry:
        try:
            parts = urlsplit(entry)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"runpod_endpoints: {mask_text(entry)!r} is not an http(s) endpoint URL; allowed: "
                              "base URLs such as https://api.runpod.ai/v2/ENDPOINT_ID, or endpoint ids")
        return "runpod_endpoint_url", entry.rstrip("/")
    if not _ENDPOINT_ID.match(entry):
        raise ConfigError(f"runpod_endpoints: {mask_text(entry)!r} is neither an http(s) URL nor an endpoint id "
                          "(letters, digits, '_' and '-')")
    return "runpod_endpoint_id", entry


class EndpointPolicy:
    """The RunPod endpoints runs of this server may use.

    Allowed: the server's RUNPOD_ENDPOINT_URL and RUNPOD_ENDPOINT_ID (``env``, default
    :func:`hpo.config.load_dotenv_values`) and every ``allowed`` entry. A body that names no endpoint gets the
    default: RUNPOD_ENDPOINT_URL, else RUNPOD_ENDPOINT_ID, else the first allow-list entry."""

    def __init__(self, allowed: Iterable[str] = (), env: Mapping[str, str] | None = None) -> None:
        if env is None:
            from .config import load_dotenv_values

            env = load_dotenv_values()
        entries = [e for e in (env.get("RUNPOD_ENDPOINT_URL"), env.get("RUNPOD_ENDPOINT_ID")) if e]
        self.allowed: dict[str, list[str]] = {name: [] for name in ENDPOINT_FIELDS}
        self.default: tuple[str, str] | None = None
        for entry in [*entries, *allowed]:
            name, value = check_endpoint_entry(entry)
            if value not in self.allowed[name]:
                self.allowed[name].append(value)
            self.default = self.default or (name, value)

    def _allowed_text(self) -> str:
        values = self.allowed["runpod_endpoint_url"] + self.allowed["runpod_endpoint_id"]
        return ", ".join(values) if values else "none: this server has no RunPod endpoint"

    def apply(self, options: dict[str, Any]) -> list[dict[str, Any]]:
        """Check (and remove from ``options``) endpoints a caller named; fill in the server's default. Returns the
        422 entries."""
        errors = []
        chosen = False  # an allowed endpoint was named
        for name in ENDPOINT_FIELDS:
            value = options.get(name)
            if value is None or value == "":
                options.pop(name, None)
                continue
            given = value.strip().rstrip("/") if isinstance(value, str) and name == "runpod_endpoint_url" else value
            if given in self.allowed[name]:
                options[name], chosen = given, True
                continue
            options.pop(name)
            errors.append(_error([name], f"{name} is chosen by the server's operator, not by the request; "
                                         f"allowed: {self._allowed_text()} (the operator sets RUNPOD_ENDPOINT_URL"
                                         " or RUNPOD_ENDPOINT_ID, or hpo serve runpod_endpoints=URL1,URL2); "
                                         "leave it out to use the server's endpoint"))
        if not chosen and self.default is not None:
            options[self.default[0]] = self.default[1]
        elif not chosen and _truthy(options.get("use_runpod_service")):
            options.pop("use_runpod_service")  # the entry above (or this one) says why
            if not errors:
                errors.append(_error(["use_runpod_service"], "use_runpod_service=true, but this server has no "
                                     "RunPod endpoint; its operator sets RUNPOD_ENDPOINT_ID or RUNPOD_ENDPOINT_URL "
                                     "(environment or .env) or passes hpo serve runpod_endpoints=URL; leave it out "
                                     "to train locally"))
        return errors


def _truthy(value: Any) -> bool:
    return value is True or value == 1 or (isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"))


def register_url_secrets(url: Any) -> None:
    """Mask, from now on, the password in ``url``'s userinfo and secret query values wherever they appear."""
    if not isinstance(url, str):
        return
    try:
        parts = urlsplit(url)
        if parts.password:
            register_secret(parts.password)
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower().replace("-", "_") in SECRET_QUERY_KEYS:
                register_secret(value)
    except ValueError:
        pass


def server_owned_options(options: dict[str, Any], output_dir: Path, endpoints: EndpointPolicy) -> list[dict]:
    """Apply the server's rules to a body (in place): its output_dir, no sqlite storage, the operator's endpoint.
    Returns the 422 entries (the offending keys are removed so the rest can still be validated)."""
    errors = []
    if "output_dir" in options:
        given = options.pop("output_dir")
        if not isinstance(given, str) or Path(given).resolve() != output_dir.resolve():
            errors.append(_error(["output_dir"], f"output_dir={given!r} is not allowed here; runs of this server land "
                                                 f"in {str(output_dir)!r} (hpo serve output_dir=...)"))
    options["output_dir"] = str(output_dir)
    storage = options.get("storage")
    if isinstance(storage, str) and storage.strip().lower().startswith("sqlite"):
        # a SQLite URL is a file path on this server: over HTTP that would let a caller create files anywhere
        options.pop("storage")
        errors.append(_error(["storage"], "storage: a sqlite URL is not allowed over the API (it names a file on the "
                                          "server); leave it out for the run folder's study.db, or give a database "
                                          "server URL (e.g. postgresql://...)"))
    register_url_secrets(storage)
    for key in ("model", "space", "data_sha256", "data_info"):
        if key in options:  # a module to import and run on this server, or hpo's own bookkeeping: not over HTTP
            options.pop(key)
            errors.append(_error([key], f"{key}: not allowed over the API; an own model (model=, space=) runs the "
                                        "caller's code, so it is for the command line and notebooks"))
    if "initial_configs" in options:  # a file on this server: its parameter names would tell a caller what it holds
        options.pop("initial_configs")
        errors.append(_error(["initial_configs"], "initial_configs: not allowed over the API (it names a file on the "
                                                  "server); it is for the command line and notebooks"))
    dataset = options.get("dataset")
    if isinstance(dataset, str) and not own.is_builtin(dataset):
        # own data is a file or folder on this server: over HTTP that would let a caller read any file as data
        options["dataset"] = "synthetic_images"  # the other options are still checked against a stand-in
        errors.append(_error(["dataset"], f"dataset={dataset!r} is not allowed over the API; allowed: "
                                          f"{', '.join(catalog.DATASET_NAMES)} (your own data, a path on the "
                                          "server, is for the command line and notebooks)"))
    return errors + endpoints.apply(options)


# -- the CLI's validation, one entry per bad field ------------------------------------------------------------------

def validate_options(options: dict[str, Any], errors: list[dict[str, Any]] | None = None) -> Any:
    """``config_from_options`` (the CLI's validation), collecting an error for each bad field: the field a
    ConfigError names (its ``field`` attribute; every ConfigError of the config carries one) is set aside and
    validation runs again, until the rest validates or nothing is left. When the dataset itself is bad, the other
    options are still checked against a stand-in dataset (errors that depend on the dataset -- search-space pins,
    dataset options -- are then not reported). ``errors``: entries found before (they are raised together with
    these)."""
    from . import catalog
    from .config import config_from_options

    prior, errors = list(errors or []), []
    if "pins" in options and options["pins"] is not None and not isinstance(options["pins"], dict):
        raise OptionsInvalid(prior + [_error(["pins"], "pins must be an object of search-space parameters, e.g. "
                                                        '{"activation": "relu"}')])
    pin_names = catalog.all_param_names()
    dataset_dependent = pin_names | {"vocab_size", "sequence_length", "image_size"}
    opts = dict(options)
    pins: dict[str, Any] = dict(opts.get("pins") or {})
    if "pins" in opts:
        opts["pins"] = pins
    stand_in = False
    for _ in range(len(opts) + len(pins) + 3):
        try:
            config = config_from_options(opts)
        except ConfigError as exc:
            message = str(exc)
            name = exc.field
            report = not (stand_in and name in dataset_dependent)
            if name == "dataset" and not stand_in:
                if "dataset" in opts or not errors:
                    errors.append(_error(["dataset"], message))
                opts["dataset"], stand_in = "synthetic_images", True
                continue
            if name in opts and name not in ("pins", "dataset"):
                if report:
                    errors.append(_error([name], message))
                del opts[name]
                continue
            if name in pins:
                if report:
                    errors.append(_error(["pins", name], message))
                del pins[name]
                continue
            if report:
                errors.append(_error([name] if name else [], message))
            break
        except (TypeError, ValueError, AttributeError) as exc:  # a shape config_from_options does not expect
            errors.append(_error([], f"malformed options: {exc}"))
            break
        else:
            if not errors and not prior:
                return config
            break
    raise OptionsInvalid(prior + errors or [_error([], "invalid options")])
