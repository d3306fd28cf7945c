"""Figures from a command, never by hand (evidence/): every page of docs/results/ is what its committed data file
renders to; every table of figures in README.md and docs/*.md is a generated block whose content is its rendering;
the renderer writes a hand-computed case as computed by hand; the "reproduced?" rule decides hand-made cases as its
documentation says; the runner times and resumes a study; the CLI lists the studies."""

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # evidence/ is a top-level package of the repository, not installed with dpo_ref

from evidence import blocks, compare, pages, render, runner  # noqa: E402
from evidence.format import wall_time  # noqa: E402
from evidence.studies import STUDIES, Step, Study, select  # noqa: E402

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
    (out / runner.LEDGER).unlink()  # output the ledger did not time: refused, since its wall time would be wrong
    assert runner.run_study(study, out) is False and not (out / runner.LEDGER).exists()
    assert runner.run_study(study, out, again=True) is True  # anew: the output removed, one invocation
    assert [i["rc"] for i in runner.Ledger(out).invocations("fake")] == [0]


# (d) the CLI


def test_the_cli_helps_and_lists_every_study_with_its_command():
    env = os.environ | {"PYTHONPATH": str(ROOT)}

    def run(*args):
        command = [sys.executable, "-m", "evidence", *args]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)

    helped = run("--help")
    assert helped.returncode == 0 and "list" in helped.stdout and "render" in helped.stdout
    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    for study in STUDIES.values():
        assert study.key in listed.stdout
        for step in study.steps:
            assert " ".join(study.argv(step, "runs/evidence")) in listed.stdout
    assert run("run", "no_such_study").returncode == 2


def test_studies_are_selected_by_key_or_scale_with_what_they_read():
    assert [s.key for s in select(["world"])] == [k for k, s in STUDIES.items() if s.scale == "world"]
    assert [s.key for s in select(["rq3_smollm2"])] == ["rq1_smollm2", "rq3_smollm2"]
    assert len(select(None)) == len(STUDIES)
    with pytest.raises(ValueError, match="unknown study"):
        select(["rq9"])
    files = [a for s in STUDIES.values() for step in s.steps for a in step.args if a.endswith(".yaml")]
    assert files and all((ROOT / f).is_file() for f in files), [f for f in files if not (ROOT / f).is_file()]
