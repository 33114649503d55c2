"""What the displays say: the permanent line of an event, and the live block (one line per running trial, then a
summary line). Lines are built from ``(text, style)`` parts, so the plain text (pipes, CI, tests) and the styled
text (rich, in terminals and notebooks) are the same characters."""

from __future__ import annotations

from typing import Any

__all__ = ["Part", "event_line", "event_style", "live_lines", "render_live", "plain", "fmt_seconds"]

Part = tuple[str, str]  # (text, rich style; "" for none)

#: style of an event's permanent line, by final state or event kind
EVENT_STYLES = {"completed": "green", "pruned": "yellow", "failed": "red", "discarded": "yellow", "fell_back": "cyan"}
#: what the summary says when a limit other than the trial count is expected to end the run
LIMIT_NOTES = {"time": "time limit", "epochs": "epoch budget", "budget": "time budget"}


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _first_line(text: str, limit: int = 200) -> str:
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _eta(snap: dict[str, Any]) -> str:
    note = LIMIT_NOTES.get(snap.get("eta_limit") or "")
    return f"ETA {fmt_seconds(snap.get('eta_s'))}" + (f" ({note})" if note and snap.get("eta_s") else "")


def event_line(event: dict[str, Any], snap: dict[str, Any]) -> str | None:
    """The permanent line of an event (None for epoch events)."""
    kind = event["event"]
    head = f"[{snap['done']}/{snap['total']}]"
    n = event["trial"]
    if kind == "started":
        return f"{head} trial {n} started on {event.get('where') or '?'}"
    if kind == "fell_back":
        return f"{head} trial {n} runs on {event.get('where') or 'local'} instead: {_first_line(event['reason'])}"
    if kind == "discarded":
        return f"{head} trial {n} discarded: {_first_line(event['reason'])}"
    if kind == "finished":
        reason = f" ({_first_line(event['reason'])})" if event.get("reason") else ""
        where = f" on {event['where']}" if event.get("where") else ""
        budget = f"; epochs {snap['epochs']}/{snap['epoch_budget']}" if snap.get("epoch_budget") else ""
        return (f"{head} trial {n} {event['state']}{where}: value={_num(event['value'])}{reason}; "
                f"best={_num(snap['best'])}{budget}; elapsed {fmt_seconds(snap['elapsed_s'])}, {_eta(snap)}")
    return None


def epoch_line(event: dict[str, Any], snap: dict[str, Any]) -> str:
    total = f"/{event['max_epochs']}" if event.get("max_epochs") else ""
    return (f"[{snap['done']}/{snap['total']}] trial {event['trial']} epoch {event['epoch']}{total}: "
            f"val_accuracy={_num((event.get('metrics') or {}).get('val_accuracy'))}")


def event_style(event: dict[str, Any]) -> str:
    return EVENT_STYLES.get(event.get("state") or event["event"], "")


# -- the live block ----------------------------------------------------------------------------------------------------

def _bar(done: int, total: int, width: int = 10) -> list[Part]:
    filled = 0 if total <= 0 else min(width, round(width * done / total))
    return [("█" * filled, "green"), ("░" * (width - filled), "dim")]


def _running_line(t: dict[str, Any]) -> list[Part]:
    where = t.get("where") or "?"
    if t.get("fell_back"):
        where += " (fell back)"
    where = _fit_text(where, 28)
    parts: list[Part] = [("  ", ""), (f"trial {t['number']:<4}", "bold"), (" ", ""), (f"{where:<28}", "cyan"),
                         (" ", "")]
    if t.get("epoch"):
        parts += [(f"epoch {t['epoch']}/{t.get('max_epochs') or '?'} ", "")]
        parts += _bar(t["epoch"], t.get("max_epochs") or 0)
    else:
        parts += [("starting      ", "dim")] + _bar(0, 1)
    m = t.get("metrics") or {}
    for key, label, style in (("val_accuracy", "val_acc", "bold magenta"), ("val_loss", "val_loss", "")):
        if m.get(key) is not None:
            parts += [(f"  {label} ", ""), (_num(m.get(key)), style)]
    parts.append((f"  {fmt_seconds(t.get('age_s'))}", "dim"))
    return parts


def _summary_line(snap: dict[str, Any], n_running: int) -> list[Part]:
    """done/total, best, elapsed and ETA first (a narrow terminal cuts the end), then the counts."""
    best = "-" if snap["best"] is None else f"{snap['best']:.4f}"
    if snap.get("best_trial") is not None:
        best += f" (trial {snap['best_trial']})"
    budget = f" · epochs {snap['epochs']}/{snap['epoch_budget']}" if snap.get("epoch_budget") else ""
    return [(f"{snap['done']}/{snap['total']} done", "bold"), (" · best ", ""), (best, "bold green"),
            (f" · elapsed {fmt_seconds(snap['elapsed_s'])} · ", ""), (_eta(snap), "bold yellow"),
            (f"{budget} · {n_running} running · {snap['completed']} completed, {snap['pruned']} pruned, "
             f"{snap['failed']} failed", "")]


def _fit_text(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _fit(parts: list[Part], width: int) -> list[Part]:
    """The parts cut to ``width`` characters, the last one replaced by an ellipsis when cut."""
    if sum(len(text) for text, _ in parts) <= width:
        return parts
    out: list[Part] = []
    room = max(0, width - 1)
    for text, style in parts:
        if room <= 0:
            break
        out.append((text[:room], style))
        room -= len(out[-1][0])
    return out + [("…", "")]


def live_lines(snap: dict[str, Any], *, width: int = 100, max_rows: int = 20) -> list[list[Part]]:
    """The live block as styled parts: one line per running trial (at most ``max_rows`` lines with the note of
    those not shown), then the summary line; each at most ``width`` characters."""
    lines = []
    running = snap["running"]
    shown = running if len(running) <= max_rows else running[: max_rows - 1]
    lines = [_running_line(t) for t in shown]
    if len(shown) < len(running):
        lines.append([(f"  … and {len(running) - len(shown)} more running", "dim")])
    lines.append(_summary_line(snap, len(running)))
    return [_fit(line, width) for line in lines]


def plain(parts: list[Part]) -> str:
    return "".join(text for text, _ in parts)


def render_live(snap: dict[str, Any], *, width: int = 100, max_rows: int = 20) -> list[str]:
    """The live block: one line per running trial, then the summary line (plain text, each at most ``width``)."""
    return [plain(line) for line in live_lines(snap, width=width, max_rows=max_rows)]
