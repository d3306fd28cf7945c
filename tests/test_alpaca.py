"""AlpacaEval interop: every run exports model_outputs.json; annotation files come back as ae_* columns.
The LC numbers themselves are checked against AlpacaEval's code in test_lc.py."""

import json
from pathlib import Path

import huggingface_hub.constants
import pytest
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.errors import UserError
from dpo_ref.evaluation.alpaca_eval import import_annotations
from dpo_ref.expdir import ExperimentDir, RunFiles, RunState
from dpo_ref.reporting.tables import COLUMNS, collect, results_caption

ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"


@pytest.fixture(autouse=True)
def empty_hub(tmp_path, monkeypatch):
    """No df_gamed.csv: the import's LC is the minimal GLM, whatever the user's own cache holds."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))


@pytest.fixture(scope="module")
def finished(run_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_study("sweep-beta", out, "objectives.0.betas=[0.1]", "train.max_steps=2", experiment="rq1_sweep_beta")
    return out / "rq1_sweep_beta"


@pytest.fixture
def exp_dir(tmp_path):
    """A results directory with one run, as far as the import reads it."""
    path = tmp_path / "exp"
    (path / "run").mkdir(parents=True)
    (path / "run" / "run.yaml").write_text("run: {}\n")
    return path


def imported(exp_dir, files) -> tuple[dict, dict]:
    """The import's summaries of the one run of `exp_dir` (what the report stage writes into its alpaca_eval.json)."""
    return import_annotations("exp", files, {"run": exp_dir / "run"})


def annotate(outputs: list[dict], preference, annotator: str = ANNOTATOR) -> list[dict]:
    """What AlpacaEval writes: its baseline's output as output_1, the run's as output_2, a preference in [1, 2]."""
    return [
        {
            "instruction": o["instruction"],
            "output_1": "baseline answer " * (i % 3),
            "generator_1": "gpt4_turbo",
            "output_2": o["output"],
            "generator_2": o["generator"],
            "annotator": annotator,
            "preference": preference(i),
        }
        for i, o in enumerate(outputs)
    ]


def outputs(n: int, generator: str = "exp/run") -> list[dict]:
    return [{"instruction": f"q{i}", "output": "answer " * (1 + i % 4), "generator": generator} for i in range(n)]


def write(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_a_zero_preference_is_a_draw(exp_dir, tmp_path):
    prefs = [2.0, 1.0, 0, 0, None, float("nan")]  # AlpacaEval 1 files code a draw as 0
    path = write(tmp_path / "a.json", annotate(outputs(6), lambda i: prefs[i]))
    summary = imported(exp_dir, [path])[0]["run"]
    assert (summary["n"], summary["unjudged"]) == (4, 2)
    assert summary["win_rate"] == pytest.approx((1 + 0 + 0.5 + 0.5) / 4)


@pytest.mark.parametrize("bad", [3, -1, 0.5, 2.5, "2", True])
def test_preferences_outside_0_and_1_to_2_are_refused(exp_dir, tmp_path, bad):
    path = write(tmp_path / "bad.json", annotate(outputs(3), lambda i: bad if i == 1 else 2.0))
    with pytest.raises(UserError) as e:
        imported(exp_dir, [path])
    assert e.value.where == f"{path}: [1]" and "allowed: 1..2" in e.value.message and "0 (a draw)" in e.value.message


def test_the_summary_has_95_percent_intervals(exp_dir, tmp_path):
    """Without draws the win rate's interval is Clopper-Pearson's, the beta quantiles of 7 wins in 10; the LC's
    (here the minimal GLM's) is lc_interval's and holds the estimate."""
    from scipy.stats import beta

    from dpo_ref.evaluation.lc_minimal import lc_interval

    rows = annotate(outputs(10), lambda i: 1.0 if i in (2, 5, 8) else 2.0)
    summary = imported(exp_dir, [write(tmp_path / "a.json", rows)])[0]["run"]
    assert summary["win_rate"] == 0.7
    assert summary["win_rate_lo"] == pytest.approx(beta.ppf(0.025, 7, 4))
    assert summary["win_rate_hi"] == pytest.approx(beta.ppf(0.975, 8, 3))
    wins = [r["preference"] - 1 for r in rows]
    lengths = [len(r["output_2"]) for r in rows], [len(r["output_1"]) for r in rows]
    assert (summary["lc_win_rate_lo"], summary["lc_win_rate_hi"]) == lc_interval(wins, *lengths)
    assert summary["lc_win_rate_lo"] < summary["lc_win_rate"] < summary["lc_win_rate_hi"]


def test_importing_the_same_annotations_twice_counts_each_row_once(exp_dir, tmp_path):
    rows = annotate(outputs(8), lambda i: [1.0, 2.0, 1.75][i % 3])
    first = write(tmp_path / "a.json", rows)
    copy = write(tmp_path / "copy.json", rows)
    summary = imported(exp_dir, [first, first, copy])[0]["run"]
    assert summary["n"] == 8 and summary["duplicates"] == 16
    assert summary["win_rate"] == pytest.approx(sum([0, 1, 0.75, 0, 1, 0.75, 0, 1]) / 8)
    assert summary["files"] == [str(first), str(copy)]


def test_two_annotators_for_one_run_are_refused(exp_dir, tmp_path):
    gpt4 = write(tmp_path / "gpt4.json", annotate(outputs(4), lambda i: 2.0, "alpaca_eval_gpt4"))
    turbo = write(tmp_path / "turbo.json", annotate(outputs(4), lambda i: 1.0))
    with pytest.raises(UserError) as e:
        imported(exp_dir, [gpt4, turbo])
    assert "run run" in e.value.message and f"alpaca_eval_gpt4, {ANNOTATOR}" in e.value.message


def test_the_summary_stores_absolute_paths(exp_dir, tmp_path, monkeypatch):
    write(tmp_path / "annotations.json", annotate(outputs(4), lambda i: 2.0))
    monkeypatch.chdir(tmp_path)
    stored = imported(exp_dir, [Path("annotations.json")])[0]["run"]
    assert stored["files"] == [str((tmp_path / "annotations.json").resolve())]


@pytest.mark.parametrize("kind, rule", [("builtin", True), ("instructions", True), ("reward-model", False)])
def test_the_caption_says_that_lc_removes_signal_from_a_rule_judge(tmp_path, kind, rule):
    (tmp_path / "experiment.yaml").write_text(f"judge:\n  kind: {kind}\n  model: null\n")
    caption = results_caption(ExperimentDir(tmp_path), [dict.fromkeys(COLUMNS)], "exp (sweep)", "the judge")
    assert ("no length bias, so lc_win_rate" in caption and "the win rate is the headline" in caption) == rule


def test_the_lc_method_reaches_the_results_column_and_the_caption(exp_dir, tmp_path):
    summary = imported(exp_dir, [write(tmp_path / "a.json", annotate(outputs(8), lambda i: 1.0 + i / 8))])[0]["run"]
    rows = collect({"run": RunFiles(RunState("done"), {"run": {}}, {"eval": {}}, {"status": "done"}, summary)})
    assert rows[0]["ae_lc_method"] == "minimal"
    assert (
        "ae_lc_win_rate (minimal): AlpacaEval's minimal GLM, df_gamed.csv and the eval set not being"
        in results_caption(ExperimentDir(exp_dir), rows, "exp", "the judge")
    )


@pytest.mark.slow  # end to end: trains on the embedded world
def test_every_run_exports_model_outputs(finished):
    for run_id in ("sft", "dpo-sft-b0.1-s0"):
        outputs = json.loads((finished / run_id / "model_outputs.json").read_text())
        gens = [json.loads(x) for x in (finished / run_id / "generations.jsonl").read_text().splitlines()]
        assert [o["instruction"] for o in outputs] == [g["prompt"] for g in gens]
        assert [o["output"] for o in outputs] == [g["response"] for g in gens]
        assert {o["generator"] for o in outputs} == {f"rq1_sweep_beta/{run_id}"}


@pytest.mark.slow
def test_import_annotations_adds_ae_columns(finished, tmp_path):
    outputs = json.loads((finished / "dpo-sft-b0.1-s0" / "model_outputs.json").read_text())
    rows = annotate(outputs, lambda i: [1.0, 2.0, 1.75, None][i % 4])  # one in four left unjudged
    stray = annotate(outputs[:3], lambda i: 2.0)
    for row in stray:
        row["generator_2"] = "another_experiment/dpo-sft-b0.1-s0"
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(rows + stray))
    result = CliRunner().invoke(app, ["import-annotations", str(finished), str(path)])
    assert result.exit_code == 0, result.output
    assert "skipped 3 annotation rows of 'another_experiment/dpo-sft-b0.1-s0'" in result.output

    judged = [r for r in rows if r["preference"] is not None]
    wins = [r["preference"] - 1 for r in judged]
    summary = json.loads((finished / "dpo-sft-b0.1-s0" / "alpaca_eval.json").read_text())
    assert summary["n"] == len(judged) and summary["unjudged"] == len(rows) - len(judged)
    assert summary["win_rate"] == pytest.approx(sum(wins) / len(wins))
    assert summary["lc_method"] == "minimal" and 0 < summary["lc_win_rate"] < 1
    table = json.loads((finished / "results.json").read_text())["rows"]
    trained = next(r for r in table if r["run_id"] == "dpo-sft-b0.1-s0")
    assert trained["ae_win_rate"] == pytest.approx(summary["win_rate"])
    assert trained["ae_lc_win_rate"] == pytest.approx(summary["lc_win_rate"])
    assert trained["ae_lc_method"] == "minimal"
    assert next(r for r in table if r["run_id"] == "sft")["ae_win_rate"] is None
    markdown = (finished / "results.md").read_text()
    assert "ae_lc_win_rate" in markdown and "no length bias" in markdown  # the world's gold reward is a rule


@pytest.mark.slow
def test_a_refused_import_writes_nothing(finished, tmp_path):
    outputs = json.loads((finished / "sft" / "model_outputs.json").read_text())
    gpt4 = write(tmp_path / "gpt4.json", annotate(outputs, lambda i: 2.0, "alpaca_eval_gpt4"))
    turbo = write(tmp_path / "turbo.json", annotate(outputs, lambda i: 1.0))
    result = CliRunner().invoke(app, ["import-annotations", str(finished), str(gpt4), str(turbo)])
    assert result.exit_code == 2 and "import one annotator's files at a time" in result.output
    assert not (finished / "sft" / "alpaca_eval.json").exists()


@pytest.mark.slow
def test_bad_annotation_files_give_one_line_and_exit_2(finished, tmp_path):
    row = {"output_1": "a", "output_2": "b", "generator_2": "rq1_sweep_beta/sft"}
    cases = {
        "broken.json": "[{",
        "not_a_list.json": json.dumps({"preference": 2}),
        "missing_keys.json": json.dumps([{"output_1": "a", "output_2": "b"}]),
        "other_experiment.json": json.dumps([{**row, "generator_2": "x/sft", "preference": 2.0}]),
        "bad_preference.json": json.dumps([{**row, "preference": 2.0}, {**row, "preference": 5}]),
        "two_annotators.json": json.dumps(
            [{**row, "annotator": "a", "preference": 2.0}, {**row, "annotator": "b", "preference": 1.0}]
        ),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = CliRunner().invoke(app, ["import-annotations", str(finished), str(path)])
        assert result.exit_code == 2, (name, result.output)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and (name in lines[0] or str(finished) in lines[0]), (name, result.stderr)
