"""Training and generation throughput of dporef's own paths, for a Llama-shaped model built from a config (random
weights, random tokens: nothing to download). bench/gpu.sh runs it on a GPU; `--size tiny` runs on a CPU.

Training: DPO steps of dporef's trainer on precomputed reference columns, under `precision: bf16` on a GPU (fp32 on a
CPU), the model loaded in that regime as dporef loads it (precision.py: below 1e9 parameters, as both sizes here are,
fp32 weights under bf16 autocast), with and without gradient checkpointing: tokens per second (prompt and both responses
of every pair, padding excluded) and MFU = 6 x parameters x tokens/s / the card's peak dense bf16 FLOP/s (the 6 counts
forward and backward; MFU is left out where the card's peak is not known, and on a CPU). Generation: dporef's batched
sampling (the KV-cache path every evaluation takes) in the same regime, new tokens per second. Peak GPU memory of each
part.

    python bench/throughput.py --size 0.5b        # on one GPU: ~0.56B parameters, 512-token pairs
    python bench/throughput.py --size tiny        # on a CPU, in a minute
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import torch

SIZES = {  # Llama shapes; pairs per step, tokens per prompt and per response, timed steps after 2 warm-up ones
    "tiny": dict(hidden=128, layers=4, heads=4, mlp=352, vocab=2048, batch=4, prompt=32, response=96, steps=4),
    "0.5b": dict(hidden=1280, layers=24, heads=20, mlp=3456, vocab=32000, batch=8, prompt=64, response=448, steps=10),
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}  # dense bf16 FLOP/s (NVIDIA specs)


def build(out: Path, size: dict) -> tuple[Path, int]:
    """A Llama with seeded random weights and a tokenizer of `vocab` byte-level pieces saved in `out`."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{f"t{i}": i for i in range(2, size["vocab"])}}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["heads"],
        intermediate_size=size["mlp"],
        max_position_embeddings=2048,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def pairs(size: dict, n: int):
    from datasets import Dataset

    rng = random.Random(0)

    def ids(k):
        return [rng.randrange(2, size["vocab"]) for _ in range(k)]

    rows = [
        {
            "prompt_ids": ids(size["prompt"]),
            "chosen_ids": ids(size["response"]) + [1],
            "rejected_ids": ids(size["response"]) + [1],
            "ref_chosen_logps": -1.0e3,  # any value: the loss's value does not change what a step costs
            "ref_rejected_logps": -1.0e3,
        }
        for _ in range(n)
    ]
    return Dataset.from_list(rows)


def precision() -> str:
    """The `precision:` benchmarked: bf16 on a GPU, fp32 on a CPU (CPU bf16 is slow and not what dporef runs)."""
    return "bf16" if torch.cuda.is_available() else "fp32"


def peak_gb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def train(location: Path, size: dict, checkpointing: bool, out: Path) -> dict:
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from dpo_ref.config import RunSpec, TrainConfig
    from dpo_ref.models import ModelRef, load_tokenizer
    from dpo_ref.precision import regime_for
    from dpo_ref.train import CachedReferenceDPOTrainer, dpo_config

    gpu = torch.cuda.is_available()
    ref = ModelRef(str(location), str(location), "")
    model, tok = regime_for(ref, precision()).load(ref), load_tokenizer(ref)
    steps = size["steps"] + 2
    data = pairs(size, steps * size["batch"])
    cfg = TrainConfig(
        learning_rate=1e-5,
        max_steps=steps,
        batch_size=size["batch"],
        logging_steps=1,
        max_length=2048,
        precision=precision(),
        gradient_checkpointing="on" if checkpointing else "off",
    )
    run = RunSpec(run_id="bench", objective="dpo", reference="ref", beta=0.1, seed=0)
    args = dpo_config(cfg, run, out / f"trainer-{checkpointing}", 1)
    trainer = CachedReferenceDPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if gpu:
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.remove_callback(PrinterCallback)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    tokens_per_step = size["batch"] * (size["prompt"] * 2 + 2 * (size["response"] + 1))  # both rows of each pair
    seconds = times[-1] - times[1]  # the last `steps` steps, after 2 warm-up ones
    rate = tokens_per_step * size["steps"] / seconds
    return {"tokens_per_s": rate, "step_s": seconds / size["steps"], "peak_gb": peak_gb()}


def generation(location: Path, size: dict) -> dict:
    from dpo_ref.generation import Sampling, generate
    from dpo_ref.models import ModelRef, load_tokenizer
    from dpo_ref.precision import regime_for

    gpu = torch.cuda.is_available()
    ref = ModelRef(str(location), str(location), "")
    regime = regime_for(ref, precision())
    model, tok = regime.load(ref), load_tokenizer(ref)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    rng = random.Random(1)
    n = 64 if gpu else 8
    prompts = [" ".join(f"t{rng.randrange(2, size['vocab'])}" for _ in range(size["prompt"])) for _ in range(n)]
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    sampling = Sampling(max_new_tokens=size["response"], temperature=1.0, batch_size=n)
    t0 = time.perf_counter()
    with regime.autocast():
        gens = generate(model, tok, prompts, sampling, seed=0)
    seconds = time.perf_counter() - t0
    return {"new_tokens_per_s": sum(len(c) for c in gens.completion_ids) / seconds, "peak_gb": peak_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="tiny")
    args = parser.parse_args()
    size = SIZES[args.size]
    work = Path(tempfile.mkdtemp(prefix="dporef-throughput-"))
    location, params = build(work / "model", size)
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    peak = next((v for k, v in PEAK_BF16.items() if k in card), None)
    print(f"{args.size}: {params / 1e6:.1f}M parameters on {card}")
    results = {"size": args.size, "params": params, "device": card}
    for checkpointing in (False, True):
        r = train(location, size, checkpointing, work)
        mfu = 6 * params * r["tokens_per_s"] / peak if peak else None
        results[f"train_checkpointing_{'on' if checkpointing else 'off'}"] = r | {"mfu": mfu}
        print(
            f"  DPO training, gradient checkpointing {'on ' if checkpointing else 'off'}: {r['tokens_per_s']:.0f} "
            f"tokens/s, {r['step_s']:.3f} s/step"
            + (f", MFU {mfu:.1%}" if mfu else "")
            + (f", peak {r['peak_gb']:.1f} GB" if r["peak_gb"] else "")
        )
    g = generation(location, size)
    results["generation_hf"] = g
    print(
        f"  generation (transformers, KV cache): {g['new_tokens_per_s']:.0f} new tokens/s"
        + (f", peak {g['peak_gb']:.1f} GB" if g["peak_gb"] else "")
    )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
