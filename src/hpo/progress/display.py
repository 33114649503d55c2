"""The console displays, drawn with rich (imported when a display is made, not with :mod:`hpo`):

- :class:`LiveDisplay`: a rich ``Live`` block -- one line per running trial and a summary line, redrawn in place
  (and every ``refresh_s`` so that elapsed time and ETA tick); finished, discarded and fallen-back trials are printed
  as permanent lines above it. In Jupyter (with ipywidgets) the same block is a widget redrawn in the cell;
- :class:`LineLog`: one plain line per event (pipes, CI logs, notebooks without ipywidgets), each trial's start and
  end exactly once, with no escape codes unless colour is forced.

Colour follows the conventions (as CPython's own): ``NO_COLOR`` set to a non-empty value turns it off
(https://no-color.org: an empty one does not); else ``FORCE_COLOR`` non-empty turns it on, even on a pipe
(https://force-color.org); else colour on a terminal whose ``TERM`` is not ``dumb``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from .render import epoch_line, event_line, event_style, live_lines

__all__ = ["LineLog", "LiveDisplay", "make_display", "color_wanted", "is_terminal", "in_notebook"]

#: characters of the displays that a stream in a legacy encoding may not take, and their stand-ins
_ASCII = str.maketrans({"█": "#", "░": "-", "·": "|", "…": "..."})


def is_terminal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """A stream that takes cursor movements: a TTY whose ``TERM`` is not ``dumb``."""
    environ = os.environ if environ is None else environ
    try:
        return bool(stream.isatty()) and environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


def color_wanted(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether to colour what goes to ``stream``: ``NO_COLOR`` (non-empty) off, else ``FORCE_COLOR`` (non-empty)
    on, else on for a terminal."""
    environ = os.environ if environ is None else environ
    if environ.get("NO_COLOR", ""):
        return False
    if environ.get("FORCE_COLOR", ""):
        return True
    return is_terminal(stream, environ)


def in_notebook() -> bool:
    """Running in a Jupyter kernel (notebook, lab, Colab), where a cell's output is not a terminal."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    try:
        shell = get_ipython() if callable(get_ipython) else None
    except Exception:  # noqa: BLE001 - whatever IPython is, we are not in a notebook we understand
        return False
    kind = type(shell)
    return shell is not None and (kind.__name__ == "ZMQInteractiveShell" or "google.colab" in kind.__module__)


def _has_widgets() -> bool:
    return importlib.util.find_spec("ipywidgets") is not None


def _safe(text: str, encoding: str | None) -> str:
    """The text, with stand-ins for the characters the stream's encoding cannot take."""
    try:
        text.encode(encoding or "utf-8")
        return text
    except (UnicodeEncodeError, LookupError):
        return text.translate(_ASCII).encode(encoding or "ascii", "replace").decode(encoding or "ascii")


@functools.cache
def _console_class() -> type:
    from rich.console import Console

    class QuietOnBrokenPipe(Console):
        def on_broken_pipe(self) -> None:  # rich exits the process there; a display just goes quiet
            self.quiet = True

    return QuietOnBrokenPipe


def _console(stream: TextIO | None, *, color: bool, live: bool = False, notebook: bool = False) -> Any:
    """A rich console on ``stream`` (None: whatever ``sys.stderr`` is when writing) that never interprets markup,
    highlights or wraps, colours only when ``color``, and moves the cursor only when ``live``."""
    system = None if not color else "truecolor" if notebook else "auto" if live else "standard"
    return _console_class()(file=stream, stderr=stream is None, force_terminal=None if notebook else (live or color),
                    force_interactive=None if notebook else live, force_jupyter=notebook, no_color=not color,
                    color_system=system, highlight=False, markup=False, emoji=False, soft_wrap=not live)


def _text(parts: list[tuple[str, str]], *, color: bool, encoding: str | None) -> Any:
    from rich.text import Text

    return Text.assemble(*((_safe(t, encoding), s if color else "") for t, s in parts), no_wrap=True, end="")


class LineLog:
    """Plain one-line-per-event log (CI logs, pipes): every trial's start and end (finished or discarded) exactly
    once. Epoch lines are printed only when ``epochs`` is true. No escape codes unless ``color`` (by default
    :func:`color_wanted`: ``FORCE_COLOR`` on a pipe)."""

    def __init__(self, stream: TextIO | None = None, *, epochs: bool = False, color: bool | None = None) -> None:
        self.stream = stream
        self.epochs = epochs
        self.color = color_wanted(stream or sys.stderr) if color is None else color
        self._console: Any = None

    def __call__(self, event: dict[str, Any], snap: dict[str, Any]) -> None:
        if event["event"] == "epoch":
            if not self.epochs:
                return
            line = epoch_line(event, snap)
        else:
            line = event_line(event, snap)
            if line is None:
                return
        if self._console is None:
            self._console = _console(self.stream, color=self.color)
        console = self._console
        console.print(_text([(line, event_style(event))], color=self.color, encoding=console.encoding), crop=False)

    def close(self) -> None:
        pass


class LiveDisplay:
    """A live block for terminals (rich ``Live``), redrawn in place on every event and every ``refresh_s`` (0: on
    events only) so that elapsed time and ETA tick. Finished, discarded and fallen-back trials are printed as
    permanent lines above the block; :meth:`close` leaves the final summary line. ``notebook``: draw into a Jupyter
    cell (rich's notebook support, which needs ipywidgets) instead."""

    def __init__(self, stream: TextIO | None = None, *, refresh_s: float = 0.5, color: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, notebook: bool = False) -> None:
        self.stream = stream or (sys.stdout if notebook else sys.stderr)
        self.refresh_s = refresh_s
        if color is None:  # a notebook's cell is not a terminal, but shows colour
            color = not os.environ.get("NO_COLOR", "") if notebook else color_wanted(self.stream)
        self.color = color
        self.clock = clock
        self.notebook = notebook
        self.console = _console(self.stream, color=self.color, live=not notebook, notebook=notebook)
        self._lock = threading.Lock()
        # (snapshot, when it was taken, final): replaced whole, read by the renderer without the lock
        self._state: tuple[dict[str, Any], float, bool] | None = None
        self._live: Any = None
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- rich renderable: the live block, aged to now ------------------------------------------------------------------
    def __rich_console__(self, console: Any, options: Any) -> Any:
        state = self._state
        if state is None:
            return
        snap, at, final = state
        dt = max(0.0, self.clock() - at)
        snap = dict(snap, elapsed_s=snap["elapsed_s"] + dt,
                    running=[] if final else [dict(t, age_s=t.get("age_s", 0.0) + dt) for t in snap["running"]])
        if snap["eta_s"] is not None:
            snap["eta_s"] = max(0.0, snap["eta_s"] - dt)
        lines = live_lines(snap, width=max(20, options.max_width - 1), max_rows=max(1, console.size.height - 4))
        from rich.text import Text

        yield Text("\n").join(_text(line, color=self.color, encoding=console.encoding) for line in lines)

    def frame(self) -> list[str]:
        """The block as it would be drawn now (plain text)."""
        lines = self.console.render_lines(self, self.console.options, pad=False)
        return ["".join(segment.text for segment in line) for line in lines]

    # -- listener -----------------------------------------------------------------------------------------------------
    def __call__(self, event: dict[str, Any], snap: dict[str, Any]) -> None:
        with self._lock:
            if self._closed:
                return
            self._state = (snap, self.clock(), False)
            line = None if event["event"] == "started" else event_line(event, snap)
            try:
                if self._live is None:
                    self._start()
                if line is not None:  # printed above the block, which rich redraws below it
                    self.console.print(_text([(line, event_style(event))], color=self.color,
                                             encoding=self.console.encoding), crop=False)
                if line is None or self.notebook:
                    self._live.refresh()
            except (OSError, ValueError):  # the terminal went away: stop drawing
                self._shutdown()
                return
            if self._thread is None and self.refresh_s > 0:
                self._thread = threading.Thread(target=self._tick, name="hpo-progress", daemon=True)
                self._thread.start()

    def _start(self) -> None:
        from rich.live import Live

        # prints from anywhere land above the block -- only when drawing on the process's own stdout/stderr
        redirect = not self.notebook and any(self.stream is s for s in (sys.stdout, sys.stderr))
        self._live = Live(self, console=self.console, auto_refresh=False, transient=False,
                          redirect_stdout=redirect, redirect_stderr=redirect, vertical_overflow="visible")
        self._live.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with self._lock:
                if self._closed:
                    return
                try:
                    self._live.refresh()
                except (OSError, ValueError):
                    self._shutdown()
                    return

    def _shutdown(self) -> None:
        """Stop the rich Live (restores redirected stdout/stderr, shows the cursor) and draw no more."""
        self._closed = True
        if self._live is not None:
            try:
                self._live.stop()
            except Exception:  # noqa: BLE001 - the stream is gone; Live restored stdout/stderr before failing
                pass

    def close(self) -> None:
        """Stop ticking and leave the final summary line on screen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            if self._closed:
                return
            if self._state is not None:
                snap, at, _ = self._state
                self._state = (snap, at, True)
            self._shutdown()


def make_display(stream: TextIO | None = None, *, quiet: bool = False) -> LiveDisplay | LineLog | None:
    """The console display: none when ``quiet``; in a Jupyter notebook a live widget (with ipywidgets, else plain
    lines); a :class:`LiveDisplay` on a terminal; a :class:`LineLog` otherwise (pipes, CI logs, ``TERM=dumb``)."""
    if quiet:
        return None
    if stream is None and in_notebook():
        return LiveDisplay(notebook=True) if _has_widgets() else LineLog(sys.stdout)
    stream = stream or sys.stderr
    return LiveDisplay(stream) if is_terminal(stream) else LineLog(stream)
