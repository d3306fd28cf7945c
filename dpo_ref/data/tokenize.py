"""Pairs as the policy sees them: rendered with its chat template and tokenized, with what truncation did counted;
prompt lists and the pairs' content fingerprint.

Pairs are plain text (`prompt`, `chosen`, `rejected`), so the same text can be scored by references with other
tokenizers (`chat.render_many`)."""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from datasets import DatasetDict
from transformers import PreTrainedTokenizerBase

from ..chat import render_many
from ..errors import UserError


def unique_prompts(prompts) -> list:
    """Prompts (strings or message lists) without repeats, in first-seen order."""
    seen: dict[str, object] = {}
    for p in prompts:
        seen.setdefault(json.dumps(p), p)
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


def pairs_fingerprint(pairs: DatasetDict) -> str:
    """Content hash of the text of every pair in every split: the data part of reference cache keys."""
    h = hashlib.sha256()
    for split in sorted(pairs):
        ds = pairs[split]
        h.update(split.encode())
        for col in ("prompt", "chosen", "rejected"):
            h.update(json.dumps(list(ds[col])).encode())
    return h.hexdigest()[:16]


@dataclass
class PrepReport:
    """What tokenization did to the pairs, per split: nothing is dropped silently."""

    kept: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)  # prompt + response longer than max_length
    dropped_prompt_too_long: dict[str, int] = field(default_factory=dict)  # no response token would survive


def tokenize_pairs(
    pairs: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int
) -> tuple[DatasetDict, PrepReport]:
    """Add `prompt_ids`, `chosen_ids`, `rejected_ids` (the columns TRL's preference collator reads) and `pair_index`
    (the row in `pairs`, which joins reference scores to the rows that survive)."""
    report = PrepReport()

    def tok(batch, index):
        chosen = render_many(tokenizer, batch["prompt"], batch["chosen"])
        rejected = render_many(tokenizer, batch["prompt"], batch["rejected"])
        return {
            "prompt_ids": [p for p, _ in chosen],
            "chosen_ids": [c for _, c in chosen],
            "rejected_ids": [r for _, r in rejected],
            "pair_index": index,
        }

    out = {}
    for split, ds in pairs.items():
        ds = ds.map(tok, with_indices=True, batched=True, desc=f"tokenizing {split}", load_from_cache_file=False)
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
