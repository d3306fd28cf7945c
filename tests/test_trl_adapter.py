"""The private names of TRL 1.16 and transformers 5 that dpo_ref/trl_adapter.py relies on are still there, with the
parameters the adapter was written for, and still used where its overrides expect them. A failure here after an
upgrade of trl or transformers means: re-read the override named in the message against the new source (see the
adapter's module docstring) before changing the expected names below.

The expected names are written here, not read from the adapter: they are what the adapter was written against."""

import importlib
import inspect

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer
from trl import DPOConfig, DPOTrainer
from trl.trainer import dpo_trainer

from dpo_ref import trl_adapter
from dpo_ref.trl_adapter import DPOTrainerAdapter

# Each private function or method the adapter overrides or replaces: its parameter names (TRL 1.16, transformers 5).
SIGNATURES = {
    "trl.trainer.dpo_trainer.DPOTrainer._prepare_dataset": "self dataset processing_class args dataset_name".split(),
    "trl.trainer.dpo_trainer.DPOTrainer._precompute_ref_logps": "self dataset name batch_size".split(),
    "trl.trainer.dpo_trainer.create_model_from_path": "model_id architecture kwargs".split(),
    "transformers.trainer.Trainer._get_train_sampler": "self train_dataset".split(),
}
# The private attribute the adapter reads: set by DPOTrainer.__init__ on every instance.
METRICS = "trl.trainer.dpo_trainer.DPOTrainer._metrics"
# Who calls each private name: an override or patch no one calls any more would silently do nothing.
CALLERS = {
    "trl.trainer.dpo_trainer.DPOTrainer._prepare_dataset": (DPOTrainer.__init__, "_prepare_dataset"),
    "trl.trainer.dpo_trainer.DPOTrainer._precompute_ref_logps": (DPOTrainer.__init__, "_precompute_ref_logps"),
    "trl.trainer.dpo_trainer.create_model_from_path": (DPOTrainer.__init__, "create_model_from_path"),
    "transformers.trainer.Trainer._get_train_sampler": (Trainer.get_train_dataloader, "_get_train_sampler"),
    METRICS: (DPOTrainer.log, "_metrics"),
}
RECHECK = "re-check the override of it in dpo_ref/trl_adapter.py against the new trl/transformers source"


def resolve(dotted: str):
    """The object a dotted name points at: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_the_adapter_declares_exactly_the_names_checked_here():
    assert sorted(trl_adapter.RELIES_ON) == sorted([*SIGNATURES, METRICS]), (
        "dpo_ref/trl_adapter.py RELIES_ON and this test disagree: add the expected parameter names of a new private "
        "name to SIGNATURES here (written by hand, from the library's source), or drop one the adapter no longer uses"
    )


@pytest.mark.parametrize("dotted", sorted(SIGNATURES))
def test_each_private_function_keeps_its_parameters(dotted):
    try:
        target = resolve(dotted)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{dotted} is gone ({e}): {RECHECK}")
    names = list(inspect.signature(target).parameters)
    assert names == SIGNATURES[dotted], f"{dotted} now takes {names}, not {SIGNATURES[dotted]}: {RECHECK}"


@pytest.mark.parametrize("dotted", sorted(CALLERS))
def test_each_private_name_is_still_used_where_the_adapter_expects(dotted):
    caller, name = CALLERS[dotted]
    assert name in caller.__code__.co_names, (
        f"{caller.__qualname__} no longer uses {name}, so the adapter's override of {dotted} does nothing: {RECHECK}"
    )


def test_create_model_from_path_is_looked_up_in_the_module_dpo_trainer_init_reads():
    # the adapter patches the module global; DPOTrainer.__init__ must read it from that module, at call time
    assert DPOTrainer.__init__.__globals__ is vars(dpo_trainer), (
        f"DPOTrainer.__init__ no longer reads its globals from trl.trainer.dpo_trainer: patching "
        f"trl.trainer.dpo_trainer.create_model_from_path would not stop it building a reference: {RECHECK}"
    )


def tiny_trainer(tmp_path, **settings) -> DPOTrainerAdapter:
    """An adapter trainer over a 1-layer Llama and a 4-word tokenizer, built in memory (nothing read or trained)."""
    from tokenizers import Tokenizer, models

    vocab = {"<pad>": 0, "<eos>": 1, "a": 2, "b": 3}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", eos_token="<eos>"
    )
    config = LlamaConfig(
        vocab_size=4, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2, pad_token_id=0
    )
    torch.manual_seed(0)
    pairs = Dataset.from_dict(
        {
            "prompt_ids": [[2, 3]],
            "chosen_ids": [[2, 1]],
            "rejected_ids": [[3, 1]],
            "ref_chosen_logps": [-1.0],
            "ref_rejected_logps": [-2.0],
        }
    )
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=True, **settings)
    return DPOTrainerAdapter(model=LlamaForCausalLM(config), args=args, train_dataset=pairs, processing_class=tok)


def test_dpo_trainer_keeps_per_mode_metrics_that_log_averages(tmp_path):
    trainer = tiny_trainer(tmp_path, precompute_ref_log_probs=True)
    metrics = getattr(trainer, "_metrics", None)
    assert isinstance(metrics, dict) and {"train", "eval"} <= set(metrics), (
        f"{METRICS} is gone or no longer holds 'train' and 'eval' ({metrics!r}): {RECHECK} (record_metric)"
    )
    logged = {}
    for mode, key in (("train", "x"), ("eval", "eval_x")):
        trainer.model.train(mode == "train")
        trainer.record_metric(mode, "x", 1.0)
        trainer.record_metric(mode, "x", 3.0)
        trainer.log({})
        logged[key] = trainer.state.log_history[-1].get(key)
    assert logged == {"x": 2.0, "eval_x": 2.0}, (
        f"DPOTrainer.log no longer logs the mean of what record_metric put in {METRICS} ({logged}): {RECHECK}"
    )


def test_the_adapter_keeps_the_pairs_and_builds_no_reference(tmp_path):
    # without precompute TRL would build a reference from the policy's path (a config-built model has none)
    trainer = tiny_trainer(tmp_path, precompute_ref_log_probs=False)
    assert trainer.ref_model is None
    assert dpo_trainer.create_model_from_path is resolve("trl.trainer.utils.create_model_from_path")  # restored
    assert trainer.train_dataset["ref_chosen_logps"] == [-1.0]  # neither re-tokenized nor rescored
    assert isinstance(trainer.get_train_dataloader().batch_sampler.sampler, torch.utils.data.RandomSampler)
