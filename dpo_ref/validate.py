"""An experiment's inputs, checked before anything is written under `--out`: every model spec resolves (a hub id in
the local cache, a directory with a config.json, a model of the world) and is what it claims (models.py), preference
data read from files have the needed columns and a usable pair in each split, the evaluation prompts are there and
are prompts, and what prepare filters out of the pairs (prompts that fill `train.max_length`, pairs longer than a
reference's context, validation pairs on test prompts) leaves a pair in every split.

Without it a missing reference was found by the prepare stage, after the experiment's files were written, and a
bad data file as a traceback. Building the embedded world is allowed here: it goes to the cache, never to `--out`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
from transformers import AutoConfig

from . import data
from .config import Experiment, expand
from .data.tokenize import ScoringPass, check_pairs_fit, load_prompts
from .errors import UserError
from .model_files import CAUSAL, REWARD
from .models import ModelRef, load_tokenizer, resolve
from .plan import scoring_needs
from .tracking import check_installed
from .world import build_world


@dataclass
class Models:
    """The experiment's models, resolved to locations and content fingerprints."""

    world: object
    policy: ModelRef
    references: dict[str, ModelRef]
    judge: ModelRef | None

    def as_dict(self) -> dict:
        ref = lambda m: {"spec": m.spec, "location": m.location, "fingerprint": m.fingerprint}  # noqa: E731
        return {
            "policy": ref(self.policy),
            "references": {n: ref(m) for n, m in self.references.items()},
            "judge": ref(self.judge) if self.judge else None,
        }


def model_specs(exp: Experiment) -> list[tuple[str, str]]:
    """(key, spec) of every model the experiment names, the policy first."""
    refs = [(f"references.{i}.model", r.model) for i, r in enumerate(exp.references) if r.model is not None]
    specs = [("policy", exp.policy), *refs]  # a mixture names no model of its own
    return specs + ([("judge.model", exp.judge.model)] if exp.judge.model else [])


def resolve_models(exp: Experiment) -> Models:
    """Every model the experiment names, resolved (a `UserError` names the key of the first that does not). Specs
    outside the world first, so a missing one is found before the world is built."""
    specs = model_specs(exp)
    task = lambda key: REWARD if key == "judge.model" else CAUSAL  # noqa: E731
    refs = {key: resolve(spec, where=key, task=task(key)) for key, spec in specs if not spec.startswith("world:")}
    world = build_world(exp.world) if data.needs_world(exp) else None
    refs |= {key: resolve(spec, world, key, task(key)) for key, spec in specs if spec.startswith("world:")}
    references = {r.name: refs[f"references.{i}.model"] for i, r in enumerate(exp.references) if r.model is not None}
    return Models(world, refs["policy"], references, refs.get("judge.model"))


def check_inputs(exp: Experiment, source: str) -> Models:
    """The experiment's resolved models, once every input is checked; else the `UserError` of the first input that
    is missing or unusable, its `where` prefixed with `source` (the experiment file). Cheap checks first: data files,
    prompts, models outside the world; then the world's."""
    try:
        loaded = _check(exp)
        models = resolve_models(exp)
        check_pairs(exp, models, loaded)
        return models
    except UserError as e:
        raise UserError(f"{source}: {e.where}", e.message) from None


def check_pairs(exp: Experiment, models: Models, loaded: data.PreferenceData | None) -> None:
    """Prepare's filters (prompts that fill train.max_length, pairs longer than a scoring pass's context) leave a pair
    in every split of `loaded` (`data.tokenize.check_pairs_fit`), else a `UserError` with the counts. Without
    `loaded`, the world's pairs are checked (with the test prompts set aside); instruction pairs exist only once
    prepare sampled them, so prepare calls this with them."""
    if loaded is None and isinstance(data.source(exp), data.WorldSource):
        loaded = data.load_data(exp, models.world, None, None)
    if loaded is None:
        return
    keys = {r.name: f"references.{i}.model" for i, r in enumerate(exp.references)}
    passes = []
    for name, _, unconditional in scoring_needs(exp, expand(exp)):
        ref = models.policy if unconditional else models.references[name]
        context = getattr(AutoConfig.from_pretrained(ref.location), "max_position_embeddings", None)
        key = "policy" if unconditional else keys[name]
        passes.append(ScoringPass(key, ref.spec, load_tokenizer(ref), context, unconditional))
    check_pairs_fit(loaded.pairs, load_tokenizer(models.policy), exp.train.max_length, passes)


def _check_quantize(exp: Experiment) -> None:
    """4-bit weights are bitsandbytes' CUDA kernels and cannot train themselves: refused before anything is written
    rather than failing the run after prepare."""
    if exp.train.quantize is None:
        return
    if exp.train.lora is None:
        raise UserError("train.quantize", "4bit needs train.lora (4-bit base weights cannot train, only adapters)")
    if not torch.cuda.is_available():
        raise UserError("train.quantize", "4bit needs a CUDA GPU (bitsandbytes); none is available, set it to null")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("train.quantize", "4bit needs bitsandbytes; install it with `pip install dporef[gpu]`")


def _check_engine(exp: Experiment) -> None:
    """vLLM samples from a model directory on a GPU: refused before anything is written where it cannot."""
    if exp.eval.engine != "vllm":
        return
    from .generation_vllm import available

    why = available()
    if why:
        raise UserError("eval.engine", f"vllm {why}; use `transformers`")
    if exp.train.lora is not None:
        raise UserError("eval.engine", "vllm samples full-weight policies; with train.lora use `transformers`")


def _check(exp: Experiment) -> data.PreferenceData | None:
    """The checks that need no model; the preference data when they are read from files."""
    _check_quantize(exp)
    _check_engine(exp)
    check_installed(exp.train.report_to)
    # only file sources are read here: world pairs come with the world, instruction pairs are sampled in prepare
    loaded = None
    if isinstance(data.source(exp), data.FileSource):
        loaded = data.load_data(exp, world=None, policy=None, tokenizer=None)
    if exp.eval.prompts and not load_prompts(exp.eval.prompts):
        raise UserError("eval.prompts", f"{exp.eval.prompts}: no prompts")
    return loaded
