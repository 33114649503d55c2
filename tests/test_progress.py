"""Progress: counts and ETA from scripted events on a fake clock (every limit of a run), thread safety, the displays
(rich live block read back through a small terminal emulator, plain lines), colour conventions, and their choice."""

from __future__ import annotations

import heapq
import io
import os
import random
import re
import subprocess
import sys
import threading
import time
import types

import pytest

from hpo.progress import (Eta, LineLog, LiveDisplay, ProgressTracker, as_listener, color_wanted, estimate_eta,
                          estimate_limits, make_display, render_live)
from hpo.progress import display as display_module

from .conftest import hpo_env

SGR = re.compile(r"\x1b\[[0-9;]*m")  # colour / bold: Select Graphic Rendition
CSI = re.compile(r"\x1b\[(\??)([0-9;]*)([A-Za-z])")


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _plain_terminal(monkeypatch):
    """The same terminal for every test, whatever the developer's or CI's environment."""
    for var in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLORTERM", "JUPYTER_COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("LINES", "24")


def screen(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: cursor movements and erases applied, colours dropped; trailing blank
    rows removed. Fails on an escape code it does not know (the display would use it without being checked)."""
    rows, r, c, i = [""], 0, 0, 0
    while i < len(raw):
        m = CSI.match(raw, i)
        if m:
            private, arg, cmd = m.groups()
            n = int(arg) if arg.isdigit() else None
            if private == "?" and cmd in "hl":  # cursor shown / hidden
                pass
            elif cmd == "A":
                r = max(0, r - (n or 1))
            elif cmd == "K":
                rows[r] = "" if n == 2 else rows[r][:c]
            elif cmd == "J":
                del rows[r + 1:]
                rows[r] = rows[r][:c]
            elif cmd != "m":
                raise AssertionError(f"unexpected escape code {m.group()!r}")
            i = m.end()
            continue
        ch = raw[i]
        assert ch != "\x1b", f"unknown escape sequence at {raw[i:i + 10]!r}"
        if ch == "\r":
            c = 0
        elif ch == "\n":
            r, c = r + 1, 0
        else:
            row = rows[r].ljust(c)
            rows[r] = row[:c] + ch + row[c + 1:]
            c += 1
        while len(rows) <= r:
            rows.append("")
        i += 1
    rows = [row.rstrip() for row in rows]
    while rows and not rows[-1]:
        rows.pop()
    return rows


def wait_for(condition, what: str, cap_s: float = 60.0) -> None:
    """Poll ``condition`` until it holds (generous cap: the machine may be busy)."""
    deadline = time.monotonic() + cap_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        threading.Event().wait(0.01)


def test_screen_emulator_applies_what_rich_sends():
    raw = "a\nb\n\x1b[?25lx\ny\r\x1b[2K\x1b[1A\x1b[2Kz\n\x1b[32mw\x1b[0m\n"
    assert screen(raw) == ["a", "b", "z", "w"]
    with pytest.raises(AssertionError, match="unexpected escape"):
        screen("\x1b[5H")


# -- the tracker and its ETA -------------------------------------------------------------------------------------------

def test_counts_best_and_eta_from_a_scripted_sequence():
    clock = FakeClock()
    tracker = ProgressTracker(4, concurrency=2, clock=clock)
    snap = tracker.snapshot()
    assert (snap["done"], snap["queued"], snap["eta_s"], snap["best"]) == (0, 4, None, None)

    tracker.trial_started(0, where="local", max_epochs=10)
    tracker.trial_started(1, where="local", max_epochs=10)
    clock.t = 5.0
    tracker.epoch(0, 1, {"val_accuracy": 0.5})
    snap = tracker.snapshot()
    # nothing finished yet: extrapolated from trial 0's epoch progress (5 s per epoch, 10 epochs -> 50 s)
    # slots: trial 0 needs 45 s more, trial 1 45 s more; then 2 queued trials of 50 s each -> 95 s
    assert snap["eta_s"] == pytest.approx(95.0) and snap["eta_limit"] == "trials"
    assert [t["number"] for t in snap["running"]] == [0, 1]
    assert snap["running"][0]["epoch"] == 1 and snap["running"][0]["age_s"] == pytest.approx(5.0)

    clock.t = 10.0
    tracker.trial_finished(0, "completed", value=0.8, where="local:worker-1")
    snap = tracker.snapshot()
    assert (snap["done"], snap["completed"], snap["best"], snap["best_trial"]) == (1, 1, 0.8, 0)
    # mean 10 s; trial 1 (10 s old) is due now; 2 queued trials on 2 slots -> 10 s
    assert snap["eta_s"] == pytest.approx(10.0)
    assert snap["elapsed_s"] == pytest.approx(10.0)

    tracker.trial_started(2, where="local", max_epochs=10)
    clock.t = 20.0
    tracker.trial_finished(1, "pruned", value=0.9, reason="pruned at epoch 3")
    snap = tracker.snapshot()
    assert (snap["done"], snap["completed"], snap["pruned"], snap["failed"]) == (2, 1, 1, 0)
    assert snap["best"] == 0.8  # a pruned trial's number is not a result
    # mean (10 + 20) / 2 = 15; trial 2 is 10 s old -> 5 s left; one queued trial starts on the free slot -> 15 s
    assert snap["eta_s"] == pytest.approx(15.0)
    assert snap["queued"] == 1

    tracker.trial_started(3, where="local", max_epochs=10)
    clock.t = 30.0
    tracker.trial_finished(2, "failed", reason="boom")
    tracker.trial_finished(3, "completed", value=0.95)
    snap = tracker.snapshot()
    assert (snap["done"], snap["completed"], snap["pruned"], snap["failed"]) == (4, 2, 1, 1)
    assert (snap["best"], snap["best_trial"], snap["eta_s"], snap["running"]) == (0.95, 3, 0.0, [])


def test_eta_is_list_scheduling_not_a_division():
    # one 10 s trial left on 4 slots takes 10 s, not 2.5 s
    assert estimate_eta(total=5, done=4, running=[], durations=[10.0], concurrency=4) == pytest.approx(10.0)
    # 5 queued trials of 10 s on 2 slots: 3 rounds
    assert estimate_eta(total=5, done=0, running=[], durations=[10.0], concurrency=2) == pytest.approx(30.0)
    # a resumed run counts trials already done
    tracker = ProgressTracker(3, already_done=3, clock=FakeClock())
    assert tracker.snapshot()["done"] == 3 and tracker.snapshot()["eta_s"] == 0.0


def test_failed_instant_trials_do_not_drag_the_eta_down():
    clock = FakeClock()
    tracker = ProgressTracker(3, concurrency=1, clock=clock)
    tracker.trial_started(0)
    clock.t = 60.0
    tracker.trial_finished(0, "completed", value=0.5)
    tracker.trial_started(1)
    tracker.trial_finished(1, "failed", reason="backend error")  # 0 s
    assert tracker.snapshot()["eta_s"] == pytest.approx(60.0)


def _one_trial(tracker: ProgressTracker, clock: FakeClock, number: int, seconds: float, epochs: int = 5) -> None:
    tracker.trial_started(number, where="local", max_epochs=epochs)
    clock.t += seconds
    tracker.epoch(number, epochs, {"val_accuracy": 0.5})
    tracker.trial_finished(number, "completed", value=0.5)


def test_eta_trial_limit_binds_when_the_other_limits_are_far():
    clock = FakeClock()
    tracker = ProgressTracker(4, concurrency=1, clock=clock, epoch_budget=1000, deadline=10_000.0)
    _one_trial(tracker, clock, 0, 10.0)
    snap = tracker.snapshot()
    assert (snap["eta_s"], snap["eta_limit"]) == (pytest.approx(30.0), "trials")  # 3 trials x 10 s
    assert snap["time_left_s"] == pytest.approx(9_990.0)
    assert "ETA 0m30s" in render_live(snap)[-1] and "limit" not in render_live(snap)[-1]


def test_eta_epoch_budget_binds_epochs_left_times_seconds_per_epoch_over_concurrency():
    clock = FakeClock()
    tracker = ProgressTracker(100, concurrency=2, clock=clock, epoch_budget=25, epochs_before=5,
                              deadline=10_000.0)
    _one_trial(tracker, clock, 0, 10.0)  # 5 epochs in 10 s: 2 s per epoch
    snap = tracker.snapshot()
    # 25 - (5 + 5) = 15 epochs left x 2 s / 2 workers = 15 s (the 99 trials left would take 495 s)
    assert (snap["eta_s"], snap["eta_limit"]) == (pytest.approx(15.0), "epochs")
    assert "ETA 0m15s (epoch budget)" in render_live(snap)[-1]


def test_eta_time_limit_binds_trials_500_timeout_8_minutes():
    """The issue's case: 500 trials of ~43 s with timeout_minutes=8 showed an ETA of 5h57m."""
    clock = FakeClock()
    tracker = ProgressTracker(500, concurrency=1, clock=clock)
    tracker.set_timeout(8 * 60)
    _one_trial(tracker, clock, 0, 43.0)
    no_deadline = estimate_eta(total=500, done=1, running=[], durations=[43.0], concurrency=1)
    assert no_deadline == pytest.approx(499 * 43)
    assert "ETA 5h57m" in render_live(dict(tracker.snapshot(), eta_s=no_deadline, eta_limit="trials"))[-1]
    snap = tracker.snapshot()
    time_left = 480 - 43
    assert snap["time_left_s"] == pytest.approx(time_left) and snap["eta_limit"] == "time"
    # trials start at +0, +43, ..., +430 (< 437 s left); none after the deadline; the last one ends at +473
    assert snap["eta_s"] == pytest.approx(473.0)
    assert time_left <= snap["eta_s"] <= time_left + 43  # the deadline, plus at most one trial started before it
    assert "ETA 7m53s (time limit)" in render_live(snap)[-1]
    # a trial running when the deadline passes still finishes; then nothing is left
    clock.t = 470.0
    tracker.trial_started(1, where="local", max_epochs=5)
    clock.t = 490.0  # past the deadline: trial 1 (20 s old) needs ~23 s more
    snap = tracker.snapshot()
    assert (snap["eta_s"], snap["eta_limit"]) == (pytest.approx(23.0), "time")
    tracker.trial_finished(1, "completed", value=0.5)
    snap = tracker.snapshot()
    assert (snap["eta_s"], snap["eta_limit"]) == (0.0, "time") and snap["queued"] == 498


def test_eta_takes_the_earliest_limit_whichever_it_is():
    base = dict(total=100, done=10, running=[], durations=[10.0], concurrency=1)
    # trials: 90 x 10 s = 900 s; epochs: 40 left x 2 s = 80 s; time: 55 s left -> last start at 50, ends at 60
    assert estimate_limits(**base) == Eta(900.0, "trials")
    epochs = dict(epoch_budget=100, epochs_done=60, trial_seconds=20.0, trial_epochs=10)
    assert estimate_limits(**base, **epochs) == Eta(80.0, "epochs")
    assert estimate_limits(**base, **epochs, time_left=55.0) == Eta(60.0, "time")
    assert estimate_limits(**base, **epochs, time_left=500.0) == Eta(80.0, "epochs")
    # a deadline the trials end before does not bind
    assert estimate_limits(**base, time_left=5_000.0) == Eta(900.0, "trials")
    # unknown durations: unknown ETA, except past the deadline with nothing running (the run is ending)
    assert estimate_limits(total=5, done=0, running=[], durations=[], concurrency=1, time_left=60.0) == Eta(None)
    assert estimate_limits(total=5, done=0, running=[], durations=[], concurrency=1, time_left=-1.0) == Eta(0.0,
                                                                                                            "time")
    # all trials done: 0 whatever the other limits say
    assert estimate_limits(total=5, done=5, running=[], durations=[], concurrency=1, time_left=-1.0) == Eta(0.0,
                                                                                                           "trials")


def test_under_an_epoch_budget_the_trial_estimate_is_no_limit_but_the_trial_limit_is():
    clock = FakeClock()
    tracker = ProgressTracker(50, clock=clock, epoch_budget=40)  # made with config.trial_limit, as optimize() does
    tracker.total = 2  # then Session sets expected_trials: an estimate
    _one_trial(tracker, clock, 0, 10.0)  # 5 epochs of 2 s
    _one_trial(tracker, clock, 1, 10.0)
    snap = tracker.snapshot()
    assert (snap["done"], snap["total"], snap["epochs"]) == (2, 2, 10)
    assert (snap["eta_s"], snap["eta_limit"]) == (pytest.approx(60.0), "epochs")  # 30 epochs left x 2 s, not 0
    tracker = ProgressTracker(3, clock=clock, epoch_budget=1000)  # trials=3 binds before a large budget
    _one_trial(tracker, clock, 0, 10.0)
    assert (tracker.snapshot()["eta_s"], tracker.snapshot()["eta_limit"]) == (pytest.approx(20.0), "trials")


def _simulated_eta(total, done, running, mean, concurrency, time_left=None):
    """Reference: start queued trials one by one on the earliest free slot (a heap), none at/after the deadline."""
    remaining = total - done
    slots = [max(0.0, mean - t["age_s"]) for t in running[:remaining]]
    slots += [0.0] * max(0, concurrency - len(slots))
    heapq.heapify(slots)
    for _ in range(max(0, remaining - len(running))):
        if time_left is not None and slots[0] >= time_left:
            break
        heapq.heapreplace(slots, slots[0] + mean)
    return max(slots)


def test_the_closed_form_schedule_equals_a_simulation():
    rng = random.Random(7)
    for _ in range(500):
        concurrency = rng.randint(1, 6)
        mean = rng.choice([rng.uniform(0.5, 100.0), 10.0])
        running = [{"age_s": rng.uniform(0, 2 * mean)} for _ in range(rng.randint(0, concurrency))]
        done = rng.randint(0, 20)
        total = done + len(running) + rng.randint(0, 40)
        time_left = rng.choice([None, rng.uniform(0.0, 30 * mean), 10.0 * rng.randint(1, 20)])
        got = estimate_eta(total=total, done=done, running=running, durations=[mean], concurrency=concurrency,
                           time_left=time_left)
        if total == done or (time_left is not None and time_left <= 0 and not running):
            assert got == 0.0
            continue
        want = _simulated_eta(total, done, running, mean, concurrency, time_left)
        assert got == pytest.approx(want), (total, done, running, mean, concurrency, time_left)


def test_many_threads_lose_nothing():
    events: list[tuple[str, int]] = []
    dones: list[int] = []

    def listener(event, snap):  # listeners run one at a time
        events.append((event["event"], event["trial"]))
        dones.append(snap["done"])

    threads_n, per_thread, epochs = 16, 25, 4
    tracker = ProgressTracker(threads_n * per_thread, concurrency=threads_n, listeners=[listener])
    barrier = threading.Barrier(threads_n)

    def work(k: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            n = k * per_thread + i
            tracker.trial_started(n, where=f"w{k}", max_epochs=epochs)
            for e in range(1, epochs + 1):
                tracker.epoch(n, e, {"val_accuracy": e / 10})
            tracker.trial_finished(n, ("completed", "pruned", "failed")[n % 3], value=n / 1000)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = threads_n * per_thread
    snap = tracker.snapshot()
    assert snap["done"] == total and snap["running"] == [] and snap["queued"] == 0
    assert snap["completed"] + snap["pruned"] + snap["failed"] == total
    assert snap["completed"] == sum(n % 3 == 0 for n in range(total))
    assert snap["best"] == max(n / 1000 for n in range(total) if n % 3 == 0)
    assert sorted(n for kind, n in events if kind == "started") == list(range(total))
    assert sorted(n for kind, n in events if kind == "finished") == list(range(total))
    assert sum(kind == "epoch" for kind, _ in events) == total * epochs
    assert dones == sorted(dones)  # every listener saw a consistent, growing count


# -- plain lines (pipes, CI) -------------------------------------------------------------------------------------------

def _script(tracker: ProgressTracker, clock: FakeClock) -> None:
    """Trials overlapping out of order, a fallback, a duplicate finish report, a late epoch, a discarded trial."""
    tracker.trial_started(0, where="runpod", max_epochs=3)
    tracker.trial_started(1, where="runpod", max_epochs=3)
    tracker.trial_started(2, where="runpod", max_epochs=3)
    clock.t = 1
    tracker.epoch(1, 1, {"val_accuracy": 0.4})
    tracker.fell_back(2, "endpoint unreachable")
    clock.t = 2
    tracker.trial_finished(1, "completed", value=0.7, where="runpod:abc")
    tracker.trial_finished(1, "completed", value=0.7, where="runpod:abc")  # reported twice
    tracker.epoch(1, 2, {"val_accuracy": 0.5})  # late
    tracker.trial_started(3, where="runpod", max_epochs=3)
    clock.t = 3
    tracker.trial_finished(0, "failed", reason="Traceback...\nboom")
    tracker.trial_discarded(3)  # interrupted
    tracker.trial_finished(2, "pruned", value=0.3, where="local:worker-1 (pid 7)", reason="pruned at epoch 1")


def _scripted_log(listener) -> str:
    out = listener.stream
    clock = FakeClock()
    _script(ProgressTracker(4, concurrency=3, clock=clock, listeners=[listener]), clock)
    return out.getvalue()


def test_line_log_shows_every_start_and_end_exactly_once():
    out = io.StringIO()
    clock = FakeClock()
    tracker = ProgressTracker(4, concurrency=3, clock=clock, listeners=[LineLog(out)])
    _script(tracker, clock)
    lines = out.getvalue().splitlines()
    for n in range(4):
        starts = [ln for ln in lines if re.search(rf"\btrial {n} started\b", ln)]
        ends = [ln for ln in lines if re.search(rf"\btrial {n} (completed|pruned|failed|discarded)\b", ln)]
        assert len(starts) == 1 and len(ends) == 1, (n, lines)
    assert len(lines) == 9  # 4 starts, 4 ends, 1 fallback: one line per event, nothing wrapped
    assert not any("epoch" in ln for ln in lines if "pruned at epoch" not in ln)  # no epoch lines by default
    assert "\x1b" not in out.getvalue()  # plain text for CI logs
    assert any("trial 2 runs on local instead: endpoint unreachable" in ln for ln in lines)
    assert any(ln.startswith("[1/4] trial 1 completed on runpod:abc: value=0.7000") for ln in lines)
    assert "boom" not in out.getvalue()  # first line of a reason only


def test_line_log_epoch_lines_and_long_lines_stay_one_line_each():
    out = io.StringIO()
    tracker = ProgressTracker(1, clock=FakeClock(), listeners=[LineLog(out, epochs=True)])
    tracker.trial_started(0, where="runpod:" + "x" * 300, max_epochs=2)
    tracker.epoch(0, 1, {"val_accuracy": 0.25})
    tracker.trial_finished(0, "failed", reason="[bold]not markup[/bold] :smile: " + "y" * 300)
    lines = out.getvalue().splitlines()
    assert lines[1] == "[0/1] trial 0 epoch 1/2: val_accuracy=0.2500"
    assert len(lines) == 3 and lines[0].endswith("x" * 300)  # never wrapped at a console width
    assert "([bold]not markup[/bold] :smile: " in lines[2]  # user text printed as is: no markup, no emoji


def test_line_log_from_many_threads():
    out = io.StringIO()
    tracker = ProgressTracker(60, concurrency=6, listeners=[LineLog(out)])

    def work(k: int) -> None:
        for n in range(k, 60, 6):
            tracker.trial_started(n, where="local")
            tracker.epoch(n, 1, {"val_accuracy": 0.1})
            tracker.trial_finished(n, "completed", value=0.1)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 120
    for n in range(60):
        assert sum(bool(re.search(rf"\btrial {n} started\b", ln)) for ln in lines) == 1
        assert sum(bool(re.search(rf"\btrial {n} completed\b", ln)) for ln in lines) == 1
    assert lines[-1].startswith("[60/60]")


def test_line_log_on_a_legacy_encoding_uses_stand_ins():
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    tracker = ProgressTracker(1, clock=FakeClock(), listeners=[LineLog(out)])
    tracker.trial_started(0, where="local")
    tracker.trial_finished(0, "failed", reason="z" * 300)  # cut with an ellipsis
    lines = raw.getvalue().decode("ascii").splitlines()
    assert len(lines) == 2 and lines[1].count("z") == 199 and "z..." in lines[1]


# -- colour conventions ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("env, tty, expected", [
    ({}, True, True), ({}, False, False),
    ({"NO_COLOR": "1"}, True, False),
    ({"NO_COLOR": ""}, True, True),  # an empty NO_COLOR does not count (no-color.org)
    ({"NO_COLOR": ""}, False, False),
    ({"FORCE_COLOR": "1"}, False, True), ({"FORCE_COLOR": "0"}, False, True),  # any non-empty value forces
    ({"FORCE_COLOR": ""}, False, False),
    ({"FORCE_COLOR": "1", "NO_COLOR": "1"}, True, False),  # NO_COLOR wins (as CPython's own colouring)
    ({"TERM": "dumb"}, True, False), ({"TERM": "dumb", "FORCE_COLOR": "1"}, True, True),
])
def test_color_policy(env, tty, expected):
    stream = TTY() if tty else io.StringIO()
    assert color_wanted(stream, {"TERM": "xterm", **env}) is expected


def test_pipe_lines_carry_escape_codes_only_when_color_is_forced(monkeypatch):
    plain = _scripted_log(make_display(io.StringIO()))
    assert "\x1b" not in plain and "trial 1 completed" in plain
    monkeypatch.setenv("NO_COLOR", "")
    assert _scripted_log(make_display(io.StringIO())) == plain
    monkeypatch.setenv("FORCE_COLOR", "1")
    forced = _scripted_log(make_display(io.StringIO()))
    assert isinstance(make_display(io.StringIO()), LineLog)  # colour, not a live block, on a pipe
    assert SGR.sub("", forced) == plain  # the same lines, coloured
    assert CSI.sub("", forced) == plain  # ... and nothing but colour codes (no cursor movement)
    colored = {re.search(r"trial \d (\w+)", ln).group(1): ln[:5] for ln in forced.splitlines()}
    assert colored["completed"] == "\x1b[32m" and colored["failed"] == "\x1b[31m"
    monkeypatch.setenv("NO_COLOR", "1")  # a non-empty NO_COLOR wins over FORCE_COLOR
    assert _scripted_log(make_display(io.StringIO())) == plain


@pytest.mark.parametrize("force", ["", "1"])
def test_a_real_pipe_gets_plain_lines_unless_forced(tmp_path, force):
    """The CLI's situation: ``hpo ... 2>&1 | tee log`` -- make_display() on the process's own stderr, a pipe."""
    code = ("from hpo.progress import ProgressTracker, make_display\n"
            "d = make_display()\n"
            "print(type(d).__name__, flush=True)\n"
            "t = ProgressTracker(2, listeners=[d])\n"
            "t.trial_started(0, where='local', max_epochs=2)\n"
            "t.epoch(0, 1, {'val_accuracy': 0.5})\n"
            "t.trial_finished(0, 'completed', value=0.5)\n"
            "t.trial_started(1, where='local')\n"
            "t.trial_finished(1, 'failed', reason='boom')\n"
            "d.close()\n")
    env = hpo_env(TERM="xterm-256color", FORCE_COLOR=force)
    env.pop("NO_COLOR", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "LineLog"
    lines = SGR.sub("", proc.stderr).splitlines()
    assert [ln.split(" ", 1)[1][:18] for ln in lines] == ["trial 0 started on", "trial 0 completed ",
                                                          "trial 1 started on", "trial 1 failed on "]
    if force:
        assert "\x1b[32m[1/2] trial 0 completed" in proc.stderr and CSI.sub("", proc.stderr) == "\n".join(lines) + "\n"
    else:
        assert "\x1b" not in proc.stderr


@pytest.mark.parametrize("no_color, colored", [("1", False), ("", True)])
def test_no_color_in_the_live_display(monkeypatch, no_color, colored):
    monkeypatch.setenv("NO_COLOR", no_color)
    out = TTY()
    display = LiveDisplay(out, refresh_s=0, clock=FakeClock())
    tracker = ProgressTracker(2, clock=FakeClock(), listeners=[display])
    tracker.trial_started(0, where="local", max_epochs=2)
    tracker.trial_finished(0, "completed", value=0.5)
    display.close()
    raw = out.getvalue()
    assert "\x1b[1A" in raw or "\x1b[2K" in raw  # still a live block (cursor movements)
    assert bool(SGR.search(raw)) is colored
    assert screen(raw)[0].startswith("[1/2] trial 0 completed")


# -- the live display (rich) -------------------------------------------------------------------------------------------

def test_live_display_draws_running_trials_and_a_summary():
    out = TTY()
    clock = FakeClock()
    display = LiveDisplay(out, refresh_s=0, color=False, clock=clock)
    tracker = ProgressTracker(3, concurrency=2, clock=clock, listeners=[display])
    tracker.trial_started(0, where="local", max_epochs=4)
    tracker.trial_started(1, where="runpod", max_epochs=4)
    clock.t = 10
    tracker.epoch(0, 2, {"val_accuracy": 0.61, "val_loss": 1.2})
    rows = screen(out.getvalue())
    assert len(rows) == 3, rows  # two running trials + summary, redrawn in place
    assert rows[0].startswith("  trial 0") and "local" in rows[0] and "epoch 2/4" in rows[0]
    assert "val_acc 0.6100" in rows[0]
    assert rows[1].startswith("  trial 1") and "runpod" in rows[1] and "starting" in rows[1]
    assert rows[2].startswith("0/3 done") and "2 running" in rows[2] and "ETA" in rows[2]
    assert display.frame() == rows  # what the block is now, as plain text
    clock.t = 12
    tracker.trial_finished(0, "completed", value=0.61, where="local:worker-1")
    rows = screen(out.getvalue())
    assert len(rows) == 3 and "trial 0 completed on local:worker-1" in rows[0]  # permanent line above the block
    assert rows[1].startswith("  trial 1") and "best 0.6100 (trial 0)" in rows[2]
    assert not SGR.search(out.getvalue())  # color=False: no colour codes at all
    display.close()
    rows = screen(out.getvalue())
    assert len(rows) == 2 and rows[1].startswith("1/3 done")  # the final summary line only
    n_before = len(out.getvalue())
    tracker.trial_started(2)  # after close: silent
    assert len(out.getvalue()) == n_before


def test_live_display_ticks_and_stops():
    out = TTY()
    clock = FakeClock()
    display = LiveDisplay(out, refresh_s=0.01, color=True, clock=clock)
    tracker = ProgressTracker(2, clock=clock, listeners=[display])
    tracker.trial_started(0, where="local", max_epochs=2)
    clock.t = 65  # no event: only the ticker can show the new elapsed time
    wait_for(lambda: "elapsed 1m05s" in screen(out.getvalue())[-1], "the ticker's redraw")
    wait_for(lambda: out.getvalue().count("\r\x1b[2K") >= 3, "three redraws")
    assert "0m00s" not in screen(out.getvalue())[0]  # the running trial's age ticks too
    thread = display._thread
    display.close()
    assert thread is not None and not thread.is_alive()
    assert "\x1b[1m" in out.getvalue()  # colour on: the summary is bold
    n_before = len(out.getvalue())
    tracker.trial_finished(0, "completed", value=0.5)
    assert len(out.getvalue()) == n_before


def test_live_display_caps_rows_to_the_terminal(monkeypatch):
    monkeypatch.setenv("LINES", "10")
    monkeypatch.setenv("COLUMNS", "60")
    out = TTY()
    display = LiveDisplay(out, refresh_s=0, color=False, clock=FakeClock())
    tracker = ProgressTracker(40, concurrency=20, clock=FakeClock(), listeners=[display])
    for n in range(20):
        tracker.trial_started(n, where="runpod:" + "x" * 40, max_epochs=3)
    rows = screen(out.getvalue())
    assert len(rows) == 7 and "15 more running" in rows[-2] and rows[-1].startswith("0/40 done")
    assert all(len(row) < 60 for row in rows)
    display.close()


def test_render_live_fits_the_width_and_caps_rows():
    snap = {"total": 50, "done": 3, "completed": 3, "pruned": 0, "failed": 0, "best": 0.5, "best_trial": 1,
            "elapsed_s": 65, "eta_s": 3700, "running": [
                {"number": n, "where": "runpod:" + "x" * 40, "epoch": 1, "max_epochs": 10, "metrics": {},
                 "age_s": 3, "fell_back": None} for n in range(30)]}
    lines = render_live(snap, width=60, max_rows=8)
    assert all(len(ln) <= 60 for ln in lines)
    assert len(lines) == 9 and "23 more running" in lines[-2]
    assert "1h01m" in render_live(snap, width=200)[-1]


# -- notebooks ---------------------------------------------------------------------------------------------------------

class _Widget:
    """ipywidgets.Output stand-in: what is displayed inside it is captured, cleared on clear_output."""

    def __init__(self, shown: list) -> None:
        self.shown, self.inside, self.outputs = shown, False, []

    def __enter__(self):
        self.inside = True
        return self

    def __exit__(self, *exc):
        self.inside = False

    def clear_output(self, wait: bool = False) -> None:
        self.outputs.clear()


@pytest.fixture
def fake_jupyter(monkeypatch):
    """IPython and ipywidgets stand-ins (enough for rich's notebook support) and a kernel shell."""
    shown: list = []
    widgets: list[_Widget] = []

    def display(obj):
        target = next((w for w in widgets if w.inside), None)
        (target.outputs if target is not None else shown).append(obj)
        if isinstance(obj, _Widget):
            shown.append(obj)

    def make_widget():
        widgets.append(_Widget(shown))
        return widgets[-1]

    class ZMQInteractiveShell:
        pass

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = ZMQInteractiveShell
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display
    ipywidgets = types.ModuleType("ipywidgets")
    ipywidgets.Output = make_widget
    ipywidgets.__spec__ = types.SimpleNamespace(name="ipywidgets")
    for name, module in (("IPython", ipython), ("IPython.display", ipython_display), ("ipywidgets", ipywidgets)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(display_module, "_has_widgets", lambda: True)
    return types.SimpleNamespace(shown=shown, widgets=widgets)


def test_jupyter_gets_a_live_widget(fake_jupyter):
    display = make_display()
    assert isinstance(display, LiveDisplay) and display.notebook and display.console.is_jupyter
    clock = FakeClock()
    display.clock, display.refresh_s = clock, 0  # redrawn on events only
    tracker = ProgressTracker(2, clock=clock, listeners=[display])
    tracker.trial_started(0, where="local", max_epochs=4)
    clock.t = 3
    tracker.epoch(0, 1, {"val_accuracy": 0.42})
    [widget] = fake_jupyter.widgets
    [frame] = widget.outputs  # redrawn in place: the widget holds the latest frame only
    text = SGR.sub("", frame.text).splitlines()
    assert "trial 0" in text[0] and "epoch 1/4" in text[0] and "val_acc 0.4200" in text[0]
    assert text[1].startswith("0/2 done")
    html = frame._repr_mimebundle_([], [])["text/html"]
    assert "<span" in html and "val_acc" in html and "\x1b" not in html  # coloured HTML
    tracker.trial_finished(0, "completed", value=0.42)
    lines = [SGR.sub("", o.text) for o in fake_jupyter.shown if not isinstance(o, _Widget)]
    assert any(t.startswith("[1/2] trial 0 completed") for t in lines)  # the permanent line, in the cell
    display.close()
    assert widget.outputs and SGR.sub("", widget.outputs[-1].text).startswith("1/2 done")


def test_jupyter_without_ipywidgets_gets_plain_lines(fake_jupyter, monkeypatch, capsys):
    monkeypatch.setattr(display_module, "_has_widgets", lambda: False)
    display = make_display()
    assert isinstance(display, LineLog)
    ProgressTracker(1, listeners=[display]).trial_started(0, where="local")
    assert capsys.readouterr().out == "[0/1] trial 0 started on local\n"


# -- the choice, callbacks, robustness ---------------------------------------------------------------------------------

def test_make_display_choice(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert make_display(io.StringIO(), quiet=True) is None
    assert make_display(TTY(), quiet=True) is None
    assert isinstance(make_display(io.StringIO()), LineLog)
    assert isinstance(make_display(TTY()), LiveDisplay)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(make_display(TTY()), LineLog)
    assert display_module.in_notebook() is False  # plain Python: no kernel


def test_notebook_callbacks_receive_snapshots():
    two, one = [], []
    tracker = ProgressTracker(1, listeners=[as_listener(lambda e, s: two.append((e, s))),
                                            as_listener(lambda s: one.append(s))])
    tracker.trial_started(0)
    tracker.trial_finished(0, "completed", value=0.5)
    assert [e["event"] for e, _ in two] == ["started", "finished"]
    assert [s["event"]["event"] for s in one] == ["started", "finished"]
    assert one[-1]["done"] == 1 and one[-1]["best"] == 0.5


def test_a_failing_listener_never_breaks_the_run():
    seen = []

    def bad(event, snap):
        raise RuntimeError("display broke")

    tracker = ProgressTracker(1, listeners=[bad, lambda e, s: seen.append(e["event"])])
    tracker.trial_started(0)
    tracker.trial_finished(0, "completed", value=1.0)
    assert seen == ["started", "finished"]
    with pytest.raises(ValueError, match="allowed"):
        tracker.trial_finished(0, "done")


class _Closing(TTY):
    def write(self, text: str) -> int:
        if self.closed_now:
            raise ValueError("I/O operation on closed file")
        return super().write(text)

    closed_now = False


def test_a_closed_or_broken_stream_stops_the_display_quietly():
    out = _Closing()
    display = LiveDisplay(out, refresh_s=0, color=False, clock=FakeClock())
    tracker = ProgressTracker(2, clock=FakeClock(), listeners=[display])
    tracker.trial_started(0, where="local")
    out.closed_now = True
    tracker.trial_started(1, where="local")  # the write fails: the display stops, the run goes on
    assert display._closed and tracker.snapshot()["running"][1]["number"] == 1
    display.close()

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError

    log = LineLog(Broken())
    ProgressTracker(1, listeners=[log]).trial_started(0)  # rich would exit the process; the log goes quiet
    assert log._console.quiet


def test_stdout_redirect_is_restored_when_the_live_display_closes(monkeypatch):
    real = TTY()
    monkeypatch.setattr(sys, "stderr", real)
    before_out = sys.stdout
    display = make_display()
    assert isinstance(display, LiveDisplay)
    tracker = ProgressTracker(1, clock=FakeClock(), listeners=[display])
    tracker.trial_started(0, where="local")
    print("a user's print during the run")  # lands above the block, not inside it
    display.close()
    assert sys.stdout is before_out and sys.stderr is real
    rows = screen(real.getvalue())
    assert rows[0] == "a user's print during the run" and rows[-1].startswith("0/1 done")


# -- through hpo.optimize ----------------------------------------------------------------------------------------------

def _fake_backend():
    from hpo.backends import Backend
    from hpo.protocol import EpochReport, TrialResult

    class Instant(Backend):
        name = "fake"

        def run(self, job, *, on_epoch=None, cancel=None, timeout_s=None, save_model_to=None):
            acc = 0.5 + 0.01 * int(job.trial_id.rsplit("#", 1)[1])
            if on_epoch:
                on_epoch(EpochReport(trial_id=job.trial_id, epoch=1, metrics={"val_accuracy": acc}))
            return TrialResult(trial_id=job.trial_id, status="completed", epochs_run=1, best_epoch=1,
                               val_metrics={"accuracy": acc}, test_metrics={"accuracy": acc},
                               executed_on="fake", history={"val_accuracy": [acc]})

    return Instant()


@pytest.mark.parametrize("quiet", [True, False])
def test_optimize_prints_lines_on_a_pipe_and_nothing_when_quiet(tmp_path, capsys, quiet):
    import hpo

    hpo.optimize(dataset="synthetic_images", trials=3, max_epochs_per_trial=1, sampler="random",
                 plot_generation="none", output_dir=str(tmp_path), run_name="p", backend=_fake_backend(),
                 quiet=quiet)
    captured = capsys.readouterr()
    if quiet:
        assert captured.out == "" and captured.err == ""
    else:
        lines = captured.err.splitlines()
        for n in range(3):
            assert sum(bool(re.search(rf"\] trial {n} started on fake$", ln)) for ln in lines) == 1, lines
            assert sum(bool(re.search(rf"\] trial {n} completed", ln)) for ln in lines) == 1, lines
        assert "\x1b" not in captured.err and os.environ.get("FORCE_COLOR") is None
