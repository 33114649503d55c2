"""report.html: one self-contained page per run (styles inline, plots embedded as base64 ``data:`` URIs), readable
offline: the config, the best trial, a table of trials, and the plots.

:func:`generate_outputs` is what a run calls at its end: plots (per ``plot_generation``) and then the report. It
loads neither TensorFlow nor Keras in the calling process (the plots of the model are drawn by a process of their
own, see :mod:`hpo.plots.generate`); plots that could not be drawn are listed in the report with the reason.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
from pathlib import Path
from typing import Any

from .plots import PlotOutcome, RunData, generate_plots, load_run

__all__ = ["REPORT_FILE", "write_report", "generate_outputs", "render_report"]

REPORT_FILE = "report.html"

_CSS = """
:root { color-scheme: light; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 1240px; padding: 0 24px 48px; line-height: 1.45; background: #fff; }
header { border-bottom: 2px solid #e5e5ea; padding: 18px 0 10px; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid #e5e5ea; }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
nav { margin: 10px 0 0; font-size: 0.95em; }
nav a { margin-right: 16px; color: #0b63c5; text-decoration: none; }
nav a:hover { text-decoration: underline; }
.sub { color: #555; font-size: 0.95em; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid #e5e5ea; border-radius: 8px; padding: 8px 14px; min-width: 120px; }
.card .k { color: #666; font-size: 0.8em; text-transform: uppercase; letter-spacing: 0.04em; }
.card .v { font-size: 1.25em; font-weight: 600; }
table { border-collapse: collapse; font-size: 0.88em; margin: 6px 0 12px; }
th, td { border: 1px solid #e0e0e5; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff6d6; }
.scroll { overflow-x: auto; max-width: 100%; }
.state-complete { color: #1a7f37; } .state-pruned { color: #b26b00; } .state-fail { color: #c62828; }
.state-interrupted, .state-running { color: #666; }
figure { margin: 18px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.92em; margin-top: 4px; }
.notes li { margin: 2px 0; }
.columns { display: flex; flex-wrap: wrap; gap: 8px 40px; align-items: flex-start; }
.muted { color: #777; }
code { background: #f5f5f7; padding: 0 3px; border-radius: 3px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{value:.0f}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True) if value else "–"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]], *, numeric: set[int] | None = None,
           row_attrs: list[str] | None = None) -> str:
    numeric = numeric or set()
    out = ["<table>"]
    if any(headers):
        out.append("<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for i, row in enumerate(rows):
        attrs = f" {row_attrs[i]}" if row_attrs and row_attrs[i] else ""
        cells = "".join(f'<td class="num">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        out.append(f"<tr{attrs}>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _card(key: str, value: str) -> str:
    return f'<div class="card"><div class="k">{_e(key)}</div><div class="v">{value}</div></div>'


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_e(alt)}">'


def _short(text: Any, limit: int = 160) -> str:
    text = str(text or "").strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > limit:
        first = first[: limit - 1] + "…"
    return f'<span title="{_e(text)}">{_e(first)}</span>' if first != text else _e(first)


def _best_section(run: RunData) -> str:
    best = run.best
    if best is None:
        return "<p>No trial completed.</p>"
    rows = [
        ["trial", f'<a href="#trial-{best["number"]}">#{_e(best["number"])}</a>'],
        ["objective", _e(_fmt(best["value"]))],
        ["validation accuracy", _e(_fmt(best["val_accuracy"]))],
        ["validation loss", _e(_fmt(best["val_loss"]))],
        ["test accuracy (reported, never optimized)", _e(_fmt(best["test_accuracy"]))],
        ["test loss", _e(_fmt(best["test_loss"]))],
        ["overall health", _e(_fmt(best["overall_health"]))],
        ["epochs (best epoch)", f'{_e(_fmt(best["epochs"]))} ({_e(_fmt(best["best_epoch"]))})'],
        ["parameters", _e(f"{best['param_count']:,}" if isinstance(best["param_count"], int) else "–")],
        ["ran on", _e(best.get("executed_on") or "–") + (f" · {_e(best['device'])}" if best.get("device") else "")],
    ]
    params = best.get("params") or {}
    columns = [f'<div><h3>Result</h3>{_table(["", ""], rows)}</div>',
               '<div><h3>Hyperparameters</h3>' + _table(["parameter", "value"], [
                   [f"<code>{_e(k)}</code>", _e(_fmt(v, 6))] for k, v in params.items()]) + "</div>"]
    health = best.get("health") or {}
    if health:
        columns.append('<div><h3>Model health</h3>' + _table(["metric", "score"], [
            [_e(k.replace("_", " ")), _e(_fmt(v) if v is not None else "not measured")]
            for k, v in health.items()], numeric={1}) + "</div>")
    parts = [f'<div class="columns">{"".join(columns)}</div>']
    if run.mode == "pareto" and run.front:
        parts.append("<h3>Pareto front</h3>")
        parts.append(_table(["trial", "validation accuracy", "overall health", "test accuracy"],
                            [[f'<a href="#trial-{r["number"]}">#{r["number"]}</a>', _e(_fmt(r["val_accuracy"])),
                              _e(_fmt(r["overall_health"])), _e(_fmt(r["test_accuracy"]))] for r in run.front],
                            numeric={1, 2, 3}))
    return "\n".join(parts)


def _trials_section(run: RunData) -> str:
    best_number = run.best["number"] if run.best else None
    show_health = run.mode != "simple"
    headers = ["#", "state", "objective", "val acc", "val loss", "test acc"]
    headers += ["health"] if show_health else []
    headers += ["epochs", "parameters", "seconds", "worker", "note"]
    rows, attrs = [], []
    for r in run.records:
        note = r.get("reason") or ""
        if r.get("fallback_reason"):
            note = f"fell back to local: {r['fallback_reason']}" + (f"; {note}" if note else "")
        if r.get("retry_of") is not None:
            note = f"retry of #{r['retry_of']}" + (f"; {note}" if note else "")
        row = [f'<span id="trial-{r["number"]}">{r["number"]}</span>',
               f'<span class="state-{_e(r["state"])}">{_e(r["state"])}</span>',
               _e(_fmt(r["value"])), _e(_fmt(r["val_accuracy"])), _e(_fmt(r["val_loss"])),
               _e(_fmt(r["test_accuracy"]))]
        row += [_e(_fmt(r["overall_health"]))] if show_health else []
        row += [_e(_fmt(r["epochs"])),
                _e(f"{r['param_count']:,}" if isinstance(r["param_count"], int) else "–"),
                _e(_fmt(r["train_seconds"], 1)), _e(r.get("executed_on") or "–"), _short(note)]
        rows.append(row)
        attrs.append('class="best"' if r["number"] == best_number else "")
    numeric = {0, 2, 3, 4, 5} | ({6, 7, 8, 9} if show_health else {6, 7, 8})
    parts = [f'<div class="scroll">{_table(headers, rows, numeric=numeric, row_attrs=attrs)}</div>']
    names = sorted({k for r in run.records for k in r["params"]}, key=_param_key)
    if names and run.records:
        prow = [[_e(r["number"])] + [_e(_fmt(r["params"].get(n), 4)) if n in r["params"] else '<span class="muted">'
                                     'n/a</span>' for n in names] for r in run.records]
        parts.append("<h3>Hyperparameters of every trial</h3>")
        parts.append(f'<div class="scroll">{_table(["#"] + names, prow, numeric={0}, row_attrs=attrs)}</div>')
    return "\n".join(parts)


def _param_key(name: str) -> tuple[int, str]:
    from .catalog import CNN_SPACE, LSTM_SPACE

    order = [p.name for p in CNN_SPACE + LSTM_SPACE]
    return (order.index(name), name) if name in order else (len(order), name)


def _plots_section(outcomes: list[PlotOutcome] | None) -> str:
    if outcomes is None:
        return '<p class="muted">Plots were not generated for this run.</p>'
    parts = []
    written = [o for o in outcomes if o.path is not None and o.path.is_file()]
    skipped = [o for o in outcomes if o.path is None or not o.path.is_file()]
    for o in written:
        parts.append(f'<figure id="plot-{_e(o.name)}"><h3>{_e(o.title)}</h3>{_img_tag(o.path, o.title)}'
                     f"<figcaption>{_e(o.caption)} <span class=\"muted\">(plots/{_e(o.path.name)})</span>"
                     "</figcaption></figure>")
    if skipped:
        items = "".join(f"<li><b>{_e(o.title)}</b>: {_e(o.note or 'not written')}</li>" for o in skipped)
        parts.append(f'<h3>Plots not drawn</h3><ul class="notes">{items}</ul>')
    if not parts:
        parts.append('<p class="muted">No plots.</p>')
    return "\n".join(parts)


def _config_section(run: RunData, doc: dict[str, Any]) -> str:
    rows = [[f"<code>{_e(k)}</code>", _e(_fmt(v, 6))] for k, v in run.config.items()]
    meta = [["hpo version", _e(doc.get("hpo_version", "?"))], ["study name", _e(doc.get("study_name", "?"))],
            ["storage", _e(doc.get("storage_url", "?"))]]
    return _table(["", ""], meta) + "\n" + _table(["option", "value"], rows)


def render_report(run: RunData, outcomes: list[PlotOutcome] | None, *, notes: list[str] | None = None,
                  doc: dict[str, Any] | None = None) -> str:
    """The report page as a string."""
    doc = doc or {}
    name = doc.get("study_name") or run.config.get("run_name") or run.run_dir.name
    counts = {s: sum(r["state"] == s for r in run.records) for s in ("complete", "pruned", "fail", "interrupted",
                                                                      "running")}
    best = run.best
    # interrupted trials are retried, never counted; waiting ones (queued configurations) never started
    counted = len(run.records) - counts["interrupted"] - sum(r["state"] == "waiting" for r in run.records)
    limit = run.config.get("trials")
    budget = run.config.get("epoch_budget")
    cards = [
        _card("trials", f"{counted} / {_e(limit)}" if limit else str(counted)),
        _card("completed", str(counts["complete"])), _card("pruned", str(counts["pruned"])),
        _card("failed", str(counts["fail"])),
    ]
    if budget:
        used = sum(int(r.get("epochs") or 0) for r in run.records)
        cards.append(_card("epochs / budget", f"{used} / {_e(budget)}"))
    if counts["interrupted"] or counts["running"]:
        cards.append(_card("interrupted / running", f"{counts['interrupted']} / {counts['running']}"))
    if best is not None:
        cards += [_card("best trial", f'<a href="#best">#{best["number"]}</a>'),
                  _card("best (val accuracy, health)" if run.mode == "pareto" else "best objective",
                        _e(_fmt(best["value"]))),
                  _card("test accuracy", _e(_fmt(best["test_accuracy"])))]
    notes_html = ""
    if notes:
        notes_html = '<ul class="notes">' + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>"
    generated = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    c = run.config
    sub = (f"dataset <b>{_e(c.get('dataset'))}</b> · mode <b>{_e(run.mode)}</b> · sampler {_e(c.get('sampler'))} · "
           f"pruner {_e(c.get('pruner'))} · {_e(c.get('concurrent_workers'))} concurrent worker(s) · "
           f"{'RunPod' if c.get('use_runpod_service') else 'local'} · report written {generated}")
    body = f"""<header>
<h1>hpo run {_e(name)}</h1>
<div class="sub">{sub}</div>
<nav><a href="#summary">Summary</a><a href="#best">Best trial</a><a href="#plots">Plots</a>
<a href="#trials">Trials</a><a href="#config">Configuration</a></nav>
</header>
<section id="summary"><h2>Summary</h2>
<div class="cards">{''.join(cards)}</div>
{notes_html}
</section>
<section id="best"><h2>Best trial</h2>
<p class="sub">Selected by validation metrics only; the test split is reported, never used for selection.</p>
{_best_section(run)}
</section>
<section id="plots"><h2>Plots</h2>
{_plots_section(outcomes)}
</section>
<section id="trials"><h2>Trials</h2>
{_trials_section(run) if run.records else '<p>No trials.</p>'}
</section>
<section id="config"><h2>Configuration</h2>
{_config_section(run, doc)}
</section>"""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>hpo report: {_e(name)}</title>\n<style>{_CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def write_report(run_dir: str | Path, outcomes: list[PlotOutcome] | None = None, *, run: RunData | None = None,
                 study: Any = None, notes: list[str] | None = None) -> Path:
    """Write ``report.html`` in the run folder (atomically) and return its path."""
    run_dir = Path(run_dir)
    run = run or load_run(run_dir, study=study)
    doc = run.doc
    if not doc:
        from .rundir import read_config_doc

        doc = read_config_doc(run_dir) or {}
    text = render_report(run, outcomes, notes=notes, doc=doc)
    path = run_dir / REPORT_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def generate_outputs(run_dir: str | Path, *, plot_generation: str = "all", study: Any = None,
                     notes: list[str] | None = None) -> Path | None:
    """Plots (``plot_generation`` all | best) and report.html; nothing at all for ``none``. Returns the report's
    path (None for ``none``)."""
    if plot_generation == "none":
        return None
    run = load_run(run_dir, study=study)
    outcomes = generate_plots(run_dir, which=plot_generation, run=run)
    return write_report(run_dir, outcomes, run=run, notes=notes)
