"""The reliability suite: bad input of every kind, through the real CLI. Each case must exit with code 2, print at
most 3 lines and no traceback, name the file (or command) and the key, and write nothing: the --out directory does
not exist afterwards (a directory given as input is unchanged) and no temporary file is left anywhere under tmp."""

import json
import subprocess
import sys

import pytest
import yaml
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app

GOOD = {"name": "t", "objectives": [{"name": "dpo", "betas": [0.1]}]}
PAIR = {"prompt": "rev abc", "chosen": "cba", "rejected": "ab"}
BOMB = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
)


def experiment(tmp, content=GOOD, name="exp.yaml"):
    """Write an experiment file: a mapping as YAML, or text, or bytes as they are."""
    path = tmp / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def with_data(tmp, source):
    """An experiment reading preference data from `source`, judged by the instruction checks (any data)."""
    return experiment(tmp, GOOD | {"data": str(source), "judge": {"kind": "instructions"}})


def study(tmp, *args, exp=None):
    """`sweep-beta EXP --out tmp/out ARGS...`."""
    return ["sweep-beta", str(exp or experiment(tmp)), "--out", str(tmp / "out"), *args]


def sets(*assignments):
    return [a for s in assignments for a in ("--set", s)]


def extends_cycle(tmp):
    experiment(tmp, "extends: a.yaml\nname: b\n", "b.yaml")
    return study(tmp, exp=experiment(tmp, "extends: b.yaml\nname: a\n", "a.yaml"))


def not_a_model(tmp):
    (tmp / "model").mkdir()
    (tmp / "model" / "weights.bin").write_bytes(b"\0" * 16)
    return study(tmp, exp=experiment(tmp, GOOD | {"policy": str(tmp / "model")}))


def not_results(tmp, command):
    (tmp / "runs").mkdir()
    (tmp / "runs" / "notes.txt").write_text("not a results directory\n")
    return [command, str(tmp / "runs")] + (["sft"] if command == "run-one" else [])


# (id, args for the CLI given tmp, what the one line must name)
CASES = [
    (
        "unknown-key",
        lambda t: study(t, exp=experiment(t, GOOD | {"train": {"learning_rat": 1}})),
        ["exp.yaml: train.learning_rat", "unknown key; did you mean learning_rate? allowed: learning_rate"],
    ),
    (
        "wrong-type",
        lambda t: study(t, exp=experiment(t, GOOD | {"train": {"batch_size": "big"}})),
        ["exp.yaml: train.batch_size", "an integer, got a string ('big')"],
    ),
    (
        "beta-not-positive",
        lambda t: study(t, *sets("objectives.0.betas=[0.1,0]")),
        ["--set objectives.0.betas=[0.1,0]: every beta must be > 0"],
    ),
    (
        "unknown-objective",
        lambda t: study(t, *sets("objectives.0.name=dop")),
        ["--set objectives.0.name=dop: unknown objective 'dop'"],
    ),
    ("missing-experiment-file", lambda t: study(t, exp=t / "nope.yaml"), ["nope.yaml", "experiment file not found"]),
    ("directory-as-experiment", lambda t: study(t, exp=t), ["work: is a directory"]),
    ("empty-file", lambda t: study(t, exp=experiment(t, "")), ["exp.yaml", "empty file"]),
    (
        "top-level-list",
        lambda t: study(t, exp=experiment(t, "- name: t\n")),
        ["exp.yaml", "top level must be a mapping"],
    ),
    ("invalid-yaml", lambda t: study(t, exp=experiment(t, "name: [unclosed\n")), ["exp.yaml:", "not valid YAML"]),
    ("extends-cycle", extends_cycle, ["extends", "cycle"]),
    (
        "extends-missing-file",
        lambda t: study(t, exp=experiment(t, "extends: base.yaml\nname: a\n")),
        ["exp.yaml: extends", "base.yaml: no such file"],
    ),
    (
        "extends-not-a-path",
        lambda t: study(t, exp=experiment(t, "extends: [a, b]\nname: a\n")),
        ["exp.yaml: extends", "expected the path of one YAML file"],
    ),
    (
        "set-without-equals",
        lambda t: study(t, *sets("train.learning_rate")),
        ["--set train.learning_rate", "KEY=VALUE"],
    ),
    ("set-unknown-key", lambda t: study(t, *sets("train.lr=1e-4")), ["--set train.lr=1e-4: unknown key"]),
    ("set-not-yaml", lambda t: study(t, *sets("seeds=[0,")), ["--set seeds", "not valid YAML"]),
    (
        "set-sub-key-of-a-value",
        lambda t: study(t, *sets("name.x=1")),
        ["--set name.x=1: name:", "cannot set a sub-key"],
    ),
    (
        "set-list-index-out-of-range",
        lambda t: study(t, *sets("objectives.3.betas=[0.1]")),
        ["--set objectives.3.betas=[0.1]: objectives.3: no list item '3' (has 1)"],
    ),
    ("set-10mb-value", lambda t: study(t, *sets("name=" + "a" * 10_000_000)), ["--set name", "at most 1048576"]),
    (
        "non-utf8-yaml",
        lambda t: study(t, exp=experiment(t, "name: caf\xe9\n".encode("latin-1"))),
        ["exp.yaml", "not UTF-8 text (byte 0xe9 at offset 9)"],
    ),
    (
        "binary-yaml",
        lambda t: study(t, exp=experiment(t, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")),
        ["exp.yaml", "not UTF-8 text (byte 0x89 at offset 0)"],
    ),
    (
        "nul-bytes-in-yaml",
        lambda t: study(t, exp=experiment(t, b"name: t\x00\x00\n")),
        ["exp.yaml", "control characters are not allowed"],
    ),
    (
        "10mb-yaml-value",
        lambda t: study(t, exp=experiment(t, "name: " + "a" * 10_000_000 + "\n")),
        ["exp.yaml", "10000007 bytes; an experiment is at most 1048576 bytes"],
    ),
    (
        "alias-bomb",
        lambda t: study(t, exp=experiment(t, BOMB)),
        ["exp.yaml", "holds more than 100000 values once its aliases are expanded"],
    ),
    (
        "recursive-alias",
        lambda t: study(t, exp=experiment(t, "name: t\nx: &x [*x]\n")),
        ["exp.yaml", "an alias refers to a node that contains it"],
    ),
    ("very-long-name", lambda t: study(t, *sets("name=" + "n" * 300)), ["--set name=nnn", "300 characters long"]),
    (
        "nan-learning-rate",
        lambda t: study(t, *sets("train.learning_rate=.nan")),
        ["--set train.learning_rate=.nan: must be a finite number (got nan)"],
    ),
    (
        "quoted-nan-learning-rate",
        lambda t: study(t, *sets('train.learning_rate="nan"')),
        ["--set train.learning_rate=\"nan\": a number, got a string ('nan')"],
    ),
    (
        "infinite-temperature",
        lambda t: study(t, *sets("eval.temperature=.inf")),
        ["--set eval.temperature=.inf: must be a finite number (got inf)"],
    ),
    (
        "infinite-world-setting",
        lambda t: study(t, *sets("world.sample_temperature=-.inf")),
        ["--set world.sample_temperature=-.inf", "finite number"],
    ),
    (
        "duplicate-betas",
        lambda t: study(t, *sets("objectives.0.betas=[0.1,0.01,0.1]")),
        ["--set objectives.0.betas=[0.1,0.01,0.1]: each beta once"],
    ),
    (
        "betas-equal-in-run-ids",
        lambda t: study(t, *sets("objectives.0.betas=[0.1,0.1000000001]")),
        ["--set objectives.0.betas=[0.1,0.1000000001]: each beta once"],
    ),
    ("duplicate-seeds", lambda t: study(t, *sets("seeds=[0,1,0]")), ["--set seeds=[0,1,0]: each seed once"]),
    ("negative-seed", lambda t: study(t, *sets("seeds=[-1]")), ["--set seeds=[-1]: every seed must be in 0 .."]),
    (
        "duplicate-objectives",
        lambda t: study(t, *sets("objectives=[{name: dpo, betas: [0.1]}, {name: dpo, betas: [1]}]")),
        ["--set objectives=[{name: dpo, betas: [0.1]}, {name: dpo, betas: [1]}]: each objective once"],
    ),
    (
        "absurd-max-steps",
        lambda t: study(t, *sets("train.max_steps=100000000")),
        ["--set train.max_steps=100000000: ", "less than or equal to 10000000"],
    ),
    (
        "zero-max-steps",
        lambda t: study(t, *sets("train.max_steps=0")),
        ["--set train.max_steps=0: ", "at least 1 step"],
    ),
    (
        "zero-batch-size",
        lambda t: study(t, *sets("train.batch_size=0")),
        ["--set train.batch_size=0: ", "greater than or equal to 1"],
    ),
    (
        "two-references-for-sweep-beta",
        lambda t: study(t, *sets("references=[{name: a, model: 'world:sft'}, {name: b, model: 'world:sft'}]")),
        ["exp.yaml: references", "exactly one reference"],
    ),
    (
        "builtin-judge-for-file-data",
        lambda t: study(t, *sets("data=prefs.jsonl")),
        ["exp.yaml: judge", "kind builtin needs data with its own reward"],
    ),
    (
        "hub-model-not-in-cache",
        lambda t: study(t, *sets("policy=no-such-org/no-such-model")),
        ["exp.yaml: policy", "not in the local cache"],
    ),
    ("model-dir-without-config", not_a_model, ["exp.yaml: policy", "without config.json"]),
    (
        "reference-model-missing",
        lambda t: study(t, *sets(f"references=[{{name: big, model: {t / 'missing' / 'model'}}}]")),
        ["exp.yaml: references.0.model", "neither world:<name>"],
    ),
    ("data-file-missing", lambda t: study(t, exp=with_data(t, t / "prefs.jsonl")), ["exp.yaml: data", "no such file"]),
    (
        "data-file-unsupported-type",
        lambda t: study(t, exp=with_data(t, experiment(t, "x", "prefs.txt"))),
        ["exp.yaml: data", "unsupported file type '.txt'"],
    ),
    (
        "data-file-empty",
        lambda t: study(t, exp=with_data(t, experiment(t, "", "prefs.jsonl"))),
        ["exp.yaml: data", "empty file"],
    ),
    (
        "data-file-without-columns",
        lambda t: study(t, exp=with_data(t, jsonl(t / "prefs.jsonl", [{"question": "q", "answer": "a"}] * 4))),
        ["exp.yaml: data", "columns ['question', 'answer'] found; needs prompt/chosen/rejected"],
    ),
    (
        "data-file-no-usable-pair",
        lambda t: study(t, exp=with_data(t, jsonl(t / "prefs.jsonl", [PAIR | {"rejected": "cba"}] * 4))),
        ["exp.yaml: data", "no usable pair in split train", "3 identical"],
    ),
    (
        "data-file-not-utf8",
        lambda t: study(
            t, exp=with_data(t, experiment(t, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n', "p.jsonl"))
        ),
        ["exp.yaml: data", "not UTF-8 text (byte 0xe9 at offset 15)"],
    ),
    (
        "data-file-not-json",
        lambda t: study(t, exp=with_data(t, experiment(t, "not json\n", "prefs.jsonl"))),
        ["exp.yaml: data", "cannot read as json"],
    ),
    (
        "eval-prompts-missing",
        lambda t: study(t, *sets(f"eval.prompts={t / 'prompts.jsonl'}")),
        ["exp.yaml: eval.prompts", "no such file"],
    ),
    ("run-one-not-prepared", lambda t: not_results(t, "run-one"), ["runs", "not a prepared experiment"]),
    ("report-not-a-results-dir", lambda t: not_results(t, "report"), ["runs", "not an experiment results directory"]),
    ("unknown-option", lambda t: study(t, "--bogus"), ["dporef sweep-beta", "No such option: --bogus"]),
    ("option-without-value", lambda t: study(t, "--set"), ["dporef", "'--set' requires an argument"]),
    ("missing-argument", lambda t: ["run-one"], ["dporef run-one", "Missing argument"]),
    ("unknown-command", lambda t: ["sweep-betas"], ["dporef", "No such command 'sweep-betas'"]),
    (
        "option-of-wrong-type",
        lambda t: ["analyze", str(t), "--min-count", "many"],
        ["dporef analyze", "'--min-count'", "valid integer"],
    ),
]


def snapshot(root):
    """Every path under `root` with its size and modification time: what "nothing was written" compares."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def check_refused(tmp, args, says):
    before = snapshot(tmp)
    result = CliRunner().invoke(app, args)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert 1 <= len(lines) <= 3 and "Traceback" not in result.output, result.output
    assert len(result.output) < 1000, result.output[:1000]  # a short excerpt of the input at most
    for text in says:
        assert text in result.stderr, result.stderr
    assert not (tmp / "out").exists()
    assert snapshot(tmp) == before  # nothing written, no temporary file left, input files untouched
    return result


@pytest.mark.parametrize("args, says", [pytest.param(a, s, id=i) for i, a, s in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args, says):
    tmp = tmp_path / "work"
    tmp.mkdir()
    check_refused(tmp, args(tmp), says)


def test_the_suite_covers_thirty_kinds():
    assert len({i for i, _, _ in CASES}) == len(CASES) >= 30


@pytest.mark.slow
def test_unknown_world_model_is_refused_after_building_the_world_only(tmp_path, tiny_world):
    tmp = tmp_path / "work"
    tmp.mkdir()
    args = study(tmp, *sets(*TINY_WORLD, "references=[{name: strong, model: 'world:strong-sam'}]"))
    check_refused(tmp, args, ["exp.yaml: references.0.model", "unknown world model 'world:strong-sam'"])


@pytest.mark.slow
def test_run_one_on_an_unknown_run_of_a_prepared_experiment(tmp_path, tiny_world):
    short = TINY_WORLD + ["train.max_steps=2", "eval.max_new_tokens=12", "objectives.0.betas=[0.1]"]
    prepared = CliRunner().invoke(app, study(tmp_path, "--prepare-only", *sets(*short)))
    assert prepared.exit_code == 0, prepared.output
    exp_dir = tmp_path / "out" / "t"
    before = snapshot(exp_dir)
    result = CliRunner().invoke(app, ["run-one", str(exp_dir), "dpo-sft-b0.2-s0"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{exp_dir}: run dpo-sft-b0.2-s0: no run 'dpo-sft-b0.2-s0'" in result.stderr
    assert "runs: sft, dpo-sft-b0.1-s0" in result.stderr
    assert snapshot(exp_dir) == before


@pytest.mark.parametrize("case", ["binary-yaml", "unknown-option"])
def test_a_separate_process_prints_the_same_one_line(tmp_path, case):
    """The console script's path (`python -m dpo_ref`, sys.exit, the real stderr), not only CliRunner's."""
    args, says = next((a, s) for i, a, s in CASES if i == case)
    tmp = tmp_path / "work"
    tmp.mkdir()
    done = subprocess.run([sys.executable, "-m", "dpo_ref", *args(tmp)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert all(text.removeprefix("dporef ") in done.stderr for text in says), done.stderr  # "python -m dpo_ref ..."
    assert not (tmp / "out").exists()
