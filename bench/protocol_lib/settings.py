"""The protocol's frozen settings: datasets (subset sizes, per-trial epochs), methods, checkpoints.

Chosen before any benchmark run, from timing only (seconds per epoch of the space's default model on 2 cores), never
from test figures; changing one is a change of protocol and is stated in the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["DatasetPlan", "DATASETS", "FALLBACKS", "METHODS", "CONTROLLED", "NATIVE", "HPO_METHODS", "QUICK_METHODS",
           "CHECKPOINTS", "plan_for"]


@dataclass(frozen=True)
class DatasetPlan:
    """How one dataset is used. ``n_train``/``n_val`` are drawn (stratified, seeded by the run's seed) from the
    official training split; the official test split is used whole, after the runs, for the saved models only.
    ``trial_epochs``: epochs of one trial of random search and TPE (no pruning); ``max_epochs``: the most epochs of
    a trial under successive halving / Hyperband (rungs at 1, 3, 9, ... epochs, reduction factor 3)."""

    name: str
    n_train: int
    n_val: int
    official_train: int
    trial_epochs: int
    max_epochs: int

    @property
    def validation_split(self) -> float:
        return self.n_val / self.official_train

    @property
    def data_fraction(self) -> float:
        return min(1.0, self.n_train / (self.official_train - self.n_val))

    def to_dict(self) -> dict:
        return dict(asdict(self), validation_split=self.validation_split, data_fraction=self.data_fraction)


#: Fashion-MNIST: 5,000 / 1,000 images -- the default CNN trains ~30-40 epochs in 2 minutes on 2 quiet cores, so a
#: search has room for several trials. MNIST-1D: its whole official training split (4,000) split 80/20; an epoch of
#: the default 1-D conv net takes well under a second, so trials train longer.
DATASETS: dict[str, DatasetPlan] = {
    "fashion_mnist": DatasetPlan("fashion_mnist", 5_000, 1_000, 60_000, trial_epochs=5, max_epochs=9),
    "mnist1d": DatasetPlan("mnist1d", 3_200, 800, 4_000, trial_epochs=15, max_epochs=27),
    # smoke runs only (--quick falls back to these when mnist1d cannot be loaded); not part of the protocol's tables
    "synthetic_sequence": DatasetPlan("synthetic_sequence", 1_280, 320, 1_600, trial_epochs=8, max_epochs=9),
    "synthetic_images": DatasetPlan("synthetic_images", 1_280, 320, 1_600, trial_epochs=4, max_epochs=9),
}
#: --quick's dataset when mnist1d is not importable, in order of preference
FALLBACKS = ("synthetic_sequence", "synthetic_images")

#: method -> (table, description). "hpo-1"/"hpo-2" appear in both tables (the same runs).
METHODS: dict[str, tuple[str, str]] = {
    "default": ("controlled", "the space's default configuration (hpo.catalog.DEFAULTS) trained for all of T: a "
                "2-epoch probe times an epoch, then one run given the time left, which hpo's trainer ends in time "
                "with its cosine schedule (as hpo's final)"),
    "random": ("controlled", "random search (Optuna RandomSampler) over hpo's space, trial_epochs per trial"),
    "tpe": ("controlled", "Optuna TPE (multivariate, 5 start-up trials) over hpo's space, trial_epochs per trial"),
    "tpe-sh": ("controlled", "Optuna TPE + successive halving pruner (min 1 epoch, factor 3), max_epochs per trial"),
    "tpe-hb": ("controlled", "Optuna TPE + Hyperband pruner (1..max_epochs, factor 3)"),
    "kt-hb": ("controlled", "KerasTuner Hyperband (max_epochs, factor 3) over hpo's space, hpo's model builder"),
    "native-tpe": ("native", "Optuna TPE (multivariate, 5 start-up trials), a hand-written Keras model and space, "
                   "trial_epochs per trial"),
    "native-tpe-sh": ("native", "the same + Optuna's successive halving pruner"),
    "native-tpe-hb": ("native", "the same + Optuna's Hyperband pruner"),
    "native-kt-hb": ("native", "KerasTuner Hyperband with the hand-written model and space"),
    "hpo-1": ("both", "hpo.optimize, concurrent_workers=1, its defaults, the run's time budget"),
    "hpo-2": ("both", "hpo.optimize, concurrent_workers=2, its defaults, the run's time budget"),
}
HPO_METHODS = ("hpo-1", "hpo-2")
CONTROLLED = tuple(m for m, (table, _) in METHODS.items() if table in ("controlled", "both"))
NATIVE = tuple(m for m, (table, _) in METHODS.items() if table in ("native", "both"))
QUICK_METHODS = ("default", "random", "tpe", "hpo-1")
#: where the test accuracy of the best-so-far model is reported, as fractions of T
CHECKPOINTS = (0.25, 0.5, 1.0)


def plan_for(name: str) -> DatasetPlan:
    try:
        return DATASETS[name]
    except KeyError:
        raise SystemExit(f"--datasets: unknown dataset {name!r}; allowed: {', '.join(DATASETS)}") from None
