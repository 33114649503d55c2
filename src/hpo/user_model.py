"""A user's own model: ``model="package.module:function"`` naming ``build(params, input_shape, num_classes) ->
keras.Model`` (trainer side; Keras is imported inside the functions that need it).

- :func:`check_build` (the orchestrator, before any trial): the module can be found and parses, and it defines the
  function at its top level -- without running the module, so the orchestrating process never imports TensorFlow
  through the user's code (``execute=True`` imports it for real).
- :func:`load_build` (the trainer): imports the module and returns the function. The current working directory is put
  on ``sys.path`` (as uvicorn does), so a module next to where ``hpo`` is started is found, in worker processes too.
- :func:`build_user_model` (the trainer): calls ``build`` (inside ``strategy.scope()`` under a MirroredStrategy),
  checks it returned one ``keras.Model`` whose output ends with ``num_classes``, and compiles it when ``build`` did
  not: optimizer ``params["optimizer"]`` (default adam; adam, adamw, sgd or rmsprop), ``params["learning_rate"]``
  (default 1e-3, cosine-decayed over ``decay_steps`` when given), ``params["weight_decay"]`` (AdamW's), loss
  sparse categorical cross-entropy on the model's probabilities (so its output must be a softmax: checked on a zero
  batch), metric accuracy. A model ``build`` compiled itself is kept as compiled (its optimizer, learning rate and
  loss are the user's: the labels are integer class ids); when its metrics lack ``"accuracy"``, it is compiled again
  with the same optimizer object, loss and settings and ``"accuracy"`` added to its metrics, so every trial reports
  ``accuracy`` / ``val_accuracy`` as the built-in models do.

Every problem is a :class:`~hpo.exceptions.ConfigError` with ``field="model"`` naming the function and what is wrong.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from .exceptions import ConfigError
from .own import check_model_ref
from .redact import mask_text

__all__ = ["load_build", "check_build", "build_user_model", "DEFAULT_OPTIMIZER", "DEFAULT_LEARNING_RATE"]

DEFAULT_OPTIMIZER = "adam"
DEFAULT_LEARNING_RATE = 1e-3


def _err(message: str) -> ConfigError:
    return ConfigError(mask_text(message), field="model")


def _cwd_on_path() -> None:
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _split(ref: str) -> tuple[str, str, str]:
    ref = check_model_ref(ref)
    module, _, function = ref.partition(":")
    return ref, module, function


def load_build(ref: str) -> Callable[..., Any]:
    """Import ``"package.module:function"`` and return the function; ConfigError (``field="model"``) when the module
    cannot be imported (with the ImportError's text), or has no such attribute, or it is not callable."""
    ref, module_name, function = _split(ref)
    _cwd_on_path()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _err(f"model={ref!r}: module {module_name!r} cannot be imported ({type(exc).__name__}: {exc}); "
                   f"put it on PYTHONPATH or in the folder hpo runs in (now {os.getcwd()})") from None
    except Exception as exc:  # noqa: BLE001 - any error while running the user's module is theirs to fix
        raise _err(f"model={ref!r}: importing module {module_name!r} failed ({type(exc).__name__}: {exc})") from None
    if not hasattr(module, function):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))[:10]
        raise _err(f"model={ref!r}: module {module_name!r} has no attribute {function!r}; its functions: "
                   f"{', '.join(public) or 'none'}")
    build = getattr(module, function)
    if not callable(build):
        raise _err(f"model={ref!r}: {module_name}.{function} is a {type(build).__name__}, not a function; allowed: "
                   "a function build(params, input_shape, num_classes) -> keras.Model")
    return build


def check_build(ref: str, *, execute: bool = False) -> str:
    """Check ``ref`` before any trial; return it (stripped). Without ``execute`` the module is located and parsed,
    not run: ConfigError when it cannot be found, has a syntax error, or defines no top-level ``function`` (a plain
    value bound to that name counts as not callable). A name the parse cannot settle (star imports, a module
    ``__getattr__``, a compiled module) passes. ``execute=True`` imports it (:func:`load_build`)."""
    ref, module_name, function = _split(ref)
    if execute:
        load_build(ref)
        return ref
    _cwd_on_path()
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:  # a parent package is missing or fails to import
        raise _err(f"model={ref!r}: module {module_name!r} cannot be imported ({type(exc).__name__}: {exc}); "
                   f"put it on PYTHONPATH or in the folder hpo runs in (now {os.getcwd()})") from None
    except Exception as exc:  # noqa: BLE001 - a parent package's own code failed
        raise _err(f"model={ref!r}: importing a package of {module_name!r} failed ({type(exc).__name__}: {exc})") \
            from None
    if spec is None:
        raise _err(f"model={ref!r}: module {module_name!r} cannot be imported (ModuleNotFoundError: No module named "
                   f"{module_name!r}); put it on PYTHONPATH or in the folder hpo runs in (now {os.getcwd()})")
    origin = spec.origin
    if not origin or not origin.endswith(".py") or not os.path.isfile(origin):
        return ref  # a namespace package or a compiled module: the trainer's import decides
    try:
        with open(origin, "rb") as handle:
            tree = ast.parse(handle.read(), filename=origin)
    except SyntaxError as exc:
        raise _err(f"model={ref!r}: module {module_name!r} has a syntax error ({os.path.basename(origin)}, line "
                   f"{exc.lineno}: {exc.msg})") from None
    except (OSError, ValueError) as exc:
        raise _err(f"model={ref!r}: module {module_name!r} cannot be read ({type(exc).__name__}: {exc})") from None
    kind = _top_level(tree, function)
    if kind == "missing":
        defined = sorted(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))[:10]
        raise _err(f"model={ref!r}: module {module_name!r} has no attribute {function!r}; its functions: "
                   f"{', '.join(defined) or 'none'}")
    if kind == "value":
        raise _err(f"model={ref!r}: {module_name}.{function} is a plain value, not a function; allowed: a function "
                   "build(params, input_shape, num_classes) -> keras.Model")
    return ref


def _top_level(tree: ast.Module, name: str) -> str:
    """How the module's top level binds ``name``: "callable" (some binding is a def, class, import or a non-literal
    expression), "value" (every binding is a literal), "unknown" (not bound, but a star import or a module
    ``__getattr__`` may provide it) or "missing"."""
    kinds: set[str] = set()
    for node in _top_nodes(tree.body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                kinds.add("callable")
            elif node.name == "__getattr__":
                kinds.add("unknown")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    kinds.add("unknown")
                elif (alias.asname or alias.name.split(".")[0]) == name:
                    kinds.add("callable")
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
                literal = isinstance(node.value, (ast.Constant, ast.List, ast.Dict, ast.Tuple, ast.Set, ast.JoinedStr))
                kinds.add("value" if literal else "callable")
    for kind in ("callable", "value", "unknown"):
        if kind in kinds:
            return kind
    return "missing"


def _top_nodes(body: list[ast.stmt]) -> list[ast.stmt]:
    """The module's top-level statements, those inside top-level if/try/with blocks included."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.If, ast.Try, ast.With)):
            for attr in ("body", "orelse", "finalbody"):
                out.extend(_top_nodes(getattr(node, attr, [])))
        if isinstance(node, ast.Try):
            for handler in node.handlers:
                out.extend(_top_nodes(handler.body))
    return out


def build_user_model(ref: str, params: dict[str, Any], input_shape: tuple[int, ...] | list[int], num_classes: int, *,
                     strategy: Any = None, decay_steps: int | None = None) -> Any:
    """The user's model for one trial, compiled (see the module's docstring); ConfigError (``field="model"``) when
    ``build`` cannot be imported or returns something else than one keras.Model ending in ``num_classes`` outputs.
    An exception raised by ``build`` itself propagates unchanged (the trial fails with its traceback's tail)."""
    build = load_build(ref)
    shape = tuple(int(d) for d in input_shape)
    optimizer = params.get("optimizer", DEFAULT_OPTIMIZER)
    if strategy is None:
        return _build(build, ref, dict(params), shape, int(num_classes), optimizer, decay_steps)
    with strategy.scope():
        return _build(build, ref, dict(params), shape, int(num_classes), optimizer, decay_steps)


def _build(build: Callable[..., Any], ref: str, params: dict[str, Any], shape: tuple[int, ...], num_classes: int,
           optimizer: Any, decay_steps: int | None) -> Any:
    import keras
    import numpy as np

    from .models import OPTIMIZERS, make_optimizer

    model = build(params, shape, num_classes)
    if not isinstance(model, keras.Model):
        what = type(model).__name__ if model is not None else "None"
        raise _err(f"model={ref!r} returned {what}; allowed: a keras.Model (e.g. keras.Sequential or "
                   "keras.Model(inputs, outputs)) built from (params, input_shape, num_classes)")
    outputs = _output_shapes(model)
    probe = None
    if outputs is None:  # a subclassed model not built yet: run it once on a zero batch
        raw = _probe(model, shape)
        if isinstance(raw, (list, tuple, dict)):
            outputs = [tuple(np.shape(o)) for o in (raw.values() if isinstance(raw, dict) else raw)]
        else:
            probe = np.asarray(raw)
            outputs = [tuple(probe.shape)]
    if len(outputs) != 1:
        raise _err(f"model={ref!r} returned a model with {len(outputs)} outputs; allowed: one output of shape "
                   f"(batch, {num_classes})")
    out = tuple(outputs[0])
    if len(out) != 2 or out[-1] != num_classes:
        shown = "(" + ", ".join("batch" if d is None else str(d) for d in out) + ")"
        raise _err(f"model={ref!r} returned a model whose output has shape {shown}; allowed: (batch, {num_classes}) "
                   f"-- one probability per class of the data's {num_classes} classes")
    if getattr(model, "compiled", False):
        _track_accuracy(model, ref)
        return model
    if optimizer not in OPTIMIZERS:
        raise _err(f"model={ref!r} returned an uncompiled model and params optimizer={optimizer!r} is not one hpo "
                   f"compiles with; allowed: {', '.join(OPTIMIZERS)} (or compile the model in build)")
    if probe is None:
        probe = np.asarray(_probe(model, shape))
    sums = probe.reshape(-1, num_classes).sum(axis=1)
    if not (np.all(probe >= -1e-6) and np.allclose(sums, 1.0, atol=1e-3)):
        raise _err(f"model={ref!r} returned an uncompiled model whose outputs are not probabilities (they do not sum "
                   "to 1); end it with a softmax (Dense(num_classes, activation='softmax')), or compile it in build "
                   "with a loss for logits")
    model.compile(optimizer=make_optimizer(optimizer, params.get("learning_rate", DEFAULT_LEARNING_RATE),
                                           params.get("weight_decay"), decay_steps=decay_steps),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def _probe(model: Any, shape: tuple[int, ...]) -> Any:
    """The model's output on a batch of two zero inputs (of its input's dtype when it declares one)."""
    import numpy as np

    dtype = "float32"
    try:
        declared = model.inputs[0].dtype if model.inputs else None
    except (AttributeError, ValueError):
        declared = None
    if declared is not None:
        dtype = str(getattr(declared, "name", declared))
    return model(np.zeros((2, *shape), dtype=dtype), training=False)


def _output_shapes(model: Any) -> list[tuple[Any, ...]] | None:
    """The shapes of a built model's outputs (batch axis included), or None when it has none yet."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        return None
    if not outputs:
        return None
    return [tuple(o.shape) for o in outputs]


def _metric_names(metrics: Any) -> list[str]:
    if metrics is None:
        return []
    if isinstance(metrics, (str, dict)) or not isinstance(metrics, (list, tuple)):
        metrics = [metrics]
    return [m if isinstance(m, str) else str(getattr(m, "name", "")) for m in metrics]


def _track_accuracy(model: Any, ref: str) -> None:
    """Make a model ``build`` compiled report "accuracy": recompile with its own optimizer object, loss and settings
    plus an "accuracy" metric when its metrics lack one."""
    config = getattr(getattr(model, "_compile_config", None), "config", None)
    if not isinstance(config, dict):
        raise _err(f"model={ref!r} returned a compiled model whose compilation hpo cannot read; compile it with "
                   "metrics=['accuracy'], or return it uncompiled")
    metrics = config.get("metrics")
    if "accuracy" in _metric_names(metrics):
        return
    if isinstance(metrics, dict):
        raise _err(f"model={ref!r} returned a model compiled with per-output metrics; compile it with "
                   "metrics=['accuracy'], or return it uncompiled")
    kept = [] if metrics is None else (list(metrics) if isinstance(metrics, (list, tuple)) else [metrics])
    model.compile(optimizer=model.optimizer, loss=config.get("loss"), loss_weights=config.get("loss_weights"),
                  metrics=[*kept, "accuracy"], weighted_metrics=config.get("weighted_metrics"),
                  run_eagerly=bool(config.get("run_eagerly", False)),
                  steps_per_execution=config.get("steps_per_execution", 1),
                  jit_compile=config.get("jit_compile", "auto"))
