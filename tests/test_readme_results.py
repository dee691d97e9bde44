"""The README's study tables are results/study.md's own rows (study.md is rendered from study.json by scripts/study.py)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _is_separator(line: str) -> bool:
    return line.startswith("|") and set(line) <= set("|-: ")


def _table_rows(text: str) -> list[str]:
    """Data rows of every markdown table in ``text``: not the header (the line above a separator), not separators."""
    lines = [line.strip() for line in text.splitlines()] + [""]
    return [line for line, following in zip(lines, lines[1:])
            if line.startswith("|") and not _is_separator(line) and not _is_separator(following)]


def _results_section(readme: str) -> str:
    start = readme.index("## Results")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def test_every_row_of_the_readme_study_tables_is_in_study_md():
    section = _results_section((ROOT / "README.md").read_text(encoding="utf-8"))
    study = set(_table_rows((ROOT / "results" / "study.md").read_text(encoding="utf-8")))
    rows = _table_rows(section)
    assert len(rows) >= 18, "the README's results tables are missing"  # 12 runs' rows + 6 paired differences
    stale = [row for row in rows if row not in study]
    assert not stale, f"README rows not in results/study.md (re-copy the tables): {stale[:2]}"
