"""The world's models: a tiny Llama (sft, strong-same) and a tiny Mistral (strong-other), and the SFT that trains them
through TRL's SFTTrainer."""

from __future__ import annotations

import tempfile

from ..chat import render_many
from ..config import WorldConfig
from ..generation import Sampling, generate
from .tasks import max_length
from .tokenizers import other_max_length


def init_model(cfg: WorldConfig, tokenizer):
    """A tiny Llama whose config and generation config agree with the tokenizer on pad/eos/bos."""
    from transformers import LlamaConfig, LlamaForCausalLM, set_seed

    ids = {name: tokenizer.convert_tokens_to_ids(f"<{name}>") for name in ("pad", "eos", "bos")}
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,  # plain multi-head attention
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max_length(cfg),
        tie_word_embeddings=True,  # the head reuses the embedding matrix
        pad_token_id=ids["pad"],
        eos_token_id=ids["eos"],
        bos_token_id=ids["bos"],
    )
    set_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = ids["pad"], ids["eos"], ids["bos"]
    return model


def init_other_model(cfg: WorldConfig, tokenizer):
    """strong-other's architecture: a tiny Mistral (grouped-query attention, sliding-window attention that is
    inactive at these lengths, its own head and width settings), whose config and generation config agree with
    its tokenizer on pad/eos; there is no BOS."""
    from transformers import MistralConfig, MistralForCausalLM, set_seed

    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.other_hidden_size,
        num_hidden_layers=cfg.other_num_layers,
        num_attention_heads=cfg.other_num_heads,
        num_key_value_heads=cfg.other_num_kv_heads,
        head_dim=cfg.other_hidden_size // cfg.other_num_heads,
        intermediate_size=cfg.other_intermediate_size,
        max_position_embeddings=other_max_length(cfg),
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        tie_word_embeddings=True,
        pad_token_id=pad,
        eos_token_id=eos,
        bos_token_id=None,
    )
    set_seed(cfg.seed)
    model = MistralForCausalLM(config)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id, gen.bos_token_id = pad, eos, None
    return model


def _demonstration_tokens(tokenizer, prompts: list[str], demos: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, labels) of demonstrations rendered through the chat template in one batched call; the labels
    mask the prompt with -100, so the loss is on the completion (answer + EOS) only."""
    rendered = render_many(tokenizer, prompts, demos)
    return [p + c for p, c in rendered], [[-100] * len(p) + c for p, c in rendered]


def sft(
    model,
    tokenizer,
    prompts: list[str],
    demos: list[str],
    cfg: WorldConfig,
    max_len: int | None = None,
    learning_rate: float | None = None,
):
    """SFT through TRL's SFTTrainer, with the loss on the completion (answer + EOS) only: one pass over the
    demonstrations in batches of `cfg.sft_batch_size` (so len(demos) // batch size steps), peak learning rate
    `learning_rate` (default cfg.sft_learning_rate) and sequences up to `max_len` (default the world's `max_length`).

    The pairs are tokenized here through the chat template in one batched call (TRL's per-example preparation
    takes longer than the training) and handed over with `skip_prepare_dataset`. The build runs on the CPU on
    every machine: the cache key is the config alone, so the world must not depend on the device (and a model
    this small gains nothing from a GPU).
    """
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    full_ids, labels = _demonstration_tokens(tokenizer, prompts, demos)
    data = Dataset.from_dict({"input_ids": full_ids, "labels": labels})
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(
            output_dir=out,  # receives nothing (save_strategy="no"); the caller saves the model
            max_steps=len(demos) // cfg.sft_batch_size,  # one pass over the demonstrations
            per_device_train_batch_size=cfg.sft_batch_size,
            learning_rate=learning_rate or cfg.sft_learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=max(1, len(demos) // cfg.sft_batch_size // 20),  # 5% warmup
            weight_decay=0.0,
            max_length=max_len or max_length(cfg),  # no demonstration is longer
            dataset_kwargs={"skip_prepare_dataset": True},  # tokenized above, labels included
            bf16=False,  # fp32 on the CPU
            activation_checkpointing=False,  # tiny activations (the new name of gradient_checkpointing)
            use_cpu=True,  # see the docstring
            seed=cfg.seed,
            data_seed=cfg.seed,
            report_to=[],
            disable_tqdm=True,
            logging_strategy="no",
            save_strategy="no",
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)  # it prints the final metrics
        trainer.train()
    trainer.model.config.use_cache = True  # the trainer turns the KV cache off; generation wants it back
    return trainer.model.eval()


def respond(model, tokenizer, prompts: list[str], budget: int, temperature: float | None = None, seed: int = 0):
    """(response text without EOS, ended) per prompt from a world model: greedy when temperature is None, else plain
    temperature sampling. Prompts keep their order in batches of 512 and special tokens other than EOS are
    suppressed, so every response is plain text; `ended` is False when `budget` tokens ran out before EOS."""
    sampling = Sampling(max_new_tokens=budget, temperature=temperature, batch_size=512)
    return generate(model, tokenizer, prompts, sampling, seed, by_length=False, suppress_special=True).texts()
