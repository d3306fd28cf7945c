"""Every experiment file shipped in experiments/ validates, and the paper and real-LLM ones expand with --dry-run
(printing the plan needs neither the models nor the data)."""

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import load_experiment

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = (ROOT / "experiments").rglob("*.yaml")  # not _base.yaml (shared keys) nor accelerate/ (accelerate's own)
FILES = sorted(p for p in EXPERIMENTS if not p.name.startswith("_") and p.parent.name != "accelerate")


def study_of(path: Path) -> str:
    """The study command the file's own header says runs it (every shipped file says how to run it)."""
    said = re.findall(r"\bdporef (sweep-beta|compare-objectives|swap-reference)( \S+)?", path.read_text())
    assert said, f"{path} names no study command in its header"
    mine = f"{path.parent.name}/{path.name}"  # a header may also say how to run another file first
    return next((study for study, file in said if file.strip().endswith(mine)), said[0][0])


def test_the_paper_configs_are_all_there():
    names = {p.name for p in (ROOT / "experiments" / "paper").glob("*.yaml")}
    for model in ("mistral", "tulu"):
        assert f"rq1_sweep_beta_{model}.yaml" in names and f"rq3_swap_reference_{model}.yaml" in names
    assert "rq2_compare_objectives_mistral.yaml" in names  # the paper ran RQ2 on mistral only
    for name in names - {"_base.yaml"}:  # the shared setup lives in one file; each experiment lists what differs
        text = (ROOT / "experiments" / "paper" / name).read_text()
        assert "extends: _base.yaml" in text and "learning_rate" not in text


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_experiment_file_dry_runs(path, tmp_path):
    exp = load_experiment(path)
    result = CliRunner().invoke(app, [study_of(path), str(path), "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert f"experiment {exp.name}" in result.output
    assert not (tmp_path / exp.name).exists()  # a dry run writes nothing
    if path.parent.name == "paper":
        assert exp.train.learning_rate == 5e-7 and exp.train.epochs == 3 and exp.train.max_length == 2048
        assert exp.train.batch_size * exp.train.grad_accum == 32 and exp.train.eval_steps == 500
        assert exp.data.source == "HuggingFaceH4/ultrafeedback_binarized" and exp.data.train_split == "train_prefs"
        grid = {"rq1": [0.1, 0.05, 0.02, 0.01, 0.005], "rq3": [10, 1, 0.1, 0.01, 0.005]}.get(path.name[:3])
        if grid:
            assert exp.objectives[0].betas == grid
        if path.name.startswith("rq3"):
            assert [r.model for r in exp.references][1:] == [
                "mistralai/Mistral-7B-Instruct-v0.2",
                "meta-llama/Meta-Llama-3-70B-Instruct",
            ]
