"""Regenerate README.md's table of options from OptimizationConfig (tests/test_config.py checks they agree).

    python scripts/sync_readme.py
"""

from pathlib import Path
import sys

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hpo.config_docs import options_markdown_table  # noqa: E402

START, END = "<!-- options-table:start -->", "<!-- options-table:end -->"

readme = ROOT / "README.md"
text = readme.read_text()
head, rest = text.split(START, 1)
_, tail = rest.split(END, 1)
readme.write_text(f"{head}{START}\n{options_markdown_table()}\n{END}{tail}")
print("README.md options table updated")
