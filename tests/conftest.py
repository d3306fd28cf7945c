"""Hermetic test setup: offline hub, a temporary dporef cache, quiet progress bars, fixed seeds."""

import os

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:  # `pytest -n N` (make test): the cores split between the N workers, as
    # dporef's own workers split them (two torch processes that each take every core are several times slower)
    share = str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, share)

import random  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

os.environ["HF_HUB_OFFLINE"] = "1"
# datasets' arrow cache (local json/parquet reads) goes to a throwaway directory, never the user's ~/.cache
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="dporef-test-datasets-")
os.environ["DPOREF_QUIET"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One dporef cache for the whole session (the tiny world is built once), never the user's own."""
    path = tmp_path_factory.mktemp("dporef-cache")
    os.environ["DPOREF_CACHE"] = str(path)
    return path


@pytest.fixture(autouse=True)
def _seeded(cache_dir):
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


# A world small enough for end-to-end tests: built once per session in seconds, trains in a few steps.
TINY = {
    "n_train_pairs": 48,
    "n_val_pairs": 24,
    "n_eval_prompts": 24,
    "sft_steps": 60,
    "strong_sft_steps": 20,
    "other_sft_steps": 60,
}
TINY_WORLD = [f"world.{k}={v}" for k, v in TINY.items()]


@pytest.fixture(scope="session")
def tiny_world(cache_dir):
    from dpo_ref.world import WorldConfig, build_world

    return build_world(WorldConfig(**TINY))


@pytest.fixture(scope="session")
def scored_pairs(tiny_world, tmp_path_factory):
    """The world's first 16 training pairs as TRL tokenizes them, with dporef's reference columns of the stronger
    same-family reference: at step 1 the policy (the SFT model) is not the reference, so every loss sees log-ratios
    away from 0, not the ln 2 that any loss gives at a policy equal to its reference."""
    from datasets import DatasetDict
    from trl import DPOConfig, DPOTrainer

    from dpo_ref.models import load_model, load_tokenizer, resolve
    from dpo_ref.reference import ReferenceEngine

    sft, ref = resolve("world:sft", tiny_world), resolve("world:strong-same", tiny_world)
    tok = load_tokenizer(sft)
    text = tiny_world.preference_data()["train"].select(range(16)).select_columns(["prompt", "chosen", "rejected"])
    tmp = tmp_path_factory.mktemp("trl_losses")
    args = DPOConfig(output_dir=str(tmp / "tok"), use_cpu=True, report_to=[], bf16=False, precompute_ref_log_probs=True)
    model = load_model(sft, torch.float32)
    tokenized = DPOTrainer(model=model, args=args, train_dataset=text, processing_class=tok).train_dataset
    tokenized = tokenized.remove_columns([c for c in tokenized.column_names if "ref_" in c])
    scores = ReferenceEngine(cache_dir=tmp / "ref").pair_scores(ref, DatasetDict(train=tokenized), tok, 1024, 64)
    cached = tokenized.add_column("ref_chosen_logps", list(scores["train"]["chosen"]))
    return sft, ref, tok, text, cached.add_column("ref_rejected_logps", list(scores["train"]["rejected"]))


@pytest.fixture(scope="session")
def reward_model_dir(tiny_world, tmp_path_factory):
    """A 2-layer Llama reward model (one output) with the world's tokenizer and chat template, random weights."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_world.tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("reward-model")
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def run_study(cache_dir):
    """Run `dporef <study> --out OUT --set ...` on the tiny world; return (results.json, CliRunner result)."""
    import json

    from typer.testing import CliRunner

    from dpo_ref.cli import app

    def run(study: str, out, *sets: str, experiment: str):
        args = [study, "--out", str(out)]
        for s in TINY_WORLD + list(sets):
            args += ["--set", s]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output + repr(result.exception)
        return json.loads((out / experiment / "results.json").read_text()), result

    return run


def one_line_error(result, *says):
    """Exit 2, no traceback, and the fault as the one `error:` line, last on stderr, holding each of `says` (the
    progress lines the command printed before it stay as they were)."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "Traceback" not in result.output and lines[-1].startswith("error: "), result.output
    assert [line for line in lines if line.startswith("error")] == lines[-1:], result.stderr
    for text in says:
        assert text in lines[-1], lines[-1]


# The world's gold reward written out by hand from docs/world.md, for tests that recompute metrics without dporef.
TARGETS = {
    "copy": lambda s: s,
    "rev": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "dup": lambda s: "".join(c + c for c in s),
}


def gold(prompt: str, response: str, ended: bool) -> float:
    """docs/world.md's reward: share of the target's positions right, -0.1 per extra character, -0.5 without EOS."""
    task, letters = prompt.split(" ")
    target = TARGETS[task](letters)
    hits = sum(response[i] == target[i] for i in range(min(len(response), len(target))))
    return hits / len(target) - 0.1 * max(0, len(response) - len(target)) - (0.0 if ended else 0.5)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size under tmp_path (a full disk on demand); mount.read_only(path) remounts
    it read-only. Skipped where mounting is not permitted."""
    mounted = []

    def run(*args):
        if shutil.which("mount") is None:
            pytest.skip("no `mount` command here: cannot make a small or read-only file system")
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"mounting is not permitted here ({done.stderr.strip()}): needs root or CAP_SYS_ADMIN")

    def mount(size: str):
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
        mounted.append(path)
        return path

    mount.read_only = lambda path: run("mount", "-o", "remount,ro", str(path))
    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)
