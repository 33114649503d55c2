"""Trial progress: a thread-safe tracker, its ETA, and the displays that show it.

The orchestrator feeds a :class:`ProgressTracker` with trial events (started, epoch, fell back, finished, discarded)
from many threads; listeners receive each event together with a consistent snapshot, one call at a time:

- :class:`LiveDisplay` (terminals, Jupyter with ipywidgets; drawn with rich): one line per running trial plus a
  summary line, redrawn in place; finished trials scroll above it as permanent lines;
- :class:`LineLog` (pipes, CI logs): one plain line per event, each trial's start and end exactly once;
- a notebook callback (``hpo.optimize(..., progress=callback)``), adapted by :func:`as_listener`.

A snapshot is a plain dict::

    {"total", "done", "completed", "pruned", "failed", "queued", "running": [trial dicts with "age_s"],
     "best", "best_trial", "elapsed_s", "eta_s", "eta_limit", "time_left_s", "epochs", "epoch_budget",
     "concurrency"}

``done`` includes trials finished by an earlier (resumed) run; ``completed`` / ``pruned`` / ``failed`` count this
session's trials. ``eta_s`` is None until a duration can be estimated; it honours every limit of the run (trials,
epoch budget, the ``deadline`` of ``timeout_minutes``) and ``eta_limit`` names the one expected to end the run
(:mod:`hpo.progress.eta`).

Modules: ``tracker`` (events -> snapshots), ``eta`` (the estimate), ``render`` (the lines' text), ``display`` (rich).
"""

from .display import LineLog, LiveDisplay, color_wanted, in_notebook, is_terminal, make_display
from .eta import Eta, estimate_eta, estimate_eta_epochs, estimate_limits
from .render import render_live
from .tracker import FINAL_STATES, Listener, ProgressTracker, TrialProgress, as_listener

__all__ = ["ProgressTracker", "TrialProgress", "LineLog", "LiveDisplay", "Listener", "make_display", "as_listener",
           "estimate_eta", "estimate_eta_epochs", "estimate_limits", "Eta", "render_live", "color_wanted",
           "is_terminal", "in_notebook", "FINAL_STATES"]
