"""YAML validation, overrides and grid expansion; bad input is one line on stderr and exit code 2."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import expand, load_experiment
from dpo_ref.errors import UserError
from dpo_ref.runner import read_experiment

DEFAULT = Path(__file__).resolve().parent.parent / "experiments" / "rq1_sweep_beta" / "default.yaml"


def write(tmp_path, data) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def base():
    return {"name": "t", "objectives": [{"name": "dpo", "betas": [0.1, 0.01]}]}


def test_the_paper_grid_file_expands_to_the_sft_row_plus_table_1s_betas_and_the_default_reaches_above_it():
    paper = expand(load_experiment(DEFAULT.with_name("paper_grid.yaml")))
    # the paper's RQ1 grid (Liu, Liu, Cohan, arXiv 2407.13709, Table 1)
    assert [r.run_id for r in paper] == ["sft"] + [f"dpo-sft-b{b}-s0" for b in ("0.1", "0.05", "0.02", "0.01", "0.005")]
    betas = [r.beta for r in expand(load_experiment(DEFAULT)) if r.beta is not None]
    assert max(betas) > 0.1 and 0.1 in betas  # brackets this world's best beta (above 0.1) and meets the paper's


def test_reference_free_objectives_are_not_crossed_with_references(tmp_path):
    data = base() | {
        "references": [{"name": "a", "model": "world:sft"}, {"name": "b", "model": "world:sft"}],
        "objectives": [{"name": "dpo", "betas": [0.1]}, {"name": "posterior", "betas": [10]}],
        "seeds": [0, 1],
    }
    ids = [r.run_id for r in expand(load_experiment(write(tmp_path, data)))]
    assert ids == [
        "sft",
        "dpo-a-b0.1-s0",
        "dpo-a-b0.1-s1",
        "dpo-b-b0.1-s0",
        "dpo-b-b0.1-s1",
        "posterior-b10-s0",
        "posterior-b10-s1",
    ]


def test_set_overrides_nested_keys_and_list_items(tmp_path):
    exp = load_experiment(
        write(tmp_path, base()),
        ["train.learning_rate=1e-4", "objectives.0.betas=[0.5]", "seeds=[3,4]", "world.seed=7"],
    )
    assert exp.train.learning_rate == 1e-4 and exp.objectives[0].betas == [0.5] and exp.seeds == [3, 4]
    assert exp.world.seed == 7


@pytest.mark.parametrize(
    "data, where, says",
    [
        (base() | {"trian": {}}, "exp.yaml: trian", "unknown key; did you mean train? allowed: name, world"),
        (
            base() | {"train": {"learning_rat": 1}},
            "exp.yaml: train.learning_rat",
            "unknown key; did you mean learning_rate? allowed: learning_rate",
        ),
        (base() | {"train": {"batch_size": "big"}}, "exp.yaml: train.batch_size", "an integer, got a string ('big')"),
        ({"name": "t", "objectives": [{"name": "dpo", "betas": [0.1, -1]}]}, "objectives.0.betas", "> 0"),
        (
            {"name": "t", "objectives": [{"name": "dop", "betas": [0.1]}]},
            "objectives.0.name",
            "allowed: dpo, posterior",
        ),
        ({"name": "t"}, "exp.yaml: objectives", "Field required"),
        (base() | {"data": "org/prefs"}, "exp.yaml: judge", "kind builtin needs data with its own reward"),
        (base() | {"judge": {"kind": "reward-model"}}, "exp.yaml: judge", "needs `model`"),
        (base() | {"data": {"source": "world", "split": "x"}}, "exp.yaml: data.split", "unknown key; allowed: source"),
        (
            base() | {"references": [{"name": "a", "model": "world:sft"}] * 2},
            "exp.yaml: references",
            "reference names must be unique",
        ),
        ("name: [unclosed", "exp.yaml:1", "not valid YAML"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, data, where, says):
    with pytest.raises(UserError) as err:
        read_experiment(write(tmp_path, data), [])  # what the commands read: the config and the data registry's checks
    assert where in str(err.value) and says in str(err.value)


def test_cli_bad_yaml_is_one_line_and_exit_2(tmp_path):
    path = write(tmp_path, base() | {"train": {"epochs": 0}})
    result = CliRunner().invoke(app, ["sweep-beta", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "exp.yaml: train.epochs" in lines[0] and "greater than 0" in lines[0]
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_cli_missing_file_and_bad_set(tmp_path):
    runner = CliRunner()
    missing = runner.invoke(app, ["sweep-beta", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "experiment file not found" in missing.stderr
    bad_set = runner.invoke(app, ["sweep-beta", str(DEFAULT), "--set", "train.learning_rate"])
    assert bad_set.exit_code == 2 and "KEY=VALUE" in bad_set.stderr


def test_sweep_beta_refuses_two_references(tmp_path):
    data = base() | {"references": [{"name": "a", "model": "world:sft"}, {"name": "b", "model": "world:sft"}]}
    result = CliRunner().invoke(app, ["sweep-beta", str(write(tmp_path, data)), "--dry-run"])
    assert result.exit_code == 2 and "references" in result.stderr and "exactly one reference" in result.stderr


def test_dry_run_prints_plan_and_writes_nothing(tmp_path):
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["sweep-beta", "--dry-run", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "references to score" in result.stdout and "sft: world:sft [p_ref(y|x)]" in result.stdout
    assert "dpo-sft-b0.01-s0" in result.stdout and "optimizer steps each" in result.stdout
    assert not out.exists()


def test_extends_merges_mappings_child_wins_and_replaces_lists(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "_base.yaml").write_text(
        yaml.safe_dump(base() | {"train": {"learning_rate": 3e-4, "max_steps": 7}, "seeds": [0, 1, 2]})
    )
    child = tmp_path / "child.yaml"
    child.write_text(
        yaml.safe_dump({"extends": "shared/_base.yaml", "name": "c", "train": {"max_steps": 3}, "seeds": [5]})
    )
    exp = load_experiment(child)
    # by hand: name and max_steps from the child, learning_rate and objectives from the base, seeds replaced whole
    assert (exp.name, exp.train.max_steps, exp.train.learning_rate, exp.seeds) == ("c", 3, 3e-4, [5])
    assert exp.objectives[0].betas == [0.1, 0.01]


def test_extends_errors_name_the_file_that_is_wrong(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("extends: b.yaml\nname: a\n")
    b.write_text("extends: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_experiment(a)
    a.write_text("extends: missing.yaml\n")
    with pytest.raises(UserError, match="missing.yaml: no such file") as missing:
        load_experiment(a)
    assert str(a) in missing.value.where
    # a bad value set in the base is reported against the base, where it has to be fixed
    b.write_text(yaml.safe_dump(base() | {"train": {"learning_rate": -1}}))
    a.write_text("extends: b.yaml\nname: a\n")
    with pytest.raises(UserError) as bad:
        load_experiment(a)
    assert bad.value.where == f"{b}: train.learning_rate"
    # a list the child replaces is the child's, whatever the base's list held
    b.write_text(yaml.safe_dump(base()))
    a.write_text("extends: b.yaml\nobjectives: [{name: dpo, beta: [0.1]}]\n")
    with pytest.raises(UserError) as typo:
        load_experiment(a)
    assert typo.value.where == f"{a}: objectives.0.beta" and "did you mean betas?" in typo.value.message
    # a bad value from --set is the --set's, not the file's that held a good one
    with pytest.raises(UserError) as bad_set:
        load_experiment(b, ["train.learning_rate=0"])
    assert bad_set.value.where == "--set train.learning_rate=0"
