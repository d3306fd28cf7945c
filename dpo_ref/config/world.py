"""Settings of the embedded world (`world:` in an experiment); the world package builds from them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class WorldConfig(BaseModel):
    """Everything a world is built from; its hash (with WORLD_VERSION) names the world's cache directory."""

    model_config = ConfigDict(extra="forbid", strict=True)  # a boolean or a string is never a number

    seed: int = Field(0, description="Seed of every random choice: prompts, demonstrations, init, samples, labels.")
    n_train_pairs: int = Field(4096, ge=1, description="Preference pairs in the train split.")
    n_val_pairs: int = Field(256, ge=1, description="Preference pairs in the validation split.")
    n_eval_prompts: int = Field(512, ge=1, description="Held-out evaluation prompts (the world's AlpacaEval).")
    label_temperature: float = Field(
        0.1, gt=0, description="Bradley-Terry label noise: P(a chosen over b) = sigmoid((r*(a) - r*(b)) / this)."
    )
    min_letters: int = Field(3, ge=1, le=12, description="Shortest task input, in letters.")
    max_letters: int = Field(8, ge=1, le=12, description="Longest task input, in letters.")
    demo_truncate: float = Field(0.3, ge=0, le=1, description="SFT demonstrations that stop 1-3 letters early.")
    demo_ramble: float = Field(0.1, ge=0, le=1, description="SFT demonstrations that add 1-4 letters at the end.")
    demo_substitute: float = Field(
        0.2, ge=0, le=1, description="SFT demonstrations with one letter wrong; the rest are correct."
    )
    hidden_size: int = Field(64, ge=8, le=1024, description="Width of the tiny Llama (a multiple of num_heads).")
    num_layers: int = Field(2, ge=1, le=12, description="Transformer layers of the tiny Llama.")
    num_heads: int = Field(4, ge=1, le=16, description="Attention heads of the tiny Llama.")
    intermediate_size: int = Field(256, ge=8, le=4096, description="MLP width of the tiny Llama.")
    sft_steps: int = Field(300, ge=1, description="SFT optimizer steps, each on fresh demonstrations.")
    sft_batch_size: int = Field(64, ge=1, le=4096, description="Demonstrations per SFT step.")
    sft_learning_rate: float = Field(3e-3, gt=0, le=1, description="Peak SFT learning rate (cosine, 5% warmup).")
    sample_temperature: float = Field(1.0, gt=0, description="Temperature of the SFT samples that form pairs.")
    strong_demo_truncate: float = Field(
        0.03, ge=0, le=1, description="Demonstrations of the strong references (strong-*) that stop 1-3 letters early."
    )
    strong_demo_ramble: float = Field(
        0.01, ge=0, le=1, description="Demonstrations of the strong references that add 1-4 letters at the end."
    )
    strong_demo_substitute: float = Field(
        0.03, ge=0, le=1, description="Demonstrations of the strong references with one letter wrong."
    )
    strong_sft_steps: int = Field(
        80,
        ge=1,
        description="SFT steps that train a copy of sft further into strong-same, on the strong demonstrations.",
    )
    strong_learning_rate: float = Field(
        1e-3, gt=0, le=1, description="Peak learning rate of strong-same's further SFT (cosine, 5% warmup)."
    )
    other_sft_steps: int = Field(
        600, ge=1, description="SFT steps of strong-other (from scratch) on the strong demonstrations."
    )
    other_vocab_size: int = Field(
        61,
        ge=48,
        le=4096,
        description="Vocabulary of strong-other's BPE tokenizer, special tokens and 38 single characters included.",
    )
    other_hidden_size: int = Field(
        64, ge=8, le=1024, description="Width of strong-other's Mistral (a multiple of other_num_heads)."
    )
    other_num_layers: int = Field(2, ge=1, le=12, description="Transformer layers of strong-other's Mistral.")
    other_num_heads: int = Field(4, ge=1, le=16, description="Attention (query) heads of strong-other's Mistral.")
    other_num_kv_heads: int = Field(
        2, ge=1, le=16, description="Key/value heads of strong-other's Mistral (grouped-query attention)."
    )
    other_intermediate_size: int = Field(256, ge=8, le=4096, description="MLP width of strong-other's Mistral.")

    @model_validator(mode="after")
    def _consistent(self) -> WorldConfig:
        if self.min_letters > self.max_letters:
            raise ValueError(f"min_letters ({self.min_letters}) > max_letters ({self.max_letters})")
        for prefix in ("demo", "strong_demo"):
            if sum(getattr(self, f"{prefix}_{kind}") for kind in ("truncate", "ramble", "substitute")) > 1:
                raise ValueError(f"{prefix}_truncate + {prefix}_ramble + {prefix}_substitute must be at most 1")
        for prefix in ("", "other_"):
            width, heads = getattr(self, f"{prefix}hidden_size"), getattr(self, f"{prefix}num_heads")
            if width % heads:
                raise ValueError(f"{prefix}hidden_size ({width}) is not a multiple of {prefix}num_heads ({heads})")
        if self.other_num_heads % self.other_num_kv_heads:
            raise ValueError(
                f"other_num_heads ({self.other_num_heads}) is not a multiple of other_num_kv_heads "
                f"({self.other_num_kv_heads})"
            )
        return self
