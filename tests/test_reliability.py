"""Faults a careless user or cluster makes, each answered in one line with exit code 2 and nothing written where it
should not be: writes that would leave the results directory, a refused command that would overwrite the experiment
it was refused for, annotation files of the wrong types, nonsense options, and an interrupt that says how to resume.
"""

import json
import os
from pathlib import Path

import pytest
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref import runner
from dpo_ref.cli import app
from dpo_ref.config import load_experiment
from dpo_ref.errors import UserError
from dpo_ref.evaluation.alpaca_eval import import_annotations
from dpo_ref.expdir import ExperimentDir, write_spec

DEFAULT = str(Path(__file__).resolve().parent.parent / "experiments" / "rq1_sweep_beta" / "default.yaml")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture
def results(tmp_path):
    """A results directory as a study command leaves it, as far as import-annotations and report read it: the
    experiment, the command, and an SFT row that started (run.yaml)."""
    exp = load_experiment(DEFAULT)
    exp_dir = ExperimentDir(tmp_path / "out" / exp.name)
    write_spec(exp_dir, exp, "sweep-beta", DEFAULT)
    exp_dir.run("sft").root.mkdir()
    exp_dir.run("sft").spec.write_text("run: {}\n")
    return exp_dir


def elsewhere(tmp_path):
    """Another directory that looks like a run (a run.yaml), which nothing may write into."""
    other = tmp_path / "elsewhere" / "run"
    other.mkdir(parents=True)
    (other / "run.yaml").write_text("run: {}\n")
    return other


def annotation(generator: str) -> list[dict]:
    return [{"instruction": "q", "output_1": "a", "output_2": "b", "generator_2": generator, "preference": 2.0}]


@pytest.mark.parametrize(
    "generator",
    ["rq1_sweep_beta/../../elsewhere/run", "rq1_sweep_beta//{other}", "rq1_sweep_beta/sft/../../../elsewhere/run"],
)
def test_annotations_never_write_outside_the_experiment(results, tmp_path, generator):
    other = elsewhere(tmp_path)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotation(generator.format(other=other))))
    result = invoke("import-annotations", str(results.root), str(path))
    assert result.exit_code == 2 and "no annotation row names a run of experiment" in result.output
    assert sorted(p.name for p in other.iterdir()) == ["run.yaml"]


def linked_run(results, tmp_path):
    """The SFT row's directory replaced by a link to another experiment's run."""
    other = elsewhere(tmp_path)
    (results.root / "sft" / "run.yaml").unlink()
    (results.root / "sft").rmdir()
    os.symlink(other, results.root / "sft")
    return other


@pytest.mark.parametrize(
    "command",
    [
        lambda exp_dir, path: ("import-annotations", exp_dir, path),
        lambda exp_dir, path: ("report", exp_dir),
        lambda exp_dir, path: ("analyze", f"{exp_dir}/sft"),
    ],
)
def test_a_linked_run_directory_is_refused_not_followed(results, tmp_path, command):
    other = linked_run(results, tmp_path)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotation("rq1_sweep_beta/sft")))
    result = invoke(*command(str(results.root), str(path)))
    assert result.exit_code == 2, result.output
    assert "is a symbolic link; dporef follows no link inside a results directory" in one_line(result)
    assert sorted(p.name for p in other.iterdir()) == ["run.yaml"]  # nothing written through the link


@pytest.mark.parametrize(
    "args",
    [
        ["sweep-beta", "--launcher", "slurm"],
        ["compare-objectives", "--launcher", "slurm"],
        ["sweep-beta", "--set", "launch.launcher=slurm", "--set", "launch.slurm.cluster=slurm"],
    ],
)
def test_slurm_without_slurm_is_refused_before_anything_is_written(tmp_path, monkeypatch, args):
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # no srun on it
    out = tmp_path / "out"
    result = invoke(*args, "--out", str(out))
    assert result.exit_code == 2 and "no SLURM on this machine" in one_line(result)
    assert not out.exists()


def test_a_refused_rerun_leaves_the_finished_experiment_as_it_was(results, tmp_path, monkeypatch):
    before = results.spec.read_bytes()
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    out = str(results.root.parent)
    result = invoke("sweep-beta", "--launcher", "slurm", "--set", "objectives.0.betas=[0.5]", "--out", out)
    assert result.exit_code == 2 and results.spec.read_bytes() == before


@pytest.mark.parametrize(
    "field, value",
    [("instruction", {"text": "q"}), ("generator_2", 7), ("output_1", ["a"]), ("annotator", 1.5)],
)
def test_annotation_fields_of_the_wrong_type_are_one_line(tmp_path, field, value):
    row = annotation("exp/run")[0] | {field: value}
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps([row]))
    with pytest.raises(UserError) as e:
        import_annotations("exp", [path], {"run": tmp_path / "exp" / "run"})
    assert e.value.where == f"{path}: [0].{field}" and "is not text; allowed: a string" in e.value.message


@pytest.mark.parametrize("option, value", [("--top", "-1"), ("--min-count", "-5"), ("--top", "0")])
def test_analyze_refuses_counts_below_one(tmp_path, option, value):
    result = invoke("analyze", str(tmp_path), option, value)
    assert result.exit_code == 2 and f"Invalid value for '{option}'" in one_line(result)


def test_an_interrupted_prepare_says_how_to_resume(tiny_world, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises in the middle of prepare

    monkeypatch.setattr(runner, "prepare", interrupted)
    sets = [a for s in TINY_WORLD for a in ("--set", s)]
    result = invoke("sweep-beta", *sets, "--out", str(tmp_path / "out"))
    assert result.exit_code == 130
    assert "interrupted while preparing" in result.output and "run the same command again" in result.output


@pytest.mark.parametrize("kind", ["fifo", "device", "extends-fifo"])
def test_an_experiment_file_that_is_not_a_file_is_named_as_such(tmp_path, kind):
    """A FIFO or a device given as the experiment (or as the file it extends) is not "not found", and never read."""
    target = tmp_path / "exp.yaml"
    if kind == "device":
        target = Path("/dev/null")
    else:
        os.mkfifo(tmp_path / "pipe.yaml")
        if kind == "fifo":
            target = tmp_path / "pipe.yaml"
        else:
            target.write_text("extends: pipe.yaml\nname: x\n")
    result = invoke("sweep-beta", str(target), "--dry-run", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "not a regular file" in one_line(result)
    assert not (tmp_path / "out").exists()


def test_the_caption_warns_where_lc_cannot_be_trusted(tmp_path):
    """A run that lost every prompt gets AlpacaEval's degenerate LC (0.5), and a fit that stopped at its iteration
    limit an approximate one: the caption names both runs; a sweep with neither says nothing of it."""
    from dpo_ref.reporting.tables import COLUMNS, results_caption

    row = dict.fromkeys(COLUMNS)
    lost = row | {"run_id": "dpo-b0.01", "win_rate": 0.0, "lc_win_rate": 0.5}
    fine = row | {"run_id": "dpo-b0.1", "win_rate": 0.6, "lc_win_rate": 0.55}
    caption = results_caption(ExperimentDir(tmp_path), [lost, fine], "exp", "the judge", ["dpo-b0.1"])
    assert "lost or won every prompt (dpo-b0.01)" in caption
    assert "The LC fit of dpo-b0.1 stopped at its iteration limit" in caption
    quiet = results_caption(ExperimentDir(tmp_path), [fine], "exp", "the judge")
    assert "every prompt" not in quiet and "iteration limit" not in quiet
