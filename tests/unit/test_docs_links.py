"""Every relative link in the repository's Markdown resolves: the file exists and, where the link
names a heading (``file.md#anchor`` or ``#anchor``), that heading is in it. Sections move
between the README and docs/; a link left pointing at the old place is caught here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import REPO

# Inline links and images; code spans are removed first, so `[x](y)` in code is not a link.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    return {github_anchor(h) for h in HEADING.findall(FENCE.sub("", markdown))}


def relative_links(markdown: str) -> list[str]:
    prose = CODE_SPAN.sub("", FENCE.sub("", markdown))
    return [t for t in LINK.findall(prose) if not re.match(r"[a-z]+:", t)]


def documents() -> list[Path]:
    found = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    found += sorted((REPO / "scripts").rglob("README.md"))
    found += sorted((REPO / "bcclassify").rglob("README.md"))
    return [p for p in found if p.is_file()]


def test_anchor_rules_match_headings_used_in_links():
    assert github_anchor("Start-up: the first upload on a fresh server") == (
        "start-up-the-first-upload-on-a-fresh-server"
    )
    assert github_anchor("The zoo at 128 px seen (issue 25)") == "the-zoo-at-128-px-seen-issue-25"
    assert github_anchor("Beyond PBC's own cells") == "beyond-pbcs-own-cells"


def test_links_are_found_outside_code_only():
    text = "see [a](docs/a.md#x) and `[b](nowhere.md)`\n```\n[c](gone.md)\n```\n[d](https://e.org)"
    assert relative_links(text) == ["docs/a.md#x"]


@pytest.mark.parametrize("document", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(document: Path):
    text = document.read_text(encoding="utf-8")
    broken = []
    for target in relative_links(text):
        path_part, _, fragment = target.partition("#")
        linked = (document.parent / path_part).resolve() if path_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md":
            if fragment not in anchors(linked.read_text(encoding="utf-8")):
                broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    assert not broken, f"{document.relative_to(REPO)}: " + "; ".join(broken)
