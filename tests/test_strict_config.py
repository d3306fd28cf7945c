"""Strict reading of an experiment: duplicate YAML keys, booleans or strings where a number belongs, a typo'd key and a
bad `--set` value are each one line naming where to fix it (file or `--set`, key, what is allowed), exit code 2, and
nothing written. What is legitimately written keeps working: an int where a float is expected, `1e-4`, `--set`."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import load_experiment
from dpo_ref.errors import UserError

DEFAULT = Path(__file__).resolve().parent.parent / "experiments" / "rq1_sweep_beta" / "default.yaml"


def child(tmp: Path, body: str, name: str = "exp.yaml", extends: str = str(DEFAULT)) -> Path:
    """An experiment file that extends `extends` (the default sweep) with `body`; `extends:` is its line 1."""
    path = tmp / name
    path.write_text(f"extends: {extends}\n{body}")
    return path


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def refused(tmp: Path, path: Path, *sets: str) -> str:
    """`sweep-beta PATH --dry-run --out tmp/out --set ...`: exit code 2, one line, nothing written; that line."""
    args = ["sweep-beta", str(path), "--dry-run", "--out", str(tmp / "out")]
    before = snapshot(tmp)
    result = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert not (tmp / "out").exists() and snapshot(tmp) == before
    return lines[0]


def accepted(tmp: Path, path: Path, *sets: str) -> None:
    args = ["sweep-beta", str(path), "--dry-run", "--out", str(tmp / "out")]
    result = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert not (tmp / "out").exists()


# 1. duplicate keys, at any depth, in the file, in a file it extends, in a --set value
DUPLICATES = [
    (
        "second-train-block",
        "name: t\ntrain:\n  max_steps: 3\nseeds: [0]\ntrain:\n  learning_rate: 1.0e-4\n",
        [],
        ["exp.yaml: train: duplicate key", "lines 3 and 6"],
    ),
    ("nested-key", "train:\n  max_steps: 3\n  max_steps: 4\n", [], ["exp.yaml: train.max_steps:", "lines 3 and 4"]),
    (
        "key-of-a-list-item",
        "objectives:\n  - name: dpo\n    betas: [0.1]\n    betas: [0.2]\n",
        [],
        ["exp.yaml: objectives.0.betas: duplicate key", "lines 4 and 5"],
    ),
    ("flow-mapping", "eval: {temperature: 1.0, temperature: 0.5}\n", [], ["exp.yaml: eval.temperature:", "line 2"]),
    (
        "set-value",
        "",
        ["train={max_steps: 3, max_steps: 4}"],
        ["--set train={max_steps: 3, max_steps: 4}: train.max_steps: duplicate key"],
    ),
]


@pytest.mark.parametrize("body, sets, says", [pytest.param(b, s, w, id=i) for i, b, s, w in DUPLICATES])
def test_a_duplicate_key_is_refused_naming_file_key_and_lines(tmp_path, body, sets, says):
    line = refused(tmp_path, child(tmp_path, body), *sets)
    for text in says:
        assert text in line, line
    assert "once" in line


def test_a_duplicate_key_in_an_extended_file_names_that_file(tmp_path):
    child(tmp_path, "name: base\nseeds: [0]\nseeds: [1, 2]\n", name="base.yaml")
    line = refused(tmp_path, child(tmp_path, "name: t\n", extends="base.yaml"))
    assert "base.yaml: seeds: duplicate key" in line and "lines 3 and 4" in line, line


def test_a_merge_key_and_the_keys_it_merges_are_not_duplicates(tmp_path):
    path = child(tmp_path, "train:\n  <<: {max_steps: 3, batch_size: 4}\n  max_steps: 5\n")
    exp = load_experiment(path)
    assert (exp.train.max_steps, exp.train.batch_size) == (5, 4)


# 2. booleans and strings are not numbers, numbers are not booleans; --set values follow the YAML's rules
LAX_TYPES = [
    (
        "boolean-beta",
        "objectives:\n  - name: dpo\n    betas: [true]\n",
        [],
        ["exp.yaml: objectives.0.betas.0: a number, got a boolean (true)"],
    ),
    ("boolean-max-steps", "train:\n  max_steps: true\n", [], ["exp.yaml: train.max_steps: an integer, got a boolean"]),
    ("boolean-seed", "seeds: [false]\n", [], ["exp.yaml: seeds.0: an integer, got a boolean (false)"]),
    (
        "string-max-steps",
        'train:\n  max_steps: "3"\n',
        [],
        ["exp.yaml: train.max_steps: an integer, got a string ('3')"],
    ),
    ("string-float", "train:\n  learning_rate: '1e-4'\n", [], ["train.learning_rate: a number, got a string ('1e-4')"]),
    (
        "string-world-int",
        "world:\n  hidden_size: '64'\n",
        [],
        ["exp.yaml: world.hidden_size: an integer, got a string"],
    ),
    (
        "number-for-bool",
        "launch:\n  slurm:\n    accelerate: 1\n",
        [],
        ["exp.yaml: launch.slurm.accelerate: a boolean (true or false), got an integer (1)"],
    ),
    ("set-boolean-max-steps", "", ["train.max_steps=true"], ["--set train.max_steps=true: an integer, got a boolean"]),
    (
        "set-quoted-beta",
        "",
        ['objectives.0.betas=["0.1"]'],
        ["--set objectives.0.betas=[\"0.1\"]: objectives.0.betas.0: a number, got a string ('0.1')"],
    ),
    ("set-boolean-gpu", "", ["launch.gpus=[true]"], ["--set launch.gpus=[true]: launch.gpus.0: an integer, got a boo"]),
]


@pytest.mark.parametrize("body, sets, says", [pytest.param(b, s, w, id=i) for i, b, s, w in LAX_TYPES])
def test_a_value_of_the_wrong_type_is_refused_saying_what_is_allowed(tmp_path, body, sets, says):
    line = refused(tmp_path, child(tmp_path, body), *sets)
    for text in says:
        assert text in line, line


def test_ints_for_floats_and_yaml_numbers_keep_working(tmp_path):
    path = child(tmp_path, "train:\n  learning_rate: 1\n  epochs: 3\nobjectives:\n  - name: dpo\n    betas: [1, 0.1]\n")
    exp = load_experiment(path)
    assert exp.train.learning_rate == 1.0 and isinstance(exp.train.learning_rate, float)
    assert exp.objectives[0].betas == [1.0, 0.1] and all(isinstance(b, float) for b in exp.objectives[0].betas)
    assert isinstance(exp.train.epochs, float)
    accepted(tmp_path, path)
    # exponents without a dot (YAML 1.2's floats) are numbers, in a file as in --set
    exp = load_experiment(child(tmp_path, "train:\n  learning_rate: 5e-7\n"), ["eval.temperature=1e0"])
    assert exp.train.learning_rate == 5e-7 and exp.eval.temperature == 1.0


def test_set_values_keep_working(tmp_path):
    path = child(tmp_path, "name: t\n")
    sets = [
        "train.max_steps=3",
        "train.learning_rate=1e-4",
        "objectives.0.betas=[1, 0.5]",
        "launch.slurm.accelerate=true",
    ]
    exp = load_experiment(path, sets)
    assert (exp.train.max_steps, exp.train.learning_rate, exp.objectives[0].betas) == (3, 1e-4, [1.0, 0.5])
    assert exp.launch.slurm.accelerate is True
    accepted(tmp_path, path, *sets)


def test_the_shipped_default_still_dry_runs(tmp_path):
    accepted(tmp_path, DEFAULT)


# 3. a typo'd key is named first, with the closest allowed key
TYPOS = [
    (
        "objective-key",
        "objectives:\n  - name: dpo\n    betass: [0.1]\n",
        [],
        ["exp.yaml: objectives.0.betass: unknown key; did you mean betas? allowed: name, label, betas, references"],
    ),
    ("train-key", "train:\n  max_step: 3\n", [], ["exp.yaml: train.max_step: unknown key; did you mean max_steps?"]),
    (
        "reference-key",
        "references:\n  - name: sft\n    modle: world:sft\n",
        [],
        ["exp.yaml: references.0.modle: unknown key; did you mean model? allowed: name, model, kind"],
    ),
    ("top-level-key", "seed: [1]\n", [], ["exp.yaml: seed: unknown key; did you mean seeds? allowed: name, world"]),
    (
        "set-key",
        "",
        ["objectives.0.betass=[0.1]"],
        ["--set objectives.0.betass=[0.1]: unknown key; did you mean betas? allowed: name, label, betas, references"],
    ),
]


@pytest.mark.parametrize("body, sets, says", [pytest.param(b, s, w, id=i) for i, b, s, w in TYPOS])
def test_a_typod_key_is_named_with_the_closest_allowed_key(tmp_path, body, sets, says):
    line = refused(tmp_path, child(tmp_path, body), *sets)
    for text in says:
        assert text in line, line
    assert "Field required" not in line


def test_an_unknown_key_without_a_close_match_lists_the_allowed_ones(tmp_path):
    line = refused(tmp_path, child(tmp_path, "train:\n  zzz: 1\n"))
    assert "exp.yaml: train.zzz: unknown key; allowed: learning_rate" in line and "did you mean" not in line, line


# 4. a bad value given by --set is blamed on the --set, a bad value in the file on the file
SETS = [
    ("beta", ["objectives.0.betas=[0.1,-1]"], "error: --set objectives.0.betas=[0.1,-1]: every beta must be > 0"),
    (
        "learning-rate",
        ["train.learning_rate=-1"],
        "error: --set train.learning_rate=-1: Input should be greater than 0",
    ),
    (
        "whole-list",
        ["objectives=[{name: dpo, betas: [true]}]"],
        "error: --set objectives=[{name: dpo, betas: [true]}]: objectives.0.betas.0: a number, got a boolean (true)",
    ),
    ("non-finite", ["train.learning_rate=.nan"], "error: --set train.learning_rate=.nan: must be a finite number"),
    ("list-item", ["seeds.3=1"], "error: --set seeds.3=1: no list item '3' (has 1)"),
    ("repeats-a-seed", ["seeds=[0, 1]", "seeds.1=0"], "error: --set seeds.1=0: seeds: each seed once"),
    ("config-check", ["data=wrld"], "error: --set data=wrld: data.source: 'wrld' is not a source name"),
    ("last-set-wins", ["train.max_steps=3", "train.max_steps=0"], "error: --set train.max_steps=0: must be -1"),
]


@pytest.mark.parametrize("sets, says", [pytest.param(s, w, id=i) for i, s, w in SETS])
def test_a_bad_set_value_is_blamed_on_the_set(tmp_path, sets, says):
    line = refused(tmp_path, child(tmp_path, "name: t\n"), *sets)
    assert line.startswith(says) and "exp.yaml" not in line and "default.yaml" not in line, line


def test_a_bad_file_value_is_still_blamed_on_the_file_beside_a_good_set(tmp_path):
    path = child(tmp_path, "train:\n  learning_rate: -1\n")
    line = refused(tmp_path, path, "train.max_steps=3", "objectives.0.betas=[0.1]")
    assert line.startswith(f"error: {path}: train.learning_rate: Input should be greater than 0"), line
    # a file value a --set replaces is not blamed; the --set that brings a bad one is
    with pytest.raises(UserError) as err:
        load_experiment(path, ["train.learning_rate=0.1", "train={max_steps: 0}"])
    assert err.value.where == "--set train={max_steps: 0}: train.max_steps", err.value
