"""The protocol's statistics, as pure functions (numpy and the standard library only; no training, no files).

A method-run is a list of trial records ``{"end_s": seconds from the method's start, "val": validation accuracy,
"model": saved model path, "candidate": bool}``; only candidates (trials the method itself would return: completed,
or cut by the budget with their best epoch kept -- never pruned or failed ones) can be the best so far.

- :func:`best_so_far`: the trial that was best (highest validation accuracy, the earlier on ties) among the
  candidates that had *ended* by time ``t`` -- what the method would have handed over had it been stopped at ``t``.
- :func:`checkpoint_trials`: the best-so-far trial at T/4, T/2, T (whose saved model is then tested).
- :func:`best_so_far_curve`: its validation accuracy on a time grid (NaN before the first candidate).
- :func:`summary`: median, min and max over seeds (missing values left out, counted).
- :func:`mean_ranks`: per seed, rank 1 = highest test accuracy, ties get the mean of their ranks, a missing value
  ranks below every present one; then the mean over seeds.
- :func:`paired_bootstrap`: interval of mean(accuracy of A - accuracy of B) resampling seeds and test examples
  together (the test examples are the same for every seed and method, so the pairs are (seed, example)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["best_so_far", "checkpoint_trials", "best_so_far_curve", "summary", "rank_with_ties", "mean_ranks", "paired_bootstrap",
           "time_to_reach"]


def _candidates(trials: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    out = []
    for t in trials:
        val = t.get("val")
        if t.get("candidate", True) and val is not None and math.isfinite(float(val)) and t.get("end_s") is not None:
            out.append(t)
    return sorted(out, key=lambda t: float(t["end_s"]))


def best_so_far(trials: Iterable[Mapping[str, Any]], t: float) -> Mapping[str, Any] | None:
    """The candidate with the highest validation accuracy among those ended by ``t`` (inclusive); on equal accuracy
    the one that ended first (a later tie does not replace the best). None when none had ended."""
    best = None
    for trial in _candidates(trials):
        if float(trial["end_s"]) > t:
            break
        if best is None or float(trial["val"]) > float(best["val"]):
            best = trial
    return best


def checkpoint_trials(trials: Iterable[Mapping[str, Any]], budget_s: float, fractions: Iterable[float]
                      ) -> dict[float, Mapping[str, Any] | None]:
    """The best-so-far trial at each fraction of the budget (T/4, T/2, T): the model tested for that time."""
    trials = list(trials)
    return {f: best_so_far(trials, f * budget_s) for f in fractions}


def best_so_far_curve(trials: Iterable[Mapping[str, Any]], grid: Sequence[float]) -> np.ndarray:
    """Best-so-far validation accuracy at each time of ``grid`` (NaN where no candidate had ended yet)."""
    cands = _candidates(trials)
    out = np.full(len(grid), np.nan)
    for i, t in enumerate(grid):
        best = best_so_far(cands, float(t))
        if best is not None:
            out[i] = float(best["val"])
    return out


def time_to_reach(trials: Iterable[Mapping[str, Any]], target: float) -> float | None:
    """The first end time at which the best-so-far validation accuracy is >= ``target`` (None: never)."""
    for trial in _candidates(trials):
        if float(trial["val"]) >= target:
            return float(trial["end_s"])
    return None


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"median", "min", "max", "n", "missing"}`` over the present values (None or NaN are missing)."""
    values = list(values)
    present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    missing = len(values) - len(present)
    if not present:
        return {"median": None, "min": None, "max": None, "n": 0, "missing": missing}
    return {"median": float(np.median(present)), "min": min(present), "max": max(present), "n": len(present),
            "missing": missing}


def rank_with_ties(scores: Sequence[float | None]) -> list[float]:
    """Ranks, 1 = highest score; tied scores share the mean of the ranks they span; None/NaN ranks last (tied among
    themselves)."""
    keyed = [(-math.inf if s is None or not math.isfinite(float(s)) else float(s), i) for i, s in enumerate(scores)]
    keyed.sort(key=lambda x: -x[0])
    ranks = [0.0] * len(scores)
    pos = 0
    while pos < len(keyed):
        end = pos
        while end + 1 < len(keyed) and keyed[end + 1][0] == keyed[pos][0]:
            end += 1
        shared = (pos + 1 + end + 1) / 2
        for k in range(pos, end + 1):
            ranks[keyed[k][1]] = shared
        pos = end + 1
    return ranks


def mean_ranks(scores: Mapping[str, Sequence[float | None]]) -> dict[str, float]:
    """``scores[method][seed_index]`` -> each method's rank averaged over the seeds (every method needs the same
    number of seeds)."""
    methods = list(scores)
    if not methods:
        return {}
    n = {len(scores[m]) for m in methods}
    if len(n) != 1:
        raise ValueError(f"every method needs the same number of seeds, got {sorted(n)}")
    seeds = n.pop()
    totals = dict.fromkeys(methods, 0.0)
    for s in range(seeds):
        for m, r in zip(methods, rank_with_ties([scores[m][s] for m in methods])):
            totals[m] += r
    return {m: totals[m] / seeds for m in methods} if seeds else {m: math.nan for m in methods}


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, *, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95, chunk: int = 250) -> dict[str, float]:
    """Bootstrap interval of A's minus B's accuracy from per-example correctness arrays of shape (seeds, examples)
    (the same test examples in the same order for every seed).

    Each resample draws seeds with replacement and test examples with replacement (one draw of examples, used for
    every drawn seed: the pairs stay paired), and takes the mean difference. Returns the observed mean difference
    ``diff`` and the interval ``low``/``high`` (percentiles (1-level)/2 and (1+level)/2)."""
    a = np.asarray(correct_a, dtype=np.float64)
    b = np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"correctness arrays must have the same (seeds, examples) shape, got {a.shape}, {b.shape}")
    d = a - b
    seeds, examples = d.shape
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    done = 0
    while done < resamples:
        k = min(chunk, resamples - done)
        seed_counts = np.stack([np.bincount(rng.integers(0, seeds, seeds), minlength=seeds) for _ in range(k)])
        example_counts = rng.multinomial(examples, np.full(examples, 1.0 / examples), size=k)
        # mean over drawn seeds of the mean over drawn examples: (seed weights) @ d @ (example weights)
        stats[done:done + k] = np.einsum("ks,se,ke->k", seed_counts / seeds, d, example_counts / examples)
        done += k
    tail = (1.0 - level) / 2
    return {"diff": float(d.mean()), "low": float(np.quantile(stats, tail)),
            "high": float(np.quantile(stats, 1.0 - tail)), "resamples": resamples, "seed": seed}
