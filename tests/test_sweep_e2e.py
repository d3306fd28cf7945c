"""`dporef sweep-beta` end to end on a tiny world: files, every metric recomputed from the run files, resume, one
reference pass, loss ln 2 at step 1."""

import base64
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import datasets
import pytest
import torch
from conftest import gold
from scipy.stats import beta as beta_dist

from dpo_ref.reporting.tables import COLUMNS

pytestmark = pytest.mark.slow  # end to end: trains on the embedded world

SHORT = ["objectives.0.betas=[0.1,0.01]", "train.max_steps=6", "train.logging_steps=1", "eval.max_new_tokens=20"]


@pytest.fixture(scope="module")
def sweep(run_study):
    def run(out, *extra):
        return run_study("sweep-beta", out, *SHORT, *extra, experiment="rq1_sweep_beta")[1]

    return run


@pytest.fixture(scope="module")
def first(tmp_path_factory, sweep):
    out = tmp_path_factory.mktemp("runs")
    return out, sweep(out)


def results(out):
    return json.loads((out / "rq1_sweep_beta" / "results.json").read_text())


def test_sweep_writes_every_file(first):
    out, result = first
    exp = out / "rq1_sweep_beta"
    for name in ("results.csv", "results.md", "results.json", "results.png", "frontier.png", "experiment.yaml"):
        assert (exp / name).is_file(), name
    header = (exp / "results.csv").read_text().splitlines()[0].split(",")
    assert header == COLUMNS
    rows = results(out)["rows"]
    assert [r["run_id"] for r in rows] == ["sft", "dpo-sft-b0.1-s0", "dpo-sft-b0.01-s0"]
    for row in rows:
        run = exp / row["run_id"]
        assert row["status"] == "done"
        for name in ("run.yaml", "status.json", "metrics.json", "generations.jsonl"):
            assert (run / name).is_file(), (row["run_id"], name)
        assert len((run / "generations.jsonl").read_text().splitlines()) == 24
    assert (exp / "dpo-sft-b0.1-s0" / "policy" / "config.json").is_file()
    assert "rq1_sweep_beta" in result.stdout and "win_rate" in result.stdout


# --- every reported metric recomputed from what the run wrote, without dporef's scorer, judge or metrics ------------


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def pref(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


def mean_and_se(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


def load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def ids(tok, prompt: str, response: str, ended: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) with the tokenizer's chat template: the response's tokens, EOS when it ended."""
    head = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)
    completion = tok(response, add_special_tokens=False)["input_ids"]
    return tok(head, add_special_tokens=False)["input_ids"], completion + ([tok.eos_token_id] if ended else [])


@torch.no_grad()
def logp(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    """log p(completion | prompt) by one plain forward pass (float64 log-softmax over the logits)."""
    x = torch.tensor([prompt_ids + completion_ids])
    logprobs = torch.log_softmax(model(input_ids=x).logits[0, :-1].double(), dim=-1)
    per_token = logprobs.gather(1, x[0, 1:, None])[:, 0]
    return per_token[len(prompt_ids) - 1 :].sum().item()


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact 95% interval of k successes in n, from the beta distribution's quantiles."""
    return (beta_dist.ppf(0.025, k, n - k + 1) if k else 0.0), (beta_dist.ppf(0.975, k + 1, n - k) if k < n else 1.0)


def ranking(chosen, rejected, slack=1e-4):
    """(accuracy with ties 0.5, share of pairs within `slack` of a tie, where float noise may flip the order)."""
    acc = sum(pref(c, r) for c, r in zip(chosen, rejected)) / len(chosen)
    return acc, sum(abs(c - r) < slack for c, r in zip(chosen, rejected)) / len(chosen)


def test_metrics_recomputed_from_the_run_files(first):
    out, _ = first
    exp = out / "rq1_sweep_beta"
    reference, tok = load(
        json.loads((exp / "prepared" / "plan.json").read_text())["models"]["references"]["sft"]["location"]
    )
    base = read_jsonl(exp / "baseline" / "test.jsonl")
    assert [b["reward"] for b in base] == pytest.approx(
        [gold(b["prompt"], b["response"], b["ended"]) for b in base], abs=1e-12
    )
    val = datasets.load_from_disk(str(exp / "prepared" / "pairs"))["validation"]
    val_ids = [
        (
            ids(tok, v["prompt"], v["chosen"], v["chosen_ended"]),
            ids(tok, v["prompt"], v["rejected"], v["rejected_ended"]),
        )
        for v in val
    ]
    ref_val = [(logp(reference, *c), logp(reference, *r)) for c, r in val_ids]
    for row in results(out)["rows"]:
        run = exp / row["run_id"]
        gens = read_jsonl(run / "generations.jsonl")
        assert [g["prompt"] for g in gens] == [b["prompt"] for b in base]
        # the judge: the gold reward of each response; the win rate: 1 win, 0.5 tie, 0 loss against the baseline
        rewards = [gold(g["prompt"], g["response"], g["ended"]) for g in gens]
        assert [g["reward"] for g in gens] == pytest.approx(rewards, abs=1e-12)
        wins = [pref(r, b["reward"]) for r, b in zip(rewards, base)]
        win_rate, win_rate_se = mean_and_se(wins)
        assert row["win_rate"] == pytest.approx(win_rate, abs=1e-12)
        assert row["win_rate_se"] == pytest.approx(win_rate_se, abs=1e-12)
        # its 95% interval: Clopper-Pearson from the beta distribution's quantiles without ties; with ties (half
        # wins) a bootstrap, which must cover the estimate and be about as wide as the normal interval
        if all(w in (0.0, 1.0) for w in wins):
            lo, hi = clopper_pearson(int(sum(wins)), len(wins))
            assert (row["win_rate_lo"], row["win_rate_hi"]) == pytest.approx((lo, hi), abs=1e-9)
        else:
            assert row["win_rate_lo"] < win_rate < row["win_rate_hi"]
            assert row["win_rate_hi"] - row["win_rate_lo"] == pytest.approx(2 * 1.96 * win_rate_se, rel=0.3)
        assert row["reward"] == pytest.approx(sum(rewards) / len(rewards), abs=1e-12)
        ended = sum(g["ended"] for g in gens)
        assert row["eos_rate"] == ended / len(gens)
        assert (row["eos_rate_lo"], row["eos_rate_hi"]) == pytest.approx(clopper_pearson(ended, len(gens)), abs=1e-9)
        # the validation win rate from the run's validation samples against the baseline's, and its interval
        val_gens, val_base = read_jsonl(run / "validation.jsonl"), read_jsonl(exp / "baseline" / "validation.jsonl")
        assert [g["prompt"] for g in val_gens] == [b["prompt"] for b in val_base]
        assert not {g["prompt"] for g in val_gens} & {g["prompt"] for g in gens}  # never the test prompts
        val_wins = [pref(gold(g["prompt"], g["response"], g["ended"]), b["reward"]) for g, b in zip(val_gens, val_base)]
        assert row["val_win_rate"] == pytest.approx(sum(val_wins) / len(val_wins), abs=1e-12)
        for metric in ("val_win_rate", "rank_acc_reward", "rank_acc_policy", "kl", "kl_sft"):
            assert row[f"{metric}_lo"] <= row[metric] <= row[f"{metric}_hi"], (row["run_id"], metric)
        samples = [ids(tok, g["prompt"], g["response"], g["ended"]) for g in gens]
        assert [len(c) - g["ended"] for (_, c), g in zip(samples, gens)] == [g["length"] for g in gens]
        assert row["length"] == pytest.approx(sum(len(c) - g["ended"] for (_, c), g in zip(samples, gens)) / len(gens))

        policy = reference if row["run_id"] == "sft" else load(run / "policy")[0]
        pol_val = [(logp(policy, *c), logp(policy, *r)) for c, r in val_ids]
        acc, near_ties = ranking(*zip(*pol_val))
        assert abs(row["rank_acc_policy"] - acc) <= near_ties, row["run_id"]
        if row["run_id"] == "sft":
            continue
        # KL(policy || ref) from the run's own samples (T = 1): k1 = mean log-ratio, k3 = mean exp(-l) - 1 + l
        log_ratio = [logp(policy, p, c) - logp(reference, p, c) for p, c in samples]
        assert [g["kl_log_ratio"] for g in gens] == pytest.approx(log_ratio, abs=1e-4)  # kept per prompt
        assert row["kl"] == pytest.approx(sum(log_ratio) / len(log_ratio), abs=1e-4)
        assert row["kl_sft"] == row["kl"]  # the reference is the SFT policy: one KL
        assert row["kl_k3"] == pytest.approx(sum(math.expm1(-x) + x for x in log_ratio) / len(log_ratio), abs=1e-4)
        assert row["kl"] > 1e-3  # six steps moved the policy: the check above is not 0 == 0
        # DPO's implicit reward beta * log(p / p_ref) on the validation pairs
        margins = [(row["beta"] * (pc - rc), row["beta"] * (pr - rr)) for (pc, pr), (rc, rr) in zip(pol_val, ref_val)]
        acc, near_ties = ranking(*zip(*margins), slack=row["beta"] * 1e-4)
        assert abs(row["rank_acc_reward"] - acc) <= near_ties, row["run_id"]


def test_one_reference_pass_serves_the_whole_sweep(first, sweep, tmp_path):
    out, _ = first
    # two betas, one pass (computed now, or earlier in this test session by another test of the same world)
    scoring = results(out)["reference_scoring"]
    assert scoring["computed"] + scoring["from_cache"] == 1
    # a fresh results directory with the same cache scores nothing again
    sweep(tmp_path, "objectives.0.betas=[0.1]")
    assert results(tmp_path)["reference_scoring"] == {"computed": 0, "from_cache": 1}


def test_step_one_loss_is_ln2_and_rewards_zero(first):
    out, _ = first
    history = json.loads((out / "rq1_sweep_beta" / "dpo-sft-b0.01-s0" / "metrics.json").read_text())["history"]
    step1 = history[0]
    assert step1["step"] == 1
    assert round(step1["loss"], 4) == round(math.log(2), 4) == 0.6931
    assert abs(step1["rewards/chosen"]) < 1e-6 and abs(step1["rewards/rejected"]) < 1e-6
    assert history[-1]["step"] == 6


def test_second_run_skips_finished_runs_and_resumes_interrupted_one(first, sweep):
    out, _ = first
    exp = out / "rq1_sweep_beta"
    again = sweep(out)
    assert again.stderr.count("already done: ") == 3
    assert results(out)["reference_scoring"] == {"computed": 0, "from_cache": 0}

    # simulate a crash mid-run: status left at "running", metrics missing
    victim = exp / "dpo-sft-b0.01-s0"
    (victim / "status.json").write_text(json.dumps({"status": "running"}))
    (victim / "metrics.json").unlink()
    shutil.rmtree(victim / "policy")
    resumed = sweep(out)
    assert resumed.stderr.count("already done: ") == 2
    assert json.loads((victim / "status.json").read_text())["status"] == "done"
    assert (victim / "metrics.json").is_file() and (victim / "policy" / "config.json").is_file()
    # the prepared inputs (tokenized pairs with reference columns) are read back: nothing is scored again
    assert results(out)["prepared"] == "reused"
    assert results(out)["reference_scoring"] == {"computed": 0, "from_cache": 0}


def test_changed_config_reruns_affected_runs(first, sweep):
    out, _ = first
    rerun = sweep(out, "train.learning_rate=1e-3")
    # a training setting invalidates the trained runs, not the untrained SFT row, nor the prepared inputs
    assert rerun.stderr.count("already done: ") == 1 and "already done: sft" in rerun.stderr
    assert results(out)["prepared"] == "reused"


def test_prepared_inputs_are_rebuilt_when_what_they_hold_changes(sweep, tmp_path):
    sweep(tmp_path, "objectives.0.betas=[0.1]")
    assert results(tmp_path)["prepared"] == "built"
    plan = tmp_path / "rq1_sweep_beta" / "prepared" / "plan.json"
    assert json.loads(plan.read_text())["tokenization"]["truncated"] == {"train": 0, "validation": 0}
    # a shorter max_length changes the tokenized pairs and the reference scores: prepared again, runs again
    rerun = sweep(tmp_path, "objectives.0.betas=[0.1]", "train.max_length=16")
    assert results(tmp_path)["prepared"] == "built" and "already done: " not in rerun.stderr
    truncated = json.loads(plan.read_text())["tokenization"]["truncated"]
    assert truncated["train"] > 0 and truncated["validation"] > 0


def test_checkpoint_choice_keeps_the_lowest_validation_loss(sweep, tmp_path):
    sweep(tmp_path, "objectives.0.betas=[0.5]", "train.eval_steps=2", "train.learning_rate=3e-3")
    run = tmp_path / "rq1_sweep_beta" / "dpo-sft-b0.5-s0"
    metrics = json.loads((run / "metrics.json").read_text())
    evals = {h["step"]: h["eval_loss"] for h in metrics["history"] if "eval_loss" in h}
    assert sorted(evals) == [2, 4, 6]
    assert metrics["checkpoint_step"] == min(evals, key=evals.get)
    assert (run / "policy" / "config.json").is_file() and not (run / "trainer").exists()


# --- report.html: self-contained, and what a browser shows ---------------------------------------------------------


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.images, self.external = 0, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tables += tag == "table"
        if tag == "img":
            self.images.append(attrs["src"])
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])


def test_report_html_is_one_self_contained_page(first):
    out, _ = first
    exp = out / "rq1_sweep_beta"
    text = (exp / "report.html").read_text()
    page = Page()
    page.feed(text)
    assert page.external == [] and page.tables >= 4  # runs, grid, per-run times, versions
    assert len(page.images) == 3  # results.png, frontier.png, curves.png
    assert 'alt="curves.png"' in text and (exp / "curves.png").is_file()
    for src in page.images:
        assert base64.b64decode(src.removeprefix("data:image/png;base64,"))[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dpo-sft-b0.1-s0" in text and "not distinguishable from it" in text
    assert (exp / "experiment.yaml").read_text().splitlines()[0] in text  # the YAML it ran with
    for name in ("torch", "transformers", "trl", "dporef", "CPU cores"):
        assert name in text
    assert "prepare" in text and "runs" in text  # the stages' wall times


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium (make test installs it where apt can)")
def test_report_html_in_a_headless_browser(first, tmp_path):
    out, _ = first
    url = (out / "rq1_sweep_beta" / "report.html").as_uri()
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images="3"' in body and "data-errors" not in body, body  # every plot decoded, no script error
    assert dom.count("<table") >= 4
    shots = Path(os.environ.get("DPOREF_ARTIFACTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / "report.png"
    subprocess.run([*flags, "--window-size=1400,2400", f"--screenshot={shot}", url], capture_output=True, timeout=120)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    print(f"\nscreenshot of report.html: {shot}")
