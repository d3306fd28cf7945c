"""Figures from a command, never by hand (evidence/): every page of docs/results/ is what its committed data file
renders to, with the figures it names copied beside it; every table of figures in README.md and docs/*.md is a
generated block whose content is its rendering; the renderer writes a hand-computed case as computed by hand (the
SmolLM2 page's three questions, the reference methods' summary included); the "reproduced?" rule decides hand-made
cases as its documentation says; the runner times and resumes a study, copies its figures, and records a command
timed outside it (`adopt`) as such; the CLI lists the studies."""

import datetime
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # evidence/ is a top-level package of the repository, not installed with dpo_ref

from evidence import blocks, compare, pages, provenance, render, runner  # noqa: E402
from evidence.format import commits, wall_time  # noqa: E402
from evidence.studies import SMOLLM2_QUESTIONS, STUDIES, Step, Study, select  # noqa: E402

# (a) the pages are their data's rendering


def test_every_page_is_the_rendering_of_its_committed_data():
    problems = []
    for path, want in render.pages().items():
        problems += render.page_problems(path, path.read_text() if path.is_file() else None, want)
    assert not problems, "\n".join(problems)


def test_every_data_file_is_a_study_and_holds_what_its_page_needs():
    for path in sorted((render.RESULTS / "data").glob("*.json")):
        assert path.stem in STUDIES, f"{path.relative_to(ROOT)} names no study of evidence/studies.py"
        data = json.loads(path.read_text())
        assert data["key"] == path.stem and data["invocations"], path
        for step in STUDIES[path.stem].steps:
            assert set(data["steps"][step.name]["files"]) == set(step.files), (path, step.name)
            assert not step.pairs or "pairs" in data["steps"][step.name], (path, step.name)


def test_every_copied_figure_is_named_by_a_data_file_and_on_its_page():
    """docs/results/img/ holds exactly the figures the data files name, and each page embeds its own."""
    named = {}
    for path in sorted((render.RESULTS / "data").glob("*.json")):
        for step in json.loads(path.read_text())["steps"].values():
            named |= {render.RESULTS / image: path.stem for image in (step.get("images") or {}).values()}
    present = set(render.IMAGES.glob("*")) if render.IMAGES.is_dir() else set()
    assert present == set(named), {"not named": present - set(named), "missing": set(named) - present}
    for image, key in named.items():
        assert f"]({image.relative_to(render.RESULTS)})" in (render.RESULTS / f"{key}.md").read_text(), image


def test_a_figure_edited_by_hand_on_a_page_is_caught_with_its_line():
    path = render.RESULTS / "rq1_world.md"
    want = render.pages()[path]
    lines = want.split("\n")
    row = next(i for i, line in enumerate(lines) if line.startswith("| dpo-sft-"))
    lines[row] = lines[row].replace("0.", "0.9", 1)
    assert render.page_problems(path, "\n".join(lines), want) == [
        f"docs/results/rq1_world.md:{row + 1}: differs from its rendering from its data file ({render.RENDER})"
    ]


# (b) the docs' figures are generated blocks


def test_docs_tables_of_figures_are_generated_blocks():
    problems = []
    for path in render.doc_files():
        text = path.read_text()
        problems += render.block_problems(path, text) + render.stray_tables(path, text)
    assert not problems, "\n".join(problems)


def test_the_docs_check_catches_a_hand_edited_block_and_a_hand_typed_table():
    readme = ROOT / "README.md"
    text = readme.read_text()
    name, start, end = next(b for b in blocks.blocks(text) if b[0] == "rq1_world:table")
    lines = text.split("\n")
    row = next(i for i in range(start, end) if lines[i].startswith("| SFT"))
    lines[row] = lines[row].replace("[", "[0.9", 1)  # one interval's figure typed over
    problems = render.block_problems(readme, "\n".join(lines))
    assert problems == [f"README.md:{row + 1}: generated block {name} differs from its rendering ({render.RENDER})"]
    typed = text + "\n| beta | win rate |\n|---|---|\n| 0.1 | 0.550 |\n"
    stray = render.stray_tables(readme, typed)
    assert len(stray) == 1 and stray[0].startswith(f"README.md:{len(text.split(chr(10))) + 1}:")
    words = text + "\n| command | tables |\n|---|---|\n| `dporef sweep-beta` | Tables 1 and 2 |\n"
    assert render.stray_tables(readme, words) == []  # no cell of its own is a number


def test_only_bench_tables_and_named_pending_ones_are_exempt():
    for (file, head), reason in render.BENCH_TABLES.items():
        assert "bench/" in reason and (ROOT / file).is_file()
        assert any(line.strip().startswith(head) for line in (ROOT / file).read_text().splitlines()), (file, head)
    for (file, head), reason in render.NOT_YET_CONVERTED.items():
        assert reason and (ROOT / file).is_file()
        assert any(line.strip().startswith(head) for line in (ROOT / file).read_text().splitlines()), (
            f"{file} no longer has the table {head!r}: remove it from NOT_YET_CONVERTED"
        )


# (c) the renderer against a hand-computed case

HAND = {
    "key": "rq1_world",
    "title": "RQ1 on the embedded world: DPO across beta",
    "invocations": [
        {"step": "sweep", "command": ["dporef", "sweep-beta", "--out", "o"], "started": "2025-01-02T03:04:05Z"}
        | {"seconds": 100.4, "rc": "interrupted", "commit": "abc1234", "dirty_count": 0}
        | {"machine": {"cpu": "Test CPU", "cores": 2}},
        {"step": "sweep", "command": ["dporef", "sweep-beta", "--out", "o"], "started": "2025-01-03T00:00:00Z"}
        | {"seconds": 41.2, "rc": 0, "commit": "abc1234", "dirty_count": 2}
        | {"machine": {"cpu": "Test CPU", "cores": 2}},
    ],
}
SFT_ROW = {"run_id": "sft", "objective": "sft", "reference": None, "beta": None, "status": "done", "steps": None}
SFT_ROW |= {"win_rate": 0.5, "win_rate_lo": 0.45, "win_rate_hi": 0.55, "length": 6.5, "kl": 0.0, "reward": 0.7}
SFT_ROW |= {"lc_win_rate": 0.5, "rank_acc_reward": 0.5, "rank_acc_policy": 0.4375, "val_win_rate": 0.46875}
DPO_ROW = {"run_id": "dpo-sft-b0.1-s0", "objective": "dpo", "reference": "sft", "beta": 0.1, "status": "done"}
DPO_ROW |= {"win_rate": 0.61234, "win_rate_lo": 0.56, "win_rate_hi": 0.66049, "length": 7.125, "kl": 1.23456}
DPO_ROW |= {"lc_win_rate": None, "reward": 0.75, "rank_acc_reward": 0.75, "rank_acc_policy": 0.5, "steps": 24}
DPO_ROW |= {"val_win_rate": 0.625, "val_win_rate_lo": 0.5, "val_win_rate_hi": 0.75}
DPO3_ROW = DPO_ROW | {"run_id": "dpo-sft-b3-s0", "beta": 3, "win_rate": 0.52, "win_rate_lo": 0.47, "win_rate_hi": 0.57}
DPO3_ROW |= {"kl": 0.05, "length": 6.6, "reward": 0.8, "val_win_rate": 0.5}
COMPARISON = {
    "best": "dpo <- sft beta 0.1",
    "best_val_win_rate": 0.625,
    "indistinguishable": [],
    "worse": ["dpo <- sft beta 3"],
    "better": [],
    "differences": {"dpo <- sft beta 3": [0.0123, 0.1857]},
    "estimates": {"dpo <- sft beta 3": 0.0923},
    "critical_value": 1.96,
    "comparisons": 1,
    "left_out_degenerate": [],
}


def hand_data() -> dict:
    rows = [SFT_ROW, DPO3_ROW, DPO_ROW]
    results = {"rows": rows, "by_setting": [r | {"seeds": 1} for r in rows], "indistinguishable_from_best": COMPARISON}
    step = {"command": ["dporef", "sweep-beta", "--out", "o"], "files": {"results.json": results}}
    return HAND | {"steps": {"sweep": step}}


def test_the_page_writes_a_hand_computed_case_as_computed_by_hand():
    text = pages.page(STUDIES["rq1_world"], hand_data())
    assert "- **Commit**: `abc1234`; `abc1234` + uncommitted changes\n" in text
    assert "- **Machine**: Test CPU, 2 cores\n- **Date**: 2025-01-03 (UTC)\n" in text
    # 100.4 + 41.2 = 141.6 s, rounded to 142; two invocations of one command: a resumed study
    wall = "- **Wall time** (timed around each command by `python -m evidence`): 142 s, 2 invocations of the command"
    assert wall + " (resumed: the invocations' times add up" in text
    # beta as written, shares to 3 decimals with their intervals, length and KL to 2, a missing number as -
    row = "| dpo-sft-b0.1-s0 | 0.1 | done | 0.612 [0.560, 0.660] | - | 0.750 | 7.12 | - | 1.23 | - | 0.750 | 0.500 |"
    assert row + "\n" in text
    assert "| dpo <- sft beta 3 | 0.092 [0.012, 0.186] | worse |\n" in text
    assert "Best setting by the validation rule: **dpo <- sft beta 0.1** (validation win rate 0.625)" in text


def test_the_docs_blocks_write_a_hand_computed_case_as_computed_by_hand():
    data = hand_data()
    table = blocks.beta_table(data, ROOT / "README.md")
    assert "| SFT itself (the noise floor) | 0.500 [0.450, 0.550] |  |\n" in table
    assert "| 0.1 | 0.612 [0.560, 0.660] | chosen (validation win rate 0.625 [0.500, 0.750]) |\n" in table
    assert "| 3 | 0.520 [0.470, 0.570] | worse (best minus it [0.012, 0.186]) |\n" in table
    assert blocks.drift(data, ROOT / "README.md") == (
        "KL to the reference 0.05 at beta 3, 1.23 at beta 0.1; mean length 6.60 and 7.12 tokens (SFT 6.50); the "
        "judge's mean reward is highest at beta 3 (0.800; SFT 0.700).\n"
    )


def run_row(run_id, objective, reference, beta, win, kl, kl_sft=None, val=0.5, status="done"):
    """A results.json row: win rate +-0.05, KL +-20%, length 60 +-5, ended 0.9 +-0.05, no LC win rate."""
    kl_sft = kl if kl_sft is None else kl_sft
    row = {"run_id": run_id, "objective": objective, "reference": reference, "beta": beta, "seed": 0, "status": status}
    row |= {"win_rate": win, "win_rate_lo": win - 0.05, "win_rate_hi": win + 0.05, "lc_win_rate": None}
    row |= {"kl": kl, "kl_lo": kl * 0.8, "kl_hi": kl * 1.2, "kl_sft": kl_sft, "kl_sft_lo": kl_sft * 0.8}
    row |= {"kl_sft_hi": kl_sft * 1.2, "length": 60.0, "length_lo": 55.0, "length_hi": 65.0, "eos_rate": 0.9}
    row |= {"eos_rate_lo": 0.85, "eos_rate_hi": 0.95, "val_win_rate": val, "val_win_rate_lo": val - 0.1}
    row |= {"val_win_rate_hi": val + 0.1, "rank_acc_reward": 0.6, "rank_acc_policy": 0.55, "reward": 0.5}
    return row


def results_of(rows: list[dict], best: str, same: list[str], degenerate: tuple[str, ...] = ()) -> dict:
    """results.json of `rows`: by_setting (one seed), `best` the validation's choice, `same` the settings not
    distinguishable from it, the rest worse; each method's best row by the highest validation win rate."""
    by_setting = [{k: v for k, v in r.items() if k not in ("run_id", "seed")} | {"seeds": 1} for r in rows]
    names = [compare.label_of(r["objective"], r["reference"], r["beta"]) for r in by_setting[1:]]
    others = [n for n in names if n != best and n not in degenerate]
    comparison = {"best": best, "best_val_win_rate": 0.62, "indistinguishable": same, "better": []}
    comparison |= {"worse": [n for n in others if n not in same], "critical_value": 2.6, "comparisons": len(others)}
    comparison |= {"differences": {n: [-0.05 if n in same else 0.02, 0.06] for n in others}}
    comparison |= {"estimates": dict.fromkeys(others, 0.03), "left_out_degenerate": list(degenerate)}
    best_rows = {"rule": "the highest validation win rate", "rows": compare.best_among(by_setting)}
    return {"rows": rows, "by_setting": by_setting, "indistinguishable_from_best": comparison, "best": best_rows}


SMOLLM2_ROWS = [
    run_row("sft", "sft", None, None, 0.5, 0.0, val=0.48),
    run_row("dpo-sft-b0.5-s0", "dpo", "sft", 0.5, 0.55, 0.1, val=0.55),
    run_row("dpo-sft-b0.1-s0", "dpo", "sft", 0.1, 0.6, 0.5, val=0.6),
    run_row("dpo-sft-b0.02-s0", "dpo", "sft", 0.02, 0.52, 2.0, val=0.5),
    run_row("dpo-strong-b0.5-s0", "dpo", "strong", 0.5, 0.64, 0.3, kl_sft=0.8, val=0.56),
    run_row("dpo-strong-b0.1-s0", "dpo", "strong", 0.1, 0.57, 0.6, kl_sft=1.1, val=0.59),
    run_row("posterior-b0.1-s0", "posterior", None, 0.1, 0.45, 3.0, val=0.45),
    run_row("likelihood-b0.1-s0", "likelihood", None, 0.1, 0.58, 0.7, val=0.57),
    run_row("dpo-guide-b0.5-s0", "dpo", "guide", 0.5, 0.62, 0.2, kl_sft=0.6, val=0.58),
    run_row("dpo-guide-b0.1-s0", "dpo", "guide", 0.1, 0.59, 0.4, kl_sft=0.9, val=0.62),
    run_row("dpo-guide-b0.02-s0", "dpo", "guide", 0.02, 0.40, 3.0, kl_sft=3.5, val=0.7, status="degenerate"),
]
SMOLLM2_COMMAND = ["dporef", "swap-reference", "experiments/smollm2/study.yaml", "--out", "runs/evidence"]
PAIRS = {
    "tokenization": {
        "truncated": {"validation": 0, "train": 1},
        "dropped_prompt_too_long": {"validation": 0, "train": 0},
        "unfinished": {"validation": 0, "train": 2},
        "kept": {"validation": 36, "train": 97},
        "dropped_over_reference_context": {"validation": 0, "train": 0},
    },
    "prompts": {"test_prompts": 256, "validation_prompts": 36, "validation_pairs_on_test_prompts": 0},
}
SPLIT_STATS = {"chosen_ended": 1.0, "rejected_ended": 1.0, "chosen_tokens": 43.526, "rejected_tokens": 55.9}
SAMPLED = {"pairing": "both_ended", "length_tolerance": None, "build_seconds": 612.4, "sample_mean_tokens": 85.53}
SAMPLED |= {"sample_mean_score": 0.4242, "sample_all_passed": 0.1307, "sample_eos_rate": 0.5384}
SAMPLED["splits"] = {
    "train": {"prompts": 128, "kept": 38, "skipped": {"fewer_than_2_ended": 43, "all_tied": 47}} | SPLIT_STATS,
    "validation": {"prompts": 48, "kept": 16, "skipped": {"fewer_than_2_ended": 11, "all_tied": 21}} | SPLIT_STATS,
}
STRONG_COMMAND = ["dporef", "sweep-beta", "experiments/smollm2/strong.yaml", "--out", "runs/evidence"]


def smollm2_data() -> dict:
    same = ["dpo <- sft beta 0.1", "dpo <- guide beta 0.5", "likelihood beta 0.1"]
    results = results_of(SMOLLM2_ROWS, "dpo <- guide beta 0.1", same, ("dpo <- guide beta 0.02",))
    adopted = {"step": "swap", "command": SMOLLM2_COMMAND, "started": "2026-12-07T05:40:05Z", "seconds": 3600.4}
    adopted |= {"rc": 0, "commit": "78221e0", "dirty": None, "dirty_count": None, "commit_rule": "the last commit"}
    adopted |= {"machine": {"cpu": "Test CPU", "cores": 2}, "load": [1.56], "timed_by": runner.EXTERNAL}
    step = {"command": SMOLLM2_COMMAND, "files": {"results.json": results}, "pairs": PAIRS | {"sampled": SAMPLED}}
    step["images"] = {"frontier.png": "img/smollm2-swap-frontier.png"}
    strong_rows = [SMOLLM2_ROWS[0], run_row("dpo-sft-b0.5-s0", "dpo", "sft", 0.5, 0.61, 1.5, val=0.6)]
    strong = {"command": STRONG_COMMAND, "files": {"results.json": results_of(strong_rows, "dpo <- sft beta 0.5", [])}}
    steps = {"strong": strong | {"pairs": PAIRS}, "swap": step}  # the strong step's plan.json predates sampled_pairs
    return {"key": "smollm2", "title": STUDIES["smollm2"].title, "invocations": [adopted], "steps": steps}


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n")[1].split("\n## ")[0]


def test_the_smollm2_page_has_a_section_per_question_with_its_rows_as_computed_by_hand():
    text = pages.page(STUDIES["smollm2"], smollm2_data())
    run_ids = {q.key: [line.split(" | ")[0][2:] for line in _section(text, q.title).splitlines()
                        if line.startswith("| ") and "-s0 |" in line or line.startswith("| sft |")]
               for q in SMOLLM2_QUESTIONS}  # fmt: skip
    assert run_ids == {
        "rq1": ["sft", "dpo-sft-b0.5-s0", "dpo-sft-b0.1-s0", "dpo-sft-b0.02-s0"],
        "rq2": ["sft", "dpo-sft-b0.1-s0", "posterior-b0.1-s0", "likelihood-b0.1-s0"],
        "rq3": [
            "sft",
            "dpo-sft-b0.5-s0",
            "dpo-sft-b0.1-s0",
            "dpo-sft-b0.02-s0",
            "dpo-strong-b0.5-s0",
            "dpo-strong-b0.1-s0",
            "dpo-guide-b0.5-s0",
            "dpo-guide-b0.1-s0",
            "dpo-guide-b0.02-s0",
        ],
    }
    rq1, rq3 = _section(text, SMOLLM2_QUESTIONS[0].title), _section(text, SMOLLM2_QUESTIONS[2].title)
    # no LC win rate in results.json: no column; KL to SFT only where it differs from KL to the reference (RQ3)
    assert "| run | beta | status | win rate | KL to its reference | length (tokens) | ended (EOS share) |" in rq1
    assert "LC win rate" not in text and "KL to SFT |" not in rq1 and "| KL to SFT |" in rq3
    row = "| dpo-sft-b0.5-s0 | 0.5 | done | 0.550 [0.500, 0.600] | 0.10 [0.08, 0.12] | 60.00 [55.00, 65.00] | "
    assert row + "0.900 [0.850, 0.950] | 0.600 | 0.550 | worse (best minus it [0.020, 0.060]) |\n" in rq1
    assert "| dpo-guide-b0.1-s0 | 0.1 | done | 0.590 [0.540, 0.640] | 0.40 [0.32, 0.48] | 0.90 [0.72, 1.08] |" in rq3
    assert "| chosen (validation win rate 0.620 [0.520, 0.720]) |\n" in rq3
    assert "| dpo-guide-b0.02-s0 | 0.02 | degenerate |" in rq3 and "| left out (degenerate) |\n" in rq3
    # each method's best beta among the question's rows; the validation's choice over the whole experiment
    assert "| dpo <- sft | 0.1 | 0.600 [0.550, 0.650] |" in rq3 and "| dpo <- guide | 0.1 | 0.590" in rq3
    assert "| dpo <- guide |" not in rq1
    assert "dpo <- guide beta 0.1, is not one of these rows; of these rows, not distinguishable from it on " in rq1
    assert "the test prompts: dpo <- sft beta 0.1, dpo <- guide beta 0.5.\n" in rq3
    assert "Best setting by the validation rule: **dpo <- guide beta 0.1**" in _section(
        text, "All settings: best by validation"
    )
    pairs = _section(text, "The pairs")
    assert "| train | 97 | 1 | 0 | 0 | 2 |\n| validation | 36 | 0 | 0 | 0 | 0 |\n" in pairs
    assert "Prompts: held-out test prompts (the win rates') 256; validation prompts 36;" in pairs
    # how the pairs were sampled, from plan.json's sampled_pairs: skip reasons, ended shares, lengths
    assert (
        "| split | prompts sampled | pairs kept | skipped fewer_than_2_ended | skipped all_tied | chosen ended |"
        in pairs
    )
    assert "| train | 128 | 38 | 43 | 47 | 1.000 | 1.000 | 43.53 | 55.90 |\n" in pairs
    assert "| validation | 48 | 16 | 11 | 21 |" in pairs and "`pairing: both_ended`;" in pairs
    assert (
        "Every sample, kept or not: mean score 0.424, every check passed 0.131, ended 0.538, mean length 85.53 "
        in pairs
    )
    assert "tokens; built in 10 min 12 s.\n" in pairs
    # the command that trains the stronger reference, after the questions it serves: its run, its pairs' counts
    strong = text.split("## strong: `dporef sweep-beta experiments/smollm2/strong.yaml --out runs/evidence`\n")[1]
    assert "| dpo-sft-b0.5-s0 | 0.5 | done | 0.610 [0.560, 0.660] |" in strong.split("### Its pairs")[0]
    assert "| train | 97 | 1 | 0 | 0 | 2 |" in strong.split("### Its pairs")[1] and "sampled_pairs" not in strong
    assert "![reward-KL frontier (swap)](img/smollm2-swap-frontier.png)" in _section(text, "Figures")
    # timed outside the runner: said in the header, and the commit's uncommitted changes are not claimed either way
    assert (
        "- **Wall time**: 60 min 0 s, one invocation of the command; it was timed outside the evidence runner" in text
    )
    assert "- **Commit**: `78221e0` (the last commit before it started; uncommitted changes not recorded)\n" in text


def test_the_smollm2_docs_blocks_answer_from_the_study_not_from_its_reference_command():
    """The data file's first command trains the stronger reference (its own sft and dpo-sft-b0.5-s0 rows, win rate
    0.610); the docs' question blocks take the study's rows, as its page does."""
    load = lambda key: smollm2_data() if key == "smollm2" else None  # noqa: E731
    rq3 = blocks.render_block("smollm2:rq3", Path("docs/results.md"), load)
    assert "| dpo-strong-b0.1-s0 | 0.1 | 0.570 [0.520, 0.620] |" in rq3 and "| dpo-guide-b0.1-s0 |" in rq3
    assert "0.610" not in rq3 and "0.610" not in blocks.render_block("smollm2:rq1", Path("docs/results.md"), load)


def test_the_smollm2_page_and_columns_say_not_run_yet_without_data():
    assert "**Not run yet.**" in pages.page(STUDIES["smollm2"], None)
    text = compare.paper_page(lambda key: None)
    assert text.count("Beside [`smollm2`](smollm2.md), its RQ") == 5


def test_the_paper_page_reads_each_smollm2_column_from_its_questions_rows():
    text = compare.paper_page(lambda key: smollm2_data() if key == "smollm2" else None)
    smollm2 = [part.split("\n## ")[0] for part in text.split("### SmolLM2-135M-Instruct\n")[1:]]
    table1, _, table3, table4, table5 = smollm2
    assert "| 0.5 | - | - | 0.550 [0.500, 0.600] | - | beta 0.5 vs SFT | not in the paper's grid |" in table1
    assert "guide" not in table1.split("\n\n", 1)[1]  # RQ1's rows only
    # RQ2 at equal beta: DPO at 0.1, not DPO's best over its three betas
    assert (
        "| DPO | 16.25 | 0.605 | 359.4 | 0.01 | 0.600 [0.550, 0.650] | 0.550 | 60.00 [55.00, 65.00] | 0.1 |" in table3
    )
    assert "| Probability (posterior) | 12.84 | 0.697 | 744.5 | 100 | 0.450 [0.400, 0.500] |" in table3
    assert "| 0.5 | - | - | - | - | 0.640 [0.590, 0.690] | - | no other-family reference in this study |" in table4
    assert "| 0.570 [0.520, 0.620] (`strong`, beta 0.1) | vs self-reference | no (opposite, within noise) |" in table5
    assert "| 0.590 [0.540, 0.640] (`guide`, beta 0.1) | vs self-reference | no (opposite, within noise) |" in table5


def test_best_among_is_the_validation_rule_per_method():
    by_setting = results_of(SMOLLM2_ROWS, "dpo <- guide beta 0.1", [])["by_setting"]
    best = {r["method"]: r["best_beta"] for r in compare.best_among(by_setting)}
    # the degenerate guide setting never best; one beta each for the reference-free objectives
    assert best == {
        "SFT": None,
        "dpo <- sft": 0.1,
        "dpo <- strong": 0.1,
        "posterior": 0.1,
        "likelihood": 0.1,
        "dpo <- guide": 0.1,
    }
    rq2 = compare.subset({"rows": SMOLLM2_ROWS, "by_setting": by_setting}, SMOLLM2_QUESTIONS[1])
    assert [(r["objective"], r["beta"]) for r in rq2["by_setting"]] == [
        ("sft", None), ("dpo", 0.1), ("posterior", 0.1), ("likelihood", 0.1)
    ]  # fmt: skip


REFERENCE_METHODS = [
    run_row("sft", "sft", None, None, 0.52, 0.0, val=0.5),
    run_row("dpo-sft-b1-s0", "dpo", "sft", 1, 0.58, 0.24, val=0.6),
    run_row("dpo-sft-b0.1-s0", "dpo", "sft", 0.1, 0.55, 1.4, val=0.55),
    run_row("dpo-tr-b1-s0", "dpo", "tr", 1, 0.57, 0.5, kl_sft=1.0, val=0.58),
    run_row("dpo-tr-b0.1-s0", "dpo", "tr", 0.1, 0.50, 2.0, kl_sft=3.17, val=0.5),
    run_row("simpo-b1-s0", "simpo", None, 1, 0.45, 6.5, val=0.4),
    run_row("alpha_dpo-sft-b2.5-s0", "alpha_dpo", "sft", 2.5, 0.31, 9.0, val=0.3, status="degenerate"),
]
SIMILARITY = {"sft": {"model": "world:sft", "kind": "fixed"}, "tr": {"model": "world:sft", "kind": "moving"}}


def reference_methods_data() -> dict:
    results = results_of(REFERENCE_METHODS, "dpo <- tr beta 1", ["dpo <- sft beta 1"], ("alpha_dpo <- sft beta 2.5",))
    results["similarity"] = {"references": SIMILARITY}
    step = {"command": ["dporef", "swap-reference"], "files": {"results.json": results}}
    return HAND | {"key": "reference_methods_world", "steps": {"swap": step}}


def test_the_reference_methods_summary_is_computed_as_by_hand():
    text = blocks.summary(reference_methods_data(), ROOT / "docs" / "objectives.md")
    assert text.split("\n\n", 1)[1] == (
        "- **The validation's choice**: dpo <- tr beta 1, test win rate 0.570 [0.520, 0.620], KL to SFT 1.00 "
        "[0.80, 1.20].\n"
        "- **Not distinguishable from it** on the test prompts (simultaneous 95% intervals over 4 comparisons): 1: "
        "dpo <- sft beta 1.\n"
        "- **Worse than it**: 3: dpo <- sft beta 0.1, dpo <- tr beta 0.1, simpo beta 1. **Better**: none.\n"
        # tied: tr at 1 (1.00) and sft at 1 (0.24); worse: 1.40, 3.17, 6.50
        "- **KL to SFT** (nats): the choice and the settings tied with it 0.24 to 1.00; the worse ones 1.40 to "
        "6.50.\n"
        "- **Left out as degenerate**: 1: alpha_dpo <- sft beta 2.5.\n"
        # below the SFT row's 0.52: tr at 0.1 (0.50), simpo (0.45), alpha-DPO (0.31)
        "- **Win rate below the SFT model's own** (0.520 [0.470, 0.570]): dpo <- tr beta 0.1 0.500 [0.450, 0.550], "
        "KL 3.17; simpo beta 1 0.450 [0.400, 0.500], KL 6.50; alpha_dpo <- sft beta 2.5 0.310 [0.260, 0.360], KL "
        "9.00.\n"
    )


def test_the_moving_block_sets_each_moving_reference_beside_the_fixed_one_it_starts_from():
    text = blocks.moving(reference_methods_data(), ROOT / "docs" / "beyond.md")
    assert "| beta | `sft` (fixed): win rate | `sft`: KL to SFT | `tr` (moving): win rate | `tr`: KL to SFT |" in text
    assert "| 1 | 0.580 [0.530, 0.630] | 0.24 [0.19, 0.29] | 0.570 [0.520, 0.620] | 1.00 [0.80, 1.20] |" in text
    assert "| 0.1 | 0.550 [0.500, 0.600] | 1.40 [1.12, 1.68] | 0.500 [0.450, 0.550] | 3.17 [2.54, 3.80] |" in text


def _m(v, lo, hi, degenerate=False):
    return {"v": v, "lo": lo, "hi": hi, "degenerate": degenerate}


def test_the_reproduced_rule_decides_hand_made_cases_as_documented():
    up = [(16.25, 7.57), (10.46, 8.50)]
    assert compare.verdict(up, _m(0.60, 0.56, 0.64), _m(0.50, 0.45, 0.55)) == "yes"
    assert compare.verdict(up, _m(0.56, 0.52, 0.60), _m(0.50, 0.45, 0.55)) == "same direction, within noise"
    assert compare.verdict(up, _m(0.48, 0.44, 0.52), _m(0.50, 0.45, 0.55)) == "no (opposite, within noise)"
    assert compare.verdict(up, _m(0.40, 0.36, 0.44), _m(0.50, 0.45, 0.55)) == "no (opposite)"
    assert compare.verdict(up, _m(0.50, 0.45, 0.55), _m(0.50, 0.45, 0.55)) == "no difference"
    assert compare.verdict([(16.25, 7.57), (7.86, 8.50)], _m(0.6, 0.5, 0.7), _m(0.5, 0.4, 0.6)) == "paper mixed"
    # a degenerate setting counts as below any number, on either side
    assert compare.verdict([(12.36, 7.57), ("degenerate", 8.50)], _m(0.6, 0.5, 0.7), _m(0.5, 0.4, 0.6)) == "paper mixed"
    assert compare.verdict(up, _m(0.1, 0.0, 0.9, degenerate=True), _m(0.5, 0.4, 0.6)) == "no (opposite)"


def test_the_paper_page_shows_not_run_yet_without_data_and_judges_with_it():
    text = compare.paper_page(lambda key: None)
    assert text.count("not run yet") >= 10 and "| 0.01 | 16.25 | 7.86 |" in text
    with_data = compare.paper_page(lambda key: hand_data() if key == "rq1_world" else None)
    assert "| 0.1 | 14.03 | 9.38 | 0.612 [0.560, 0.660] | - | beta 0.1 vs SFT | yes |" in with_data


# the runner: each command timed and recorded, an interrupted study resumed


def test_a_failed_command_is_resumed_and_its_invocations_add_up(tmp_path, monkeypatch):
    fake = tmp_path / "dporef"
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import json, pathlib, sys
            out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
            tries = out / "tries"
            tries.write_text(str(int(tries.read_text()) + 1 if tries.exists() else 1))
            if tries.read_text() == "1":
                sys.exit(3)
            (out / "exp").mkdir(exist_ok=True)
            (out / "exp" / "results.json").write_text(json.dumps({{"rows": [], "by_setting": []}}))
            """
        )
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(runner, "dporef", lambda: str(fake))
    study = Study("fake", "Fake", "world", (Step("sweep", ("sweep-beta",), "exp"),), "a fake study")
    out = tmp_path / "out"
    out.mkdir()
    assert runner.run_study(study, out) is False
    assert runner.run_study(study, out) is True
    assert runner.run_study(study, out) is True  # finished: not invoked a third time
    data = runner.collect(study, out)
    assert [i["rc"] for i in data["invocations"]] == [3, 0]
    assert data["steps"]["sweep"]["command"] == ["dporef", "sweep-beta", "--out", str(out)]
    assert "2 invocations of the command (resumed" in wall_time(data["invocations"])
    changed = Study("fake", "Fake", "world", (Step("sweep", ("sweep-beta", "--set", "x=1"), "exp"),), "a fake study")
    assert runner.run_study(changed, out) is True  # its command changed since: run again, over the same output
    assert [i["command"][2:] for i in runner.Ledger(out).invocations("fake")] == [["--out", str(out)]] * 2 + [
        ["--set", "x=1", "--out", str(out)]
    ]
    assert (out / "tries").read_text() == "3"
    (out / runner.LEDGER).unlink()  # output the ledger did not time: refused, since its wall time would be wrong
    assert runner.run_study(study, out) is False and not (out / runner.LEDGER).exists()
    assert runner.run_study(study, out, again=True) is True  # anew: the output removed, one invocation
    assert [i["rc"] for i in runner.Ledger(out).invocations("fake")] == [0]


def test_the_runners_own_renderings_do_not_count_as_uncommitted_changes():
    # a study started while an earlier one's data file lay uncommitted in docs/results/ ran on the commit's code
    ran = {"commit": "abc1234", "started": "2025-01-02T03:04:05Z"}
    rendered = ["docs/results/data/rq2_world.json", "README.md", "docs/results.md"]  # its data, pages and blocks
    assert commits([ran | {"dirty": rendered, "dirty_count": 3}]) == "`abc1234`"
    dirty = ran | {"dirty": ["docs/results/rq2_world.md", "dpo_ref/train.py"], "dirty_count": 2}
    assert commits([dirty]) == "`abc1234` + uncommitted changes"
    cut = ran | {"dirty": [f"docs/results/img/{k}.png" for k in range(20)], "dirty_count": 21}  # the 21st unknown
    assert commits([cut]) == "`abc1234` + uncommitted changes"


def test_two_runners_sharing_a_ledger_keep_each_others_invocations(tmp_path):
    # two studies started in two terminals: each runner read the ledger before the other wrote to it
    first, second = runner.Ledger(tmp_path), runner.Ledger(tmp_path)
    first.invocations("rq2_world").append({"step": "compare", "rc": None})
    first.save()
    second.invocations("smollm2").append({"step": "swap", "rc": None})
    second.save()
    first.invocations("rq2_world")[-1]["rc"] = 0
    first.save()
    on_disk = json.loads((tmp_path / runner.LEDGER).read_text())
    assert on_disk == {
        "rq2_world": {"invocations": [{"step": "compare", "rc": 0}]},
        "smollm2": {"invocations": [{"step": "swap", "rc": None}]},
    }
    runner.Ledger(tmp_path).forget("rq2_world")  # --again on one study leaves the other's record alone
    assert json.loads((tmp_path / runner.LEDGER).read_text()) == {"smollm2": on_disk["smollm2"]}


def test_the_report_figures_are_copied_and_named_in_the_data_file(tmp_path):
    study = Study(
        "fake",
        "Fake",
        "world",
        (Step("swap", ("swap-reference",), "exp", images=("frontier.png", "results.png")),),
        "x",
    )
    exp, img = tmp_path / "out" / "exp", tmp_path / "img"
    exp.mkdir(parents=True)
    (exp / "results.json").write_text(json.dumps({"rows": [], "by_setting": []}))
    (exp / "frontier.png").write_bytes(b"png")  # no results.png: not named, not copied
    (img).mkdir()
    (img / "fake-results.png").write_bytes(b"stale")  # an earlier run's: removed
    (img / "fake-old-frontier.png").write_bytes(b"stale")  # a step's, by a name the study no longer gives: removed
    (img / "fake_other-frontier.png").write_bytes(b"png")  # another study's: kept
    data = runner.collect(study, tmp_path / "out")
    assert data["steps"]["swap"]["images"] == {"frontier.png": "img/fake-frontier.png"}
    assert runner.copy_images(study, tmp_path / "out", img) == [img / "fake-frontier.png"]
    assert sorted(p.name for p in img.iterdir()) == ["fake-frontier.png", "fake_other-frontier.png"]
    assert "![reward-KL frontier](img/fake-frontier.png)" in pages.figures_section(data)
    several = Study("fake", "Fake", "world", (Step("a", (), "exp"), Step("b", (), "exp2")), "x")
    assert runner.image_name(several, several.steps[1], "frontier.png") == "fake-b-frontier.png"


def _git_head() -> tuple[int, str] | None:
    """(commit time, short hash) of HEAD, None outside a git checkout."""
    out = provenance._git("log", "-1", "--first-parent", "--format=%ct %h")
    return (int(out.split()[0]), out.split()[1]) if out else None


def _adopt_cli(out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "evidence", "adopt", "reference_methods_world", "--out", str(out), *args]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)


def test_adopt_records_a_command_timed_outside_the_runner_as_the_runner_would(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "dporef", lambda: pytest.fail("dporef must not run: the adopted command finished"))
    key = "reference_methods_world"  # one command, long enough to be run by hand
    study, step = STUDIES[key], STUDIES[key].steps[0]
    out = tmp_path / "evidence"
    exp = out / step.exp_name
    started = int(time.time()) - 3600  # `date +%s` an hour ago and now, around the command
    times = ["--started", str(started), "--ended", str(started + 3600), "--rc", "0"]
    assert _adopt_cli(out, *times, "--load-start", "1.5").returncode == 2  # nothing ran there: refused
    exp.mkdir(parents=True)
    ran = {"study": "swap-reference", "argv": [".venv/bin/dporef", *study.argv(step, str(out))[1:]]}
    (exp / "command.json").write_text(json.dumps(ran))
    assert "results.json is missing" in _adopt_cli(out, *times, "--load-start", "1.5").stderr  # rc 0, no results
    (exp / "results.json").write_text("{}")
    done = _adopt_cli(out, *times, "--load-start", "1.56 2.57 3.19 3/116 32187", "--load-end", "2.01 2 2 1/1 1")
    assert done.returncode == 0, done.stderr
    [entry] = runner.Ledger(out).invocations(key)
    assert entry["command"] == study.argv(step, str(out)) and entry["step"] == "swap"
    iso = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (entry["started"], entry["seconds"], entry["rc"]) == (iso, 3600.0, 0)
    assert entry["load"] == [1.56, 2.01] and entry["timed_by"] == runner.EXTERNAL
    assert entry["machine"] == provenance.machine() and entry["dirty"] is None and entry["dirty_count"] is None
    # the same keys as an invocation the runner timed, and the commit the runner would have recorded at the start
    assert set(entry) - {"timed_by", "commit_rule"} == set(HAND["invocations"][0]) | {"dirty", "load"}
    assert _adopt_cli(out, *times, "--load-start", "1.5").returncode == 2  # the same invocation twice: refused
    assert "60 min 0 s, one invocation of the command; 1-minute load average at the start and end of each " in (
        wall_time([entry])
    )
    assert wall_time([entry]).endswith("it was timed outside the evidence runner (`date +%s` before and after the "
                                       "same command, recorded by `adopt`)")  # fmt: skip
    # resuming sees the step finished: nothing run, the adopted invocation is the study's wall time
    assert runner.run_study(study, out) is True and runner.collect(study, out)["invocations"] == [entry]
    head = _git_head()
    if head is not None:  # a git checkout: the last commit before the start
        when, short = head
        assert runner.adopt(study, out, when + 1, when + 2, 0, "1")["commit"] == short
        assert runner.adopt(study, out, when - 1, when + 2, 0, "1")["commit"] != short
    with pytest.raises(runner.AdoptError, match="written before --started"):  # an earlier invocation's command.json
        runner.adopt(study, out, int(time.time()) + 3600, int(time.time()) + 3601, 1, "1")
    ran["argv"][2] = "experiments/rq3_swap_reference/default.yaml"  # another command ran there: refused
    (exp / "command.json").write_text(json.dumps(ran))
    with pytest.raises(runner.AdoptError, match=f"not {key}'s"):
        runner.adopt(study, out, started, started + 1, 1, "1")


# (d) the CLI


def test_the_cli_helps_and_lists_every_study_with_its_command():
    env = os.environ | {"PYTHONPATH": str(ROOT)}

    def run(*args):
        command = [sys.executable, "-m", "evidence", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)

    helped = run("--help")
    assert helped.returncode == 0 and "list" in helped.stdout and "render" in helped.stdout
    assert "adopt" in helped.stdout
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    for study in STUDIES.values():
        assert study.key in listed.stdout
        for step in study.steps:
            assert " ".join(study.argv(step, "runs/evidence")) in listed.stdout
    assert run("run", "no_such_study").returncode == 2


def test_studies_are_selected_by_key_or_scale_with_what_they_read():
    assert [s.key for s in select(["world"])] == [k for k, s in STUDIES.items() if s.scale == "world"]
    assert [s.key for s in select(["smollm2"])] == ["smollm2"]  # the scale and its one study
    assert len(select(None)) == len(STUDIES)
    with pytest.raises(ValueError, match="unknown study"):
        select(["rq9"])
    files = [a for s in STUDIES.values() for step in s.steps for a in step.args if a.endswith(".yaml")]
    assert files and all((ROOT / f).is_file() for f in files), [f for f in files if not (ROOT / f).is_file()]
