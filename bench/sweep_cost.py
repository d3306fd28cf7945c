"""What a k-beta DPO sweep costs through dporef against plain TRL: the same pairs, model, steps and seeds, three ways.

  A  dporef: the reference scored once for the whole sweep (its ReferenceEngine), then each beta trained by dporef's
     trainer on the cached columns (no reference model in memory while training)
  B  stock TRL DPOTrainer with a `ref_model`: a second model in memory, a reference forward at every step
  C  stock TRL DPOTrainer with `precompute_ref_log_probs=True`: the reference scored again for every beta

Each variant runs the whole sweep in a process of its own (alternated A B C A B C ...). Measured in that process,
after its imports: wall time of the sweep, and peak resident memory above what the process held before it loaded
anything (the interpreter and libraries are the same for all three, ~0.6 GB). Every variant trains on the token ids
TRL's own tokenization gives (checked by digest), saves each policy, and logs every step; a "reference forward pass"
is one forward call of a causal LM made with gradients off (the only calls that are not training the policy).

Two configs: `world` (the embedded world's pairs and 134k-parameter SFT model: overhead-bound) and `compute` (a
Llama-shaped model of ~26M parameters built from a config, word-level tokens, responses of 100-200 tokens: compute-
bound). Prints, per config, the ratios A/B and A/C of time and memory with their min and max over the repeats, the
step-1 losses of all three (ln 2: the reference is the initial policy) and the reference passes each made; its last
line is `time_ratio=X mem_ratio=Y time_ratio_precompute=Z` for the compute-bound config (medians).

    python bench/sweep_cost.py --quick            # 2 repeats, ~15 minutes on 2 CPU cores
    python bench/sweep_cost.py                    # 3 repeats, more steps
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KS = (0.1, 0.05, 0.01)  # the betas of the sweep (k = 3)
CONFIGS = {  # pairs trained per run (one epoch), micro-batch of pairs x micro-batches per step; steps follow
    "world": dict(pairs=192, batch=8, accum=2, lr=1e-4),
    "compute": dict(pairs=48, batch=2, accum=4, lr=1e-4, hidden=512, layers=8, heads=8, mlp=1408, words=(100, 200)),
}
WORDS = [f"w{i}" for i in range(500)]  # the compute config's vocabulary: one token per word


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


# ---------------------------------------------------------------------------------------------------------- data


def build_compute(work: Path, cfg: dict) -> None:
    """A word-level tokenizer, a Llama of the config's shape with seeded random weights, and text pairs whose
    responses have 100-200 words (= tokens)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + ["Q:", "A:"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=cfg["hidden"],
        num_hidden_layers=cfg["layers"],
        num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["heads"],
        intermediate_size=cfg["mlp"],
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(work / "model")
    fast.save_pretrained(work / "model")
    rng = random.Random(0)
    lo, hi = cfg["words"]
    rows = []
    for _ in range(cfg["pairs"]):
        prompt = "Q: " + " ".join(rng.choices(WORDS, k=rng.randint(10, 30))) + " A:"
        chosen, rejected = (" " + " ".join(rng.choices(WORDS, k=rng.randint(lo, hi))) for _ in range(2))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_world_data(work: Path, cfg: dict) -> None:
    """The embedded world's SFT model and its first training pairs, as text."""
    import shutil

    from dpo_ref.world import WorldConfig, build_world

    world = build_world(WorldConfig())
    shutil.copytree(world.models["sft"], work / "model")
    train = world.preference_data()["train"].select(range(cfg["pairs"]))
    rows = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in train]
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# ------------------------------------------------------------------------------------------------------ variants


def count_reference_passes() -> list[int]:
    """Count forward calls of causal LMs made with gradients off (reference passes), from here on."""
    import torch
    from transformers import GenerationMixin

    calls = [0]

    def hook(module, args, output):  # the LM itself (a GenerationMixin), not the decoder stack inside it
        if isinstance(module, GenerationMixin) and not torch.is_grad_enabled():
            calls[0] += 1

    torch.nn.modules.module.register_module_forward_hook(hook)
    return calls


def tokenized_like_trl(rows: list[dict], tok) -> list[dict]:
    """TRL 1.16's tokenization of non-conversational pairs (DPOTrainer._prepare_dataset): EOS appended to each
    response, prompt and prompt+response tokenized, the response starting where the two diverge."""

    def ids(text):
        return tok(text)["input_ids"]

    out = []
    for r in rows:
        p = ids(r["prompt"])
        c, j = (ids(r["prompt"] + r[k] + tok.eos_token) for k in ("chosen", "rejected"))
        n = min(next((i for i, (a, b) in enumerate(zip(p, x)) if a != b), min(len(p), len(x))) for x in (c, j))
        out.append({"prompt_ids": p[:n], "chosen_ids": c[n:], "rejected_ids": j[n:]})
    return out


def digest(ds) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    for name in ("prompt_ids", "chosen_ids", "rejected_ids"):
        h.update(json.dumps(list(ds[name])).encode())
    return h.hexdigest()


def trl_args(out: Path, beta: float, cfg: dict, steps: int, **extra):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(out),
        beta=beta,
        learning_rate=cfg["lr"],
        max_steps=steps,
        per_device_train_batch_size=cfg["batch"],
        gradient_accumulation_steps=cfg["accum"],
        lr_scheduler_type="linear",
        warmup_steps=0.1,
        max_length=1024,
        logging_steps=1,
        logging_first_step=True,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
        data_seed=0,
        use_cpu=True,
        bf16=False,  # DPOConfig defaults to bf16 autocast, even on CPU; dporef's CPU regime is fp32
        dataloader_num_workers=0,
        activation_checkpointing=False,
        gradient_checkpointing=None,
        **extra,
    )


def variant(name: str, work: Path, cfg: dict, steps: int) -> dict:
    """Run the sweep one way in this process; what it measured."""
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from dpo_ref.config import EvalConfig, RunSpec, TrainConfig
    from dpo_ref.models import resolve
    from dpo_ref.reference import ReferenceEngine
    from dpo_ref.train import train_policy

    torch.set_num_threads(os.cpu_count() or 1)
    base_rss = rss_bytes()
    passes = count_reference_passes()
    rows = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
    location = str(work / "model")
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(location)
    losses, digests = [], set()
    out = Path(tempfile.mkdtemp(prefix=f"sweep-cost-{name}-"))
    if name == "A":
        pairs = Dataset.from_list(tokenized_like_trl(rows, tok))
        digests.add(digest(pairs))
        engine = ReferenceEngine(cache_dir=out / "refscores")  # a fresh cache: the pass is computed here
        ref = resolve(location)
        batch = EvalConfig().batch_size  # dporef's default scoring batch (capped by tokens on a CPU)
        scores = engine.pair_scores(ref, DatasetDict(train=pairs), tok, 1024, batch, False, "fp32")["train"]
        pairs = pairs.add_column("ref_chosen_logps", list(scores["chosen"]))
        pairs = pairs.add_column("ref_rejected_logps", list(scores["rejected"]))
        train_cfg = TrainConfig(
            learning_rate=cfg["lr"],
            max_steps=steps,
            batch_size=cfg["batch"],
            grad_accum=cfg["accum"],
            logging_steps=1,
            max_length=1024,
            precision="fp32",
            gradient_checkpointing="off",
        )
    for beta in KS:
        model = AutoModelForCausalLM.from_pretrained(location)
        if name == "A":
            run = RunSpec(run_id=f"dpo-b{beta}", objective="dpo", reference="ref", beta=beta, seed=0)
            trained = train_policy(model, tok, pairs, None, train_cfg, run, out / f"t{beta}", out / f"p{beta}")
            history = trained.history
        else:
            text = Dataset.from_list(rows)
            ref_model = AutoModelForCausalLM.from_pretrained(location) if name == "B" else None
            args = trl_args(out / f"t{beta}", beta, cfg, steps, precompute_ref_log_probs=name == "C")
            trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=text, processing_class=tok)
            digests.add(digest(trainer.train_dataset))
            trainer.train()
            trainer.save_model(str(out / f"p{beta}"))
            history = trainer.state.log_history
        losses.append(next(h["loss"] for h in history if "loss" in h and h["step"] == 1))
        del model, history  # a run's model and optimizer state freed before the next run, in every variant
        trained = trainer = ref_model = None
        gc.collect()
    seconds = time.perf_counter() - t0
    return {
        "variant": name,
        "seconds": seconds,
        "peak_above_start_mb": (peak_rss_bytes() - base_rss) / 2**20,
        "peak_mb": peak_rss_bytes() / 2**20,
        "step1_losses": losses,
        "reference_passes": passes[0],
        "digests": sorted(digests),
    }


# ---------------------------------------------------------------------------------------------------------- main


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def compare(config: str, steps: int, repeats: int) -> dict:
    cfg = CONFIGS[config]
    work = Path(tempfile.mkdtemp(prefix=f"sweep-cost-{config}-"))
    (build_compute if config == "compute" else build_world_data)(work, cfg)
    results = {v: [] for v in "ABC"}
    for i in range(repeats):
        for v in "ABC":
            cmd = [sys.executable, __file__, "--variant", v, "--config", config, "--work", str(work)]
            cmd += ["--steps", str(steps)]
            line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results[v].append(json.loads(line))
            r = results[v][-1]
            print(
                f"  {config} repeat {i + 1} {v}: {r['seconds']:.1f}s, peak +{r['peak_above_start_mb']:.0f} MB "
                f"({r['peak_mb']:.0f} MB), {r['reference_passes']} reference passes",
                flush=True,
            )
    a, b, c = (results[v] for v in "ABC")
    time_ab = [x["seconds"] / y["seconds"] for x, y in zip(a, b)]
    time_ac = [x["seconds"] / y["seconds"] for x, y in zip(a, c)]
    mem_ab = [x["peak_above_start_mb"] / y["peak_above_start_mb"] for x, y in zip(a, b)]
    mem_ac = [x["peak_above_start_mb"] / y["peak_above_start_mb"] for x, y in zip(a, c)]
    print(
        f"{config}: {len(KS)} betas x {steps} steps of {cfg['accum']} x {cfg['batch']} pairs, {repeats} repeats "
        f"(A dporef, B TRL ref_model, C TRL precompute)"
    )
    print(f"  time A/B {spread(time_ab)}   A/C {spread(time_ac)}")
    print(f"  peak memory above start A/B {spread(mem_ab)}   A/C {spread(mem_ac)}")
    for v, rs in results.items():
        print(
            f"  {v}: step-1 losses {[round(x, 6) for x in rs[0]['step1_losses']]}, reference passes "
            f"{rs[0]['reference_passes']}, token digest {rs[0]['digests']}"
        )
    ln2 = math.log(2)
    # ln 2 up to float32 rounding of summed log-probs (C's precompute pads other batches than training does)
    same = all(abs(x - ln2) < 1e-4 for rs in results.values() for r in rs for x in r["step1_losses"])
    one_data = len({d for rs in results.values() for r in rs for d in r["digests"]}) == 1
    print(f"  step-1 losses all ln 2: {same}; the same token ids in every variant: {one_data}")
    return {"time": statistics.median(time_ab), "mem": statistics.median(mem_ab), "pre": statistics.median(time_ac)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats and fewer steps (~15 min on 2 cores)")
    parser.add_argument("--config", choices=CONFIGS, help="only this config (default: both)")
    parser.add_argument("--variant", choices="ABC", help=argparse.SUPPRESS)  # a child process: one variant
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("DPOREF_QUIET", "1")
    if args.variant:
        print(json.dumps(variant(args.variant, args.work, CONFIGS[args.config], args.steps)))
        return
    repeats = 2 if args.quick else 3
    ratios = {}
    for config in [args.config] if args.config else ["world", "compute"]:
        cfg = CONFIGS[config]
        steps = cfg["pairs"] // (cfg["batch"] * cfg["accum"]) * (1 if args.quick else 2)  # epochs: 1 quick, else 2
        ratios[config] = compare(config, steps, repeats)
    r = ratios.get("compute") or next(iter(ratios.values()))
    print(f"time_ratio={r['time']:.3f} mem_ratio={r['mem']:.3f} time_ratio_precompute={r['pre']:.3f}")


if __name__ == "__main__":
    main()
