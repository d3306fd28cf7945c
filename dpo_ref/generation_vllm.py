"""vLLM as the sampling engine (`eval.engine: vllm`, GPU only, `pip install vllm`): the same generation records as
`generation.generate`, from a model directory, for the evaluation's hundreds of long samples per run.

The prompts are rendered by dporef (chat.prompt_ids) and handed to vLLM as token ids, so both engines sample
continuations of the very same tokens; each prompt gets a seed of its own (seed + its index), so a run's samples do
not depend on how vLLM batches them. Scoring (log-probs, KL, ranking) stays with transformers.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence

from .chat import prompt_ids as render_prompt
from .generation import Generations, Sampling, stop_set

GPU_SHARE = 0.45  # of the GPU's memory vLLM may take (weights and KV cache): the policy being scored stays loaded


def available() -> str | None:
    """Why vLLM cannot run here, or None when it can."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if importlib.util.find_spec("vllm") is None:
        return "is not installed (pip install vllm, on the GPU machine)"
    return None


def stop_tokens(location: str, tokenizer) -> set[int]:
    """The tokens that end a response, as transformers' generate stops on them: the generation config's EOS ids and
    the tokenizer's EOS."""
    from transformers import GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(location).eos_token_id
    except OSError:  # no generation_config.json: the model config's
        from transformers import AutoConfig

        ids = AutoConfig.from_pretrained(location).eos_token_id
    return stop_set(ids, tokenizer)


class VllmSampler:
    """Samples from the model directory `location` with vLLM, loaded on first use and freed by `close`."""

    def __init__(self, location: str, tokenizer, bf16: bool):
        self.location, self.tokenizer, self.bf16 = str(location), tokenizer, bf16
        self.stops = sorted(stop_tokens(self.location, tokenizer))
        self.llm = None

    def _engine(self):
        if self.llm is None:
            from vllm import LLM

            self.llm = LLM(
                model=self.location,
                tokenizer=self.location,
                dtype="bfloat16" if self.bf16 else "float32",
                gpu_memory_utilization=GPU_SHARE,
                seed=0,
            )
        return self.llm

    def __call__(self, prompts: Sequence, sampling: Sampling, seed: int, desc: str = "generating") -> Generations:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        encoded = [render_prompt(self.tokenizer, p) for p in prompts]
        greedy = not sampling.temperature
        params = [
            SamplingParams(
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                top_k=-1,
                max_tokens=sampling.max_new_tokens,
                stop_token_ids=self.stops,
                seed=seed + i,
                logprobs=0,  # the sampled token's log-prob (the raw model's), for the engines' cross-check
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        outputs = self._engine().generate([TokensPrompt(prompt_token_ids=e) for e in encoded], params, use_tqdm=False)
        completions = [self._completion(out.outputs[0]) for out in outputs]
        # log p of each token vLLM returned (its raw model's), for the engines' cross-check (tests/test_vllm.py)
        self.token_logps = [
            [d[t].logprob for t, d in zip(o.token_ids, o.logprobs)] for o in (x.outputs[0] for x in outputs)
        ]
        ended = [bool(c) and c[-1] in self.stops for c in completions]
        lengths = [len(c) - int(e) for c, e in zip(completions, ended)]
        responses = [self.tokenizer.decode(c[:n], skip_special_tokens=True) for c, n in zip(completions, lengths)]
        return Generations(list(prompts), encoded, completions, responses, ended, lengths)

    def _completion(self, out) -> list[int]:
        """The sampled ids up to and including the stop token, as transformers' path keeps them: vLLM's token_ids
        may or may not hold the stop token (EOS versus stop_token_ids, and across versions)."""
        tokens = list(out.token_ids)
        cut = next((k + 1 for k, t in enumerate(tokens) if t in self.stops), None)
        if cut is not None:
            return tokens[:cut]
        if out.finish_reason == "stop":  # stopped on a stop token it left out
            stop = out.stop_reason if isinstance(out.stop_reason, int) else self.tokenizer.eos_token_id
            return tokens + [stop]
        return tokens

    def close(self) -> None:
        """Free the engine's GPU memory (before the next run's, or a reference, is loaded)."""
        if self.llm is not None:
            import torch

            self.llm = None
            gc.collect()
            torch.cuda.empty_cache()


def engine_sampler(engine: str, location: str, tokenizer, bf16: bool) -> VllmSampler | None:
    """The vLLM sampler of the model in `location` under `eval.engine: vllm`, else None (transformers' generate)."""
    return VllmSampler(location, tokenizer, bf16) if engine == "vllm" else None
