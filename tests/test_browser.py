"""The HTML report and optuna-dashboard in a real browser: Debian's headless Chromium, driven over the DevTools
protocol. Each page renders (title, known elements), logs no console error or uncaught exception, shows its plots,
and leaves a screenshot in the test's folder (the path is printed). Never skipped: without Chromium the tests fail
with the command that installs it."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import hpo

from .test_dashboard import running_dashboard

INSTALL = "apt-get install -y chromium"
START_TIMEOUT_S = 60.0
PAGE_TIMEOUT_S = 90.0  # caps on a loaded machine; every wait ends as soon as its condition holds


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"Chromium is not installed; the browser tests need it: {INSTALL}")


class CDPError(AssertionError):
    pass


class Browser:
    """Headless Chromium on a loopback DevTools port, one websocket, pages as flattened target sessions."""

    def __init__(self, profile: Path, log_path: Path) -> None:
        from websockets.sync.client import connect

        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [chromium_path(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "--window-size=1280,1000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        lines: list[str] = []
        while len(lines) < 2:  # Chromium writes "port\n/devtools/browser/<id>" once it listens
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"Chromium did not start (exit {self.proc.returncode}):\n{self.log_tail()}")
            if port_file.is_file():
                lines = port_file.read_text().split()
            time.sleep(0.05)
        self.ws = connect(f"ws://127.0.0.1:{int(lines[0])}{lines[1]}", max_size=None, open_timeout=START_TIMEOUT_S)
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def log_tail(self) -> str:
        self._log.flush()
        return self.log_path.read_bytes()[-3000:].decode("utf-8", "replace")

    def send(self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
             timeout: float = PAGE_TIMEOUT_S) -> dict[str, Any]:
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            answer = self._receive(deadline, f"the answer to {method}")
            if answer.get("id") == message_id:
                if "error" in answer:
                    raise CDPError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} from Chromium in time\n{self.log_tail()}")
        try:
            message = json.loads(self.ws.recv(timeout=left))
        except TimeoutError:
            raise AssertionError(f"no {what} from Chromium in time\n{self.log_tail()}") from None
        if "method" in message:
            self.events.append(message)
        return message

    def wait_event(self, method: str, session: str, timeout: float = PAGE_TIMEOUT_S) -> dict[str, Any]:
        seen = len(self.events)
        for event in self.events:
            if event["method"] == method and event.get("sessionId") == session:
                return event
        deadline = time.monotonic() + timeout
        while True:
            self._receive(deadline, method)
            for event in self.events[seen:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        page = Page(self, session, target)
        answer = self.send("Page.navigate", {"url": url}, session=session)
        assert not answer.get("errorText"), f"{url}: {answer.get('errorText')}"
        self.wait_event("Page.loadEventFired", session)
        return page

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None and self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=30)
                except Exception:  # noqa: BLE001 - closing anyway: the process is ended below if it stays
                    pass
                self.ws.close()
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group Popen started (start_new_session): ours only
            self.proc.wait(timeout=30)
        finally:
            self._log.close()


class Page:
    def __init__(self, browser: Browser, session: str, target: str) -> None:
        self.browser, self.session, self.target = browser, session, target

    def evaluate(self, expression: str, timeout: float = PAGE_TIMEOUT_S) -> Any:
        answer = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                        "awaitPromise": True}, session=self.session,
                                   timeout=timeout + 10)
        if "exceptionDetails" in answer:
            raise CDPError(f"{expression[:80]}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    def wait_for(self, condition: str, what: str, timeout: float = PAGE_TIMEOUT_S) -> None:
        """Wait (in the page, re-checking on each animation frame, capped) until the JS expression is truthy."""
        script = f"""new Promise(resolve => {{
            const end = Date.now() + {int(timeout * 1000)};
            const check = () => {{
                let ok = false;
                try {{ ok = Boolean({condition}); }} catch (e) {{ ok = false; }}
                if (ok) resolve(true); else if (Date.now() > end) resolve(false); else setTimeout(check, 50);
            }};
            check();
        }})"""
        assert self.evaluate(script, timeout=timeout) is True, f"the page never showed {what}"

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser log errors (failed loads, CSP refusals) of this page."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params = event["params"]
            if event["method"] == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description", "")))
                                                     for a in params["args"]))
            elif event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append("exception: " + str(details.get("exception", {}).get("description", details["text"])))
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"log ({params['entry']['source']}): {params['entry']['text']} "
                             f"{params['entry'].get('url', '')}")
        return found

    def screenshot(self, path: Path) -> Image.Image:
        """The whole page as PNG, saved to ``path``."""
        size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        width, height = int(size["width"]), min(int(size["height"]), 16000)
        shot = self.browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}, session=self.session)
        data = base64.b64decode(shot["data"])
        path.write_bytes(data)
        image = Image.open(io.BytesIO(data))
        image.load()
        return image

    def close(self) -> None:
        assert self.browser.send("Target.closeTarget", {"targetId": self.target}).get("success", True)


def _show(capsys: pytest.CaptureFixture[str], path: Path) -> None:
    """The screenshot's path in the test output, captured or not (-q, CI logs)."""
    with capsys.disabled():
        print(f"\nscreenshot: {path}", flush=True)


def _colours(image: Image.Image, box: tuple[int, int, int, int] | None = None) -> int:
    part = image.convert("RGB").crop(box) if box else image.convert("RGB")
    part.thumbnail((400, 400))
    return len(part.getcolors(maxcolors=400 * 400) or [])


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    folder = tmp_path_factory.mktemp("chromium")
    (folder / "profile").mkdir()
    started = Browser(folder / "profile", folder / "chromium.log")
    try:
        yield started
    finally:
        started.close()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, hpo.OptimizationResult]:
    """One real trial: the local backend trains synthetic_images for an epoch; all plots, the model's too."""
    root = tmp_path_factory.mktemp("runs")
    result = hpo.optimize(dataset="synthetic_images", trials=1, max_epochs_per_trial=1, data_fraction=0.2,
                          concurrent_workers=1, pruner="none", plot_generation="all", quiet=True,
                          output_dir=str(root), run_name="browser")
    assert result.completed == 1
    return root / "browser", result


def test_without_chromium_the_tests_fail_with_the_install_command(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"apt-get install -y chromium"):
        chromium_path()


def test_the_checks_see_console_errors_exceptions_and_broken_images(browser, tmp_path):
    """The detectors the two tests below rely on do see each kind of fault (else "no errors" would prove nothing)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body><img id="gone" src="missing.png">'
                   '<script>console.error("planted console error"); setTimeout(() => { window.thrown = true; throw '
                   'new Error("planted exception"); }, 0);</script></body></html>', encoding="utf-8")
    page = browser.open(bad.as_uri())
    page.wait_for("document.readyState === 'complete'", "the page loaded")
    page.wait_for("window.thrown === true", "the planted exception thrown")
    errors = "\n".join(page.errors())
    assert "console: planted console error" in errors
    assert "exception: Error: planted exception" in errors
    assert "missing.png" in errors  # the failed load, from the browser's log
    assert page.evaluate("document.getElementById('gone').naturalWidth") == 0
    page.close()


def test_the_report_renders_with_its_plots_and_no_console_error(browser, real_run, tmp_path, capsys):
    run_dir, result = real_run
    pngs = sorted((run_dir / "plots").glob("*.png"))
    assert {"history", "curves", "confusion", "weights", "activations"} <= {p.stem for p in pngs}
    page = browser.open((run_dir / "report.html").resolve().as_uri())
    page.wait_for("document.readyState === 'complete' && document.querySelector('section#plots')",
                  "the plots section")
    assert page.evaluate("document.title") == "hpo report: browser"
    assert page.evaluate("document.querySelector('h1').textContent") == "hpo run browser"
    shown = page.evaluate("Array.from(document.querySelectorAll('#trials [id^=trial-]'), r => r.id)")
    assert shown == [f"trial-{t['number']}" for t in result.trials]
    # every plot is an image the browser decoded, at the PNG's own size
    images = page.evaluate("""Array.from(document.images, i => ({alt: i.alt, complete: i.complete,
        w: i.naturalWidth, h: i.naturalHeight, figure: i.closest('figure') && i.closest('figure').id}))""")
    assert len(images) == len(pngs)
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in images), images
    sizes = sorted(Image.open(p).size for p in pngs)
    assert sorted((i["w"], i["h"]) for i in images) == sizes
    assert {i["figure"] for i in images} == {f"plot-{p.stem}" for p in pngs}
    assert page.errors() == []

    image = page.screenshot(tmp_path / "report.png")
    _show(capsys, tmp_path / "report.png")
    height = page.evaluate("document.documentElement.scrollHeight")
    assert image.size[0] >= 1000 and image.size[1] >= height > 2000  # the whole page, plots and all
    # the first plot, where the page lays it out, is drawn in the screenshot (not a blank area)
    box = page.evaluate("(r => [r.left, r.top + window.scrollY, r.right, r.bottom + window.scrollY])"
                        "(document.images[0].getBoundingClientRect())")
    assert box[2] - box[0] > 100 and box[3] - box[1] > 100
    assert _colours(image, tuple(int(v) for v in box)) > 20
    page.close()


def test_the_dashboard_renders_the_runs_study_with_no_console_error(browser, real_run, tmp_path, capsys):
    run_dir, result = real_run
    with running_dashboard(run_dir) as dash:
        page = browser.open(dash.page)
        assert page.evaluate("document.title") == "Optuna Dashboard"
        best = f"Best Trial (number={result.best_trial_number})"
        page.wait_for(f"document.body.innerText.includes({json.dumps(best)})", best)
        # the history plot (plotly, drawn by the bundled JavaScript) has the run's trial as a point
        page.wait_for("document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length >= 1",
                      "a trial in the history plot")
        text = page.evaluate("document.body.innerText")
        assert f"browser (id={dash.study_id})" in text
        # the best value as the browser prints a number: the same shortest round-trip digits as Python's repr
        assert repr(result.best_value) in text, text[:2000]
        errors = page.errors()
        image = page.screenshot(tmp_path / "dashboard.png")
        _show(capsys, tmp_path / "dashboard.png")
        page.close()
    assert errors == []
    assert image.size[0] >= 1000 and _colours(image) > 20
