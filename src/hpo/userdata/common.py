"""What the modules of :mod:`hpo.userdata` share: the error helper, the fixed split constants and the option checks."""

from __future__ import annotations

import numbers
from typing import Any

from ..catalog import OPTION_HELP, OPTION_MAX, OPTION_MIN
from ..exceptions import ConfigError, DatasetError
from ..redact import mask_text

__all__ = ["MODALITIES", "HOLDOUT_FRACTION", "HOLDOUT_SEED", "MAX_DIM", "fail", "check_option", "plural", "sample"]

MODALITIES = ("image", "text", "sequence")
#: without a test set of the user's, this share of each class is held out as the test set (stratified) ...
HOLDOUT_FRACTION = 0.2
#: ... by a seed of its own, independent of every trial and split seed, so the held-out part never moves
HOLDOUT_SEED = 15_2024
#: the largest size of one axis of a sample (what a TrialJob's input_shape allows)
MAX_DIM = 100_000


def fail(message: str) -> DatasetError:
    """The one DatasetError of a bad input (secrets masked); ``raise fail(...)``."""
    return DatasetError(mask_text(message))


def check_option(name: str, value: Any) -> int | None:
    """An integer option (image_size, vocab_size, sequence_length) as an int, None when not given; ConfigError
    naming the option and what is allowed otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an {OPTION_HELP[name]}, got {value!r}", field=name)
    value = int(value)
    if not OPTION_MIN[name] <= value <= OPTION_MAX[name]:
        raise ConfigError(f"{name}={value} is out of range; allowed: an {OPTION_HELP[name]}, at most "
                          f"{OPTION_MAX[name]}", field=name)
    return value


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def sample(items: Any, n: int = 5) -> str:
    """The first ``n`` items, comma-separated, with '...' when there are more."""
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
