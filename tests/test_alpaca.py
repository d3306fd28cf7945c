"""AlpacaEval interop: every run exports model_outputs.json; annotation files come back as ae_* columns."""

import json

import pytest
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.evaluation.length_controlled import lc_win_rate

pytestmark = pytest.mark.slow  # end to end: trains on the embedded world


@pytest.fixture(scope="module")
def finished(run_study, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_study("sweep-beta", out, "objectives.0.betas=[0.1]", "train.max_steps=2", experiment="rq1_sweep_beta")
    return out / "rq1_sweep_beta"


def annotate(outputs: list[dict], preference) -> list[dict]:
    """What AlpacaEval writes: its baseline's output as output_1, the run's as output_2, a preference in [1, 2]."""
    return [
        {
            "instruction": o["instruction"],
            "output_1": "baseline answer " * (i % 3),
            "generator_1": "gpt4_turbo",
            "output_2": o["output"],
            "generator_2": o["generator"],
            "annotator": "weighted_alpaca_eval_gpt4_turbo",
            "preference": preference(i),
        }
        for i, o in enumerate(outputs)
    ]


def test_every_run_exports_model_outputs(finished):
    for run_id in ("sft", "dpo-sft-b0.1-s0"):
        outputs = json.loads((finished / run_id / "model_outputs.json").read_text())
        gens = [json.loads(x) for x in (finished / run_id / "generations.jsonl").read_text().splitlines()]
        assert [o["instruction"] for o in outputs] == [g["prompt"] for g in gens]
        assert [o["output"] for o in outputs] == [g["response"] for g in gens]
        assert {o["generator"] for o in outputs} == {f"rq1_sweep_beta/{run_id}"}


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
    lc = lc_win_rate(wins, [len(r["output_2"]) for r in judged], [len(r["output_1"]) for r in judged])
    assert summary["lc_win_rate"] == pytest.approx(lc)
    table = json.loads((finished / "results.json").read_text())["rows"]
    trained = next(r for r in table if r["run_id"] == "dpo-sft-b0.1-s0")
    assert trained["ae_win_rate"] == pytest.approx(summary["win_rate"])
    assert trained["ae_lc_win_rate"] == pytest.approx(lc)
    assert next(r for r in table if r["run_id"] == "sft")["ae_win_rate"] is None
    assert "ae_lc_win_rate" in (finished / "results.md").read_text()


def test_bad_annotation_files_give_one_line_and_exit_2(finished, tmp_path):
    cases = {
        "broken.json": "[{",
        "not_a_list.json": json.dumps({"preference": 2}),
        "missing_keys.json": json.dumps([{"output_1": "a", "output_2": "b"}]),
        "other_experiment.json": json.dumps(
            [{"output_1": "a", "output_2": "b", "generator_2": "x/sft", "preference": 2.0}]
        ),
    }
    for name, text in cases.items():
        path = tmp_path / name
        path.write_text(text)
        result = CliRunner().invoke(app, ["import-annotations", str(finished), str(path)])
        assert result.exit_code == 2, (name, result.output)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and (name in lines[0] or str(finished) in lines[0]), (name, result.stderr)
