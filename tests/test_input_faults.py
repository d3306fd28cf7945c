"""Inputs that are not what they claim, through the real CLI (`dporef sweep-beta EXP --out OUT`): each must exit with
code 2 and one `error:` line naming the file (or file:line) and the key, with no traceback and nothing written under
--out (nor anywhere else under the test's directory). Seven kinds, as a tester found them:

1. a model spec that is not what it claims (a text file named .gguf, a config.json that is not JSON or names no
   architecture, a safetensors file cut short, a model without a tokenizer);
2. LoRA adapters whose bases lead back to themselves;
3. filters of prepare that empty a split (train.max_length, a reference's context, held-out test prompts);
4. eval.prompts that are not prompts (numbers, mappings, lists of numbers, empty text, prompts the judge cannot score);
5. a data file with a NUL byte, a raw control character, a line that is not an object, or a line over 16 MiB;
6. the arrow cache of data files read through `datasets`: under $DPOREF_CACHE, never the user's home;
7. a write that fails while the world or a model is built (a full disk, a read-only cache, no permission).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY
from safetensors import SafetensorError
from typer.testing import CliRunner

from dpo_ref.cli import app

ROOT = Path(__file__).resolve().parent.parent
BASE = {
    "extends": str(ROOT / "experiments" / "rq1_sweep_beta" / "default.yaml"),
    "name": "t",
    "objectives": [{"name": "dpo", "betas": [0.1]}],
    "world": TINY,
    "train": {"max_steps": 2},
    "eval": {"max_new_tokens": 12},
}
FILES = {"data": "prefs", "judge": {"kind": "instructions"}}  # file data, judged by the instruction checks


def experiment(tmp: Path, **changes) -> Path:
    """exp.yaml: the default sweep on the tiny world, with `changes` merged one level deep."""
    content = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        content[key] = content[key] | value if isinstance(value, dict) and key in content else value
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(content))
    return path


def snapshot(root: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def refused(tmp: Path, *says: str, **changes) -> str:
    """Run `sweep-beta` on `experiment(tmp, **changes)`; assert the refusal and return its one error line."""
    exp = experiment(tmp, **changes)
    before = snapshot(tmp)
    result = CliRunner().invoke(app, ["sweep-beta", str(exp), "--out", str(tmp / "out")])
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert result.exit_code == 2, result.output[-3000:] + repr(result.exception)
    assert "Traceback" not in result.output and len(errors) == 1, result.output[-3000:]
    # besides the error, at most the line a world build prints when it starts
    others = " ".join(line for line in lines if line not in errors)
    assert not others or others.startswith("building the embedded world (once)"), result.output[-3000:]
    assert len(errors[0]) < 1000, errors[0]
    for text in says:
        assert text in errors[0], errors[0]
    assert not (tmp / "out").exists()
    assert snapshot(tmp) == before  # nothing written, no temporary file left, the inputs untouched
    return errors[0]


@pytest.fixture
def tmp(tmp_path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def jsonl(path: Path, rows: list, raw: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows) + raw)
    return path


def pairs(n: int, prompt=lambda i: f"rev {'abcdefgh'[i % 8]}{'abcdefgh'[i // 8 % 8]}c") -> list[dict]:
    return [{"prompt": prompt(i), "chosen": "cba", "rejected": f"ab{i}"} for i in range(n)]


def copy_model(tiny_world, dest: Path) -> Path:
    shutil.copytree(tiny_world.models["sft"], dest)
    (dest / ".dporef-manifest.json").unlink(missing_ok=True)
    return dest


# 1. model specs that are not what they claim


def test_a_text_file_named_gguf_is_refused_before_anything_is_read(tmp):
    (tmp / "model.gguf").write_text("not a model\n")
    refused(tmp, "exp.yaml: policy", "model.gguf: not a GGUF file", policy=str(tmp / "model.gguf"))


def test_a_gguf_cut_short_is_refused(tmp):
    (tmp / "cut.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x01")  # the magic and version, then nothing whole
    refused(tmp, "exp.yaml: policy", "cut.gguf: not a GGUF model transformers can read", policy=str(tmp / "cut.gguf"))


def test_a_config_json_that_is_not_json_names_file_and_key(tmp):
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text("{not json")
    ref = [{"name": "bad", "model": str(tmp / "model")}]
    refused(tmp, "exp.yaml: references.0.model", "model/config.json: not a valid JSON file", references=ref)


@pytest.mark.parametrize(
    "config, says",
    [
        ({"hidden_size": 8}, "names no architecture"),
        ({"model_type": "no-such-architecture"}, "model_type 'no-such-architecture' is not an architecture"),
        ({"model_type": "t5"}, "model_type 't5' is not an architecture transformers has as a causal language model"),
        ([1, 2], "names no architecture"),
    ],
    ids=["no-model-type", "unknown-model-type", "not-a-causal-lm", "not-a-mapping"],
)
def test_a_config_json_naming_no_known_architecture_is_refused(tmp, config, says):
    (tmp / "model").mkdir()
    (tmp / "model" / "config.json").write_text(json.dumps(config))
    refused(tmp, "exp.yaml: policy", "model/config.json", says, policy=str(tmp / "model"))


def test_a_truncated_safetensors_file_is_refused(tmp, tiny_world):
    model = copy_model(tiny_world, tmp / "model")
    weights = model / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    ref = [{"name": "cut", "model": str(model)}]
    refused(tmp, "exp.yaml: references.0.model", "model.safetensors: truncated", references=ref)


def test_a_model_without_a_tokenizer_is_refused(tmp, tiny_world):
    model = copy_model(tiny_world, tmp / "model")
    for f in model.glob("tokenizer*"):
        f.unlink()
    refused(tmp, "exp.yaml: policy", "no usable tokenizer", policy=str(model))


def test_a_reward_model_that_is_not_one_is_refused(tmp, tiny_world):
    (tmp / "rm").mkdir()
    (tmp / "rm" / "config.json").write_text(json.dumps({"model_type": "vit"}))  # an image model
    judge = {"kind": "reward-model", "model": str(tmp / "rm")}
    refused(tmp, "exp.yaml: judge.model", "sequence-classification (reward) model", judge=judge)


# 2. LoRA adapters whose base leads back to themselves


def adapter(path: Path, base: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base), "r": 2}))
    return path


def test_an_adapter_that_is_its_own_base_is_refused(tmp):
    a = adapter(tmp / "a", tmp / "a")
    refused(tmp, "exp.yaml: policy", "a/adapter_config.json", "cycle of adapters", policy=str(a))


def test_two_adapters_each_the_base_of_the_other_are_refused(tmp):
    a, b = adapter(tmp / "a", tmp / "b"), adapter(tmp / "b", tmp / "a")
    ref = [{"name": "loop", "model": str(a)}]
    line = refused(tmp, "exp.yaml: references.0.model", "cycle of adapters", references=ref)
    assert f"{a} -> {b} -> {a}" in line


def test_a_cycle_of_three_written_with_dots_is_refused(tmp):
    adapter(tmp / "a", tmp / "b")
    adapter(tmp / "b", tmp / "c")
    (tmp / "x").mkdir()
    adapter(tmp / "c", tmp / "x" / ".." / "a")  # the same directory, spelled otherwise
    refused(tmp, "exp.yaml: policy", "cycle of adapters", policy=str(tmp / "a"))


# 3. filters that empty a split end the command before anything is written, with the counts


def test_a_max_length_every_prompt_fills_is_refused_with_the_counts(tmp, tiny_world):
    line = refused(tmp, "exp.yaml: train.max_length", "8 tokens leave no pair", train={"max_length": 8})
    assert "train 0 of 48 kept" in line and "validation 0 of 24 kept" in line


def test_a_max_length_that_empties_the_validation_split_of_file_data_is_refused(tmp, tiny_world):
    (tmp / "prefs").mkdir()
    jsonl(tmp / "prefs" / "train.jsonl", pairs(6))
    jsonl(tmp / "prefs" / "validation.jsonl", pairs(4, lambda i: f"rev {'abcdefgh' * 5}{i}"))
    line = refused(
        tmp,
        "exp.yaml: train.max_length",
        "no pair in split validation",
        **FILES | {"data": str(tmp / "prefs")},
        train={"max_length": 24},
    )
    assert "train 6 of 6 kept" in line


def test_a_reference_whose_context_holds_no_pair_is_refused(tmp, tiny_world):
    model = copy_model(tiny_world, tmp / "short")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 8}))
    ref = [{"name": "short", "model": str(model)}]
    line = refused(tmp, "exp.yaml: references.0.model", "its context of 8 tokens holds no pair", references=ref)
    assert "train 0 of 48 fit" in line


def test_test_prompts_that_take_every_validation_prompt_are_refused_with_the_counts(tmp, tiny_world):
    prompts = jsonl(
        tmp / "prompts.jsonl", [{"prompt": p} for p in tiny_world.preference_data()["validation"]["prompt"]]
    )
    line = refused(
        tmp, "exp.yaml: eval.prompts", "every validation pair's prompt is a test prompt", eval={"prompts": str(prompts)}
    )
    assert "validation 0 of 24 left" in line


# 4. eval.prompts that are not prompts, refused before anything is written


@pytest.mark.parametrize(
    "values, says",
    [
        ([[1, 2], [3]], "row 1, column 'instruction': a list whose item 1 (1) is not a chat message"),
        ([{"a": 1}, {"a": 2}], "row 1, column 'instruction': {'a': 1} is a mapping"),
        ([5, 6], "row 1, column 'instruction': 5 is a number"),
        (["rev abc", "  "], "row 2, column 'instruction': empty text"),
        (["rev abc", None], "row 2, column 'instruction': None is null"),
    ],
    ids=["lists-of-numbers", "mappings", "numbers", "empty-text", "null"],
)
def test_eval_prompts_that_are_not_prompts_are_refused(tmp, values, says):
    prompts = jsonl(tmp / "prompts.jsonl", [{"instruction": v} for v in values])
    refused(tmp, "exp.yaml: eval.prompts", "prompts.jsonl", says, eval={"prompts": str(prompts)})


def test_eval_prompts_the_world_judge_cannot_score_are_refused(tmp, tiny_world):
    prompts = jsonl(tmp / "prompts.jsonl", [{"instruction": "rev abc"}, {"instruction": "Tell me a joke."}])
    refused(tmp, "exp.yaml: eval.prompts", "row 2: the world judge cannot score", eval={"prompts": str(prompts)})


# 5. data files: split at "\n" only, NUL bytes and huge lines refused naming file:line


def files_data(tmp, rows, raw=b""):
    """Pairs from one file, with a policy that does not exist: before the fix, a file read without error reached the
    policy's refusal (another line than the one asked for) instead of running an experiment."""
    data = jsonl(tmp / "prefs.jsonl", rows, raw)
    return FILES | {"data": str(data), "policy": str(tmp / "no-such-model")}


def test_a_nul_byte_in_a_jsonl_line_names_file_and_line(tmp):
    data = jsonl(tmp / "prefs.jsonl", pairs(2), b'{"prompt": "rev ab", "chosen": "cb\0a", "rejected": "a"}\n')
    refused(tmp, "exp.yaml: data", "prefs.jsonl:3: a NUL byte", **FILES | {"data": str(data)})


def test_a_nul_byte_in_eval_prompts_names_file_and_line(tmp):
    prompts = jsonl(tmp / "prompts.jsonl", [{"prompt": "rev abc"}], b'{"prompt": "rev a\0bc"}\n')
    refused(tmp, "exp.yaml: eval.prompts", "prompts.jsonl:2: a NUL byte", eval={"prompts": str(prompts)})


def test_a_raw_control_character_names_file_and_line(tmp):
    changes = files_data(tmp, pairs(4), b'{"prompt": "rev ab", "chosen": "b\x1ca", "rejected": "a"}\n')
    refused(tmp, "exp.yaml: data", "prefs.jsonl:5: cannot read as json: Invalid control character at column", **changes)


def test_a_line_that_is_not_an_object_names_file_and_line(tmp):
    changes = files_data(tmp, [*pairs(2), [1, 2, 3], *pairs(2)])
    refused(tmp, "exp.yaml: data", "prefs.jsonl:3: a JSON array, expected an object", **changes)


def test_a_line_over_16_mib_is_refused_without_reading_it_whole(tmp):
    huge = b'{"prompt": "rev ab", "chosen": "' + b"a" * (16 << 20) + b'", "rejected": "b"}\n'
    changes = files_data(tmp, pairs(3), huge)
    refused(tmp, "exp.yaml: data", "prefs.jsonl:4: a line of more than 16777216 bytes", **changes)


def test_line_separators_inside_a_record_stay_inside_it(tmp):
    """U+2028, U+0085 and \\x1e... are valid inside a JSON string: read by "\\n" only, the file keeps its 6 records
    (str.splitlines would make more)."""
    from dpo_ref.data.files import read_json

    rows = pairs(6)
    rows[1]["chosen"] = "c\u2028b\x85a"
    path = tmp / "prefs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert [r["chosen"] for _, r in read_json(path, "data")] == [r["chosen"] for r in rows]


# 6. the arrow cache of data files read through `datasets` lies under $DPOREF_CACHE


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_data_files_are_cached_under_the_dporef_cache_not_home(tmp, tmp_path, monkeypatch, kind):
    import datasets
    import pandas as pd

    home_cache = tmp_path / "home" / ".cache" / "huggingface" / "datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home_cache)  # what `datasets` uses without cache_dir
    monkeypatch.setenv("DPOREF_CACHE", str(tmp_path / "dporef-cache"))
    (tmp / "prefs").mkdir()
    for split, n in (("train", 6), ("validation", 4)):
        frame = pd.DataFrame(pairs(n))
        frame.to_parquet(tmp / "prefs" / f"{split}.parquet") if kind == "parquet" else frame.to_csv(
            tmp / "prefs" / f"{split}.csv", index=False
        )
    changes = FILES | {"data": str(tmp / "prefs"), "policy": str(tmp / "no-such-model")}
    refused(tmp, "exp.yaml: policy", **changes)  # the data were read, then the policy refused
    assert not home_cache.exists()
    assert any((tmp_path / "dporef-cache" / "datasets").rglob("*.arrow"))


# 7. a write that fails while the world or a model is built: one line naming the entry, nothing left half-built


def failing_save(monkeypatch, errno_text: str):
    """safetensors' writer failing as it does on a full disk / read-only file system: a SafetensorError, not an
    OSError, with the errno in its text."""
    import transformers.modeling_utils

    def save_file(*args, **kwargs):
        raise SafetensorError(f"Error while serializing: I/O error: {errno_text}")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)


def left_in(cache: Path, kind: str) -> list[str]:
    """What a failed build left in the cache, its lock file aside (it stays by design: store.locked)."""
    folder = cache / kind
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def test_a_full_disk_during_the_world_build_is_one_line_and_leaves_no_world(tmp, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DPOREF_CACHE", str(cache))
    failing_save(monkeypatch, "No space left on device (os error 28)")
    line = refused(tmp, f"{cache / 'world'}", "No space left on device (ENOSPC)", world=TINY | {"sft_steps": 2})
    assert line.startswith(f"error: {cache / 'world'}/")
    assert left_in(cache, "world") == []


def test_a_read_only_cache_while_an_adapter_is_merged_is_one_line(tmp, tmp_path, monkeypatch, tiny_world):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_world.model("sft"), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.save_pretrained(tmp / "adapter")
    cache = Path(os.environ["DPOREF_CACHE"])
    before = left_in(cache, "models")
    failing_save(monkeypatch, "Read-only file system (os error 30)")
    refused(tmp, f"{cache / 'models'}/lora-", "Read-only file system (EROFS)", policy=str(tmp / "adapter"))
    assert left_in(cache, "models") == before


def test_no_permission_while_random_weights_are_built_is_one_line(tmp, tmp_path, monkeypatch, tiny_world):
    source = copy_model(tiny_world, tmp / "shape")
    (source / "model.safetensors").unlink()
    cache = Path(os.environ["DPOREF_CACHE"])
    before = left_in(cache, "models")
    failing_save(monkeypatch, "Permission denied (os error 13)")
    refused(tmp, f"{cache / 'models'}/init-", "Permission denied (EACCES)", policy=f"init:{source}")
    assert left_in(cache, "models") == before


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as Linux has them")
def test_a_file_size_limit_during_the_world_build_fails_a_real_write(tmp, tmp_path):
    """No fault injected in Python: the kernel refuses the write (EFBIG, as ENOSPC would), safetensors reports it."""
    cache = tmp_path / "cache"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from dpo_ref.cli import app\n"
        "sys.argv[0] = 'dporef'\n"
        "app()\n"
    )
    exp = experiment(tmp, world=TINY | {"sft_steps": 2})
    env = os.environ | {"DPOREF_CACHE": str(cache), "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", code, "sweep-beta", str(exp), "--out", str(tmp / "out")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"error: {cache / 'world'}/") and errors[0].endswith(": File too large (EFBIG)")
    assert left_in(cache, "world") == []
    assert not (tmp / "out").exists()
