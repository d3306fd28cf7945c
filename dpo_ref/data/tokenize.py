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
from ..errors import UserError, excerpt


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
    prompts = list(ds[column])
    for i, prompt in enumerate(prompts):
        if problem := prompt_problem(prompt):
            raise UserError(
                where,
                f"{spec}: row {i + 1}, column {column!r}: {problem}; allowed: a non-empty string, or a list of chat "
                "messages {role, content} with string values",
            )
    return prompts


def prompt_problem(prompt) -> str | None:
    """What makes `prompt` no prompt (a number, a mapping, a list of anything but chat messages, empty text), or
    None for a non-empty string or a non-empty list of {role, content} messages of strings."""
    from .files import MAX_RECORD_BYTES

    if isinstance(prompt, str) and len(prompt) > MAX_RECORD_BYTES:
        return f"a text of {len(prompt)} characters, over {MAX_RECORD_BYTES >> 20} MiB"
    if isinstance(prompt, str):
        return None if prompt.strip() else "empty text"
    if isinstance(prompt, list) and prompt:
        for j, m in enumerate(prompt):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                return f"a list whose item {j + 1} ({excerpt(m, 40)}) is not a chat message"
        return None
    kinds = {list: "an empty list", dict: "a mapping", type(None): "null", bool: "a boolean"}
    kind = kinds.get(type(prompt), "a number" if isinstance(prompt, int | float) else type(prompt).__name__)
    return f"{excerpt(prompt, 40)} is {kind}, not a prompt"


@dataclass
class PrepReport:
    """What tokenization did to the pairs, per split: nothing is dropped silently."""

    kept: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)  # a response cut to fit max_length
    dropped_prompt_too_long: dict[str, int] = field(default_factory=dict)  # no response token would survive
    unfinished: dict[str, int] = field(default_factory=dict)  # responses that never ended: no end-of-turn rendered
    shortest_prompt: dict[str, int] = field(default_factory=dict)  # tokens of the split's shortest prompt


def _keep(tokenizer, response: str, completion: list[int], closed: bool, budget: int, eot: int):
    """(ids, text, closed) of what the policy keeps of one response given `budget` tokens: all of it, or the start of
    its response tokens without end-of-turn (and the text of exactly those tokens, for references to score)."""
    if len(completion) <= budget:
        return completion, response, closed
    body = completion[: len(completion) - eot] if closed else completion
    kept = body[:budget]
    return kept, tokenizer.decode(kept), False


def tokenize_pairs(
    pairs: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int, refuse_empty: bool = True
) -> tuple[DatasetDict, PrepReport]:
    """Add what the policy trains on, cut to fit `max_length` here (so TRL's collator cuts nothing): `prompt_ids`,
    `chosen_ids`, `rejected_ids` (the columns TRL's preference collator reads); `chosen_kept` / `rejected_kept`, the
    response text those ids hold, and `chosen_closed` / `rejected_closed`, whether they end the turn, which every
    reference scores so that it sees exactly the policy's text; and `pair_index` (the row in `pairs`, which joins
    reference scores to the rows that survive). Pairs whose prompt alone fills `max_length` are dropped, as TRL does;
    when that leaves a split without a pair (`refuse_empty`), a `UserError` on `train.max_length` gives the counts."""
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
        report.shortest_prompt[split] = min((len(p) for p in ds["prompt_ids"]), default=0)
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
    if refuse_empty:
        refuse_max_length(report, max_length)
    return DatasetDict(out), report


def refuse_max_length(report: PrepReport, max_length: int) -> None:
    """A `UserError` on `train.max_length` when its prompt filter left some split without a pair, with every split's
    counts: training on no pair, or validating on none, would fail later with a traceback."""
    emptied = [s for s, n in report.kept.items() if n == 0 and report.dropped_prompt_too_long[s]]
    if not emptied:
        return
    counts = ", ".join(
        f"{s} {report.kept[s]} of {report.kept[s] + report.dropped_prompt_too_long[s]} kept" for s in report.kept
    )
    shortest = max(report.shortest_prompt[s] for s in emptied)
    raise UserError(
        "train.max_length",
        f"{max_length} tokens leave no pair in split {' and '.join(emptied)} ({counts}; a pair is dropped when its "
        f"prompt alone fills max_length); allowed: more than {shortest} (the shortest prompt's length there, in the "
        "policy's tokens), with room for the responses",
    )


@dataclass(frozen=True)
class ScoringPass:
    """A reference scoring pass as prepare runs it, for `check_pairs_fit`: the experiment key of its model, its
    tokenizer, its context window (None: unbounded) and whether it scores p_LM(y) without the prompt."""

    key: str
    spec: str
    tokenizer: object
    context: int | None
    unconditional: bool = False


def _fits(ds, policy_tokenizer, scoring: ScoringPass) -> list[bool]:
    """Per pair of the policy's tokenized `ds`: whether both responses fit the pass's context (reference.py drops
    the others, scored as NaN)."""
    from ..reference import pair_sequences

    if scoring.context is None:
        return [True] * len(ds)
    seqs = pair_sequences(scoring.tokenizer, policy_tokenizer, ds, scoring.unconditional)
    fit = [len(p) + len(c) <= scoring.context for p, c in seqs]
    return [a and b for a, b in zip(fit[0::2], fit[1::2])]


CHECK_CHUNK = 64  # pairs tokenized at a time by `check_pairs_fit` until one of the split survives


def check_pairs_fit(
    pairs: DatasetDict, tokenizer: PreTrainedTokenizerBase, max_length: int, passes: list[ScoringPass]
) -> None:
    """Refuse, before anything is written, pairs that prepare would filter down to an empty split: the pairs whose
    prompt fills `max_length` (`tokenize_pairs`) and those longer than some scoring pass's context (prepare drops
    them). Each split is tokenized a chunk at a time until one of its pairs survives both, so good data costs one
    chunk per split; only data about to be refused is read to the end, for the counts the message gives."""
    for split, ds in pairs.items():
        for start in range(0, len(ds), CHECK_CHUNK):
            part = DatasetDict({split: ds.select(range(start, min(start + CHECK_CHUNK, len(ds))))})
            tokenized, _ = tokenize_pairs(part, tokenizer, max_length, refuse_empty=False)
            fits = [all(ok) for ok in zip(*(_fits(tokenized[split], tokenizer, p) for p in passes))]
            if len(tokenized[split]) and (not passes or any(fits)):
                break
        else:
            if len(ds):
                _refuse(pairs, tokenizer, max_length, passes)


def _refuse(pairs: DatasetDict, tokenizer, max_length: int, passes: list[ScoringPass]) -> None:
    """The `UserError` of `check_pairs_fit`, with every split's counts: what tokenization kept, then each pass."""
    tokenized, report = tokenize_pairs(pairs, tokenizer, max_length, refuse_empty=False)
    refuse_max_length(report, max_length)
    alive = {s: [True] * len(ds) for s, ds in tokenized.items()}
    for p in passes:
        fits = {s: _fits(ds, tokenizer, p) for s, ds in tokenized.items()}
        before = {s: sum(a) for s, a in alive.items()}
        alive = {s: [a and f for a, f in zip(alive[s], fits[s])] for s in alive}
        emptied = [s for s in alive if before[s] and not any(alive[s])]
        if emptied:
            counts = ", ".join(f"{s} {sum(alive[s])} of {before[s]} fit" for s in alive)
            raise UserError(
                p.key,
                f"{p.spec}: its context of {p.context} tokens holds no pair of split {' and '.join(emptied)} "
                f"({counts}; a pair longer than the context is dropped); allowed: a model with a longer context, "
                f"or a smaller train.max_length",
            )
