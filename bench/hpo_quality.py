"""Quality benchmark: hpo against Optuna and KerasTuner on Fashion-MNIST, with the same epoch budget.

    python bench/hpo_quality.py            # 20,000 train / 5,000 val images, 36 epochs per method (long on CPUs)
    python bench/hpo_quality.py --quick    # 4,000 train / 1,000 val, same budget and methods (minutes)

Not run in CI. Needs keras-tuner (``pip install keras-tuner``) for the KerasTuner method.

Data: Fashion-MNIST from the Debian files (``/usr/share/datasets/fashion-mnist``, through ``hpo.datasets``).
Training and validation images are drawn (stratified, seeded) from the official training split; the official
10,000 test images are only used to report the test accuracy of each method's *selected* model -- every method
selects on validation accuracy.

Methods, each with a budget of ``--budget`` (36) training epochs in total:

- **hpo** with its defaults (search space, warm start and its neighbours, TPE sampler, Hyperband pruner with the
  far-behind rules, cosine learning rate, early stopping, mode=simple, max_epochs_per_trial from the budget: 18),
  through ``hpo.optimize``, given the budget as ``epoch_budget=36``: hpo never trains more epochs than that in total
  and spends the epochs pruning and early stopping save on further trials. Resources: ``concurrent_workers`` = the machine's cores (2 here), so hpo
  runs its trials two at a time with one TensorFlow thread each, while each baseline's single loop uses both cores
  through TensorFlow's own threads -- the same machine, the same epoch budget. **hpo-1worker** is the same run
  with ``concurrent_workers=1`` (one worker using every core, like the baselines), reported for comparison.
  ``data_fraction`` and ``validation_split`` are set so that hpo trains and validates on as many images as the
  baselines (its split of the official training split is seeded by the run's seed). ``--hpo-option key=value``
  adds options for experiments; the reported run uses none.
- **optuna-tpe**: Optuna TPE with a hand-written Keras objective, 12 trials x 3 epochs (budget / 3 trials), no
  pruning.
- **optuna-tpe-hyperband**: Optuna TPE + HyperbandPruner (min 1, max 9 epochs per trial, reduction factor 3) with a
  hand-written objective reporting validation accuracy after every epoch; trials run until the budget is spent.
- **kerastuner-hyperband**: KerasTuner Hyperband (max_epochs 9, factor 3) until the budget is spent.

The baselines share one hand-written CNN space: filters, conv blocks, kernel size, dense units, dropout, learning rate,
batch size (Adam, ReLU, max pooling). Within a trial each method keeps its best epoch's weights (like hpo).

Output: per method the test accuracy of the selected model, its validation accuracy, epochs used, trials, wall time,
and hpo's margin over each baseline; then the issue's target -- hpo's test accuracy >= 0.5 percentage points above
every baseline, with no more epochs, and no more than 1.1x the wall time of the fastest baseline.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# KerasTuner reloads checkpoints without optimizer state, on purpose
warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")

SEED = 42
METHODS = ("hpo", "hpo-1worker", "optuna-tpe", "optuna-tpe-hyperband", "kerastuner-hyperband")
CORES = os.cpu_count() or 1
TRAIN_FULL, VAL_FULL = 20_000, 5_000
TRAIN_QUICK, VAL_QUICK = 4_000, 1_000
OFFICIAL_TRAIN = 60_000

# the baselines' shared hand-written space
FILTERS = (16, 32, 64)
BLOCKS = (1, 3)
KERNELS = (3, 5)
DENSE_UNITS = (64, 128, 256)
DROPOUT = (0.0, 0.5)
LEARNING_RATE = (1e-4, 1e-2)
BATCH_SIZES = (32, 64, 128)


@dataclass
class MethodResult:
    method: str
    test_accuracy: float | None
    val_accuracy: float | None
    epochs: int
    trials: int
    wall_s: float
    note: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    trial_lines: list[str] = field(default_factory=list)


# -- shared pieces ------------------------------------------------------------------------------------------------------

def _set_seed(seed: int) -> None:
    global SEED
    SEED = seed


def load_data(quick: bool) -> tuple[Any, float, float]:
    from hpo import datasets

    n_train, n_val = (TRAIN_QUICK, VAL_QUICK) if quick else (TRAIN_FULL, VAL_FULL)
    validation_split = n_val / OFFICIAL_TRAIN
    data_fraction = n_train / (OFFICIAL_TRAIN - n_val)
    data = datasets.load("fashion_mnist", validation_split=validation_split, seed=SEED, data_fraction=data_fraction)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (n_train, n_val, 10_000), data
    return data, validation_split, data_fraction


def build_cnn(p: dict[str, Any]) -> Any:
    import keras

    inputs = keras.Input((28, 28, 1))
    x = inputs
    for i in range(int(p["blocks"])):
        x = keras.layers.Conv2D(int(p["filters"]) * 2**i, int(p["kernel"]), padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(float(p["dropout"]))(x)
    x = keras.layers.Dense(int(p["dense_units"]), activation="relu")(x)
    x = keras.layers.Dropout(float(p["dropout"]))(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(float(p["learning_rate"])), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def suggest_optuna(trial: Any) -> dict[str, Any]:
    return {
        "filters": trial.suggest_categorical("filters", list(FILTERS)),
        "blocks": trial.suggest_int("blocks", *BLOCKS),
        "kernel": trial.suggest_categorical("kernel", list(KERNELS)),
        "dense_units": trial.suggest_categorical("dense_units", list(DENSE_UNITS)),
        "dropout": trial.suggest_float("dropout", *DROPOUT),
        "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE, log=True),
        "batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
    }


def test_accuracy(model: Any, data: Any) -> float:
    return float(model.evaluate(data.x_test, data.y_test, batch_size=512, verbose=0, return_dict=True)["accuracy"])


class _Selected:
    """The best (by validation accuracy) trial's best-epoch weights, kept in memory."""

    def __init__(self) -> None:
        self.val = -math.inf
        self.weights: list[Any] | None = None
        self.params: dict[str, Any] = {}

    def offer(self, val: float, weights: list[Any], params: dict[str, Any]) -> None:
        if val > self.val:
            self.val, self.weights, self.params = val, weights, dict(params)

    def test(self, data: Any) -> float | None:
        if self.weights is None:
            return None
        import keras

        keras.backend.clear_session()
        model = build_cnn(self.params)
        model.set_weights(self.weights)
        return test_accuracy(model, data)


# -- methods ------------------------------------------------------------------------------------------------------------

def run_hpo(data: Any, validation_split: float, data_fraction: float, budget: int, options: dict[str, str],
            workdir: Path) -> MethodResult:
    import hpo

    # trials=budget: every trial trains at least one epoch, so the epoch budget is the limit that binds
    settings: dict[str, Any] = dict(dataset="fashion_mnist", epoch_budget=budget, trials=budget,
                                    validation_split=validation_split, data_fraction=data_fraction, seed=SEED,
                                    output_dir=str(workdir / "hpo"),
                                    run_name=f"bench-{len(list((workdir / 'hpo').glob('bench-*')))}", quiet=True,
                                    plot_generation="none")
    settings.update(options)
    start = time.perf_counter()
    result = hpo.optimize(**settings)
    wall = time.perf_counter() - start
    epochs = sum(int(t["epochs"] or 0) for t in result.trials)
    if epochs > budget:
        raise SystemExit(f"hpo trained {epochs} epochs, over the budget of {budget}: a bug in epoch_budget")
    extra = "".join(f", {k}={v}" for k, v in options.items())
    note = f"epoch_budget={budget}{extra}; {result.completed} completed, {result.pruned} pruned, " \
           f"{result.failed} failed"
    lines = []
    for t in result.trials:
        p = t["params"]
        val = "-" if t["val_accuracy"] is None else f"{100 * t['val_accuracy']:.1f}%"
        lines.append(f"#{t['number']:<3} {t['state']:<9} {t['epochs'] or 0} ep  val {val:>6}  {p.get('optimizer')} "
                     f"lr={p.get('learning_rate', 0):.1e} {p.get('conv_blocks')}x{p.get('filters')} "
                     f"k={p.get('kernel_size')} {p.get('activation')} bn={p.get('batch_norm')} "
                     f"gap={p.get('global_pooling')} dense={p.get('dense_layers')}x{p.get('dense_units', '-')} "
                     f"drop={p.get('dropout', 0):.2f} bs={p.get('batch_size')} aug={p.get('augmentation')} "
                     f"({t['train_seconds'] or 0:.0f}s)")
    return MethodResult("hpo", result.best_test_accuracy, result.best_val_accuracy, epochs, len(result.trials), wall,
                        note, dict(result.best_params or {}), lines)


def _train_trial(params: dict[str, Any], data: Any, epochs: int, budget_left: Any, on_epoch: Any = None
                 ) -> tuple[float, list[Any] | None, int]:
    """Train one configuration up to ``epochs`` epochs (fewer when the budget runs out or ``on_epoch`` returns
    True); returns (best val accuracy, its weights, epochs trained)."""
    import keras

    keras.backend.clear_session()
    model = build_cnn(params)
    best, best_weights, done = -math.inf, None, 0
    for epoch in range(1, epochs + 1):
        if budget_left() <= 0:
            break
        history = model.fit(data.x_train, data.y_train, batch_size=int(params["batch_size"]), epochs=1,
                            validation_data=(data.x_val, data.y_val), verbose=0)
        done += 1
        val = float(history.history["val_accuracy"][-1])
        if val > best:
            best, best_weights = val, model.get_weights()
        if on_epoch is not None and on_epoch(epoch, val, done):
            break
    return best, best_weights, done


def run_optuna_tpe(data: Any, budget: int, trials: int = 12, epochs: int = 3) -> MethodResult:
    import keras
    import optuna

    if trials * epochs > budget:
        raise SystemExit(f"optuna-tpe: {trials} x {epochs} epochs exceeds the budget of {budget}")
    keras.utils.set_random_seed(SEED)
    selected = _Selected()
    used = 0

    def objective(trial: Any) -> float:
        nonlocal used
        params = suggest_optuna(trial)
        best, weights, done = _train_trial(params, data, epochs, lambda: budget - used)
        used += done
        if weights is not None:
            selected.offer(best, weights, params)
        return best

    start = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=SEED))
    study.optimize(objective, n_trials=trials)
    test = selected.test(data)
    return MethodResult("optuna-tpe", test, selected.val, used, len(study.trials), time.perf_counter() - start,
                        f"{trials} trials x {epochs} epochs, no pruning", selected.params)


def run_optuna_hyperband(data: Any, budget: int, max_epochs: int = 9) -> MethodResult:
    import keras
    import optuna

    keras.utils.set_random_seed(SEED)
    selected = _Selected()
    used = 0

    def objective(trial: Any) -> float:
        nonlocal used
        params = suggest_optuna(trial)
        pruned = False

        def on_epoch(epoch: int, val: float, done: int) -> bool:
            nonlocal used, pruned
            used += 1
            trial.report(val, epoch)
            pruned = trial.should_prune()
            return pruned

        best, weights, done = _train_trial(params, data, max_epochs, lambda: budget - used, on_epoch)
        if pruned:
            raise optuna.TrialPruned()
        # a trial cut short by the end of the budget completes with its best epoch so far
        if weights is not None:
            selected.offer(best, weights, params)
        return best

    start = time.perf_counter()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=SEED),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs,
                                                                      reduction_factor=3))
    while used < budget:
        study.optimize(objective, n_trials=1)
    test = selected.test(data)
    states = [t.state.name.lower() for t in study.trials]
    note = f"max {max_epochs} epochs per trial; {states.count('complete')} completed, {states.count('pruned')} pruned"
    return MethodResult("optuna-tpe-hyperband", test, selected.val, used, len(study.trials),
                        time.perf_counter() - start, note, selected.params)


def run_kerastuner(data: Any, budget: int, workdir: Path, max_epochs: int = 9) -> MethodResult:
    import keras
    import keras_tuner as kt

    keras.utils.set_random_seed(SEED)
    used = 0

    class CNN(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            return build_cnn({
                "filters": hp.Choice("filters", list(FILTERS)),
                "blocks": hp.Int("blocks", *BLOCKS),
                "kernel": hp.Choice("kernel", list(KERNELS)),
                "dense_units": hp.Choice("dense_units", list(DENSE_UNITS)),
                "dropout": hp.Float("dropout", *DROPOUT),
                "learning_rate": hp.Float("learning_rate", *LEARNING_RATE, sampling="log"),
            })

        def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
            return model.fit(*args, batch_size=hp.Choice("batch_size", list(BATCH_SIZES)), **kwargs)

    tuner: Any = None

    class Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            nonlocal used
            used += 1
            if used >= budget:
                self.model.stop_training = True
                tuner.oracle.max_trials = len(tuner.oracle.trials)  # no new trial after this one

    tuner = kt.Hyperband(CNN(), objective="val_accuracy", max_epochs=max_epochs, factor=3, seed=SEED,
                         directory=str(workdir / "kerastuner"), project_name="bench", overwrite=True)
    start = time.perf_counter()
    tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), callbacks=[Budget()],
                 verbose=0)
    best_hp = tuner.get_best_hyperparameters(1)[0]
    model = tuner.get_best_models(1)[0]  # the best trial's best epoch (KerasTuner checkpoints it)
    best_trial = tuner.oracle.get_best_trials(1)[0]
    test = test_accuracy(model, data)
    params = {k: v for k, v in best_hp.values.items() if not k.startswith("tuner/")}
    return MethodResult("kerastuner-hyperband", test, float(best_trial.score), used, len(tuner.oracle.trials),
                        time.perf_counter() - start, f"max_epochs {max_epochs}, factor 3", params)


# -- report -------------------------------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def report(results: list[MethodResult], budget: int, quick: bool) -> list[str]:
    lines = [f"hpo quality benchmark: Fashion-MNIST, {'quick: ' if quick else ''}"
             f"{TRAIN_QUICK if quick else TRAIN_FULL} train / {VAL_QUICK if quick else VAL_FULL} val images "
             f"(official train split), official 10,000 test images; budget {budget} epochs per method; "
             f"seed {SEED}", ""]
    lines.append(f"{'method':<22} {'test acc':>9} {'val acc':>9} {'epochs':>6} {'trials':>6} {'wall':>9}  notes")
    for r in results:
        lines.append(f"{r.method:<22} {_pct(r.test_accuracy):>9} {_pct(r.val_accuracy):>9} {r.epochs:>6} "
                     f"{r.trials:>6} {r.wall_s:>8.0f}s  {r.note}")
    for r in results:
        if r.trial_lines:
            lines += ["", f"{r.method} trials:"] + [f"  {line}" for line in r.trial_lines]
    ours = next((r for r in results if r.method == "hpo"), None)
    others = [r for r in results if not r.method.startswith("hpo")]
    if ours is None or not others or ours.test_accuracy is None:
        return lines
    margins = []
    for mine in [r for r in results if r.method.startswith("hpo") and r.test_accuracy is not None]:
        lines.append("")
        for r in others:
            if r.test_accuracy is None:
                continue
            margin = 100 * (mine.test_accuracy - r.test_accuracy)
            if mine is ours:
                margins.append(margin)
            lines.append(f"{mine.method} margin over {r.method:<22} {margin:+.2f} pp test accuracy, epochs "
                         f"{mine.epochs} vs {r.epochs}, wall time {mine.wall_s / r.wall_s:.2f}x")
    fastest = min(others, key=lambda r: r.wall_s)
    acc_ok = bool(margins) and min(margins) >= 0.5
    epochs_ok = all(ours.epochs <= r.epochs for r in others)
    wall_ok = ours.wall_s <= 1.1 * fastest.wall_s
    lines.append("")
    lines.append("target (issue 5): >= +0.50 pp over every baseline, no more epochs, <= 1.1x the fastest's wall time")
    lines.append(f"  accuracy: {'met' if acc_ok else 'NOT met'} (smallest margin {min(margins):+.2f} pp)")
    lines.append(f"  epochs:   {'met' if epochs_ok else 'NOT met'} (hpo {ours.epochs}, baselines "
                 f"{', '.join(str(r.epochs) for r in others)})")
    lines.append(f"  wall:     {'met' if wall_ok else 'NOT met'} (hpo {ours.wall_s:.0f}s, fastest {fastest.method} "
                 f"{fastest.wall_s:.0f}s -> {ours.wall_s / fastest.wall_s:.2f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{TRAIN_QUICK} train / {VAL_QUICK} val images")
    parser.add_argument("--budget", type=int, default=36, help="training epochs per method (default 36)")
    parser.add_argument("--hpo-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an hpo option on top of its defaults (experiments; repeatable)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--seed", type=int, default=SEED, help=f"seed of the data split and of every method "
                        f"(default {SEED})")
    args = parser.parse_args(argv)
    _set_seed(args.seed)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; allowed: {', '.join(METHODS)}")
    from hpo.config import parse_kv

    hpo_options = parse_kv(args.hpo_option)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data, validation_split, data_fraction = load_data(args.quick)
    results: list[MethodResult] = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as tmp:
        workdir = Path(tmp)
        for method in methods:
            print(f"running {method} ...", file=sys.stderr, flush=True)
            if method == "hpo":
                r = run_hpo(data, validation_split, data_fraction, args.budget,
                            {"concurrent_workers": str(CORES), **hpo_options}, workdir)
            elif method == "hpo-1worker":
                r = run_hpo(data, validation_split, data_fraction, args.budget,
                            {**hpo_options, "concurrent_workers": "1"}, workdir)
                r.method = "hpo-1worker"
            elif method == "optuna-tpe":
                r = run_optuna_tpe(data, args.budget, trials=args.budget // 3, epochs=3)  # 12 x 3 for 36
            elif method == "optuna-tpe-hyperband":
                r = run_optuna_hyperband(data, args.budget)
            else:
                r = run_kerastuner(data, args.budget, workdir)
            print(f"  {r.method}: test {_pct(r.test_accuracy)}, val {_pct(r.val_accuracy)}, {r.epochs} epochs, "
                  f"{r.trials} trials, {r.wall_s:.0f}s", file=sys.stderr, flush=True)
            results.append(r)
    print("\n".join(report(results, args.budget, args.quick)))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
