"""No damaged cache entry is ever used: reference scores, the world, rebuilt models, prepared data and baselines are
verified on read and rebuilt, with one line saying so, when they do not match what was written."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from dpo_ref.cache import intact_dir, read_entry, write_entry
from dpo_ref.cli import app
from dpo_ref.data.tokenize import tokenize_pairs
from dpo_ref.models import load_tokenizer, resolve, write_config_model
from dpo_ref.reference import ReferenceEngine
from dpo_ref.store import atomic_dir, damage
from dpo_ref.world import build_world


@pytest.fixture(scope="module")
def scored(tiny_world, tmp_path_factory):
    """A reference cache entry of the tiny world's pairs, and what it holds."""
    ref = resolve("world:sft", tiny_world)
    tok = load_tokenizer(ref)
    pairs = tokenize_pairs(tiny_world.preference_data(), tok, 64)[0]
    cache = tmp_path_factory.mktemp("refscores")
    good = ReferenceEngine(cache_dir=cache).pair_scores(ref, pairs, tok, 64, 16)
    (entry,) = cache.glob("*.json")
    return ref, tok, pairs, entry, good


def edit_entry(entry, tmp_path, change):
    """A copy of the cache entry with `change(entry_dict)` applied, in a fresh cache directory."""
    data = json.loads(entry.read_text())
    change(data)
    (tmp_path / entry.name).write_text(json.dumps(data))
    return ReferenceEngine(cache_dir=tmp_path)


def no_scores(data):
    data["payload"]["scores"] = {}  # valid JSON, checksum recomputed by a "helpful" tool: still the wrong shape
    data["sha256"] = hashlib.sha256(json.dumps(data["payload"], sort_keys=True).encode()).hexdigest()


def changed_digits(data):
    data["payload"]["scores"]["train"]["chosen"][3] += 1.0  # plausible numbers, another checksum


def short_array(data):
    del data["payload"]["scores"]["validation"]["rejected"][-1]


@pytest.mark.parametrize("change", [no_scores, changed_digits, short_array], ids=lambda f: f.__name__)
def test_a_damaged_reference_entry_is_rescored_not_used(scored, tmp_path, change, capsys):
    ref, tok, pairs, entry, good = scored
    engine = edit_entry(entry, tmp_path, change)
    again = engine.pair_scores(ref, pairs, tok, 64, 16)
    assert (engine.computed, engine.cached) == (1, 0)  # scored anew, never read as zeros or as edited digits
    for split in good:
        np.testing.assert_array_equal(again[split]["chosen"], good[split]["chosen"])
        np.testing.assert_array_equal(again[split]["rejected"], good[split]["rejected"])
    assert "rebuilding it" in capsys.readouterr().err


def test_json_entries_check_checksum_and_shape(tmp_path):
    path = tmp_path / "e.json"
    write_entry(path, {"x": [1.0, 2.0]}, {"x": 2})
    assert read_entry(path, {"x": 2}, "entry") == {"x": [1.0, 2.0]}
    assert read_entry(path, {"x": 3}, "entry") is None  # the reader expected another shape
    path.write_text(path.read_text().replace("2.0", "2.5"))
    assert read_entry(path, {"x": 2}, "entry") is None
    path.write_text("{")
    assert read_entry(path, {"x": 2}, "entry") is None


def test_sealed_directories_report_what_changed(tmp_path):
    root = tmp_path / "d"
    with atomic_dir(root) as tmp:
        (tmp / "a.bin").write_bytes(b"\0" * 10)
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.txt").write_text("hello")
    assert damage(root) is None
    (root / "sub" / "b.txt").write_text("hellO")  # same size, other bytes
    assert damage(root) == "sub/b.txt changed"
    (root / "sub" / "b.txt").write_text("hello")
    (root / "extra").write_text("x")
    assert damage(root) == "extra not in the manifest"
    (root / "extra").unlink()
    (root / "a.bin").unlink()
    assert damage(root) == "a.bin missing"
    assert not intact_dir(root, "test entry") and not root.exists()  # removed, for the caller to rebuild


def test_a_damaged_world_is_rebuilt_the_same(tiny_world, tmp_path):
    copy = tmp_path / "world" / tiny_world.root.name
    shutil.copytree(tiny_world.root, copy)
    weights = next((copy / "models" / "sft").glob("*.safetensors"))
    original = weights.read_bytes()
    weights.write_bytes(original[:-8] + b"\x01" * 8)  # weights corrupted in place, same size
    world = build_world(tiny_world.config, cache_dir=tmp_path)
    assert world.root == copy and damage(copy) is None
    assert weights.read_bytes() == original  # the build is deterministic: rebuilt, not patched


def test_a_damaged_rebuilt_model_is_built_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOREF_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "config"
    write_config_model(source, ["rev abc", "cba"] * 20, hidden=16, layers=1, heads=2, mlp=32)
    first = resolve(f"init:{source}")
    weights = next(p for p in (tmp_path / "cache" / "models").rglob("*.safetensors"))
    original = weights.read_bytes()
    weights.write_bytes(original[:100])  # truncated: a full disk while copying, say
    second = resolve(f"init:{source}")
    assert second == first and weights.read_bytes() == original


def test_a_changed_baseline_or_prepared_file_is_never_used(run_study, tmp_path):
    sets = ["objectives.0.betas=[0.1]", "train.max_steps=2", "eval.max_new_tokens=12"]
    run_study("sweep-beta", tmp_path, *sets, experiment="rq1_sweep_beta")
    exp_dir = tmp_path / "rq1_sweep_beta"
    baseline = exp_dir / "baseline" / "test.jsonl"
    rows = [json.loads(line) for line in baseline.read_text().splitlines()]
    original = rows[0]["reward"]
    rows[0]["reward"] = original + 1.0  # a baseline that loses nothing any more
    baseline.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_one = CliRunner().invoke(app, ["run-one", str(exp_dir), "dpo-sft-b0.1-s0"])
    assert run_one.exit_code == 2 and "baseline/test.jsonl changed" in run_one.stderr
    # the study command samples it again before any run reads it (a new beta makes a run pending)
    summary, result = run_study(
        "sweep-beta", tmp_path, *sets, "objectives.0.betas=[0.1,0.01]", experiment="rq1_sweep_beta"
    )
    assert "does not match its checksum; sampling it again" in result.stderr
    assert json.loads(baseline.read_text().splitlines()[0])["reward"] == original  # same seed: the same sample
    pairs = next((exp_dir / "prepared" / "pairs").rglob("*.arrow"))
    data = bytearray(pairs.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tokenized pairs
    pairs.write_bytes(bytes(data))
    damaged = CliRunner().invoke(app, ["run-one", str(exp_dir), "dpo-sft-b0.1-s0"])
    assert damaged.exit_code == 2 and "prepared inputs are damaged" in damaged.stderr
