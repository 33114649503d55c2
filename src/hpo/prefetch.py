"""Put datasets on disk ahead of time: ``python -m hpo.prefetch [NAME ...] [--verify]``.

The Dockerfile runs it at build time so RunPod workers start with every dataset baked into the image (jobs carry
only names and numbers). Files go where :mod:`hpo.datafiles` looks first: ``$HPO_DATA_DIR`` when set, else the Keras
cache (``$KERAS_HOME/datasets``). Generated datasets (synthetic_*) need nothing. ``--verify`` also loads each
dataset once, which extracts archives (GTSRB) and checks the files, so the first trial does not pay for it.

Exit codes: 0 all present, 1 a download or check failed (the message says which files to put where), 2 usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

from . import catalog, datasets
from .exceptions import ConfigError, DatasetError

__all__ = ["main", "prefetch"]


def prefetch(names: list[str], *, verify: bool = False, out: TextIO | None = None) -> list[str]:
    """Make ``names`` available locally; returns the error messages (empty: all good)."""
    out = out or sys.stdout
    errors = []
    for name in names:
        if catalog.is_generated(name):
            print(f"{name}: generated, nothing to fetch", file=out, flush=True)
            continue
        started = time.monotonic()
        try:
            datasets.ensure_available(name)
            if verify:
                splits = datasets.load(name, validation_split=0.2, seed=0, data_fraction=1.0)
                detail = f"{len(splits.x_train)} train / {len(splits.x_val)} val / {len(splits.x_test)} test"
            else:
                detail = "files present"
        except (DatasetError, ConfigError) as exc:
            errors.append(f"{name}: {exc}")
            print(f"{name}: FAILED: {exc}", file=out, flush=True)
            continue
        print(f"{name}: {detail} ({time.monotonic() - started:.0f} s)", file=out, flush=True)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpo.prefetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"datasets (default: all): {', '.join(catalog.DATASET_NAMES)}")
    parser.add_argument("--verify", action="store_true", help="also load each dataset once (extracts archives)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in catalog.DATASET_NAMES]
    if unknown:
        print(f"error: unknown dataset(s) {', '.join(unknown)}; allowed: {', '.join(catalog.DATASET_NAMES)}",
              file=sys.stderr)
        return 2
    errors = prefetch(list(args.names or catalog.DATASET_NAMES), verify=args.verify)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
