"""The REST API: a thin FastAPI adapter over the run manager, the orchestrator and the run folders.

    hpo serve [host=127.0.0.1] [port=8000] [max_active_runs=1] [allow_remote=false] [output_dir=optimization_results]
              [max_body_bytes=65536] [runpod_endpoints=URL1,URL2]

Routes (every one but ``/health`` needs ``Authorization: Bearer <HPO_API_TOKEN>`` when a token is set)::

    GET  /health                      liveness, no auth
    GET  /datasets                    the datasets and whether their files are here
    POST /runs                        start (or resume: same run_name) a run; body = the CLI's options as JSON
    GET  /runs                        every run of the output folder, newest first
    GET  /runs/{id}                   state, progress snapshot, best so far, ETA
    GET  /runs/{id}/trials            the study's trials
    GET  /runs/{id}/best              best.json (null until a trial completes)
    POST /runs/{id}/cancel            stop gracefully, like Ctrl-C (the study stays resumable)
    GET  /runs/{id}/files             the files of the run folder
    GET  /runs/{id}/files/{name}      one file (plots/..., report.html, best_model.keras, trials.csv, ...)
    GET  /runs/{id}/events            server-sent events: the run's status whenever it changes, until it ends

A run's id is its folder name (``run_name``). The OpenAPI schema (``/openapi.json``, ``/docs``) is public: it
describes the API and holds no run data.

Limits (:mod:`hpo.api_limits`, :mod:`hpo.run_options`):

- POST bodies must be ``Content-Type: application/json`` (``charset=utf-8`` allowed), else 415 before the body is
  read; at most ``max_body_bytes`` (default 64 KiB), else 413 -- from Content-Length alone, or while a chunked body
  arrives, without reading the rest. A POST from a web page of another origin (``Origin`` not the ``Host``) gets 403.
  Bound to a loopback host, the server answers only requests addressed to a loopback name (``Host``), so a web page
  cannot reach it through a DNS name that resolves to 127.0.0.1.
- The RunPod endpoint (and so where RUNPOD_API_KEY goes) is the operator's: the server's RUNPOD_ENDPOINT_URL /
  RUNPOD_ENDPOINT_ID (environment or .env) or ``runpod_endpoints=URL1,URL2`` (URLs or endpoint ids). A body naming
  another ``runpod_endpoint_url`` / ``runpod_endpoint_id`` gets 422 for that field; ``use_runpod_service=true`` on
  a server without an endpoint gets 422.
- A run folder another process holds (``hpo optimize``, another server) gets 409 naming the holder (host, pid).
- Secrets (storage passwords in URL userinfo or query, keys, tokens) are masked in every answer, run_state.json and
  the log (:mod:`hpo.redact`).

Importing this module, creating the app and every read-only route never import TensorFlow (only a run that trains
locally does, in its worker processes, and plots of a finished run).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import mimetypes
import os
import types
import typing
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from .api_limits import DEFAULT_MAX_BODY_BYTES, RequestRejected, check_content_type, check_origin, read_body
from .exceptions import ConfigError
from .option_types import is_loopback
from .redact import install_log_masking, mask_obj
from .run_manager import (FINAL_STATES, BackendFactory, OptionsInvalid, RunConflict, RunManager, RunNotFound,
                          StudyUnavailable, jsonable)
from .run_options import check_endpoint_entry

__all__ = ["create_app", "serve", "check_bind", "options_schema", "SERVE_DEFAULTS"]

SERVE_DEFAULTS: dict[str, Any] = {"host": "127.0.0.1", "port": 8000, "max_active_runs": 1, "allow_remote": False,
                                  "output_dir": "optimization_results", "max_body_bytes": DEFAULT_MAX_BODY_BYTES,
                                  "runpod_endpoints": ""}
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
EVENTS_POLL_S = 0.25
EVENTS_KEEPALIVE_S = 15.0


# -- the options schema (documentation of POST /runs; validation is config_from_options) -------------------------------

def _field_schema(tp: Any, meta: dict[str, Any]) -> dict[str, Any]:
    optional = False
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional, tp = len(args) < len(get_args(tp)), args[0]
    if get_origin(tp) is Literal:
        schema: dict[str, Any] = {"type": "string", "enum": list(get_args(tp))}
    else:
        schema = {"type": {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]}
        if tp in (int, float):
            if meta.get("low") is not None:
                schema["exclusiveMinimum" if meta.get("low_open") else "minimum"] = meta["low"]
            if meta.get("high") is not None:
                schema["maximum"] = meta["high"]
    return {"anyOf": [schema, {"type": "null"}]} if optional else schema


def options_schema() -> dict[str, Any]:
    """JSON schema of the POST /runs body, derived from OptimizationConfig (the CLI's options)."""
    from .config import OptimizationConfig

    hints = typing.get_type_hints(OptimizationConfig)
    properties: dict[str, Any] = {}
    for f in dataclasses.fields(OptimizationConfig):
        if f.name == "pins":
            properties["pins"] = {"type": "object", "description": f.metadata["help"], "additionalProperties": True}
            continue
        if f.metadata.get("internal") or f.name in ("model", "space"):  # not over HTTP (run_options refuses them)
            continue
        schema = _field_schema(hints[f.name], f.metadata)
        schema["description"] = f.metadata["help"]
        if f.default is not dataclasses.MISSING:
            schema["default"] = f.default
        properties[f.name] = schema
    return {"type": "object", "required": ["dataset"], "properties": properties, "additionalProperties": True,
            "description": "The options of `hpo optimize`, validated by the same code. Search-space parameters "
                           "given as keys (e.g. \"activation\": \"relu\") are pinned. output_dir is the server's; "
                           "so is the RunPod endpoint: runpod_endpoint_url / runpod_endpoint_id may only name one the "
                           "operator configured (left out: the server's default). An existing run_name resumes that "
                           "run. Content-Type: application/json; at most max_body_bytes (64 KiB by default)."}


# -- the app -----------------------------------------------------------------------------------------------------------

def _token_from_env() -> str | None:
    from .config import load_dotenv_values

    return load_dotenv_values().get("HPO_API_TOKEN") or None


def _answer(status: int, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error answer of the API: ``{"detail": ...}`` with secrets masked."""
    return JSONResponse({"detail": mask_obj(jsonable(detail))}, status_code=status, headers=headers)


def create_app(output_dir: str | os.PathLike[str] = "optimization_results", max_active_runs: int = 1,
               token: str | None = None, *, backend_factory: BackendFactory | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, runpod_endpoints: typing.Iterable[str] = (),
               allowed_hosts: typing.Sequence[str] | None = None) -> FastAPI:
    """The FastAPI app. ``token=None`` reads HPO_API_TOKEN (environment or .env); ``token=""`` means no auth.
    ``backend_factory(config, run_dir)`` replaces the configured backends (tests). ``max_body_bytes``: the largest
    POST body; ``runpod_endpoints``: RunPod endpoint URLs / ids runs may use besides the server's own
    RUNPOD_ENDPOINT_URL / RUNPOD_ENDPOINT_ID; ``allowed_hosts``: the Host names answered (None: any)."""
    from .version import __version__

    install_log_masking()  # the server log (uvicorn's and ours) never shows a secret
    secret = _token_from_env() if token is None else (token or None)
    manager = RunManager(output_dir, max_active_runs=max_active_runs, backend_factory=backend_factory,
                         runpod_endpoints=runpod_endpoints)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        await run_in_threadpool(manager.shutdown)

    app = FastAPI(title="hpo", version=__version__, lifespan=lifespan,
                  description="Start, watch, cancel and fetch hyperparameter optimization runs.")
    if allowed_hosts is not None:
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.state.manager = manager
    app.state.draining = False  # set when the server begins to stop: event streams close so shutdown is prompt
    bearer = HTTPBearer(auto_error=False, description="HPO_API_TOKEN, when the server has one")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if secret is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if credentials is None or not hmac.compare_digest(given.encode("utf-8"), secret.encode("utf-8")):
            raise HTTPException(401, "missing or wrong bearer token (Authorization: Bearer <HPO_API_TOKEN>)",
                                headers={"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]
    not_found = {404: {"description": "no such run (or file)"}}

    # the run manager's exceptions map to HTTP answers in one place
    @app.exception_handler(RunNotFound)
    async def run_not_found(request: Request, exc: RunNotFound) -> JSONResponse:
        return _answer(404, f"no run {exc.args[0]!r}")

    @app.exception_handler(RunConflict)
    async def run_conflict(request: Request, exc: RunConflict) -> JSONResponse:
        return _answer(409, str(exc))

    @app.exception_handler(StudyUnavailable)
    async def study_unavailable(request: Request, exc: StudyUnavailable) -> JSONResponse:
        return _answer(503, str(exc), {"Retry-After": "1"})

    @app.exception_handler(RequestRejected)
    async def request_rejected(request: Request, exc: RequestRejected) -> JSONResponse:
        return _answer(exc.status, str(exc), exc.headers)

    def same_origin(request: Request) -> None:
        check_origin(request.headers.get("origin"), request.headers.get("host"))

    @app.get("/health", tags=["server"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get("/datasets", tags=["server"], dependencies=auth)
    def list_datasets() -> list[dict[str, Any]]:
        from . import catalog, datafiles

        rows = []
        for name in catalog.DATASET_NAMES:
            info = catalog.info(name)
            rows.append({"name": name, "modality": info.modality, "input_shape": list(info.input_shape),
                         "classes": info.num_classes, "options": catalog.default_options(name),
                         "available_offline": catalog.is_generated(name) or datafiles.locate(name) is not None,
                         "description": info.description})
        return rows

    @app.post("/runs", status_code=201, tags=["runs"], dependencies=[*auth, Depends(same_origin)],
              responses={201: {"description": "queued (or started); Location names the run"},
                         403: {"description": "sent by a web page of another origin"},
                         409: {"description": "that run is already queued or running, or another process holds "
                                              "its folder"},
                         413: {"description": f"the body is over the limit ({DEFAULT_MAX_BODY_BYTES} bytes by "
                                              "default, hpo serve max_body_bytes=...)"},
                         415: {"description": "the body is not Content-Type: application/json"},
                         422: {"description": "invalid options; one entry per bad field"}},
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": options_schema()}}}})
    async def start_run(request: Request) -> Any:
        check_content_type(request.headers.get("content-type"))  # 415 before a byte of the body is read
        body = await read_body(request, max_body_bytes)  # 413 without reading the rest
        try:
            options = json.loads(body or b"null")
        except (ValueError, RecursionError) as exc:  # (UnicodeDecodeError is a ValueError)
            return _answer(422, [{"loc": ["body"], "msg": f"the body is not valid JSON: {exc}",
                                  "type": "json_invalid"}])
        try:
            run = await run_in_threadpool(manager.submit, options)
        except OptionsInvalid as exc:
            return _answer(422, exc.errors)
        body = {"id": run.id, "state": run.state, "resuming": run.resuming, "location": f"/runs/{run.id}"}
        return JSONResponse(body, status_code=201, headers={"Location": f"/runs/{run.id}"})

    @app.get("/runs", tags=["runs"], dependencies=auth)
    def list_runs(limit: int = Query(100, ge=1, le=10000)) -> dict[str, Any]:
        return {"runs": manager.list()[:limit]}

    @app.get("/runs/{run_id}", tags=["runs"], dependencies=auth, responses=not_found)
    def get_run(run_id: str) -> dict[str, Any]:
        return manager.status(run_id)

    @app.get("/runs/{run_id}/trials", tags=["runs"], dependencies=auth, responses=not_found)
    def get_trials(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "trials": manager.trials(run_id)}

    @app.get("/runs/{run_id}/best", tags=["runs"], dependencies=auth, responses=not_found)
    def get_best(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "best": manager.best(run_id)}

    @app.post("/runs/{run_id}/cancel", status_code=202, tags=["runs"], dependencies=[*auth, Depends(same_origin)],
              responses={**not_found, 409: {"description": "the run is not queued or running"}})
    def cancel_run(run_id: str) -> dict[str, Any]:
        return manager.cancel(run_id)

    @app.get("/runs/{run_id}/files", tags=["files"], dependencies=auth, responses=not_found)
    def list_files(run_id: str) -> dict[str, Any]:
        return {"run_id": run_id, "files": manager.files(run_id)}

    @app.get("/runs/{run_id}/files/{name:path}", tags=["files"], dependencies=auth, responses=not_found,
             response_class=FileResponse)
    def get_file(run_id: str, name: str) -> Any:
        try:
            path = manager.file_path(run_id, name)
        except RunNotFound:
            raise HTTPException(404, "no such file in this run") from None
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/runs/{run_id}/events", tags=["runs"], dependencies=auth, responses=not_found,
             response_class=StreamingResponse)
    async def run_events(run_id: str) -> Any:
        version0, live0 = manager.version(run_id), manager.is_live(run_id)
        first = await run_in_threadpool(manager.status, run_id)

        async def stream() -> Any:
            status, version, live, seen, quiet = first, version0, live0, -1, 0.0
            while True:
                if manager.closing or app.state.draining:
                    return  # the server is stopping; the run goes on (or ends interrupted): reconnect later
                if status["state"] in FINAL_STATES or not live:
                    yield f"event: end\ndata: {json.dumps(status)}\n\n"
                    return
                if version != seen:
                    seen, quiet = version, 0.0
                    yield f"event: status\ndata: {json.dumps(status)}\n\n"
                elif quiet >= EVENTS_KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await asyncio.sleep(EVENTS_POLL_S)
                quiet += EVENTS_POLL_S
                # version and liveness first: the status read after them is at least as new
                version, live = manager.version(run_id), manager.is_live(run_id)
                try:
                    status = await run_in_threadpool(manager.status, run_id)
                except RunNotFound:
                    return

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


# -- hpo serve ---------------------------------------------------------------------------------------------------------

def check_bind(host: str, token: str | None, allow_remote: bool) -> None:
    """Refuse to serve beyond this machine without a token, unless explicitly allowed."""
    if not is_loopback(host) and not token and not allow_remote:
        raise ConfigError(f"host={host} is reachable from other machines and HPO_API_TOKEN is not set: anyone could "
                          "start runs. Set HPO_API_TOKEN (clients then send it as a bearer token in the Authorization header), or "
                          "pass allow_remote=true to serve without a token")


def _serve_options(options: dict[str, str]) -> dict[str, Any]:
    import difflib

    values = dict(SERVE_DEFAULTS)
    for key, text in options.items():
        if key not in SERVE_DEFAULTS:
            close = difflib.get_close_matches(key, list(SERVE_DEFAULTS), n=2)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown serve option {key!r}{hint}; allowed: {', '.join(SERVE_DEFAULTS)}")
        default = SERVE_DEFAULTS[key]
        text = text.strip()
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"{key}={text!r} is not a boolean; allowed: true, false, 1, 0, yes, no")
            values[key] = text.lower() in ("true", "1", "yes")
        elif isinstance(default, int):
            if not (text.isascii() and text.isdigit()):
                raise ConfigError(f"{key}={text!r} is not a whole number")
            values[key] = int(text)
        else:
            if not text:
                raise ConfigError(f"{key} must not be empty")
            values[key] = text
    if not 1 <= values["port"] <= 65535:
        raise ConfigError(f"port={values['port']} is out of range; allowed: [1, 65535]")
    if values["max_active_runs"] < 1:
        raise ConfigError(f"max_active_runs={values['max_active_runs']} is out of range; allowed: >= 1")
    if values["max_body_bytes"] < 1024:
        raise ConfigError(f"max_body_bytes={values['max_body_bytes']} is out of range; allowed: >= 1024")
    entries = [e.strip() for e in values["runpod_endpoints"].split(",")]
    if values["runpod_endpoints"] and not all(entries):
        raise ConfigError("runpod_endpoints has an empty entry; allowed: a comma-separated list of endpoint URLs or "
                          "ids, e.g. runpod_endpoints=https://api.runpod.ai/v2/abc123,def456")
    for entry in entries if values["runpod_endpoints"] else []:
        check_endpoint_entry(entry)  # ConfigError naming the bad entry
    values["runpod_endpoints"] = entries if values["runpod_endpoints"] else []
    return values


def serve(options: dict[str, str]) -> int:
    """``hpo serve key=value ...``: run the API with uvicorn until interrupted. Returns the exit code."""
    import uvicorn

    values = _serve_options(options)
    token = _token_from_env()
    check_bind(values["host"], token, values["allow_remote"])
    Path(values["output_dir"]).mkdir(parents=True, exist_ok=True)
    # on a loopback address only loopback Host names are answered: a web page cannot rebind a DNS name to 127.0.0.1
    hosts = list(LOOPBACK_NAMES) if is_loopback(values["host"]) else None
    app = create_app(values["output_dir"], values["max_active_runs"], token or "",
                     max_body_bytes=values["max_body_bytes"], runpod_endpoints=values["runpod_endpoints"],
                     allowed_hosts=hosts)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            app.state.draining = True  # open event streams end now instead of holding the shutdown
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=values["host"], port=values["port"], log_level="info",
                            timeout_graceful_shutdown=10)
    Server(config).run()
    return 0
