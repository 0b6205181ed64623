"""Every relative link and #anchor in README.md and docs/*.md resolves, and no docs page is orphaned.

No Markdown parser is a dependency, so links and headings are read with regular expressions,
after fenced code blocks and inline code spans are removed (a `[x](y)` inside code is not a
link). Anchors follow GitHub's heading slugs, since that is where the docs are read.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(page.read_text()):
        m = HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        result.add(slug if n == 0 else f"{slug}-{n}")
    return result


def links(page: Path) -> list[str]:
    """Every link target of ``page``; a link's text may run over a line break."""
    prose = "\n".join(CODE_SPAN.sub("", line) for line in prose_lines(page.read_text()))
    return LINK.findall(prose)


def broken_links(page: Path) -> list[str]:
    """One line per link of ``page`` that does not resolve: a missing file or an unknown anchor."""
    problems = []
    for target in links(page):
        if not target or SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{page.name}: {target}: no such file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{page.name}: {target}: no heading '#{anchor}' in {dest.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_every_docs_page_is_linked() -> None:
    linked = set()
    for page in PAGES:
        for target in links(page):
            path_part = target.partition("#")[0]
            if path_part and not SCHEME.match(target):
                dest = (page.parent / path_part).resolve()
                if dest != page.resolve():
                    linked.add(dest)
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert orphans == []


def test_github_slugs() -> None:
    assert github_slug("Host file reference (`hosts/<name>.yaml`)") == "host-file-reference-hostsnameyaml"
    assert github_slug("The plan JSON (contract, `$HOMELAB_STATE/plans/<host>.json`)") == (
        "the-plan-json-contract-homelab_stateplanshostjson"
    )
    assert github_slug("Processes: no orphans, ever") == "processes-no-orphans-ever"
    assert github_slug("--oracle (llama.cpp's own dry run)") == "--oracle-llamacpps-own-dry-run"


def test_the_checker_finds_broken_links(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n\n## Second part\n\n## Second part\n")
    page = tmp_path / "index.md"
    page.write_text(
        "[ok](a.md#second-part) [dup](a.md#second-part-1) [self](#here)\n\n# Here\n\n[two\nlines](a.md#nowhere) "
        "[gone](missing.md) [bad](a.md#third) `[code](missing-too.md)`\n\n"
        "```\n[fenced](missing-three.md)\n```\n[web](https://example.org/x#y)\n"
    )
    assert broken_links(page) == [
        "index.md: a.md#nowhere: no heading '#nowhere' in a.md",
        f"index.md: missing.md: no such file {tmp_path / 'missing.md'}",
        "index.md: a.md#third: no heading '#third' in a.md",
    ]
