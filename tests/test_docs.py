"""The documentation holds together: every relative link in README.md and docs/*.md leads
to a file that exists and, with an #anchor, to a heading of that file; the README stays
short enough to read on a few screens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")


def prose_lines(path: Path) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in prose_lines(path):
        match = re.match(r"#{1,6} (.*)", line)
        if match is None:
            continue
        base = slug(match.group(1))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    targets = [m for line in prose_lines(path) for m in LINK.findall(line)]
    return [t for t in targets if not re.match(r"[a-z]+:", t)]


def test_slug_matches_github() -> None:
    assert slug("`ggufops validate [--base REF] [--check-artifacts] [--json]`") == \
        "ggufops-validate---base-ref---check-artifacts---json"
    assert slug("Pointing at another S3 (AWS, MinIO, …)") == "pointing-at-another-s3-aws-minio-"
    assert slug("The demo: `make demo`") == "the-demo-make-demo"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert broken == []


def test_a_broken_link_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [file](missing.md)\n"
                    "```\n[in code](ignored.md)\n```\n")
    assert relative_links(page) == ["#title", "#nope", "missing.md"]
    assert anchors(page) == {"title"}


def test_readme_is_under_15_kb_and_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) < 15 * 1024
    assert "make demo    # " in readme and "make test    # " in readme


def test_every_docs_page_is_in_the_index() -> None:
    index = (ROOT / "docs" / "README.md").read_text()
    missing = [p.name for p in PAGES[1:] if p.name != "README.md" and f"({p.name})" not in index]
    assert missing == []
