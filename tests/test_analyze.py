"""`dporef analyze`: per-vocabulary-item log-ratios of a tiny run equal a direct per-token computation."""

import csv

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.data.tokenize import tokenize_pairs
from dpo_ref.models import load_model, resolve
from dpo_ref.reporting.tokens import per_item


def per_token_logps(model, prompt_ids, completion_ids) -> list[float]:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return [logp[len(prompt_ids) + i - 1, t].item() for i, t in enumerate(completion_ids)]


def test_per_item_means():
    items = per_item(np.array([3, 5, 3, 3]), np.array([1.0, -2.0, 2.0, 0.0]))
    assert items == {3: (1.0, 3), 5: (-2.0, 1)}


@pytest.mark.slow
def test_analyze_matches_direct_per_token_computation(tmp_path, run_study, tiny_world):
    run_study(
        "sweep-beta",
        tmp_path,
        "objectives.0.betas=[0.1]",
        "train.max_steps=4",
        "train.learning_rate=3e-3",
        "eval.max_new_tokens=20",
        experiment="rq1_sweep_beta",
    )
    run_dir = tmp_path / "rq1_sweep_beta" / "dpo-sft-b0.1-s0"
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--min-count", "5", "--top", "5"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Most down-weighted" in result.stdout and "EOS" in result.stdout
    assert (run_dir / "analysis" / "histogram.png").is_file()

    # recompute the mean log-ratio of every vocabulary item directly, with plain forward passes
    policy = load_model(resolve(str(run_dir / "policy")), torch.float32)
    ref = load_model(resolve("world:sft", tiny_world), torch.float32)
    tok = tiny_world.tokenizer()
    val = tokenize_pairs(tiny_world.preference_data(), tok, 1024)[0]["validation"]
    sums, counts = {}, {}
    for p, c, r in zip(val["prompt_ids"], val["chosen_ids"], val["rejected_ids"]):
        for completion in (c, r):
            ratios = np.subtract(per_token_logps(policy, p, completion), per_token_logps(ref, p, completion))
            for t, x in zip(completion, ratios):
                sums[t] = sums.get(t, 0.0) + x
                counts[t] = counts.get(t, 0) + 1
    rows = list(csv.DictReader((run_dir / "analysis" / "tokens.csv").open()))
    assert len(rows) == len(counts)
    for row in rows:
        t = int(row["id"])
        assert int(row["count"]) == counts[t]
        assert float(row["mean_log_ratio"]) == pytest.approx(sums[t] / counts[t], abs=1e-4)


def test_analyze_refuses_a_directory_that_is_not_a_run(tmp_path):
    result = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished training run" in result.stderr
