"""A short real DPO sweep with a model built from a config, no weights anywhere: checks the CUDA path end to end on a
GPU machine with no network (bench/gpu.sh runs it), and runs on a CPU at `--size tiny`. Not a test.

It writes into OUT a byte-level BPE tokenizer trained here on the prompts plus a Llama config (`model/`, the policy
and reference as `init:OUT/model`), preference pairs on prompts with checkable instructions (`pairs.jsonl`: per
prompt, the best and the worst of 8 random responses by the instruction checks), held-out prompts, and an experiment
YAML; then runs `dporef sweep-beta` on it and prints the wall time and the table.

    python bench/config_model_sweep.py --size gpu --out /tmp/cfg-sweep     # ~350M parameters, on one GPU
    python bench/config_model_sweep.py --size tiny --out /tmp/cfg-sweep    # ~0.3M parameters, on a CPU
    python bench/config_model_sweep.py --size lora --out /tmp/cfg-lora     # ~1B parameters, LoRA adapters only
    python bench/config_model_sweep.py --size gpu --set launch.workers=2   # the runs two at a time on one GPU
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dpo_ref.data import instructions
from dpo_ref.models import write_config_model

SIZES = {  # Llama shapes: (hidden, layers, heads, MLP width), pairs, held-out prompts, training batch
    "tiny": dict(hidden=64, layers=2, heads=4, mlp=128, pairs=256, prompts=32, batch=16),
    "gpu": dict(hidden=1024, layers=24, heads=16, mlp=2816, pairs=4096, prompts=256, batch=32),
    "lora": dict(hidden=2048, layers=20, heads=16, mlp=5632, pairs=2048, prompts=128, batch=16),  # ~1.0B
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}  # the `lora` size trains adapters only
WORDS = "the a cat dog sun rain home water light music small simple happy friend morning color is are and very good"
WORDS = WORDS.split() + [w for ws in (instructions.START_WORDS, instructions.INCLUDE_WORDS) for w in ws]


def random_response(rng: random.Random) -> str:
    """Words in random order and amount, with random casing, commas, bullets, quotes, opening word, closing phrase:
    enough variety that the instruction checks tell some responses apart."""
    words = [rng.choice(WORDS) for _ in range(rng.randint(4, 90))]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    if rng.random() < 0.3:
        words[0] = rng.choice(instructions.START_WORDS)
    text = " ".join(w + ("," if rng.random() < 0.1 else "") for w in words)
    if rng.random() < 0.3:
        text += " " + rng.choice(instructions.END_PHRASES)
    if rng.random() < 0.2:
        chunks = rng.randint(2, 5)
        step = max(1, len(words) // chunks)
        text = "\n".join("- " + " ".join(words[i : i + step]) for i in range(0, len(words), step))
    if rng.random() < 0.15:
        text = f'"{text}"'
    return text


def make_pairs(prompts: list[str], rng: random.Random) -> tuple[list[dict], int]:
    rows, ties = [], 0
    for prompt in prompts:
        candidates = [random_response(rng) for _ in range(8)]
        scored = sorted(candidates, key=lambda r: instructions.score(prompt, r, True))
        worst, best = scored[0], scored[-1]
        if instructions.score(prompt, best, True) == instructions.score(prompt, worst, True):
            ties += 1
            continue
        rows.append({"prompt": prompt, "chosen": best, "rejected": worst})
    return rows, ties


def write_model(out: Path, size: dict, texts: list[str]) -> None:
    write_config_model(out, texts, size["hidden"], size["layers"], size["heads"], size["mlp"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    parser.add_argument("--out", type=Path, default=Path("/tmp/dporef-config-sweep"))
    parser.add_argument("--set", action="append", default=[], help="passed on to `dporef sweep-beta --set`")
    args = parser.parse_args()
    size, out = SIZES[args.size], args.out
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    prompts = instructions.make_prompts(size["pairs"] + size["prompts"], seed=0)
    pairs, ties = make_pairs(prompts[: size["pairs"]], rng)
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    (out / "eval_prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts[size["pairs"] :]))
    write_model(out / "model", size, prompts + [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs])
    experiment = {
        "name": f"config_model_{args.size}",
        "policy": f"init:{out / 'model'}",
        "data": str(out / "pairs.jsonl"),  # 5% held out for validation
        "judge": {"kind": "instructions"},
        "references": [{"name": "sft", "model": f"init:{out / 'model'}"}],
        "objectives": [{"name": "dpo", "betas": [0.1, 0.01]}],
        "train": {"learning_rate": 1e-4, "epochs": 1, "batch_size": size["batch"], "max_length": 256}
        | ({"lora": LORA} if args.size == "lora" else {}),
        "eval": {"prompts": str(out / "eval_prompts.jsonl"), "max_new_tokens": 64, "batch_size": 128},
    }
    (out / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
    print(f"{len(pairs)} pairs ({ties} prompts skipped: all candidates tied); model config in {out / 'model'}")
    start = time.time()
    cmd = [sys.executable, "-m", "dpo_ref", "sweep-beta", str(out / "experiment.yaml"), "--out", str(out / "runs")]
    cmd += [a for s in args.set for a in ("--set", s)]
    subprocess.run(cmd, check=True)
    print(f"config-model sweep ({args.size}): {time.time() - start:.1f}s wall")


if __name__ == "__main__":
    main()
