"""Test and validation prompts never overlap, whatever the data: a choice made on validation prompts (best beta,
tune-beta, checkpoints) is never reported on the prompts it was made on. Checked on what prepare writes for local
files, with and without `eval.prompts`, by reading the files back."""

import json

import pytest

from dpo_ref.config import load_experiment
from dpo_ref.data import load_data
from dpo_ref.errors import UserError
from dpo_ref.expdir import ExperimentDir
from dpo_ref.models import load_tokenizer, resolve
from dpo_ref.stages.prepare import prepare


@pytest.fixture(scope="module")
def pair_files(tiny_world, tmp_path_factory):
    """The tiny world's pairs as a directory of local files (train.jsonl, validation.jsonl): data with no held-out
    prompts of its own."""
    root = tmp_path_factory.mktemp("pairs")
    for split, ds in tiny_world.preference_data().items():
        rows = ds.select_columns(["prompt", "chosen", "rejected"]).to_list()
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def experiment(tmp_path, pair_files, reward_model_dir, *sets):
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"name: files\ndata: {pair_files}\njudge: {{kind: reward-model, model: {reward_model_dir}}}\n"
        "objectives: [{name: dpo, betas: [0.1]}]\neval: {max_new_tokens: 8}\n"
    )
    from conftest import TINY_WORLD

    return load_experiment(path, TINY_WORLD + list(sets))


def usable_prompts(world) -> list[str]:
    """The validation pairs' prompts that local files keep (they drop pairs with an empty response)."""
    return [r["prompt"] for r in world.preference_data()["validation"] if r["chosen"].strip() and r["rejected"].strip()]


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_local_files_hold_test_prompts_out_of_validation(tmp_path, pair_files, reward_model_dir, tiny_world):
    exp = experiment(tmp_path, pair_files, reward_model_dir)
    prepare(exp, ExperimentDir(tmp_path / "out"), "sweep-beta")
    test = {json.dumps(r["prompt"]) for r in lines(tmp_path / "out" / "baseline" / "test.jsonl")}
    validation = {json.dumps(r["prompt"]) for r in lines(tmp_path / "out" / "baseline" / "validation.jsonl")}
    source = {json.dumps(p) for p in usable_prompts(tiny_world)}
    assert test and validation and not test & validation
    assert test | validation == source  # every validation-split prompt is used, on one side only
    assert len(test) == round(0.5 * len(source))  # data.test_share

    import datasets

    pairs = datasets.load_from_disk(str(tmp_path / "out" / "prepared" / "pairs"))
    tok = load_tokenizer(resolve("world:sft", tiny_world))
    prompts = {tok.decode(ids) for ids in pairs["validation"]["prompt_ids"]}
    assert not any(json.loads(p) in text for p in test for text in prompts)  # no validation pair on a test prompt
    plan = json.loads((tmp_path / "out" / "prepared" / "plan.json").read_text())
    assert plan["prompts"]["test_prompts"] == len(test)
    assert plan["prompts"]["validation_pairs_on_test_prompts"] == len(source) - plan["prompts"]["validation_prompts"]


def test_given_test_prompts_take_their_validation_pairs_away(tmp_path, pair_files, reward_model_dir, tiny_world):
    validation = usable_prompts(tiny_world)
    prompts = tmp_path / "prompts.jsonl"
    given = validation[:5] + ["copy zz"]  # five validation prompts and one of no pair
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in given))
    exp = experiment(tmp_path, pair_files, reward_model_dir, f"eval.prompts={prompts}")
    sft = resolve("world:sft", tiny_world)
    loaded = load_data(exp, tiny_world, sft, load_tokenizer(sft))
    assert loaded.eval_prompts == given
    kept = loaded.pairs["validation"]["prompt"]
    assert not set(kept) & set(given)
    assert len(kept) == sum(p not in given for p in validation)
    assert loaded.prompt_counts["validation_pairs_on_test_prompts"] == len(validation) - len(kept)


def test_validation_needs_a_prompt_of_its_own(tmp_path, pair_files, reward_model_dir, tiny_world):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in usable_prompts(tiny_world)))
    exp = experiment(tmp_path, pair_files, reward_model_dir, f"eval.prompts={prompts}")
    sft = resolve("world:sft", tiny_world)
    with pytest.raises(UserError, match="validation needs its own"):
        load_data(exp, tiny_world, sft, load_tokenizer(sft))
