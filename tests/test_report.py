"""report.html and the end of a run: hpo.optimize() with a fake backend (no TensorFlow) writes plots and a valid,
self-contained report per plot_generation; the non-terminal log shows every trial's start and end once."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from html.parser import HTMLParser

import hpo
from hpo import cli, plots
from hpo.backends import Backend
from hpo.protocol import EpochReport, TrialResult

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class FakeBackend(Backend):
    """Two named workers; each trial trains 3 'epochs' of a few ms with numbers derived from its number.
    Trial 3 fails with an error message full of HTML."""

    name = "fake"

    def __init__(self, health: bool = False) -> None:
        self.health = health
        self._free = ["fake:worker-1", "fake:worker-2"]
        self._lock = threading.Lock()

    def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
        n = int(job.trial_id.rsplit("#", 1)[1])
        with self._lock:
            worker = self._free.pop(0)
        try:
            val = 0.5 + 0.05 * ((n * 7) % 9)
            history = {"accuracy": [], "loss": [], "val_accuracy": [], "val_loss": []}
            for e in range(1, 4):
                time.sleep(0.01)
                m = {"accuracy": val * e / 3 + 0.05, "loss": 1.5 / e, "val_accuracy": val * e / 3,
                     "val_loss": 1.6 / e}
                for k, v in m.items():
                    history[k].append(v)
                if on_epoch:
                    on_epoch(EpochReport(job.trial_id, e, m))
            if n == 3:
                return TrialResult(job.trial_id, "failed", history=history, epochs_run=3, executed_on=worker,
                                   error='<script>alert("x")</script> & "quotes"\nTraceback line 2')
            health = {}
            if self.health:
                from hpo.health import overall_health

                health = {"neuron_utilization": 0.9, "gradient_health": 1.0 - val, "generalization": 0.8,
                          "training_stability": 0.7, "convergence": 0.6, "efficiency": 0.5}
                health["overall_health"] = overall_health(health)
            return TrialResult(job.trial_id, "completed", history=history, epochs_run=3, best_epoch=3,
                               val_metrics={"accuracy": val, "loss": 1.6 / 3},
                               test_metrics={"accuracy": val - 0.02, "loss": 0.6}, health=health,
                               param_count=12345, train_seconds=0.03, executed_on=worker, device="CPU")
        finally:
            with self._lock:
                self._free.append(worker)


def _optimize(tmp_path, name, **options):
    opts = dict(dataset="synthetic_images", trials=6, concurrent_workers=2, max_epochs_per_trial=3,
                pruner="none", quiet=True, output_dir=str(tmp_path), run_name=name)
    opts.update(options)
    health = opts.get("mode", "simple") != "simple"
    return hpo.optimize(backend=FakeBackend(health=health), **opts)


class _Checker(HTMLParser):
    """Well-formedness (every non-void element closed in order) and every reference the page makes."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.refs: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.doctype = None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for key, value in attrs:
            if key in ("src", "href", "srcset", "action", "poster", "data"):
                self.refs.append((tag, key, value or ""))
            if key == "id":
                if value in self.ids:
                    self.errors.append(f"duplicate id {value}")
                self.ids.add(value)
            if key == "style" and "url(" in (value or ""):
                self.refs.append((tag, key, value))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
            if tag in self.stack:
                while self.stack.pop() != tag:
                    pass
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(text: str) -> _Checker:
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.doctype and checker.doctype.lower() == "doctype html"
    assert checker.errors == [] and checker.stack == []
    assert checker.tags[:3] == ["html", "head", "meta"]
    for tag, key, value in checker.refs:  # no external file, no network
        assert value.startswith("data:image/png;base64,") or (value.startswith("#") and value[1:] in checker.ids), \
            (tag, key, value[:80])
    assert "script" not in checker.tags and "link" not in checker.tags and "iframe" not in checker.tags
    assert "@import" not in text and "url(" not in text
    return checker


def _section(html_text: str, section_id: str) -> str:
    start = html_text.index(f'<section id="{section_id}">')
    return html_text[start:html_text.index("</section>", start)]


def test_optimize_writes_plots_and_a_self_contained_report(tmp_path, capsys):
    result = _optimize(tmp_path, "rep")
    run_dir = tmp_path / "rep"
    report = run_dir / "report.html"
    text = report.read_text(encoding="utf-8")
    checker = check_html(text)
    best = json.loads((run_dir / "best.json").read_text())
    assert best["number"] == result.best_trial_number

    # the best trial's params, as a user reads them
    best_html = _section(text, "best")
    for key, value in best["params"].items():
        assert f"<code>{key}</code>" in best_html
        shown = ("true" if value else "false") if isinstance(value, bool) else value
        if isinstance(value, float):
            assert re.search(rf"<td>{re.escape(f'{value:.6f}'.rstrip('0').rstrip('.'))}</td>|"
                             rf"<td>{re.escape(f'{value:.3e}')}</td>", best_html), (key, value)
        else:
            assert f"<td>{shown}</td>" in best_html, (key, value)

    # every PNG written is embedded, byte for byte, and nothing else
    pngs = sorted((run_dir / "plots").glob("*.png"))
    assert {p.stem for p in pngs} == {"history", "importance", "parallel", "timeline", "curves"}
    embedded = [v for _, k, v in checker.refs if k == "src"]
    assert sorted(base64.b64decode(v.split(",", 1)[1]) for v in embedded) == sorted(p.read_bytes() for p in pngs)
    # plots that could not be drawn say why
    assert "no best_model.keras in the run folder" in text
    # one row per trial, the failed one with its reason escaped
    trials_html = _section(text, "trials")
    for t in result.trials:
        assert f'id="trial-{t["number"]}"' in trials_html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;quotes&quot;" in trials_html
    assert "run_name" in _section(text, "config")

    # the timeline plot saw both workers run at the same time
    outcomes = {o.name: o for o in plots.generate_plots(run_dir)}
    assert outcomes["timeline"].data["workers"] == ["fake:worker-1", "fake:worker-2"]
    assert outcomes["timeline"].data["max_concurrency"] == 2

    capsys.readouterr()
    assert cli.main(["show", str(run_dir), "--open"]) == 0
    assert capsys.readouterr().out.strip() == str(report.resolve())


def test_plot_generation_none_writes_nothing(tmp_path, capsys):
    result = _optimize(tmp_path, "noplots", plot_generation="none")
    run_dir = tmp_path / "noplots"
    assert result.completed == 5
    assert not (run_dir / "plots").exists() and not (run_dir / "report.html").exists()
    assert cli.main(["show", str(run_dir), "--open"]) == 2
    assert "no report.html" in capsys.readouterr().err


def test_plot_generation_best_writes_only_best_trial_plots(tmp_path):
    _optimize(tmp_path, "best", plot_generation="best")
    run_dir = tmp_path / "best"
    assert [p.name for p in (run_dir / "plots").glob("*.png")] == ["curves.png"]
    text = (run_dir / "report.html").read_text()
    check_html(text)
    assert "Optimization history" not in text


def test_pareto_report_lists_the_front(tmp_path):
    result = _optimize(tmp_path, "par", mode="pareto", trials=5)
    run_dir = tmp_path / "par"
    text = (run_dir / "report.html").read_text()
    check_html(text)
    best = json.loads((run_dir / "best.json").read_text())
    best_html = _section(text, "best")
    assert "Pareto front" in best_html
    for entry in best["pareto_front"]:
        assert f'<a href="#trial-{entry["number"]}">#{entry["number"]}</a>' in best_html
    assert {p.stem for p in (run_dir / "plots").glob("*.png")} >= {"pareto", "health", "history"}
    assert result.pareto_front and len(result.pareto_front) == len(best["pareto_front"])


def test_terminal_less_log_shows_each_trial_once_and_the_report(tmp_path, capsys):
    snapshots = []
    result = _optimize(tmp_path, "log", quiet=False, progress=lambda snap: snapshots.append(snap))
    err = capsys.readouterr().err
    for t in result.trials:
        n = t["number"]
        assert len(re.findall(rf"\btrial {n} started on fake\b", err)) == 1, err
        assert len(re.findall(rf"\btrial {n} (completed|failed)\b", err)) == 1, err
    assert "\x1b[" not in err
    assert f"report: {tmp_path / 'log' / 'report.html'}" in err
    assert snapshots[-1]["done"] == 6 and snapshots[-1]["completed"] == 5 and snapshots[-1]["failed"] == 1
    assert {s["event"]["event"] for s in snapshots} >= {"started", "epoch", "finished"}


def test_quiet_prints_nothing(tmp_path, capsys):
    _optimize(tmp_path, "quiet", trials=2)
    assert capsys.readouterr().err == ""


def test_a_plot_failure_never_fails_the_run(tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib is on fire")

    monkeypatch.setattr(plots, "generate_plots", broken)
    monkeypatch.setattr("hpo.report.generate_plots", broken)
    result = _optimize(tmp_path, "fire", trials=2)
    assert result.completed == 2
    assert "plots and report could not be written" in caplog.text and "matplotlib is on fire" in caplog.text
