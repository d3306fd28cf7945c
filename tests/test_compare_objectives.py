"""`dporef compare-objectives` on a tiny world: reference passes only where needed, the best-beta table, p_LM(y)."""

import pytest

from dpo_ref.chat import render

SHORT = ["train.max_steps=4", "eval.max_new_tokens=20"]
EXPERIMENT = "rq2_compare_objectives"


@pytest.mark.slow
def test_reference_free_objectives_score_nothing(tmp_path, run_study):
    summary, _ = run_study(
        "compare-objectives",
        tmp_path,
        *SHORT,
        "objectives=[{name: posterior, betas: [10]}, {name: simpo, betas: [2.0]}]",
        experiment=EXPERIMENT,
    )
    assert summary["reference_scoring"] == {"computed": 0, "from_cache": 0}
    assert [r["run_id"] for r in summary["rows"]] == ["sft", "posterior-b10-s0", "simpo-b2-s0"]
    assert all(r["status"] == "done" for r in summary["rows"])


@pytest.mark.slow
def test_each_objective_reads_its_own_reference_and_best_table(tmp_path, run_study):
    objectives = (
        "objectives=[{name: dpo, betas: [0.1, 0.01]}, {name: likelihood, betas: [0.1]}, {name: posterior, betas: [10]}]"
    )
    summary, result = run_study("compare-objectives", tmp_path, *SHORT, objectives, experiment=EXPERIMENT)
    # dpo reads p_ref(y|x), likelihood p_LM(y): two distinct passes (or cache hits), none for posterior
    assert summary["reference_scoring"]["computed"] + summary["reference_scoring"]["from_cache"] == 2
    best = summary["best"]
    assert "validation prompts" in best["rule"] and "never" in best["rule"]
    methods = {r["method"]: r for r in best["rows"]}
    assert set(methods) == {"SFT", "dpo <- sft", "likelihood", "posterior"}
    dpo_rows = [r for r in summary["rows"] if r["objective"] == "dpo"]
    top = max(dpo_rows, key=lambda r: r["val_win_rate"])
    assert methods["dpo <- sft"]["best_beta"] == top["beta"] and methods["dpo <- sft"]["win_rate"] == top["win_rate"]
    md = (tmp_path / "rq2_compare_objectives" / "results.md").read_text()
    assert "Best beta per method" in md and "win_rate by beta" in md
    assert "best beta per method" in result.stdout


def test_unconditional_rendering_drops_the_prompt_but_keeps_the_framing(tiny_world):
    tok = tiny_world.tokenizer()
    chars = lambda text: tok.convert_tokens_to_ids(list(text))  # noqa: E731  (one token per character, by hand)
    assert render(tok, "rev abc", "cba") == (chars("rev abc="), chars("cba") + [tok.eos_token_id])
    # p_LM(y): the same response tokens after the template's framing of an empty user turn ("=")
    assert render(tok, "rev abc", "cba", unconditional=True) == (chars("="), chars("cba") + [tok.eos_token_id])
