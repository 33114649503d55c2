"""Progress: counts and ETA from scripted events on a fake clock, thread safety, the displays and their choice."""

from __future__ import annotations

import io
import re
import threading

import pytest

from hpo.progress import (LineLog, LiveDisplay, ProgressTracker, as_listener, estimate_eta, make_display,
                          render_live)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


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
    assert snap["eta_s"] == pytest.approx(95.0)
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
    assert not any("epoch" in ln for ln in lines if "pruned at epoch" not in ln)  # no epoch lines by default
    assert "\x1b" not in out.getvalue()  # plain text for CI logs
    assert any("trial 2 runs on local instead: endpoint unreachable" in ln for ln in lines)
    assert any(ln.startswith("[1/4] trial 1 completed on runpod:abc: value=0.7000") for ln in lines)
    assert "boom" not in out.getvalue()  # first line of a reason only


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


def test_live_display_draws_running_trials_and_a_summary():
    out = TTY()
    clock = FakeClock()
    display = LiveDisplay(out, refresh_s=0, color=False, clock=clock)
    tracker = ProgressTracker(3, concurrency=2, clock=clock, listeners=[display])
    tracker.trial_started(0, where="local", max_epochs=4)
    tracker.trial_started(1, where="runpod", max_epochs=4)
    clock.t = 10
    tracker.epoch(0, 2, {"val_accuracy": 0.61, "val_loss": 1.2})
    text = out.getvalue()
    frame = text.rsplit("\x1b[J", 1)[-1]  # the last redraw
    rows = frame.splitlines()
    assert len(rows) == 3  # two running trials + summary
    assert rows[0].startswith("  trial 0") and "epoch 2/4" in rows[0] and "val_acc 0.6100" in rows[0]
    assert rows[1].startswith("  trial 1") and "starting" in rows[1]
    assert rows[2].startswith("0/3 done") and "2 running" in rows[2] and "ETA" in rows[2]
    clock.t = 12
    tracker.trial_finished(0, "completed", value=0.61, where="local:worker-1")
    frame = out.getvalue().rsplit("\x1b[J", 1)[-1]
    assert "trial 0 completed on local:worker-1" in frame.splitlines()[0]  # permanent line above the block
    assert "best 0.6100 (trial 0)" in frame
    display.close()
    final = out.getvalue().rsplit("\x1b[J", 1)[-1]
    assert final.splitlines() == [final.splitlines()[-1]] and final.startswith("1/3 done")
    n_before = len(out.getvalue())
    tracker.trial_started(2)  # after close: silent
    assert len(out.getvalue()) == n_before


def test_live_display_ticks_and_stops():
    out = TTY()
    display = LiveDisplay(out, refresh_s=0.01, color=True)
    tracker = ProgressTracker(2, listeners=[display])
    tracker.trial_started(0, where="local", max_epochs=2)
    threading.Event().wait(0.1)
    display.close()
    assert out.getvalue().count("\x1b[J") >= 3  # redrawn by the ticker
    assert display._thread is not None and not display._thread.is_alive()


def test_render_live_fits_the_width_and_caps_rows():
    snap = {"total": 50, "done": 3, "completed": 3, "pruned": 0, "failed": 0, "best": 0.5, "best_trial": 1,
            "elapsed_s": 65, "eta_s": 3700, "running": [
                {"number": n, "where": "runpod:" + "x" * 40, "epoch": 1, "max_epochs": 10, "metrics": {},
                 "age_s": 3, "fell_back": None} for n in range(30)]}
    lines = render_live(snap, width=60, max_rows=8)
    assert all(len(ln) <= 60 for ln in lines)
    assert len(lines) == 9 and "23 more running" in lines[-2]
    assert "1h01m" in render_live(snap, width=200)[-1]


def test_make_display_choice(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert make_display(io.StringIO(), quiet=True) is None
    assert isinstance(make_display(io.StringIO()), LineLog)
    assert isinstance(make_display(TTY()), LiveDisplay)
    monkeypatch.setenv("TERM", "dumb")
    assert isinstance(make_display(TTY()), LineLog)


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
