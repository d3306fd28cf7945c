"""Preference data: load pairs, render them with a model's own tokenizer and chat template, count what is dropped.

Pairs are plain text (`prompt`, `chosen`, `rejected`). A model sees them through its own chat template, so the same
text can be scored by references with other tokenizers. The scored completion is everything the template adds after
the generation prompt: the response and its end-of-turn/EOS tokens (PAPER.md: EOS included in the scored response).
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase

from .errors import UserError


@dataclass
class PreferenceData:
    """Pairs (splits `train`, `validation`), the held-out prompts policies are judged on, and the source's own
    programmatic reward (None for hub/local data, which need a reward-model judge)."""

    pairs: DatasetDict
    eval_prompts: list
    scorer: Callable | None
    notes: list[str]  # what loading did (counts, held-out validation, build statistics), shown to the user


def load_data(exp, world, policy, tokenizer) -> PreferenceData:
    """The preference data named by the experiment's `data` key."""
    cfg = exp.data
    if cfg.source == "world":
        return PreferenceData(world.preference_data(), world.eval_prompts(), world.gold_reward, [])
    if cfg.source == "instructions":
        from . import instructions
        from .sampled_pairs import build_instruction_pairs

        pairs, prompts, stats = build_instruction_pairs(
            exp.instructions, policy, tokenizer, exp.eval.batch_size, exp.train.precision
        )
        notes = [f"instruction pairs: {stats['pairs']}; prompts skipped, all samples tied: {stats['prompts_all_tied']}"]
        return PreferenceData(pairs, prompts, instructions.score, notes)
    from .sources import load_source

    pairs, report = load_source(
        cfg.source, cfg.train_split, cfg.validation_split, cfg.max_train_pairs, cfg.max_validation_pairs, "data"
    )
    return PreferenceData(pairs, unique_prompts(pairs["validation"]["prompt"]), None, report.lines())


def unique_prompts(prompts) -> list:
    """Prompts (strings or message lists) without repeats, in first-seen order."""
    seen: dict[str, object] = {}
    for p in prompts:
        seen.setdefault(json.dumps(p), p)
    return list(seen.values())


def load_prompts(spec: str, where: str = "eval.prompts") -> list:
    """Evaluation prompts from a local file (json, jsonl, parquet, csv) or a hub dataset file `org/name:path`,
    read from the column `instruction` (AlpacaEval) or `prompt`."""
    from .sources import FORMATS, read_files

    path = Path(spec).expanduser()
    if not path.exists() and ":" in spec:
        from huggingface_hub import hf_hub_download

        repo, filename = spec.split(":", 1)
        try:
            path = Path(hf_hub_download(repo, filename, repo_type="dataset", local_files_only=True))
        except Exception:
            raise UserError(where, f"{spec}: not in the local hub cache (dporef works offline)") from None
    if not path.is_file():
        raise UserError(where, f"{spec}: no such file; give a json/jsonl/parquet/csv file or `org/name:path`")
    if path.suffix not in FORMATS:
        raise UserError(where, f"{spec}: unsupported file type {path.suffix!r}; allowed: {', '.join(FORMATS)}")
    ds = read_files([path], where)
    column = next((c for c in ("instruction", "prompt") if c in ds.column_names), None)
    if column is None:
        raise UserError(where, f"{spec}: columns {ds.column_names}; needs `instruction` or `prompt`")
    return list(ds[column])


def pairs_fingerprint(pairs: DatasetDict) -> str:
    """Content hash of the text of every pair in every split: the data part of reference cache keys."""
    h = hashlib.sha256()
    for split in sorted(pairs):
        ds = pairs[split]
        h.update(split.encode())
        for col in ("prompt", "chosen", "rejected"):
            h.update(json.dumps(list(ds[col])).encode())
    return h.hexdigest()[:16]


def messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string is one user turn; a list of messages is the conversation so far."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def render(tokenizer: PreTrainedTokenizerBase, prompt, response: str, unconditional: bool = False):
    """(prompt_ids, completion_ids) of one response. `unconditional` renders it after an empty user turn, so the
    model scores p_LM(y): the response with its chat framing but no instruction."""
    if unconditional:
        prompt = ""
    if tokenizer.chat_template:
        msgs = messages(prompt)
        prompt_ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        full = tokenizer.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=True)
        if hasattr(prompt_ids, "input_ids") or isinstance(prompt_ids, dict):
            prompt_ids, full = prompt_ids["input_ids"], full["input_ids"]
        n = 0
        while n < min(len(prompt_ids), len(full)) and prompt_ids[n] == full[n]:
            n += 1
        return list(full[:n]), list(full[n:])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, completion


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt) -> list[int]:
    """Token ids of a prompt ready for generation (chat template with generation prompt)."""
    return render(tokenizer, prompt, "")[0]


@dataclass
class PrepReport:
    """What tokenization did to the pairs, per split: nothing is dropped silently."""

    kept: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)  # prompt + response longer than max_length
    dropped_prompt_too_long: dict[str, int] = field(default_factory=dict)  # no response token would survive


def tokenize_pairs(
    pairs: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int, unconditional: bool = False
) -> tuple[DatasetDict, PrepReport]:
    """Add `prompt_ids`, `chosen_ids`, `rejected_ids` (the columns TRL's preference collator reads) and `pair_index`
    (the row in `pairs`, which joins reference scores to the rows that survive)."""
    report = PrepReport()

    def tok(ex, i):
        p, c = render(tokenizer, ex["prompt"], ex["chosen"], unconditional)
        _, r = render(tokenizer, ex["prompt"], ex["rejected"], unconditional)
        return {"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "pair_index": i}

    out = {}
    for split, ds in pairs.items():
        ds = ds.map(tok, with_indices=True, desc=f"tokenizing {split}", load_from_cache_file=False)
        too_long = [len(p) >= max_length for p in ds["prompt_ids"]]
        lengths = [
            len(p) + max(len(c), len(r)) for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"])
        ]
        report.dropped_prompt_too_long[split] = sum(too_long)
        report.truncated[split] = sum(n > max_length for n, bad in zip(lengths, too_long) if not bad)
        if any(too_long):
            ds = ds.select([i for i, bad in enumerate(too_long) if not bad])
        report.kept[split] = len(ds)
        out[split] = ds
    return DatasetDict(out), report
