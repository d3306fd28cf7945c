"""`train.lora`: only the adapters train (every base weight stays the SFT model's), the run starts at the SFT policy
(loss ln 2, rewards 0), is evaluated and reported, and its adapter loads on its base; `train.quantize: 4bit` is
refused on a machine without a CUDA GPU."""

import json
import math
import shutil

import datasets
import pytest
import torch
from conftest import TINY_WORLD
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.errors import UserError
from dpo_ref.models import load_model, resolve

LORA = 'train.lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}'
SHORT = ["objectives.0.betas=[0.1]", "train.max_steps=3", "train.logging_steps=1", "eval.max_new_tokens=12"]
RUN = "dpo-sft-b0.1-s0"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, run_study):
    out = tmp_path_factory.mktemp("runs")
    results, _ = run_study("sweep-beta", out, *SHORT, LORA, "train.learning_rate=3e-3", experiment="rq1_sweep_beta")
    return results, out / "rq1_sweep_beta" / RUN


@pytest.mark.slow
def test_lora_run_is_trained_evaluated_and_reported(lora_run):
    results, run_dir = lora_run
    row = next(r for r in results["rows"] if r["run_id"] == RUN)
    assert row["status"] == "done" and row["win_rate"] is not None
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    assert len((run_dir / "generations.jsonl").read_text().splitlines()) == 24
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    step1 = history[0]
    assert step1["step"] == 1
    # B = 0 at peft's init: the policy is the SFT model, which scored the reference columns, so the margin is 0
    assert abs(step1["loss"] - math.log(2)) < 1e-6
    assert abs(step1["rewards/chosen"]) < 1e-6 and abs(step1["rewards/rejected"]) < 1e-6
    assert history[-1]["step"] == 3


@pytest.mark.slow
def test_lora_with_checkpoint_choice_dropout_and_activation_checkpointing(run_study, tmp_path):
    lora = 'train.lora={"r": 2, "alpha": 4, "dropout": 0.1, "target_modules": ["q_proj"]}'
    extra = [*SHORT, lora, "train.eval_steps=2", "train.checkpoint_steps=2", 'train.gradient_checkpointing="on"']
    results, _ = run_study("sweep-beta", tmp_path, *extra, experiment="rq1_sweep_beta")
    assert [r["status"] for r in results["rows"]] == ["done", "done"]
    run_dir = tmp_path / "rq1_sweep_beta" / RUN
    assert json.loads((run_dir / "metrics.json").read_text())["checkpoint_step"] in (2, 3)  # evaluated at 2 and 3
    adapter = load_file(run_dir / "policy" / "adapter_model.safetensors")
    assert adapter and all(".q_proj." in k for k in adapter)
    # gradients reached the adapters through the checkpointed layers: lora_B left peft's zero init
    assert all(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)
    _, again = run_study("sweep-beta", tmp_path, *extra, experiment="rq1_sweep_beta")
    assert again.stderr.count("already done: ") == 2


@pytest.mark.slow
def test_lora_trains_only_adapter_weights(lora_run, tiny_world):
    _, run_dir = lora_run
    policy = run_dir / "policy"
    assert (policy / "adapter_config.json").is_file() and not (policy / "config.json").is_file()
    base_dir = json.loads((policy / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_dir == str(tiny_world.models["sft"])
    sft = AutoModelForCausalLM.from_pretrained(tiny_world.models["sft"], dtype=torch.float32).state_dict()

    base = AutoModelForCausalLM.from_pretrained(tiny_world.models["sft"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(policy)).state_dict()
    lora = {k.replace(".default", ""): v for k, v in adapted.items() if "lora_" in k}  # the adapter's name dropped
    base_weights = {k.replace(".base_layer", ""): v for k, v in adapted.items() if "lora_" not in k}
    assert lora and {k.split(".")[-2] for k in lora} == {"lora_A", "lora_B"}
    assert all(".q_proj." in k or ".v_proj." in k for k in lora)
    assert {k.removeprefix("base_model.model.") for k in base_weights} == set(sft)
    for name, weight in base_weights.items():
        assert torch.equal(weight, sft[name.removeprefix("base_model.model.")]), name
    # peft starts every lora_B at zero: a nonzero one was trained
    assert all(v.abs().max() > 0 for k, v in lora.items() if "lora_B" in k)

    # dporef's loader merges the adapter into its base: W + (alpha / r) B A on the targets, the rest untouched
    merged = load_model(resolve(str(policy)), torch.float32).cpu().state_dict()
    assert set(merged) == set(sft)
    for name, weight in merged.items():
        prefix = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{prefix}.lora_A.weight" in lora:
            delta = lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"] * (8 / 4)
            assert torch.allclose(weight, sft[name] + delta, atol=1e-6), name
            assert not torch.equal(weight, sft[name]), name
        else:
            assert torch.equal(weight, sft[name]), name


def summed_logp(model, prompt_ids, completion_ids) -> float:
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    return sum(logp[len(prompt_ids) + i - 1, t].item() for i, t in enumerate(completion_ids))


@pytest.mark.slow
def test_lora_policy_serves_as_a_later_reference(lora_run, run_study, tiny_world, tmp_path):
    _, run_dir = lora_run
    policy = run_dir / "policy"
    ref_set = ["references.0.name=lora", f"references.0.model={policy}"]
    results, _ = run_study("sweep-beta", tmp_path, *SHORT, *ref_set, experiment="rq1_sweep_beta")
    assert [r["status"] for r in results["rows"]] == ["done", "done"]
    exp = tmp_path / "rq1_sweep_beta"
    plan = json.loads((exp / "prepared" / "plan.json").read_text())
    assert plan["models"]["references"]["lora"]["fingerprint"] == resolve(str(policy)).fingerprint

    # the reference columns are the adapter-on-base model's log-probs, recomputed with PeftModel and plain forwards
    base = AutoModelForCausalLM.from_pretrained(tiny_world.models["sft"], dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, str(policy)).eval()
    val = datasets.load_from_disk(str(exp / "prepared" / "pairs"))["validation"]
    for row in val.select(range(4)):
        for side in ("chosen", "rejected"):
            expected = summed_logp(adapted, row["prompt_ids"], row[f"{side}_ids"])
            assert abs(row[f"ref:lora:{side}"] - expected) < 1e-4, side


@pytest.mark.slow
def test_lora_fingerprint_is_base_and_adapter(lora_run, tiny_world, tmp_path):
    _, run_dir = lora_run
    ref = resolve(str(run_dir / "policy"))
    assert ref.fingerprint != resolve("world:sft", tiny_world).fingerprint
    moved = tmp_path / "policy"  # the same adapter on another base is another model
    shutil.copytree(run_dir / "policy", moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    assert resolve(str(moved)).fingerprint == ref.fingerprint
    config["base_model_name_or_path"] = str(tiny_world.models["strong-same"])
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert resolve(str(moved)).fingerprint != ref.fingerprint
    config["base_model_name_or_path"] = str(tmp_path / "nowhere")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="base of the adapter"):
        resolve(str(moved), where="references.0.model")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a CUDA GPU")
@pytest.mark.parametrize("extra", [[LORA], []], ids=["cpu", "without-lora"])
def test_quantize_is_refused_in_one_line_before_anything_is_written(tmp_path, extra):
    args = ["sweep-beta", "--out", str(tmp_path / "out")]
    for s in [*TINY_WORLD, *SHORT, "train.quantize=4bit", *extra]:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "train.quantize" in lines[0] and "Traceback" not in result.output, result.output
    assert ("CUDA GPU" if extra else "needs train.lora") in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_analyze_reads_a_lora_policy(lora_run):
    _, run_dir = lora_run
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--min-count", "1"])
    assert result.exit_code == 0, result.output
    rows = (run_dir / "analysis" / "tokens.csv").read_text().splitlines()
    assert rows[0] == "id,token,mean_log_ratio,count" and len(rows) > 10
    # the adapters moved the policy: some token's mean log-ratio to the SFT reference is not 0
    assert any(abs(float(r.split(",")[2])) > 1e-6 for r in rows[1:] if r.count(",") == 3)


def test_an_adapter_that_does_not_fit_its_base_is_refused_in_one_line(tiny_world, tmp_path):
    """An adapter whose modules its base does not have: peft's error is one UserError naming the adapter and its
    base, not a traceback."""
    from peft import LoraConfig, get_peft_model

    adapter = tmp_path / "adapter"
    get_peft_model(tiny_world.model("sft"), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"])).save_pretrained(
        adapter
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_proj"]
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="the adapter does not load on its base") as refused:
        resolve(str(adapter), where="policy")
    assert refused.value.where == "policy" and str(adapter) in refused.value.message
