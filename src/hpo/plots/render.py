"""Matplotlib renderers: each draws one plot's data (from :mod:`hpo.plots.data` or :mod:`hpo.plots.model`) into a
PNG and returns its size in pixels.

Renderers draw on a bare :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot, no global backend switch), so they
run headless and do not disturb a notebook's own plotting. Every PNG has a fixed size (figure size x :data:`DPI`,
no tight-bbox cropping); the layout engine keeps labels inside it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DPI",
    "render_history",
    "render_importance",
    "render_parallel",
    "render_pareto",
    "render_timeline",
    "render_curves",
    "render_confusion",
    "render_health",
    "render_gradients",
    "render_weights",
    "render_activations",
]

DPI = 100

_BLUE, _ORANGE, _GREEN, _RED, _GRAY, _PURPLE = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#8c8c8c", "#9467bd"
_STATE_COLORS = {"complete": _GREEN, "pruned": _ORANGE, "fail": _RED, "interrupted": _GRAY, "running": _BLUE}
_STATE_LABELS = {"complete": "completed", "pruned": "pruned", "fail": "failed", "interrupted": "interrupted",
                 "running": "running"}

def _figure(width: float, height: float, **kwargs: Any) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained", **kwargs)
    return fig


def _save(fig: Any, path: Path) -> tuple[int, int]:
    fig.savefig(path, dpi=DPI, facecolor="white")
    w, h = fig.get_size_inches()
    return int(round(w * DPI)), int(round(h * DPI))


def render_history(data: dict[str, Any], path: Path, objective: str = "validation accuracy") -> tuple[int, int]:
    fig = _figure(10, 5.5)
    ax = fig.add_subplot()
    ax.scatter(data["numbers"], data["values"], color=_BLUE, s=40, zorder=5, label="completed trial")
    if data["pruned"]:
        ax.scatter([p[0] for p in data["pruned"]], [p[1] for p in data["pruned"]], color=_GRAY, marker="x", s=36,
                   zorder=2, label="pruned trial (val accuracy when stopped)")
    xs, ys = list(data["numbers"]), list(data["best_so_far"])
    if data.get("last_number", xs[-1]) > xs[-1]:  # carry the best on to the last trial
        xs.append(data["last_number"])
        ys.append(ys[-1])
    ax.step(xs, ys, where="post", color=_ORANGE, lw=2, label="best so far", zorder=4)
    ax.scatter([data["best_number"]], [data["best_value"]], marker="*", s=220, color=_RED, zorder=6,
               label=f"best: trial {data['best_number']} ({data['best_value']:.4f})")
    ax.set_xlabel("trial number")
    ax.set_ylabel(objective)
    ax.set_title("Optimization history")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def render_importance(data: dict[str, Any], path: Path) -> tuple[int, int]:
    n = len(data["params"])
    fig = _figure(9, max(3.0, 0.45 * n + 1.6))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    ax.barh(y, data["importances"], color=_BLUE)
    ax.set_yticks(y, data["params"])
    for yi, v in zip(y, data["importances"]):
        ax.text(v, yi, f" {v:.3f}", va="center", fontsize=9)
    ax.set_xlim(0, max(data["importances"]) * 1.18 or 1)
    ax.set_xlabel(f"importance ({data['evaluator']}, share of the objective's variance)")
    ax.set_ylabel("parameter")
    ax.set_title(f"Parameter importances over {data['n_trials']} completed trials")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def render_parallel(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    axes = data["axes"]
    k = len(axes)
    fig = _figure(min(12.0, max(9.0, 0.9 * k + 2.5)), 6.5)
    ax = fig.add_subplot()
    values = [r["value"] for r in data["rows"]]
    norm = Normalize(min(values), max(values) if max(values) > min(values) else min(values) + 1e-9)
    cmap = colormaps["viridis"]
    xs = np.arange(k)
    for r in sorted(data["rows"], key=lambda r: r["value"]):
        best = r["number"] == data["best_number"]
        ax.plot(xs, r["coords"], color=_RED if best else cmap(norm(r["value"])), lw=3 if best else 1.4,
                alpha=1.0 if best else 0.8, zorder=4 if best else 2, marker="o", ms=3)
    for i, a in enumerate(axes):
        ax.axvline(i, color="black", lw=0.8, zorder=1)
        for pos, label in a["ticks"]:
            ax.text(i + 0.04, pos, label, fontsize=9, va="center", ha="left", zorder=5,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75})
    ax.set_xticks(xs, [a["name"] + (" (log)" if a["log"] else "") for a in axes], rotation=30, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks([])
    ax.set_xlim(-0.2, k - 0.4)
    ax.set_ylim(-0.06, 1.06)
    ax.set_ylabel("value, scaled per axis (low → high)")
    ax.set_title(f"Parallel coordinates: parameters vs {data['objective']} (red: best, trial {data['best_number']})")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=data["objective"], pad=0.01)
    return _save(fig, path)


def render_pareto(data: dict[str, Any], path: Path) -> tuple[int, int]:
    fig = _figure(8.5, 6.5)
    ax = fig.add_subplot()
    front_numbers = {p[0] for p in data["front"]}
    others = [p for p in data["points"] if p[0] not in front_numbers]
    if others:
        ax.scatter([p[1] for p in others], [p[2] for p in others], color=_GRAY, s=36, label="completed trial")
    if data["front"]:
        ax.plot([p[1] for p in data["front"]], [p[2] for p in data["front"]], color=_ORANGE, lw=1.5, marker="o",
                ms=8, label="Pareto front", zorder=3)
        for n, x, y in data["front"]:
            ax.annotate(f"#{n}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
    best = [p for p in data["points"] if p[0] == data["best_number"]]
    if best:
        ax.scatter([best[0][1]], [best[0][2]], marker="*", s=260, color=_RED, zorder=4,
                   label=f"selected: trial {best[0][0]}")
    ax.set_xlabel("validation accuracy")
    ax.set_ylabel("overall health")
    ax.set_title("Pareto front: validation accuracy vs overall health")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=9)
    return _save(fig, path)


def render_timeline(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib.patches import Patch

    workers = data["workers"]
    fig = _figure(11, max(3.8, 0.55 * len(workers) + 2.8))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[max(2, len(workers)), 1.4])
    row = {w: i for i, w in enumerate(workers)}
    end = max(b["end_s"] for b in data["bars"]) or 1.0
    for b in data["bars"]:
        width = max(b["end_s"] - b["start_s"], end * 0.002)
        top.barh(row[b["worker"]], width, left=b["start_s"], height=0.6,
                 color=_STATE_COLORS.get(b["state"], _GRAY), edgecolor="black", lw=0.6)
        if width > end * 0.04:
            top.text(b["start_s"] + width / 2, row[b["worker"]], f"#{b['number']}", ha="center", va="center",
                     fontsize=9, color="white", fontweight="bold")
    top.set_yticks(range(len(workers)), workers)
    top.set_ylim(len(workers) - 0.5, -0.5)
    top.set_ylabel("worker")
    top.set_title(f"Trials per worker over time (at most {data['max_concurrency']} at once)")
    top.grid(axis="x", alpha=0.3)
    states = [s for s in _STATE_COLORS if any(b["state"] == s for b in data["bars"])]
    top.legend(handles=[Patch(color=_STATE_COLORS[s], label=_STATE_LABELS[s]) for s in states], fontsize=9,
               loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    steps = data["steps"]
    bottom.step([t for t, _ in steps], [c for _, c in steps], where="post", color=_BLUE, lw=1.8)
    bottom.fill_between([t for t, _ in steps], [c for _, c in steps], step="post", color=_BLUE, alpha=0.2)
    bottom.set_ylim(0, max(1, data["max_concurrency"]) + 0.5)
    bottom.yaxis.get_major_locator().set_params(integer=True)
    bottom.set_ylabel("running")
    bottom.set_xlabel("seconds since the first trial started")
    bottom.set_xlim(0, end * 1.01)
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def render_curves(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib.lines import Line2D

    fig = _figure(12, 5)
    ax_acc, ax_loss = fig.subplots(1, 2)
    colors = [_BLUE, _ORANGE, _GREEN, _PURPLE, _RED]
    handles = []
    for i, t in enumerate(data["trials"]):
        c = colors[i % len(colors)]
        h = t["history"]
        for ax, key in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            for prefix, style in (("", "--"), ("val_", "-")):
                series = h.get(prefix + key)
                if series:
                    epochs = np.arange(1, len(series) + 1)
                    ax.plot(epochs, [np.nan if v is None else v for v in series], style, color=c, marker="o", ms=3)
            if t.get("best_epoch") and h.get("val_" + key) and t["best_epoch"] <= len(h["val_" + key]):
                v = h["val_" + key][t["best_epoch"] - 1]
                if v is not None:
                    ax.scatter([t["best_epoch"]], [v], s=90, facecolors="none", edgecolors=c, lw=1.8, zorder=4)
        handles.append(Line2D([], [], color=c, label=f"trial {t['number']}: {data['objective']} {t['value']:.4f}"))
    handles += [Line2D([], [], color="black", ls="-", label="validation"),
                Line2D([], [], color="black", ls="--", label="training"),
                Line2D([], [], color="black", marker="o", ls="none", mfc="none", ms=9, label="best epoch")]
    for ax, key in ((ax_acc, "accuracy"), (ax_loss, "loss")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.set_title("Accuracy")
    ax_loss.set_title("Loss")
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle("Training curves of the best trial" + ("s" if len(data["trials"]) > 1 else ""))
    return _save(fig, path)


def render_confusion(data: dict[str, Any], path: Path) -> tuple[int, int]:
    m = data["matrix"]
    n = m.shape[0]
    labels = data.get("labels") or [str(i) for i in range(n)]
    side = min(10.5, max(6.5, 0.42 * n + 3.5))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros(m.shape, dtype=float), where=rows > 0)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if n <= 15:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{m[i, j]}", ha="center", va="center", fontsize=9 if n <= 10 else 7,
                        color="white" if share[i, j] > 0.55 else "black")
    step = max(1, math.ceil(n / 30))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45 if max(len(labels[i]) for i in ticks) > 2 else 0,
                  ha="right" if max(len(labels[i]) for i in ticks) > 2 else "center")
    ax.set_yticks(ticks, [labels[i] for i in ticks])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"Confusion matrix of the best model (trial {data['number']}) on the test set\n"
                 f"{data['n']} samples, accuracy {data['accuracy']:.4f}; colour: share of the true class")
    fig.colorbar(im, ax=ax, label="share of the true class (recall)", shrink=0.8)
    return _save(fig, path)


def render_health(data: dict[str, Any], path: Path) -> tuple[int, int]:
    metrics = data["metrics"]
    n = len(metrics)
    fig = _figure(9, max(3.2, 0.55 * n + 1.8))
    ax = fig.add_subplot()
    y = np.arange(n)[::-1]
    for yi, (name, v) in zip(y, metrics):
        if v is None:
            ax.barh(yi, 1.0, color="white", edgecolor=_GRAY, hatch="//", lw=0.8)
            ax.text(0.02, yi, "not measured", ha="left", va="center", fontsize=9, color="#333",
                    bbox={"fc": "white", "ec": "none", "pad": 1})
        else:
            color = _GREEN if v >= 0.7 else (_ORANGE if v >= 0.4 else _RED)
            ax.barh(yi, v, color=color)
            inside = v > 0.85
            ax.text(v - 0.01 if inside else v + 0.01, yi, f"{v:.3f}", va="center", ha="right" if inside else "left",
                    fontsize=9, color="white" if inside else "black")
    if data["overall"] is not None:
        ax.axvline(data["overall"], color="black", ls="--", lw=1.2, label=f"overall health {data['overall']:.3f}")
        ax.legend(loc="lower right", fontsize=9)
    ax.set_yticks(y, [name.replace("_", " ") for name, _ in metrics])
    ax.set_xlim(0, 1)
    ax.set_xlabel("score (0 = unhealthy, 1 = healthy)")
    ax.set_ylabel("health metric")
    ax.set_title(f"Model health of the best trial (trial {data['number']})")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def render_gradients(data: dict[str, Any], path: Path, healthy: tuple[float, float]) -> tuple[int, int]:
    """``healthy``: the (low, high) range of gradient norms the health measurement scores as healthy."""
    low, high = healthy
    n = len(data["layers"])
    fig = _figure(max(9.0, 0.7 * n + 3), 5.5)
    ax = fig.add_subplot()
    x = np.arange(n)
    norms = np.array([v if v is not None and v > 0 else np.nan for v in data["norms"]], dtype=float)
    finite = norms[np.isfinite(norms)]
    lo = min(low / 10, finite.min() / 3) if finite.size else low / 10
    hi = max(high * 10, finite.max() * 3) if finite.size else high * 10
    ax.axhspan(low, high, color=_GREEN, alpha=0.1, label=f"healthy range ({low:g} to {high:g})")
    ax.plot(x, norms, color=_BLUE, marker="o", ms=8, lw=1.8, label="gradient norm")
    for xi, v in zip(x, data["norms"]):
        if v is None or v <= 0:
            ax.text(xi, 0.03, "0 (no gradient)" if v == 0 else "not finite", ha="center", va="bottom", fontsize=9,
                    color=_RED, rotation=90, transform=ax.get_xaxis_transform())
        else:
            ax.annotate(f"{v:.2g}", (xi, v), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylim(lo, hi)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xticks(x, data["layers"], rotation=30 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_xlabel("layer (input → output)")
    ax.set_ylabel("gradient L2 norm (log scale)")
    ax.set_title("Gradient flow of the best model: per-layer gradient norms on a training batch")
    ax.grid(axis="y", alpha=0.3, which="major")
    ax.legend(loc="upper left", fontsize=9)
    return _save(fig, path)


def render_weights(data: dict[str, Any], path: Path) -> tuple[int, int]:
    from matplotlib.ticker import MaxNLocator

    layers = data["layers"]
    n = len(layers)
    fig = _figure(11, 2.4 * n + 0.8)
    grid = fig.subplots(n, 2, squeeze=False)
    for (ax_w, ax_b), layer in zip(grid, layers):
        w = layer["weights"]
        shapes = layer["shapes"][0] if len(layer["shapes"]) == 1 else f"{len(layer['shapes'])} kernels"
        head = f"{layer['layer']} ({layer['type']})"
        if w.size:
            ax_w.hist(w, bins=60, color=_BLUE)
            ax_w.set_title(f"{head} weights: {shapes}, {w.size:,} values\nmean {w.mean():.3g}, std {w.std():.3g}",
                           fontsize=9)
            ax_w.xaxis.set_major_locator(MaxNLocator(6))
            ax_w.set_ylabel("count")
        else:
            _empty(ax_w, f"{head}: no weights")
        b = layer["biases"]
        if b is None or b.size == 0:
            _empty(ax_b, f"{layer['layer']}: no bias")
        else:
            ax_b.hist(b, bins=min(40, max(5, b.size // 2)), color=_ORANGE)
            ax_b.set_title(f"{head} biases: {b.size:,} values\nmean {b.mean():.3g}, std {b.std():.3g}", fontsize=9)
            ax_b.xaxis.set_major_locator(MaxNLocator(6))
            ax_b.set_ylabel("count")
    grid[-1][0].set_xlabel("weight value")
    grid[-1][1].set_xlabel("bias value")
    fig.suptitle("Weight and bias distributions per layer of the best model")
    return _save(fig, path)


def _empty(ax: Any, title: str) -> None:
    ax.text(0.5, 0.5, title.split(": ", 1)[-1], ha="center", va="center", transform=ax.transAxes, color=_GRAY)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def render_activations(data: dict[str, Any], path: Path, class_names: list[str] | None = None) -> tuple[int, int]:
    images, layers = data["images"], data["layers"]
    channels = max(layer["maps"].shape[-1] for layer in layers)
    rows = len(images) * len(layers)
    fig = _figure(1.25 * (channels + 1) + 0.6, 1.35 * rows + 0.9)
    grid = fig.subplots(rows, channels + 1, squeeze=False)
    for ax in grid.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for i, image in enumerate(images):
        for j, layer in enumerate(layers):
            r = i * len(layers) + j
            first = grid[r][0]
            if j == 0:
                img = image if image.shape[-1] == 3 else image[..., 0]
                first.imshow(np.clip(img, 0, 1), cmap=None if image.shape[-1] == 3 else "gray")
                label = ""
                if data.get("labels") is not None:
                    y = data["labels"][i]
                    label = f" ({class_names[y]})" if class_names and y < len(class_names) else f" (class {y})"
                first.set_title(f"test image {i + 1}{label}", fontsize=8)
            else:
                first.axis("off")
            maps = layer["maps"][i]
            for c in range(channels):
                ax = grid[r][c + 1]
                if c < maps.shape[-1]:
                    ax.imshow(maps[..., c], cmap="viridis")
                else:
                    ax.axis("off")
                if r == 0:
                    ax.set_title(f"filter {c + 1}", fontsize=8)
            grid[r][1].set_ylabel(f"{layer['layer']}\n({layer['filters']} filters)", fontsize=8)
    fig.suptitle("Activation maps of the first convolution layers (after activation) on test images")
    return _save(fig, path)
