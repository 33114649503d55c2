"""The protocol's report: per dataset and table (controlled, native) the test accuracy of the best-so-far model at
T/4, T/2 and T (median [min-max] over seeds), mean rank at T, trials, wall time; paired bootstrap intervals of hpo
minus each method; the search gain (hpo minus default-only) at T and 3T; the issue's targets; one plot per dataset
(best-so-far validation accuracy against wall time, median over seeds with a min-max band)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import stats
from .settings import CHECKPOINTS, CONTROLLED, HPO_METHODS, METHODS, NATIVE

__all__ = ["build_report", "plot_dataset", "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED"]

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20_240_816
_FRAC_LABEL = {0.25: "T/4", 0.5: "T/2", 1.0: "T"}


def _pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}"


def _spread(s: dict[str, Any]) -> str:
    if s["median"] is None:
        return "-"
    text = f"{_pct(s['median'])} [{_pct(s['min'])}-{_pct(s['max'])}]"
    return text + (f" ({s['missing']} none)" if s["missing"] else "")


def _runs(runs: list[dict], dataset: str, method: str, budget: float) -> list[dict]:
    return sorted((r for r in runs if r["dataset"] == dataset and r["method"] == method and r["budget_s"] == budget),
                  key=lambda r: r["seed"])


def _tests(runs: list[dict], frac: float) -> list[float | None]:
    return [r["at"][frac]["test"] for r in runs]


def _stack(correct: dict, dataset: str, method: str, budget: float, seeds: list[int], frac: float,
           n_test: int) -> np.ndarray:
    """(seeds, examples) correctness; a seed without a model by then counts as all wrong."""
    rows = [correct.get((dataset, method, budget, s, frac)) for s in seeds]
    return np.stack([r if r is not None else np.zeros(n_test, dtype=bool) for r in rows])


def _table(runs: list[dict], dataset: str, methods: list[str], budget: float) -> tuple[list[str], dict[str, Any]]:
    present = [m for m in methods if _runs(runs, dataset, m, budget)]
    ranks = stats.mean_ranks({m: _tests(_runs(runs, dataset, m, budget), 1.0) for m in present}) if present else {}
    head = ("| method | " + " | ".join(f"test % at {_FRAC_LABEL[f]}" for f in CHECKPOINTS)
            + " | mean rank at T | val % at T | trials (candidates by T) | wall s (max) |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    summary: dict[str, Any] = {}
    for m in present:
        rs = _runs(runs, dataset, m, budget)
        tests = {f: stats.summary(_tests(rs, f)) for f in CHECKPOINTS}
        val = stats.summary([r["at"][1.0]["val"] for r in rs])
        trials = float(np.median([len(r["trials"]) for r in rs]))
        cands = float(np.median([sum(1 for t in r["trials"] if t.get("candidate") and t["end_s"] <= budget)
                                 for r in rs]))
        walls = [r["wall_s"] for r in rs]
        over = max(walls) / budget
        wall = f"{np.median(walls):.0f} ({max(walls):.0f}{', %.2fxT' % over if over > 1.02 else ''})"
        flags = "".join(sorted({" killed" if r["killed"] else "" for r in rs} | {" error" if r["notes"].get("error")
                                                                                 else "" for r in rs}))
        lines.append(f"| {m}{flags} | " + " | ".join(_spread(tests[f]) for f in CHECKPOINTS)
                     + f" | {ranks[m]:.2f} | {_pct(val['median'])} | {trials:g} ({cands:g}) | {wall} |")
        strict = float(np.median([0.0 if t is None else t for t in _tests(rs, 1.0)]))  # no model = 0 %
        summary[m] = {"test": {str(f): tests[f] for f in CHECKPOINTS}, "test_at_T_none_as_0": strict,
                      "val_at_T": val, "mean_rank": ranks[m],
                      "trials_median": trials, "wall_s": walls}
    return lines, summary


def _boot(correct: dict, dataset: str, a: str, b: str, budget: float, seeds: list[int], n_test: int,
          frac: float = 1.0) -> dict[str, float]:
    return stats.paired_bootstrap(_stack(correct, dataset, a, budget, seeds, frac, n_test),
                                  _stack(correct, dataset, b, budget, seeds, frac, n_test),
                                  resamples=BOOTSTRAP_RESAMPLES, seed=BOOTSTRAP_SEED)


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def _per_seed(runs: list[dict], dataset: str, methods: list[str], budget: float) -> list[str]:
    """Test % at T of each method on each seed (a seed whose run has no model yet: '-')."""
    seeds = sorted({r["seed"] for m in methods for r in _runs(runs, dataset, m, budget)})
    lines = ["| test % at T | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|" + " --- |" * (len(seeds) + 1)]
    for m in methods:
        by_seed = {r["seed"]: r["at"][1.0]["test"] for r in _runs(runs, dataset, m, budget)}
        lines.append(f"| {m} | " + " | ".join(_pct(by_seed.get(s)) for s in seeds) + " |")
    return lines


def _reach_line(runs: list[dict], dataset: str, ref: str, others: list[str], budget: float) -> tuple[str, Any]:
    """When ``ref``'s best-so-far validation accuracy first reached the best other method's at T, per seed."""
    times = []
    for r in _runs(runs, dataset, ref, budget):
        vals = [o["at"][1.0]["val"] for m in others for o in _runs(runs, dataset, m, budget) if o["seed"] == r["seed"]]
        vals = [v for v in vals if v is not None]
        times.append(None if not vals else stats.time_to_reach(r["trials"], max(vals)))
    shown = ", ".join("never" if t is None else f"{t:.0f}s" for t in times)
    ok = bool(times) and all(t is not None and t <= budget / 2 for t in times)
    return f"{ref} reaches the best other method's validation accuracy at T by: {shown} (T/2 = {budget / 2:.0f}s)", \
        {"times_s": times, "within_half_T": ok}


def build_report(runs: list[dict], correct: dict, plans: dict[str, dict], meta: dict[str, Any]
                 ) -> tuple[str, dict[str, Any]]:
    budget = float(meta["budget_s"])
    out: list[str] = [f"# hpo benchmark protocol -- {meta['date']}", ""]
    out += [f"Mode: {meta['mode']}; T = {budget:.0f} s per method-run, every overhead included (clock started before "
            f"the run's process); seeds {meta['seeds']}; one run at a time on {meta['cores']} cores (load average "
            f"{meta['load_before']} before, {meta['load_after']} after); total {meta['total_s'] / 60:.1f} min.",
            "Best-so-far = the candidate (completed, or cut by T with its best epoch; never pruned) with the highest "
            "validation accuracy among trials that had ended by then; its saved model is tested after the run. "
            "Trials ending after T never count. Test accuracies in %, median [min-max] over seeds; '(k none)': k "
            "seeds had no model yet (they count as 0 % -- every test example wrong -- in ranks and bootstrap "
            "intervals).", ""]
    if meta.get("reused_runs"):
        out += [f"{meta['reused_runs']} method-runs were taken from an earlier run of the same protocol "
                f"({meta['reused_from']}); the others ran again in this one.", ""]
    out += ["| dataset | train | val | test | trial epochs | max epochs (SH/HB) |", "| --- | --- | --- | --- | --- | --- |"]
    for name, p in plans.items():
        n_test = next((r["n_test"] for r in runs if r["dataset"] == name and "n_test" in r), "?")
        out.append(f"| {name} | {p['n_train']} | {p['n_val']} | {n_test} | {p['trial_epochs']} | {p['max_epochs']} |")
    summary: dict[str, Any] = {"datasets": {}}
    for name in plans:
        seeds = sorted({r["seed"] for r in runs if r["dataset"] == name and r["budget_s"] == budget})
        n_test = next((r["n_test"] for r in runs if r["dataset"] == name and "n_test" in r), 0)
        ds: dict[str, Any] = {"tables": {}, "bootstrap": {}, "gain": {}, "targets": {}}
        summary["datasets"][name] = ds
        refs = [m for m in HPO_METHODS if _runs(runs, name, m, budget)]
        for table, methods in (("controlled", CONTROLLED), ("native", NATIVE)):
            lines, tsum = _table(runs, name, list(methods), budget)
            if len(lines) <= 2:
                continue
            ds["tables"][table] = tsum
            out += ["", f"## {name}: {table}", ""] + lines + [""] + _per_seed(runs, name, list(tsum), budget)
            others = [m for m in tsum if m not in HPO_METHODS]
            if refs and others:
                out += ["", f"Paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples of seeds x {n_test} test examples, "
                        f"seed {BOOTSTRAP_SEED}), test accuracy at T, percentage points, diff [95% interval]:", "",
                        "| method | " + " | ".join(f"{r} minus it" for r in refs) + " |",
                        "|" + " --- |" * (len(refs) + 1)]
                for m in others:
                    cells = []
                    for r in refs:
                        b = _boot(correct, name, r, m, budget, seeds, n_test)
                        ds["bootstrap"][f"{r}-{m}"] = b
                        cells.append(f"{_pp(b['diff'])} [{_pp(b['low'])}, {_pp(b['high'])}]")
                    out.append(f"| {m} | " + " | ".join(cells) + " |")
        out += ["", f"## {name}: search gain (hpo minus default-only), test pp", ""]
        for r in refs:
            for mult in (1, 3):
                b3 = budget * mult
                a_runs, d_runs = _runs(runs, name, r, b3), _runs(runs, name, "default", b3)
                if not a_runs or not d_runs:
                    continue
                diffs = [(x - y) if x is not None and y is not None else None
                         for x, y in zip(_tests(a_runs, 1.0), _tests(d_runs, 1.0))]
                s = stats.summary(diffs)
                seeds3 = sorted(x["seed"] for x in a_runs)
                b = _boot(correct, name, r, "default", b3, seeds3, n_test)
                ds["gain"][f"{r}@{mult}T"] = {"per_seed": diffs, "summary": s, "bootstrap": b}
                med = "-" if s["median"] is None else f"{_pp(s['median'])} [{_pp(s['min'])}, {_pp(s['max'])}]"
                each = ", ".join("-" if d is None else _pp(d) for d in diffs)
                out.append(f"- {r} at {mult}T ({b3:.0f}s): per seed (seeds {', '.join(map(str, seeds3))}) {each}; "
                           f"per-seed median {med}; bootstrap {_pp(b['diff'])} [{_pp(b['low'])}, {_pp(b['high'])}]")
        out += ["", f"## {name}: targets (issue 16, test medians over seeds at T, no model = 0 %)", ""]
        for r in refs:
            out += _targets(ds, r, runs, name, budget)
        summary["datasets"][name] = ds
        if meta.get("plots", {}).get(name):
            out += ["", f"![best-so-far validation accuracy, {name}]({meta['plots'][name]})"]
    out += ["", "## runs", "", "| dataset | method | T s | seed | wall s | exit | trials | notes |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        n = r["notes"]
        bits = [f"error: {n['error'][:120]}" if n.get("error") else "", "killed at T+grace" if r["killed"] else "",
                f"budget: {n['budget_option']}" if n.get("budget_option") else "",
                f"{r.get('models_missing')} models missing" if r.get("models_missing") else "",
                f"default epochs {n['default_epochs']}" if "default_epochs" in n else "",
                f"data and TensorFlow ready at {n['data_ready_s']:.0f}s" if n.get("data_ready_s") else ""]
        out.append(f"| {r['dataset']} | {r['method']} | {r['budget_s']:.0f} | {r['seed']} | {r['wall_s']:.0f} | "
                   f"{r['returncode']} | {len(r['trials'])} | {'; '.join(b for b in bits if b)} |")
    out += ["", "Methods:", ""] + [f"- `{m}` ({t}): {d}" for m, (t, d) in METHODS.items()
                                  if any(r["method"] == m for r in runs)]
    return "\n".join(out) + "\n", summary


def _targets(ds: dict, ref: str, runs: list[dict], name: str, budget: float) -> list[str]:
    lines, res = [], {}
    ctl, nat = ds["tables"].get("controlled", {}), ds["tables"].get("native", {})
    mine = (ctl.get(ref) or nat.get(ref) or {}).get("test_at_T_none_as_0")

    def best_of(table: dict) -> tuple[str | None, float | None]:
        cands = [(m, s["test_at_T_none_as_0"]) for m, s in table.items() if m not in HPO_METHODS]
        return max(cands, key=lambda c: c[1]) if cands else (None, None)

    for label, table, margin in (("controlled", ctl, 0.003), ("native", nat, 0.005)):
        m, v = best_of(table)
        if m is None or mine is None:
            continue
        ok = mine >= v + margin
        res[label] = {"best_other": m, "margin_pp": 100 * (mine - v), "met": ok}
        lines.append(f"- {ref} vs the best {label} method ({m}): {_pp(mine - v)} pp, target >= +{100 * margin:.1f}: "
                     f"{'met' if ok else 'MISSED'}")
    others = [m for m in list(ctl) + list(nat) if m not in HPO_METHODS]
    if others:
        line, r = _reach_line(runs, name, ref, others, budget)
        res["reach_half_T"] = r
        lines.append(f"- {line}: {'met' if r['within_half_T'] else 'MISSED'}")
    for mult, op in ((1, ">="), (3, ">")):
        g = ds["gain"].get(f"{ref}@{mult}T")
        if g and g["summary"]["median"] is not None:
            v = g["summary"]["median"]
            ok = v >= 0 if mult == 1 else v > 0
            res[f"gain_{mult}T"] = ok
            lines.append(f"- search gain at {mult}T: {_pp(v)} pp, target {op} 0: {'met' if ok else 'MISSED'}")
    lines.append("- reproducibility (same seed, one worker, identical results): not measured by this run")
    ds["targets"][ref] = res
    return lines


def plot_dataset(runs: list[dict], dataset: str, budget: float, path: Path) -> Path | None:
    """Best-so-far validation accuracy against wall time: median over seeds, min-max band; T/4, T/2, T marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in METHODS if _runs(runs, dataset, m, budget)]
    if not methods:
        return None
    horizon = min(2 * budget, max([budget] + [t["end_s"] for r in runs if r["dataset"] == dataset
                                              for t in r["trials"] if t.get("end_s") is not None]))
    grid = np.linspace(0, horizon, 400)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    shown: list[np.ndarray] = []
    for m in methods:
        curves = np.stack([stats.best_so_far_curve(r["trials"], grid) for r in _runs(runs, dataset, m, budget)])
        with warnings.catch_warnings():  # all-NaN columns (before any trial ended) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanmin(curves, 0), np.nanmax(curves, 0)
        # the median ranks a seed without a model yet lowest (as the tables do): drawn once it is one
        med = np.median(np.where(np.isnan(curves), -np.inf, curves), 0)
        med[~np.isfinite(med)] = np.nan
        style = "-" if m in HPO_METHODS else ("--" if METHODS[m][0] == "native" else "-.")
        (line,) = ax.plot(grid, 100 * med, style, label=m, linewidth=2.2 if m in HPO_METHODS else 1.3)
        ax.fill_between(grid, 100 * lo, 100 * hi, color=line.get_color(), alpha=0.12)
        shown += [lo, hi]
    for f in CHECKPOINTS:
        ax.axvline(f * budget, color="grey", linewidth=0.8, linestyle=":")
        ax.text(f * budget, 0.01, " " + _FRAC_LABEL[f], transform=ax.get_xaxis_transform(), ha="left", va="bottom",
                fontsize=8, color="grey")
    values = np.concatenate(shown)
    values = values[~np.isnan(values)]
    if values.size:
        low, high = float(values.min()), float(values.max())
        ax.set_ylim(max(0.0, 100 * low - 2), min(100.0, 100 * high + 2))
    ax.set_xlim(0, horizon)
    ax.set_xlabel("wall time since the method's start (s)")
    ax.set_ylabel("best-so-far validation accuracy (%)")
    ax.set_title(f"{dataset}: median over seeds, band = min-max; T = {budget:.0f}s")
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
