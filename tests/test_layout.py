"""The package's shape as docs/architecture.md states it: layers that point down and stages that never import each
other (import-linter's contracts in pyproject.toml), no import cycles, one owner of the experiment directory's
layout, modules of at most 400 lines and functions of at most 60."""

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dpo_ref"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def test_import_contracts_are_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    result = subprocess.run([lint, "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


def test_modules_and_functions_are_short():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(PACKAGE)}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "\n".join(too_long)


# the names inside an experiment directory (docs/architecture.md, "On disk"), written out here by hand
EXPERIMENT_NAMES = {
    *("experiment.yaml", "command.json", "prepared", "plan.json", "baseline", "similarity.json", "logs", "slurm"),
    *("results.csv", "results.md", "results.json", "results.png", "frontier.png", "similarity.png", "report.html"),
    *("tune", "optuna.journal", "trials.json", "tune.json", "tune.md"),
    *("run.yaml", "status.json", "metrics.json", "generations.jsonl", "validation.jsonl", "ranking.jsonl"),
    *("model_outputs.json", "alpaca_eval.json", "trainer", "analysis", "tokens.csv", "tokens.md", "histogram.png"),
}
DIRECTORY_VARIABLE = re.compile(r"\b(exp_dir|run_dir|exp_path|results_dir)\b")


def _joins_inside_an_experiment(node: ast.BinOp) -> bool:
    """`<an experiment or run directory> / ...`, or `... / "<a name of its layout>"`."""
    right = node.right.value if isinstance(node.right, ast.Constant) else None
    named = isinstance(right, str) and right.split("/")[0] in EXPERIMENT_NAMES
    return named or bool(DIRECTORY_VARIABLE.search(ast.unparse(node.left)))


def test_only_the_owner_joins_paths_inside_an_experiment_directory():
    owner = PACKAGE / "expdir"
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if owner in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _joins_inside_an_experiment(node):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert not found, "paths inside an experiment directory are expdir's to build:\n" + "\n".join(found)


def test_the_layout_check_finds_a_join():
    """The check above against a known offender and a known innocent, so that it cannot pass by finding nothing."""
    offender = ast.parse('exp_dir / "status.json"', mode="eval").body
    innocent = ast.parse('cache_root() / "filehash"', mode="eval").body
    assert _joins_inside_an_experiment(offender) and not _joins_inside_an_experiment(innocent)
