"""The README's shape a first reader relies on (session 73's reread).

* It opens with exactly two commands, ``make demo`` and ``make test``, each a target of the Makefile.
* The headline figures under "At a glance" are the same as those of the Results table they summarise, so that a
  later session updating one place cannot leave the other behind.
* Every section the README names in quotes ("Splits", "Lesions typed by a second model", docs/recipes.md's
  "Progressive resizing", benchmarks/RESULTS.md's "An AMX Xeon", ...) is a heading of the README, docs/recipes.md or
  benchmarks/RESULTS.md, so that moving or renaming a section cannot leave a dangling reference.

Only Markdown and the Makefile are read.
"""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
HEADED = (README, ROOT / "docs" / "recipes.md", ROOT / "benchmarks" / "RESULTS.md")

# Quoted words in the README that are not section names: a table's "before" column note, the paper's "mean
# accuracy", report.json's "n/a".
NOT_SECTIONS = frozenset({"before", "mean accuracy", "n/a"})


def _section(text: str, heading: str) -> str:
    """The body of the section whose heading line starts with ``heading`` (up to the next heading of any level)."""
    match = re.search(rf"^#+ {re.escape(heading)}[^\n]*\n(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section headed {heading!r}"
    return match.group(1)


def _table_rows(section: str) -> dict[str, list[str]]:
    """A Markdown table's body rows in ``section``, keyed by the first cell's first word."""
    rows, body = {}, False
    for line in section.splitlines():
        if line.startswith("|---"):
            body = True
        elif line.startswith("|") and body:
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0].split()[0]] = cells
    return rows


def _dice(cell: str) -> list[str]:
    """The ``mean ± std`` figures of a table cell, in order, bold marks ignored."""
    return re.findall(r"\d\.\d+ ± \d\.\d+", cell.replace("**", ""))


def _leading_figures(cell: str) -> list[str]:
    """The figures of a cell before any parenthesis: ``0.657 / 0.480 (before: ...)`` -> ``['0.657', '0.480']``."""
    return re.findall(r"\d\.\d+", cell.split("(")[0])


def _headings(paths: tuple[Path, ...]) -> list[str]:
    return [h.strip() for path in paths for h in re.findall(r"^#+ (.*)$", path.read_text(encoding="utf-8"), re.M)]


def _dangling(text: str, headings: list[str]) -> list[str]:
    """The quoted names in ``text`` that start no heading: an elided name (``"Loss screens … (session 41)"``)
    needs a heading holding each of its parts."""
    missing = []
    for name in sorted(set(re.findall(r'"([^"\n]{2,100})"', text)) - NOT_SECTIONS):
        parts = [part.strip() for part in name.split("…") if part.strip()]
        if not any(heading.startswith(parts[0]) and all(part in heading for part in parts) for heading in headings):
            missing.append(name)
    return missing


def test_the_readme_opens_with_the_two_make_commands():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# covseg" and lines[2] == "```bash" and lines[5] == "```"
    assert lines[3].startswith("make demo   # fresh machine: ") and lines[4].startswith("make test   # fresh machine: ")
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_the_headline_figures_are_the_results_tables():
    text = README.read_text(encoding="utf-8")
    glance = _table_rows(_section(text, "At a glance"))
    results = _table_rows(_section(text, "The shipped `default` recipe, cross-validated"))
    assert set(glance) == set(results) == {"binary", "multiclass"}
    assert _dice(glance["binary"][1]) == _dice(results["binary"][1]) == ["0.754 ± 0.003"]
    assert _dice(glance["multiclass"][1]) == _dice(results["multiclass"][1]) == ["0.590 ± 0.008", "0.449 ± 0.007"]
    for task in ("binary", "multiclass"):  # pooled Dice: the current figures, not the "before" in parentheses
        assert _leading_figures(glance[task][2]) == _leading_figures(results[task][2])
    assert _leading_figures(results["multiclass"][2]) == ["0.657", "0.480"]


def test_every_section_the_readme_names_is_a_heading():
    assert _dangling(README.read_text(encoding="utf-8"), _headings(HEADED)) == []


def test_a_renamed_section_is_caught():
    """The check above flags a name no heading starts with, and accepts an elided one whose parts a heading holds."""
    headings = ["Splits", "Loss screens: a milder Tversky lean, other betas (session 41)"]
    text = 'see "Splits", "Loss screens … (session 41)" and "Metrics", and report.json\'s "n/a"'
    assert _dangling(text, headings) == ["Metrics"]
    assert _dangling('"Loss screens … (session 42)"', headings) == ["Loss screens … (session 42)"]
