"""Theory citations resolve: every "theory §N" in the repository names a section of docs/theory.md.

Docstrings, comments, tests and docs cite the numbered sections of ``docs/theory.md`` as
``theory §3.1``, ``theory §§2-4`` or ``theory §§1, 3 and 3.2``, and the properties of the forward
process as ``theory §3, property 3`` or ``theory §3 properties 1, 2, 5``. This test scans the
repository's source and documentation files (``.py``, ``.md``, ``.toml`` and the Makefile; tracked
or new, not ignored, never ``.venv`` or ``docs/_build``) and checks that

- each cited section number is a numbered heading of ``docs/theory.md``;
- each cited property number is an item of that section's "Properties" list;
- no file points at documents outside the repository (the specification file or the shared
  folder the project was developed from), which users never get.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"

SECTION_SIGN = "\u00a7"
# Built from pieces so that this file does not contain the strings it forbids.
FORBIDDEN = ("SPEC" + ".md", "SPEC" + " section", ".." + "/shared")

SUFFIXES = {".py", ".md", ".toml"}
NAMES = {"Makefile"}
SKIP_DIRS = {".venv", ".git", "__pycache__", ".pytest_cache", "node_modules"}
SKIP_PREFIXES = (".venv/", "docs/_build/")

_NUM = r"\d+(?:\.\d+)*"
CITATION = re.compile(
    r"theory\s+" + SECTION_SIGN + SECTION_SIGN + r"?\s*"
    r"(?P<sections>" + _NUM + r"(?:\s*(?:,|and|-|\u2013)\s*" + _NUM + r")*)"
    r"(?:,?\s*propert(?:y|ies)\s+(?P<props>\d+(?:\s*(?:,|and)\s*\d+)*))?"
)
# Any mention of a theory section, well formed or not (the placeholder "§N" is allowed).
MENTION = re.compile(r"theory\s+" + SECTION_SIGN)
PLACEHOLDER = re.compile(r"theory\s+" + SECTION_SIGN + SECTION_SIGN + r"?N\b")

HEADING = re.compile(r"^(#{1,6})\s+(" + _NUM + r")\.?\s+\S")
ANY_HEADING = re.compile(r"^#{1,6}\s+\S")
LIST_ITEM = re.compile(r"^(\d+)\.\s+\S")


# ----------------------------------------------------------------------------- theory.md
def _lines_outside_fences(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of the Markdown lines outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def theory_structure(text: str) -> tuple[list[str], dict[str, set[int]]]:
    """The numbered headings of theory.md in order, and each section's property numbers.

    A section's properties are the numbered list items under a heading titled "Properties" inside
    that section (before the next numbered heading).
    """
    sections: list[str] = []
    properties: dict[str, set[int]] = {}
    current: str | None = None
    in_properties = False
    for _, line in _lines_outside_fences(text):
        m = HEADING.match(line)
        if m:
            current = m.group(2)
            sections.append(current)
            in_properties = False
            continue
        if ANY_HEADING.match(line):
            in_properties = line.lstrip("#").strip().lower().startswith("properties")
            continue
        item = LIST_ITEM.match(line)
        if in_properties and current is not None and item:
            properties.setdefault(current, set()).add(int(item.group(1)))
    return sections, properties


def _cited_sections(spec: str) -> list[str]:
    """Section numbers of a citation's list: ``"1, 3 and 3.2"`` or a range ``"2-4"``."""
    out: list[str] = []
    for part in re.split(r"\s*(?:,|\band\b)\s*", spec.strip()):
        if not part:
            continue
        ends = re.split(r"\s*[-\u2013]\s*", part)
        if len(ends) == 2 and all(e.isdigit() for e in ends):
            out.extend(str(k) for k in range(int(ends[0]), int(ends[1]) + 1))
        else:
            out.extend(ends)
    return out


def problems_in(text: str, where: str, sections: set[str], properties: dict[str, set[int]]) -> list[str]:
    """Unresolved citations, malformed mentions and outside references in ``text``."""
    problems = []

    def line_of(pos: int) -> str:
        return f"{where}:{text.count(chr(10), 0, pos) + 1}"

    cited = set()
    for m in CITATION.finditer(text):
        cited.add(m.start())
        secs = _cited_sections(m.group("sections"))
        for s in secs:
            if s not in sections:
                problems.append(f"{line_of(m.start())}: {m.group(0)!r} cites section {s}, not a heading of theory.md")
        if m.group("props"):
            owner = secs[-1]
            have = properties.get(owner, set())
            for p in re.findall(r"\d+", m.group("props")):
                if int(p) not in have:
                    problems.append(
                        f"{line_of(m.start())}: {m.group(0)!r} cites property {p} of section {owner}, "
                        f"which has properties {sorted(have)}"
                    )
    for m in MENTION.finditer(text):
        if m.start() not in cited and not PLACEHOLDER.match(text, m.start()):
            snippet = text[m.start() : m.start() + 30].splitlines()[0]
            problems.append(f"{line_of(m.start())}: malformed theory citation {snippet!r}")
    for needle in FORBIDDEN:
        pos = text.find(needle)
        while pos >= 0:
            problems.append(f"{line_of(pos)}: refers to {needle!r}, which is not part of the repository")
            pos = text.find(needle, pos + 1)
    return problems


# ------------------------------------------------------------------------------- the files
def _candidate_paths() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        out = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            rel = Path(dirpath).relative_to(ROOT)
            out.extend(str(rel / f) if str(rel) != "." else f for f in filenames)
    return out


def scanned_files() -> list[Path]:
    """Source and documentation files of the repository (not ``.venv``, not ``docs/_build``)."""
    files = []
    for rel in _candidate_paths():
        rel = rel.replace(os.sep, "/")
        if rel.startswith(SKIP_PREFIXES) or any(part in SKIP_DIRS for part in rel.split("/")[:-1]):
            continue
        path = ROOT / rel
        if (path.suffix in SUFFIXES or path.name in NAMES) and path.is_file():
            files.append(path)
    return sorted(set(files))


@pytest.fixture(scope="module")
def structure() -> tuple[list[str], dict[str, set[int]]]:
    return theory_structure(THEORY.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------- tests
def test_theory_sections_are_numbered_in_order(structure):
    sections, properties = structure
    assert sections, "docs/theory.md has no numbered headings"
    assert len(sections) == len(set(sections)), f"duplicate section numbers: {sections}"
    keys = [tuple(int(p) for p in s.split(".")) for s in sections]
    assert keys == sorted(keys), f"sections out of order: {sections}"
    top = [k[0] for k in keys if len(k) == 1]
    assert top == list(range(1, len(top) + 1)), f"top-level sections not 1..n: {top}"
    # the forward process's properties, as the code cites them
    assert properties.get("3") == {1, 2, 3, 4, 5}, properties


def test_theory_explains_the_citation_form():
    head = THEORY.read_text(encoding="utf-8")[:600]
    assert "theory " + SECTION_SIGN in head


def test_every_citation_resolves(structure):
    sections, properties = structure
    files = scanned_files()
    assert THEORY in files and Path(__file__).resolve() in files
    problems, count = [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        count += len(CITATION.findall(text))
        problems.extend(problems_in(text, str(path.relative_to(ROOT)), set(sections), properties))
    assert not problems, "\n".join(problems)
    assert count > 20  # the scan does see the code's citations


def test_checker_flags_bad_citations(structure):
    sections, properties = structure
    secs = set(sections)
    t = "theory " + SECTION_SIGN

    def bad(text: str) -> bool:
        return bool(problems_in(text, "x", secs, properties))

    assert not bad(f"({t}3.1) and ({t}{SECTION_SIGN}2-4) and ({t}{SECTION_SIGN}1, 3 and 3.2)")
    assert not bad(f"{t}3, property 3; {t}3 properties 1, 2, 5, the target; {t}6 states")
    assert bad(f"see {t}9.7 for details")  # no such section
    assert bad(f"{t}{SECTION_SIGN}3.1, 3.9")  # one of two missing
    assert bad(f"{t}{SECTION_SIGN}2-9")  # range past the last section
    assert bad(f"{t}3, property 6")  # no such property
    assert bad(f"{t}x")  # malformed
    assert bad("as the " + FORBIDDEN[0] + " says")
    assert bad("see " + FORBIDDEN[2] + "/notes")
