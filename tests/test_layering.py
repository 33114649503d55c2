"""The house's layering (docs/architecture.md), enforced on the source: every import statement of every module of
src/hpo (and the RunPod handler), function-local ones included, is checked against the table of which group may
import which; importing the light modules loads no TensorFlow/Keras (the core not even numpy or Optuna); and no
module is over 450 lines.

The tables below are the same as docs/architecture.md's. A module the tables do not know fails the test: put it in a
group. Entries of PENDING and OVERSIZE_PENDING are today's known exceptions, each with the change that removes it;
an entry that is no longer needed fails too, so the lists only shrink.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "hpo"
HANDLER = ROOT / "runpod_worker" / "handler.py"
MAX_LINES = 450

# -- the table --------------------------------------------------------------------------------------------------------

#: module (or package: the entry covers its submodules) -> group. Longest match wins.
GROUPS: dict[str, str] = {
    # face: entry points
    "hpo": "face", "hpo.__main__": "face", "hpo.cli": "face", "hpo.api": "face", "hpo.api_limits": "face",
    "hpo.run_manager": "face", "hpo.run_options": "face", "hpo.run_views": "face", "hpo.cli_options": "face",
    "hpo.dashboard": "face",
    # session: sets a run up and tears it down; owns run folders
    "hpo.session": "session", "hpo.rundir": "session", "hpo.own_run": "session",
    # search: what to try and what a result means
    "hpo.search": "search", "hpo.study": "search", "hpo.search_space": "search", "hpo.pruners": "search",
    "hpo.budget": "search",
    "hpo.finale": "search",
    # dispatch: runs jobs
    "hpo.dispatch": "dispatch",
    # backends
    "hpo.backends": "backends",
    # protocol: TrialJob / TrialResult <-> JSON
    "hpo.protocol": "protocol", "hpo.wire": "protocol",
    # worker core: parse job -> run_trial -> answer (the local worker loop is a module of the backends package)
    "hpo.worker": "worker", "hpo.backends._worker": "worker", "runpod_worker.handler": "worker",
    # trainer: the only users of TensorFlow / Keras
    "hpo.training": "trainer", "hpo.models": "trainer", "hpo.health": "trainer", "hpo.datasets": "trainer",
    "hpo.prefetch": "trainer", "hpo.user_model": "trainer", "hpo.ensemble": "trainer",
    # data: own data prepared into one file (numpy, PIL), object storage (boto3) and trained models coming back
    "hpo.userdata": "data", "hpo.objectstore": "data", "hpo.artifacts": "data",
    # core: imported by every group, imports nothing heavy
    "hpo.exceptions": "core", "hpo.config": "core", "hpo.option_types": "core", "hpo.catalog": "core",
    "hpo.datafiles": "core", "hpo.scoring": "core", "hpo.redact": "core", "hpo.runlock": "core", "hpo.version": "core",
    "hpo.own": "core", "hpo.user_space": "core", "hpo.config_docs": "core", "hpo.spaces": "core",
    "hpo.portfolio": "core", "hpo.kept": "core",
    # reporting: results files, progress, plots, report.html
    "hpo.results": "reporting", "hpo.progress": "reporting", "hpo.tracking": "reporting", "hpo.plots": "reporting",
    "hpo.report": "reporting",
    "hpo.plots.model": "model_plots",  # plots that need the Keras model: run in a worker subprocess
    # the loopback RunPod simulator (tests and local trials of the RunPod path)
    "hpo.testing": "testing",
}

_BELOW_SESSION = {"search", "dispatch", "backends", "protocol", "core", "reporting", "data"}
#: group -> the groups it may import (its own included)
ALLOWED: dict[str, set[str]] = {
    "face": {"face", "session"} | _BELOW_SESSION,
    "session": {"session"} | _BELOW_SESSION,
    "dispatch": {"dispatch", "search", "backends", "protocol", "core", "reporting"},
    "search": {"search", "backends", "protocol", "core", "reporting"},
    "backends": {"backends", "data", "protocol", "core"},
    "protocol": {"protocol", "core"},
    "worker": {"worker", "trainer", "data", "protocol", "core"},
    "trainer": {"trainer", "data", "protocol", "core"},
    "data": {"data", "protocol", "core"},
    "core": {"core"},
    "reporting": {"reporting", "model_plots", "protocol", "core"},
    "model_plots": {"model_plots", "reporting", "trainer", "protocol", "core"},
    "testing": {"testing", "backends", "worker", "data", "protocol", "core"},
}
#: single modules a group may import although their group is not allowed to it, and why
ALLOWED_MODULES: dict[str, set[str]] = {
    "reporting": {"hpo.rundir"},  # the one module that owns run folders and opens a run's study
}
#: the only groups that may import TensorFlow / Keras
KERAS_GROUPS = {"trainer", "worker", "model_plots"}
#: group -> groups (and "keras") it may import only inside functions: the model plots are imported with the other
#: plots but load Keras and the trainer only when they run, in a worker subprocess (`python -m hpo.plots`)
LAZY_ONLY: dict[str, set[str]] = {"model_plots": {"trainer", "keras"}}
KERAS = {"tensorflow", "keras", "tf_keras"}
#: what the core never imports (not even lazily)
HEAVY = KERAS | {"numpy", "optuna", "matplotlib", "PIL", "fastapi", "starlette", "uvicorn", "aiohttp", "requests",
                 "pandas", "scipy", "sklearn"}
#: `from hpo import __version__` is a constant of the package root, not an import of the face
ROOT_CONSTANTS = {"__version__"}

#: (importer, imported module or third-party package) edges that break the table today, and the change that removes
#: each. Empty it.
PENDING: dict[tuple[str, str], str] = {}
#: edges that break the table on purpose, and why (they stay)
INTENDED: dict[tuple[str, str], str] = {
    ("hpo.results", "keras"): "OptimizationResult.load_best_model: the user asks for the Keras model, in the user's "
                              "own process (imported only inside that method)",
}
EXCEPTIONS = {**PENDING, **INTENDED}
#: modules over MAX_LINES today, being split by others (path under src/ -> the split planned). Empty it; the
#: simulator (testing/runpod_sim.py), the orchestrator, plots.py and backends/runpod.py have left it.
OVERSIZE_PENDING: dict[str, str] = {}


# -- reading the source -----------------------------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    if path == HANDLER:
        return "runpod_worker.handler"
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    found = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    found["runpod_worker.handler"] = HANDLER
    return found


SOURCES = _sources()


def group_of(module: str) -> str | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        group = GROUPS.get(".".join(parts[:i]))
        if group is not None:
            return group
    return None


def _local_lines(tree: ast.AST) -> set[int]:
    """Line numbers of the import statements inside functions."""
    return {node.lineno for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}


def _imports(module: str, path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, internal?) of every import statement, function-local ones included."""
    return _read(module, path)[0]


def _read(module: str, path: Path) -> tuple[list[tuple[int, str, bool]], set[int]]:
    """(_imports' list, the lines of the function-local ones)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    out: list[tuple[int, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.append((node.lineno, alias.name, alias.name.split(".")[0] == "hpo"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "hpo":
                out.append((node.lineno, base, False))
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if base == "hpo" and alias.name in ROOT_CONSTANTS:
                    continue
                out.append((node.lineno, sub if sub in SOURCES or sub in GROUPS else base, True))
    return out, _local_lines(tree)


@functools.lru_cache(maxsize=1)
def _violations() -> tuple[tuple[str, ...], frozenset[tuple[str, str]]]:
    """(problems, exception edges in use); the source is parsed once for the tests that read it."""
    problems, pending_used = [], set()
    for module, path in SOURCES.items():
        group = group_of(module)
        where = path.relative_to(ROOT)
        if group is None:
            problems.append(f"{where}: module {module} is in no group; add it to GROUPS in tests/test_layering.py "
                            "and to docs/architecture.md")
            continue
        imports, local = _read(module, path)
        for line, target, internal in imports:
            top = target.split(".")[0]
            kind = "keras" if top in KERAS else group_of(target) if internal else None
            if kind in LAZY_ONLY.get(group, set()) and line not in local:
                problems.append(f"{where}:{line}: {module} ({group}) imports {target} at module level; {group} "
                                "may import it only inside the functions that need it")
            if not internal:
                if top in KERAS and group not in KERAS_GROUPS and (module, top) in EXCEPTIONS:
                    pending_used.add((module, top))
                elif top in KERAS and group not in KERAS_GROUPS:
                    problems.append(f"{where}:{line}: {module} ({group}) imports {target}; only "
                                    f"{sorted(KERAS_GROUPS)} may import TensorFlow/Keras")
                elif top in HEAVY and group == "core":
                    problems.append(f"{where}:{line}: {module} (core) imports {target}; the core imports nothing "
                                    f"heavy ({', '.join(sorted(HEAVY))})")
                continue
            target_group = group_of(target)
            if target_group is None:
                problems.append(f"{where}:{line}: {module} imports {target}, which is in no group")
                continue
            if target_group in ALLOWED[group] or target in ALLOWED_MODULES.get(group, set()):
                continue
            edge = next(((module, t) for t in (target, *_parents(target)) if (module, t) in EXCEPTIONS), None)
            if edge is not None:
                pending_used.add(edge)
                continue
            problems.append(f"{where}:{line}: {module} ({group}) imports {target} ({target_group}); {group} may "
                            f"import only {', '.join(sorted(ALLOWED[group]))}")
    return tuple(problems), frozenset(pending_used)


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


# -- the tests --------------------------------------------------------------------------------------------------------

def test_every_import_follows_the_layering_table():
    problems, _ = _violations()
    assert not problems, "layering broken (docs/architecture.md):\n" + "\n".join(problems)


def test_pending_exceptions_are_still_needed():
    _, used = _violations()
    stale = [f"{a} -> {b} ({why})" for (a, b), why in EXCEPTIONS.items() if (a, b) not in used]
    assert not stale, "fixed; remove from PENDING in tests/test_layering.py:\n" + "\n".join(stale)


def test_the_table_knows_every_group_it_names():
    assert set(GROUPS.values()) == set(ALLOWED)
    assert all(allowed <= set(ALLOWED) and group in allowed for group, allowed in ALLOWED.items())
    # the rules of the layout, as statements about the table
    assert "trainer" not in ALLOWED["core"] and ALLOWED["core"] == {"core"}
    for group in ("face", "session", "search", "dispatch"):
        assert "trainer" not in ALLOWED[group] and group not in KERAS_GROUPS
    assert not {"backends", "trainer"} & ALLOWED["protocol"]
    assert not {"face", "session", "search", "dispatch"} & ALLOWED["worker"]
    assert "search" not in ALLOWED["trainer"]
    assert not {"trainer", "worker"} & {g for g, allowed in ALLOWED.items() if "reporting" in allowed} - {
        "model_plots"}


def test_docs_architecture_shows_the_same_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| part", "| ---"))]
    groups, modules = {}, {}
    for row in rows:
        part, allowed = (cell.strip() for cell in row.strip("|").split("|"))
        name = part.split()[0]
        allowed = re.sub(r"\([^)]*\)", "", allowed)
        names, _, extra = allowed.partition(";")
        groups[name] = {g.strip() for g in names.split(",")}
        found = set(re.findall(r"`([\w.]+)`", extra))
        if found:
            modules[name] = found
    assert groups == ALLOWED
    assert modules == ALLOWED_MODULES


def test_the_checker_sees_function_local_and_relative_imports(tmp_path):
    probe = PACKAGE / "catalog.py"
    found = {target for _, target, _ in _imports("hpo.catalog", probe)}
    assert "hpo.exceptions" in found
    local = {target for _, target, _ in _imports("hpo.cli", PACKAGE / "cli.py")}
    assert {"hpo.config", "hpo.catalog", "hpo.datafiles"} <= local  # imported inside functions
    fake = tmp_path / "fake.py"
    fake.write_text("def f():\n    import keras\n    from .datasets import load\n    from . import health\n")
    lines = {(line, target) for line, target, _ in _imports("hpo.fake", fake)}
    assert lines == {(2, "keras"), (3, "hpo.datasets"), (4, "hpo.health")}


@pytest.mark.parametrize("module", sorted(p.relative_to(SRC).as_posix() for p in PACKAGE.rglob("*.py")))
def test_no_module_is_over_450_lines(module):
    lines = len((SRC / module).read_text().splitlines())
    if module in OVERSIZE_PENDING:
        assert lines > MAX_LINES, f"{module} has {lines} lines now: remove it from OVERSIZE_PENDING"
    else:
        assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by job (at most {MAX_LINES})"


def test_oversize_allow_list_names_existing_modules():
    missing = [m for m in OVERSIZE_PENDING if not (SRC / m).is_file()]
    assert not missing, f"gone; remove from OVERSIZE_PENDING: {missing}"


# -- what importing loads ---------------------------------------------------------------------------------------------

LIGHT = ["hpo", "hpo.cli", "hpo.api", "hpo.config", "hpo.catalog", "hpo.scoring", "hpo.datafiles", "hpo.run_manager",
         "hpo.session", "hpo.rundir", "hpo.search", "hpo.study", "hpo.search_space", "hpo.dispatch"]
CORE = ["hpo.config", "hpo.catalog", "hpo.scoring", "hpo.datafiles", "hpo.option_types"]


#: One interpreter checks many modules: it forks a child per module, which imports just that module into the
#: parent's state and reports the top-level packages then loaded (or the import's error). ``preload``: third-party
#: packages the parent imports first, so each child does not import them again; the parent reports what it loaded
#: itself, and a check fails if the parent already loaded what is checked for.
_FORKED_IMPORTS = r"""
import importlib, json, os, sys, traceback
modules, preload = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name in preload:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
out = {"parent": sorted({m.split(".")[0] for m in sys.modules}), "modules": {}}
for module in modules:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            importlib.import_module(module)
            answer = {"loaded": sorted({m.split(".")[0] for m in sys.modules})}
        except BaseException:
            answer = {"error": traceback.format_exc()}
        with os.fdopen(write, "w") as fh:
            fh.write(json.dumps(answer))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        text = fh.read()
    os.waitpid(pid, 0)
    out["modules"][module] = json.loads(text) if text else {"error": "the child died"}
print(json.dumps(out))
"""


def _loaded_after_imports(modules: list[str], preload: list[str]) -> dict:
    """{"parent": what the checking interpreter loaded before any module, "modules": {module: {"loaded": top-level
    packages loaded after importing it} or {"error": ...}}}, from one fresh interpreter."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", _FORKED_IMPORTS, json.dumps(modules), json.dumps(preload)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _exists(module: str) -> bool:
    return module in SOURCES


LIGHT_EXISTING = [m for m in LIGHT if _exists(m)]
#: what the light modules may load (none of it loads TensorFlow/Keras: the parent's own list is checked)
LIGHT_PRELOAD = ["numpy", "optuna", "sqlalchemy", "fastapi", "pydantic", "starlette", "uvicorn", "requests", "yaml"]


@functools.lru_cache(maxsize=None)
def _import_report(kind: str) -> dict:
    if kind == "light":  # one interpreter for all: the heavy-but-allowed packages preloaded once
        return _loaded_after_imports(LIGHT_EXISTING, LIGHT_PRELOAD)
    return _loaded_after_imports(CORE, [])  # the core: nothing preloaded, each from a bare interpreter's state


def _loaded(kind: str, module: str, forbidden: set[str]) -> list[str]:
    report = _import_report(kind)
    assert not forbidden & set(report["parent"]), f"the checking interpreter itself loaded {report['parent']}"
    answer = report["modules"][module]
    assert "error" not in answer, f"import {module} failed:\n{answer.get('error')}"
    return answer["loaded"]


@pytest.mark.parametrize("module", LIGHT_EXISTING)
def test_importing_light_modules_loads_no_tensorflow_or_keras(module):
    loaded = _loaded("light", module, KERAS)
    assert not KERAS & set(loaded), f"import {module} loaded {sorted(KERAS & set(loaded))}"


@pytest.mark.parametrize("module", CORE)
def test_importing_the_core_loads_nothing_heavy(module):
    loaded = _loaded("core", module, HEAVY)
    assert not HEAVY & set(loaded), f"import {module} loaded {sorted(HEAVY & set(loaded))}"


def test_the_light_modules_listed_exist_or_are_planned():
    assert all(group_of(m) is not None for m in LIGHT)
    assert {"hpo", "hpo.cli", "hpo.api", "hpo.config", "hpo.catalog", "hpo.scoring"} <= {m for m in LIGHT if _exists(m)}
    assert importlib.util.find_spec("hpo.catalog") is not None
