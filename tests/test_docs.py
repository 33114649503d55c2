"""The documents' links hold: every relative link in README.md and docs/ names a file that exists, the benchmark
reports' index lists every report, and every figure in docs/bench/ is shown by a report."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DOCS = ROOT / "docs" / "bench"

#: a Markdown link or image: [text](target) / ![alt](target)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _relative_links(doc: Path) -> list[str]:
    links = LINK.findall(doc.read_text())
    return [t.split("#", 1)[0] for t in links if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_every_relative_link_in_the_documents_names_a_file_that_exists():
    broken = [f"{doc.relative_to(ROOT)} -> {target}" for doc in _documents() for target in _relative_links(doc)
              if not (doc.parent / target).exists()]
    assert _relative_links(ROOT / "README.md"), "the README links no document (the pattern is wrong)"
    assert not broken, broken


def test_the_reports_index_lists_every_benchmark_report():
    index = BENCH_DOCS / "README.md"
    listed = {(BENCH_DOCS / t).resolve() for t in _relative_links(index)}
    reports = {p.resolve() for p in BENCH_DOCS.glob("protocol-*.md")}
    assert reports, "no report found"
    assert not reports - listed, sorted(p.name for p in reports - listed)
    assert "docs/bench/README.md" in _relative_links(ROOT / "README.md")


def test_every_figure_in_the_benchmark_docs_is_shown_by_a_report():
    shown = {(doc.parent / t).resolve() for doc in _documents() for t in _relative_links(doc)}
    unshown = [p.name for p in sorted(BENCH_DOCS.glob("*.png")) if p.resolve() not in shown]
    assert not unshown, unshown
