"""The documentation: the docs site builds with `mkdocs build --strict` (a broken link or anchor, or a page left out
of the nav, fails it), and the short README stays short, links to every page, and links to nothing missing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MAX_README_LINES = 250

# [text](target) outside code: the target up to a closing parenthesis or a space (a title).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")


def _pages() -> list[str]:
    return sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))


def _without_code(text: str) -> str:
    """The markdown with fenced blocks and code spans removed: a link written there is not a link."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(text: str) -> list[str]:
    return LINK.findall(_without_code(text))


def _nav_pages(nav) -> list[str]:
    out = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


def test_site_builds_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # material's end-of-life notice
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines < MAX_README_LINES, (
        f"README.md has {lines} lines; keep it under {MAX_README_LINES}, detail goes to docs/"
    )


def test_every_page_is_linked_from_the_readme_and_in_the_nav():
    pages = _pages()
    assert "index.md" in pages and "reference.md" in pages
    readme_links = {link.split("#")[0] for link in _links(README.read_text())}
    missing = [page for page in pages if f"docs/{page}" not in readme_links]
    assert not missing, f"docs pages the README does not link to: {missing}"
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    assert config["docs_dir"] == "docs"
    nav = _nav_pages(config["nav"])
    assert sorted(nav) == pages, f"mkdocs.yml's nav {sorted(nav)} differs from the pages in docs/ {pages}"


def test_readme_links_resolve():
    """GitHub renders the README's relative links from the repository root; mkdocs never checks the README."""
    links = _links(README.read_text())
    assert links, "no links found in README.md"
    broken = []
    for link in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", link) or link.startswith("#"):  # https:, mailto:, an anchor
            continue
        path, _, anchor = link.partition("#")
        target = ROOT / path
        if not target.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text()):
            broken.append(f"{link} (no heading with anchor #{anchor})")
    assert not broken, f"README.md links to what does not exist: {broken}"


def _anchors(text: str) -> set[str]:
    """The anchors of a page's headings, as mkdocs (toc) and GitHub both make them for plain ASCII headings."""
    headings = re.findall(r"^#{1,6}\s+(.*?)\s*#*$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S), flags=re.M)
    return {re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", h.lower()).strip()) for h in headings}
