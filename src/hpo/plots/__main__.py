"""``python -m hpo.plots --request REQUEST.json --result RESULT.pickle``: the process that draws the plots needing the
best Keras model (see :mod:`hpo.plots.model`), started by :func:`hpo.plots.generate_plots`."""

import sys

from .model import main

sys.exit(main())
