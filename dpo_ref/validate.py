"""An experiment's inputs, checked before anything is written under `--out`: every model spec resolves (a hub id in
the local cache, a directory with a config.json, a model of the world), preference data read from files have the
needed columns and a usable pair in each split, and the evaluation prompts are there.

Without it a missing reference was found by the prepare stage, after the experiment's files were written, and a
bad data file as a traceback. Building the embedded world is allowed here: it goes to the cache, never to `--out`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from . import data
from .config import Experiment
from .data.tokenize import load_prompts
from .errors import UserError
from .models import ModelRef, resolve
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
    specs = [("policy", exp.policy)] + [(f"references.{i}.model", r.model) for i, r in enumerate(exp.references)]
    return specs + ([("judge.model", exp.judge.model)] if exp.judge.model else [])


def resolve_models(exp: Experiment) -> Models:
    """Every model the experiment names, resolved (a `UserError` names the key of the first that does not). Specs
    outside the world first, so a missing one is found before the world is built."""
    specs = model_specs(exp)
    refs = {key: resolve(spec, where=key) for key, spec in specs if not spec.startswith("world:")}
    world = build_world(exp.world) if data.needs_world(exp) else None
    refs |= {key: resolve(spec, world, where=key) for key, spec in specs if spec.startswith("world:")}
    references = {r.name: refs[f"references.{i}.model"] for i, r in enumerate(exp.references)}
    return Models(world, refs["policy"], references, refs.get("judge.model"))


def check_inputs(exp: Experiment, source: str) -> Models:
    """The experiment's resolved models, once every input is checked; else the `UserError` of the first input that
    is missing or unusable, its `where` prefixed with `source` (the experiment file). Cheap checks first: data files,
    prompts, models outside the world; then the world's."""
    try:
        _check(exp)
        return resolve_models(exp)
    except UserError as e:
        raise UserError(f"{source}: {e.where}", e.message) from None


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


def _check(exp: Experiment) -> None:
    _check_quantize(exp)
    _check_engine(exp)
    # only file sources are read here: world pairs come with the world, instruction pairs are sampled in prepare
    if isinstance(data.source(exp), data.FileSource):
        data.load_data(exp, world=None, policy=None, tokenizer=None)
    if exp.eval.prompts and not load_prompts(exp.eval.prompts):
        raise UserError("eval.prompts", f"{exp.eval.prompts}: no prompts")
