"""Everything `python -m evidence` writes into the repository, rendered from the studies' data files alone
(docs/results/data/<key>.json): the pages of docs/results/ and the generated blocks of README.md and docs/*.md; and
the check that nothing there differs from its rendering, and that no table of figures sits outside a block."""

from __future__ import annotations

import json
import re
from pathlib import Path

from . import blocks
from .compare import paper_page
from .pages import page
from .studies import SCALES, STUDIES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
IMAGES = RESULTS / "img"  # the reports' figures, copied by the runner (`<key>-frontier.png` ...)
GENERATED_ELSEWHERE = {"reference.md"}  # docs/reference.md: generated from the code (dpo_ref/docs.py)

# Tables of figures that may stay outside a generated block, each with its reason: benchmark tables only, printed by
# bench/*.py scripts that write no JSON a block could be rendered from. Keyed by (file, the table's header line).
BENCH_TABLES = {
    ("docs/cost.md", "| config | time A/B | time A/C |"): "printed by bench/sweep_cost.py (`make bench`), no JSON",
    ("docs/training.md", "| sweep | 1 worker |"): "printed by bench/workers.py, no JSON",
}
# Tables of figures not (yet) rendered from a study's data file, each with where its figures come from; remove an
# entry once its table is converted (the test then checks the block).
NOT_YET_CONVERTED = {
    ("docs/world.md", "| model | params |"): "the embedded world's own build statistics, not a study's: "
    "`model_stats` of `<cache>/world/<hash>/meta.json`, which the world's build (dpo_ref/world/build.py) writes when "
    "the world is first built; no command of evidence/studies.py writes them, so no data file holds them",
}
EXEMPT = {**BENCH_TABLES, **NOT_YET_CONVERTED}
TABLE_ROW = re.compile(r"^\s*\|")
SEPARATOR = re.compile(r"^\s*\|[\s:|-]+\|?\s*$")
RENDER = "python -m evidence render"
# a cell that is a number (with a unit, an interval or a note in brackets): `0.519 [0.479, 0.559]`, `90.6 s`,
# `70.6 s (0.78x)`, `6 / 72 / 72`, `2`; not `95% intervals of every metric`, nor `Tables 1 and 2`
NUMBER = r"[-+]?\d[\d.,]*\s*(?:%|x|s|min)?"
FIGURE_CELL = re.compile(rf"^{NUMBER}(?:\s*/\s*{NUMBER})*\s*(?:[\[(].*)?$")


def data_path(key: str) -> Path:
    return RESULTS / "data" / f"{key}.json"


def load(key: str) -> dict | None:
    """A study's committed data file, or None when it has not been run yet."""
    path = data_path(key)
    return json.loads(path.read_text()) if path.is_file() else None


def write_data(key: str, data: dict) -> None:
    path = data_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def index_page() -> str:
    rows = ["- [The paper's tables beside dporef's](paper.md): Tables 1-5 of arXiv 2407.13709, row by row"]
    for study in STUDIES.values():
        state = "" if data_path(study.key).is_file() else " (not run yet)"
        rows.append(f"- [{study.title}]({study.key}.md){state}: `{study.key}`, on {SCALES[study.scale]}")
    return (
        "# Generated results\n\nEvery figure on these pages, and every figure the other pages quote, is rendered "
        "by `python -m evidence` from what the study commands wrote: `make evidence` runs the studies (resumably; "
        "`make evidence ONLY=world`, `ONLY=smollm2` or `ONLY=rq1_world` runs some), copies each study's results.json "
        "(tune.json for tune-beta) and the timings of its commands into `docs/results/data/<study>.json` and its "
        "report's figures into `docs/results/img/`, and "
        "renders the pages and the other pages' generated blocks (between `<!-- evidence:... -->` markers) from "
        "those files alone. `python -m evidence render` re-renders them; `tests/test_evidence.py` fails when a page "
        "or block differs from its rendering, or when a table of figures sits outside a block. A study command run "
        "outside the runner is recorded by `python -m evidence adopt` from the times `date +%s` printed around it, "
        "and its page says its wall time was timed outside the runner.\n\n" + "\n".join(rows) + "\n"
    )


def pages() -> dict[Path, str]:
    """docs/results/*.md, as rendered from the data files."""
    out = {RESULTS / f"{key}.md": page(study, load(key)) for key, study in STUDIES.items()}
    return out | {RESULTS / "paper.md": paper_page(load), RESULTS / "index.md": index_page()}


def doc_files() -> list[Path]:
    """The pages that may hold generated blocks: README.md and docs/*.md (docs/results/ is generated whole)."""
    return [ROOT / "README.md", *(p for p in sorted(DOCS.glob("*.md")) if p.name not in GENERATED_ELSEWHERE)]


def rendered() -> dict[Path, str]:
    """Every file `python -m evidence` writes, with its rendered text."""
    docs = {path: blocks.rewrite(path.read_text(), path, load) for path in doc_files()}
    return pages() | docs


def render_all() -> list[str]:
    """Write every rendered file that differs from its rendering; return their paths (relative to the root)."""
    changed = []
    for path, text in rendered().items():
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            changed.append(str(path.relative_to(ROOT)))
    return changed


def _tables(lines: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of each markdown table, 0-based."""
    out, i = [], 0
    while i < len(lines):
        if TABLE_ROW.match(lines[i]):
            j = i
            while j + 1 < len(lines) and TABLE_ROW.match(lines[j + 1]):
                j += 1
            out.append((i, j))
            i = j
        i += 1
    return out


def _has_figure(lines: list[str]) -> bool:
    for line in lines:
        if SEPARATOR.match(line):
            continue
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        if any(FIGURE_CELL.match(re.sub(r"`[^`]*`", "", c).strip()) for c in cells):
            return True
    return False


def stray_tables(path: Path, text: str) -> list[str]:
    """`file:line` of each table with a figure in a cell of its own outside a generated block, unless listed in
    BENCH_TABLES or NOT_YET_CONVERTED."""
    lines, name = text.split("\n"), str(path.relative_to(ROOT))
    inside = {i for _, start, end in blocks.blocks(text) for i in range(start, end + 1)}
    found = []
    for start, end in _tables(lines):
        allowed = any(f == name and lines[start].strip().startswith(head) for f, head in EXEMPT)
        if start not in inside and not allowed and _has_figure(lines[start : end + 1]):
            found.append(f"{name}:{start + 1}: a table of figures outside a generated block ({lines[start][:60]})")
    return found


def first_difference(have: str, want: str) -> int:
    """The 1-based number of the first line where `have` differs from `want`."""
    a, b = have.split("\n"), want.split("\n")
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)) + 1)


def page_problems(path: Path, have: str | None, want: str) -> list[str]:
    """`file:line` where a page of docs/results/ first differs from its rendering from its data file."""
    name = str(path.relative_to(ROOT))
    if have is None:
        return [f"{name}: missing ({RENDER})"]
    if have != want:
        return [f"{name}:{first_difference(have, want)}: differs from its rendering from its data file ({RENDER})"]
    return []


def block_problems(path: Path, text: str) -> list[str]:
    """`file:line` of each generated block whose content is not its rendering (an unknown block name included)."""
    name, lines, found = str(path.relative_to(ROOT)), text.split("\n"), []
    try:
        spans = blocks.blocks(text)
    except ValueError as e:
        return [f"{name}:{e}"]
    for block, start, end in spans:
        try:
            want = ["", *blocks.render_block(block, path, load).strip("\n").split("\n"), ""]
        except ValueError as e:
            found.append(f"{name}:{start + 1}: {e}")
            continue
        have = lines[start + 1 : end]
        if have != want:
            line = start + 1 + first_difference("\n".join(have), "\n".join(want))
            found.append(f"{name}:{line}: generated block {block} differs from its rendering ({RENDER})")
    return found


def check_all() -> list[str]:
    """What differs from its rendering, and the tables of figures typed by hand; empty when all is as rendered."""
    problems = []
    for path, want in pages().items():
        problems += page_problems(path, path.read_text() if path.is_file() else None, want)
    for path in doc_files():
        text = path.read_text()
        problems += block_problems(path, text) + stray_tables(path, text)
    return problems
