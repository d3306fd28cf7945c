"""The accelerate launcher: one run trained by two processes (`accelerate launch`, gloo on CPU) gives what one
process gives with the same global batch; bad accelerate setups are refused in one line before anything starts; the
paper configs print their ZeRO-3 launches; TRL builds no reference model on dporef's trainer; a reference too big
for one GPU is measured from its config."""

import json
import math
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY_WORLD
from typer.testing import CliRunner

from dpo_ref.cli import app
from dpo_ref.config import expand, load_experiment

ROOT = Path(__file__).resolve().parent.parent
PAPER = ROOT / "experiments" / "paper" / "rq1_sweep_beta_mistral.yaml"
RUN = "dpo-strong-b0.1-s0"
# A reference other than the policy, so that the step-1 loss depends on the batch (against the policy itself it is
# ln 2 whatever the batch); a global batch of 8 as 4 x 2 micro-batches, every step logged.
TWO_MICRO_BATCHES = [
    "references=[{name: strong, model: 'world:strong-same'}]",
    "objectives.0.betas=[0.1]",
    "train.batch_size=4",
    "train.grad_accum=2",
    "train.max_steps=4",
    "train.logging_steps=1",
    "eval.max_new_tokens=12",
]


def cli(*args: str, sets=()):
    pairs = [a for s in TINY_WORLD + list(sets) for a in ("--set", s)]
    return CliRunner().invoke(app, [*args, *pairs])


def said(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
def test_two_processes_train_a_run_as_one_process_does(tmp_path):
    one = cli("sweep-beta", "--out", str(tmp_path / "one"), sets=TWO_MICRO_BATCHES)
    assert one.exit_code == 0, one.output
    two = cli(
        "sweep-beta", "--out", str(tmp_path / "two"), "--launcher", "accelerate",
        sets=[*TWO_MICRO_BATCHES, "launch.accelerate.config=cpu"],
    )  # fmt: skip
    assert two.exit_code == 0, two.output
    a, b = (json.loads((tmp_path / d / "rq1_sweep_beta" / RUN / "metrics.json").read_text()) for d in ("one", "two"))
    assert (a["train_processes"], b["train_processes"]) == (1, 2)
    steps_a, steps_b = ([h for h in m["history"] if "loss" in h] for m in (a, b))
    assert [h["step"] for h in steps_a] == [h["step"] for h in steps_b] == [1, 2, 3, 4]
    # step 1: the same 8 pairs (rank r gets micro-batch r of the one process's 2), before any update
    assert abs(steps_a[0]["loss"] - math.log(2)) > 1e-3  # the reference differs from the policy: a real check
    assert steps_b[0]["loss"] == pytest.approx(steps_a[0]["loss"], rel=1e-6)
    # the gradient: accumulation over 2 micro-batches and gloo's all-reduce over 2 processes average the same terms
    assert steps_b[0]["grad_norm"] == pytest.approx(steps_a[0]["grad_norm"], rel=1e-5)
    # after 4 updates float32 sums in another order may differ in their last bits, no more
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-4)
    log = (tmp_path / "two" / "rq1_sweep_beta" / "logs" / f"{RUN}.log").read_text()
    assert "accelerate.commands.launch --config_file" in log and "--num_processes 2" in log
    assert f"finished {RUN}: done" in log


def test_the_paper_configs_launch_each_run_across_8_gpus_with_zero3(tmp_path):
    exp = load_experiment(PAPER)
    result = CliRunner().invoke(app, ["sweep-beta", str(PAPER), "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    launches = re.findall(r"^  (\S+ -m accelerate\.commands\.launch .*)$", result.stdout, flags=re.M)
    trained = [r.run_id for r in expand(exp) if r.objective != "sft"]
    assert [line.split()[-2] for line in launches] == trained
    for line in launches:
        assert f"--config_file {ROOT}/experiments/accelerate/zero3.yaml --num_processes 8 -m dpo_ref run-one" in line
    assert re.search(r"^  \S+ -m dpo_ref run-one \S+ sft --wait$", result.stdout, flags=re.M)  # evaluates only
    assert not (tmp_path / exp.name).exists()
    dry = ["sweep-beta", str(PAPER), "--dry-run", "--out", str(tmp_path)]
    sbatch = CliRunner().invoke(app, [*dry, "--launcher", "slurm"])
    assert sbatch.exit_code == 0, sbatch.output
    tasks = re.findall(r"^# task \d+: (.*)$", sbatch.stdout, flags=re.M)
    assert len(tasks) == len(expand(exp)) and sum("--num_processes 8" in t for t in tasks) == len(trained)


@pytest.mark.parametrize("name", ["cpu", "ddp", "fsdp", "zero3"])
def test_the_shipped_accelerate_configs_are_what_accelerate_reads_and_dporef_runs(name, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ROOT / "experiments" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))  # accelerate's own reader: known keys, known values
    assert config.num_machines == 1 and config.use_cpu is False
    dry = cli("sweep-beta", "--dry-run", "--out", str(tmp_path), "--launcher", "accelerate",
              sets=[f"launch.accelerate.config={name}", "train.grad_accum=8"])  # fmt: skip
    assert dry.exit_code == 0, dry.output
    assert f"--config_file {path} --num_processes {config.num_processes} -m dpo_ref run-one" in said(dry.stdout)


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "settings, message",
    [
        ("distributed_type: FSDP\nfsdp_config: {fsdp_state_dict_type: SHARDED_STATE_DICT}\n", "FULL_STATE_DICT"),
        ("distributed_type: DEEPSPEED\ndeepspeed_config: {zero_stage: 3}\n", "zero3_save_16bit_model: true"),
        ("distributed_type: MULTI_GPU\nnum_machines: 2\n", "num_machines must be 1"),
        ("distributed_type: 'NO'\nuse_cpu: true\n", "use_cpu: true starts one process"),
        ("[1, 2]\n", "holds no accelerate settings"),
    ],
)
def test_an_accelerate_config_dporef_cannot_run_is_refused_in_one_line(tmp_path, settings, message):
    config = write(tmp_path / "mine.yaml", settings)
    result = cli("sweep-beta", "--dry-run", "--out", str(tmp_path), "--launcher", "accelerate",
                 sets=[f"launch.accelerate.config={config}"])  # fmt: skip
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {config}: ") and message in line, line


def test_a_global_batch_the_processes_cannot_split_is_refused_before_anything(tmp_path):
    sets = ["train.grad_accum=3", "launch.accelerate.config=cpu"]
    result = cli("sweep-beta", "--out", str(tmp_path), "--launcher", "accelerate", sets=sets)
    assert result.exit_code == 2, result.output
    assert "train.grad_accum: 3 is not a multiple of the 2 processes" in said(result.stderr)
    assert not (tmp_path / "rq1_sweep_beta").exists()
    unknown = cli("sweep-beta", "--dry-run", "--out", str(tmp_path), "--launcher", "accelerate",
                  sets=["launch.accelerate.config=zero4"])  # fmt: skip
    assert unknown.exit_code == 2
    assert "'zero4' is neither a file nor one of cpu, ddp, fsdp, zero3" in said(unknown.stderr)


def test_trl_builds_no_reference_model_on_dporefs_trainer(tiny_world, tmp_path):
    """TRL 1.16 builds a reference from the policy's path when it is not told to precompute, and under FSDP even
    when it is: the same branch. TRL's own trainer builds it here; dporef's, which has the columns, does not."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from dpo_ref.models import load_model, load_tokenizer, resolve
    from dpo_ref.train import CachedReferenceDPOTrainer

    policy = resolve("world:sft", tiny_world)
    pairs = Dataset.from_dict({"prompt": ["copy ab"], "chosen": ["ab"], "rejected": ["ba"]})
    args = DPOConfig(output_dir=str(tmp_path), precompute_ref_log_probs=False, use_cpu=True, report_to=[])
    built = {}
    for trainer_class in (DPOTrainer, CachedReferenceDPOTrainer):
        trainer = trainer_class(model=load_model(policy, torch.float32), args=args, train_dataset=pairs,
                                processing_class=load_tokenizer(policy))  # fmt: skip
        built[trainer_class.__name__] = trainer.ref_model is not None
    assert built == {"DPOTrainer": True, "CachedReferenceDPOTrainer": False}


def test_the_size_that_decides_spreading_a_reference_is_its_weights(tiny_world):
    """weight_bytes reads the config alone; the safetensors file the world wrote holds the same float32 weights
    (plus a small header, and minus any weight tied to another)."""
    from dpo_ref.models import needs_spreading, resolve, weight_bytes

    location = resolve("world:sft", tiny_world).location
    on_disk = sum(p.stat().st_size for p in Path(location).glob("*.safetensors"))
    fp32 = weight_bytes(location, torch.float32)
    assert on_disk == pytest.approx(fp32, rel=0.02)
    assert weight_bytes(location, torch.bfloat16) == pytest.approx(fp32 / 2, rel=1e-3)  # fp32 buffers stay
    assert needs_spreading(location, torch.float32, free_bytes=fp32)  # 80 % of it is left for weights: too small
    assert not needs_spreading(location, torch.float32, free_bytes=2 * fp32)
