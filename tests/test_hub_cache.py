"""Hub ids resolve from the local Hugging Face cache only (dporef never downloads at run time): a model id, and an
evaluation prompt file `org/name:path`, each laid out in a temporary hub cache exactly as a download leaves it."""

import json
import shutil

import huggingface_hub
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dpo_ref.data.tokenize import load_prompts
from dpo_ref.errors import UserError
from dpo_ref.models import load_model, load_tokenizer, resolve
from dpo_ref.world import make_tokenizer

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LATER = "89abcdef0123456789abcdef0123456789abcdef"


def snapshot(hub, kind: str, repo: str, commit: str = COMMIT):
    """`<hub>/<kind>s--org--name/snapshots/<commit>/` with `refs/main` naming it: what a download writes."""
    root = hub / f"{kind}s--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    path = root / "snapshots" / commit
    path.mkdir(parents=True)
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch):
    # huggingface_hub reads HF_HUB_CACHE at import; the functions read this constant at call time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_model_hub_id_resolves_from_the_local_cache(hub, tmp_path):
    tok = make_tokenizer(64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
    )
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    tok.save_pretrained(saved)
    shutil.copytree(saved, snapshot(hub, "model", "org/tiny-llama"), dirs_exist_ok=True)

    ref = resolve("org/tiny-llama")
    assert ref.location.endswith(COMMIT)
    loaded = load_model(ref, torch.float32)
    ids = torch.tensor([[1, 2, 3]])
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert load_tokenizer(ref).get_vocab() == tok.get_vocab()
    with pytest.raises(UserError, match="not in the local cache"):
        resolve("org/not-downloaded")


def test_hub_fingerprint_names_the_snapshot_commit(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("DPOREF_CACHE", str(tmp_path / "cache"))
    refs = {}
    header = json.dumps({"w": {"dtype": "U8", "shape": [16384], "data_offsets": [0, 16384]}}).encode()
    for commit in (COMMIT, LATER):  # a second download of org/tiny moved refs/main; the files did not change
        path = snapshot(hub, "model", "org/tiny", commit)
        (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
        make_tokenizer(64).save_pretrained(path)
        weights = len(header).to_bytes(8, "little") + header + bytes(range(256)) * 64  # a whole safetensors file
        (path / "model.safetensors").write_bytes(weights)
        refs[commit] = resolve("org/tiny")
    assert refs[COMMIT].location.endswith(COMMIT) and refs[LATER].location.endswith(LATER)
    assert refs[COMMIT].fingerprint != refs[LATER].fingerprint


def test_eval_prompts_from_a_hub_dataset_file(hub, tmp_path):
    rows = [{"instruction": f"Say {w}.", "output": "x", "generator": "gpt4"} for w in ("hi", "bye", "yes")]
    (snapshot(hub, "dataset", "tatsu-lab/alpaca_eval") / "alpaca_eval.json").write_text(json.dumps(rows))
    assert load_prompts("tatsu-lab/alpaca_eval:alpaca_eval.json") == ["Say hi.", "Say bye.", "Say yes."]
    local = tmp_path / "prompts.jsonl"
    local.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a", "b")))
    assert load_prompts(str(local)) == ["a", "b"]
    for spec, message in [
        ("tatsu-lab/alpaca_eval:missing.json", "not in the local hub cache"),
        (str(tmp_path / "nope.json"), "no such file"),
    ]:
        with pytest.raises(UserError, match=message):
            load_prompts(spec)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "?"}) + "\n")
    with pytest.raises(UserError, match="needs `instruction` or `prompt`"):
        load_prompts(str(bad))
