"""Pairs as the policy sees them: rendered with its chat template and tokenized, with what truncation did counted;
prompt lists.

Pairs are plain text (`prompt`, `chosen`, `rejected`, optionally `chosen_ended` / `rejected_ended` for sampled
responses that may have run out of budget), so the same text can be scored by references with other tokenizers."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase

from ..chat import end_of_turn_length, render_pairs
from ..errors import UserError


def prompt_key(prompt) -> str:
    """A prompt (a string or a list of messages) as a hashable key."""
    return json.dumps(prompt, sort_keys=True)


def unique_prompts(prompts) -> list:
    """Prompts (strings or message lists) without repeats, in first-seen order."""
    seen: dict[str, object] = {}
    for p in prompts:
        seen.setdefault(prompt_key(p), p)
    return list(seen.values())


def load_prompts(spec: str, where: str = "eval.prompts") -> list:
    """Evaluation prompts from a local file (json, jsonl, parquet, csv) or a hub dataset file `org/name:path`,
    read from the column `instruction` (AlpacaEval) or `prompt`."""
    from .files import FORMATS, read_files

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


@dataclass
class PrepReport:
    """What tokenization did to the pairs, per split: nothing is dropped silently."""

    kept: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)  # a response cut to fit max_length
    dropped_prompt_too_long: dict[str, int] = field(default_factory=dict)  # no response token would survive
    unfinished: dict[str, int] = field(default_factory=dict)  # responses that never ended: no end-of-turn rendered


def _keep(tokenizer, response: str, completion: list[int], closed: bool, budget: int, eot: int):
    """(ids, text, closed) of what the policy keeps of one response given `budget` tokens: all of it, or the start of
    its response tokens without end-of-turn (and the text of exactly those tokens, for references to score)."""
    if len(completion) <= budget:
        return completion, response, closed
    body = completion[: len(completion) - eot] if closed else completion
    kept = body[:budget]
    return kept, tokenizer.decode(kept), False


def tokenize_pairs(
    pairs: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[DatasetDict, PrepReport]:
    """Add what the policy trains on, cut to fit `max_length` here (so TRL's collator cuts nothing): `prompt_ids`,
    `chosen_ids`, `rejected_ids` (the columns TRL's preference collator reads); `chosen_kept` / `rejected_kept`, the
    response text those ids hold, and `chosen_closed` / `rejected_closed`, whether they end the turn, which every
    reference scores so that it sees exactly the policy's text; and `pair_index` (the row in `pairs`, which joins
    reference scores to the rows that survive). Pairs whose prompt alone fills `max_length` are dropped, as TRL does."""
    report = PrepReport()
    eot = end_of_turn_length(tokenizer)

    def tok(batch, index):
        ended = {s: batch.get(f"{s}_ended") or [True] * len(batch["prompt"]) for s in ("chosen", "rejected")}
        rendered = render_pairs(tokenizer, batch["prompt"], batch["chosen"], batch["rejected"], *ended.values())
        out = {k: [] for k in ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_kept", "rejected_kept")}
        out |= {"chosen_closed": [], "rejected_closed": [], "truncated": [], "pair_index": index}
        for i, (prompt, *completions) in enumerate(rendered):
            budget = max(max_length - len(prompt), 0)
            out["prompt_ids"].append(prompt)
            cut = False
            for side, completion in zip(("chosen", "rejected"), completions):
                ids, text, closed = _keep(tokenizer, batch[side][i], completion, ended[side][i], budget, eot)
                cut |= len(ids) < len(completion)
                out[f"{side}_ids"].append(ids)
                out[f"{side}_kept"].append(text)
                out[f"{side}_closed"].append(closed)
            out["truncated"].append(cut)
        return out

    out = {}
    for split, ds in pairs.items():
        ds = ds.map(tok, with_indices=True, batched=True, desc=f"tokenizing {split}", load_from_cache_file=False)
        too_long = [len(p) >= max_length for p in ds["prompt_ids"]]
        report.dropped_prompt_too_long[split] = sum(too_long)
        report.truncated[split] = sum(t for t, bad in zip(ds["truncated"], too_long) if not bad)
        if any(too_long):
            ds = ds.select([i for i, bad in enumerate(too_long) if not bad])
        ds = ds.remove_columns("truncated")
        report.unfinished[split] = sum(
            not e for s in ("chosen", "rejected") if f"{s}_ended" in ds.column_names for e in ds[f"{s}_ended"]
        )
        report.kept[split] = len(ds)
        out[split] = ds
    return DatasetDict(out), report
