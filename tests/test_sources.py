"""Loading preference pairs from local files and the hub cache: schemas, dropped-pair counts, splits, errors."""

import json

import datasets
import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpo_ref.data.files import load_source
from dpo_ref.errors import UserError

UF = "HuggingFaceH4/ultrafeedback_binarized"
MULTI_TURN = [
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "7."},
    {"role": "user", "content": "Another one?"},
]


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    """`datasets` writes its arrow cache under tmp, never the user's own."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def _uf_row(i: int, prefix: list[dict], chosen: str, rejected: str, rejected_prefix: list[dict] | None = None):
    """One row with exactly the columns of HuggingFaceH4/ultrafeedback_binarized (messages as content/role)."""

    def conv(msgs, answer):
        return [{"content": m["content"], "role": m["role"]} for m in msgs] + [{"content": answer, "role": "assistant"}]

    return {
        "prompt": prefix[-1]["content"],
        "prompt_id": f"{i:064x}",
        "chosen": conv(prefix, chosen),
        "rejected": conv(rejected_prefix or prefix, rejected),
        "messages": conv(prefix, chosen),
        "score_chosen": 8.0,
        "score_rejected": 4.5,
    }


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _uf_splits() -> dict[str, list[dict]]:
    train = [_uf_row(i, _user(f"question {i}"), f"good answer {i}", f"bad answer {i}") for i in range(9)]
    train += [
        _uf_row(9, _user("same?"), "identical answer", "identical answer"),
        _uf_row(10, _user("empty?"), "an answer", ""),
        _uf_row(11, MULTI_TURN, "11.", "4."),
    ]
    test = [_uf_row(i, _user(f"test question {i}"), f"good {i}", f"bad {i}") for i in range(10)]
    test += [
        _uf_row(10, _user("which?"), "this", "that", rejected_prefix=_user("a different question")),
        _uf_row(11, _user("blank?"), " \n", "something"),
    ]
    return {"train_prefs": train, "test_prefs": test, "train_sft": train[:3]}


def _write_uf(root):
    """The hub layout of ultrafeedback_binarized: data/<split>-00000-of-00001.parquet plus a README."""
    (root / "data").mkdir(parents=True)
    (root / "README.md").write_text("---\nconfigs: []\n---\n")
    for split, rows in _uf_splits().items():
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def _check_uf(pairs, report):
    assert report.schema == "messages" and not report.carved_validation
    assert report.read == {"train": 12, "validation": 12}
    assert report.kept == {"train": 9 + 1, "validation": 10}
    assert report.empty == {"train": 1, "validation": 1}
    assert report.identical == {"train": 1, "validation": 0}
    assert report.mismatched == {"train": 0, "validation": 1}
    assert report.lines()[0] == "train: read 12, kept 10; dropped 1 empty, 0 mismatched, 1 identical"
    assert set(pairs) == {"train", "validation"}
    for split in pairs.values():
        assert split.column_names == ["prompt", "chosen", "rejected"]
    train = pairs["train"]
    assert train[0] == {"prompt": _user("question 0"), "chosen": "good answer 0", "rejected": "bad answer 0"}
    # A column has one type: with a multi-turn prompt present, single-turn prompts are one user message too.
    assert train[9] == {"prompt": MULTI_TURN, "chosen": "11.", "rejected": "4."}
    assert pairs["validation"][9] == {"prompt": _user("test question 9"), "chosen": "good 9", "rejected": "bad 9"}


def test_ultrafeedback_local_directory(tmp_path):
    root = _write_uf(tmp_path / "uf")
    _check_uf(*load_source(str(root), train_split="train_prefs", validation_split="test_prefs"))


def test_ultrafeedback_from_hub_cache(tmp_path, monkeypatch):
    # huggingface_hub reads HF_HUB_CACHE once, at import: patch the constant snapshot_download reads at call time.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "datasets--HuggingFaceH4--ultrafeedback_binarized"
    commit = "a" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    _write_uf(repo / "snapshots" / commit)
    _check_uf(*load_source(UF, train_split="train_prefs", validation_split="test_prefs"))


def test_single_turn_prompts_stay_strings(tmp_path):
    """Without a multi-turn prompt among the kept pairs, prompts are plain strings; max_* keep the first N."""
    root = _write_uf(tmp_path / "uf")
    pairs, report = load_source(
        str(root), train_split="train_prefs", validation_split="test_prefs", max_train=9, max_validation=4
    )
    assert report.kept == {"train": 9, "validation": 4}
    assert pairs["train"]["prompt"] == [f"question {i}" for i in range(9)]
    assert pairs["validation"]["chosen"] == [f"good {i}" for i in range(4)]
    assert report.lines()[1] == (
        "validation: read 12, kept 4; dropped 1 empty, 1 mismatched, 0 identical; 6 over the maximum left out"
    )


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_strings_file_carves_validation(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "extra": i} for i in range(38)]
    rows += [{"prompt": "p", "chosen": "same", "rejected": "same", "extra": 0}]
    rows += [{"prompt": "   ", "chosen": "c", "rejected": "r", "extra": 0}]
    path = _write_jsonl(tmp_path / "pairs.jsonl", rows)

    pairs, report = load_source(str(path))
    assert report.schema == "strings" and report.carved_validation
    assert report.read == {"train": 38, "validation": 2}  # 5% of 40
    assert sum(report.read.values()) == len(rows)
    for split in pairs:
        assert pairs[split].column_names == ["prompt", "chosen", "rejected"]
        dropped = report.empty[split] + report.identical[split] + report.mismatched[split]
        assert report.kept[split] == len(pairs[split]) == report.read[split] - dropped
    assert sum(report.empty.values()) == 1 and sum(report.identical.values()) == 1
    texts = {p["prompt"]: (p["chosen"], p["rejected"]) for s in pairs for p in pairs[s]}
    assert texts["p7"] == ("c7", "r7")
    assert "validation: read 2" in report.lines()[1] and "held out from train" in report.lines()[1]

    again, _ = load_source(str(path))
    assert again["validation"].to_list() == pairs["validation"].to_list()


def test_directory_of_split_files(tmp_path):
    rows = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    _write_jsonl(tmp_path / "validation.jsonl", rows[:2])
    pairs, report = load_source(str(tmp_path), max_train=3)
    assert not report.carved_validation
    assert report.kept == {"train": 3, "validation": 2}
    assert pairs["train"]["prompt"] == ["p0", "p1", "p2"]


@pytest.mark.parametrize(
    ("setup", "source", "message"),
    [
        ("missing columns", "pairs.jsonl", "columns ['prompt', 'answer'] found; needs prompt/chosen/rejected"),
        ("missing split", "uf", "no split 'train'; splits found: ['test_prefs', 'train_prefs', 'train_sft']"),
        ("hub id not cached", "someone/not-cached", "hub dataset 'someone/not-cached' is not in the local cache"),
        ("no such file", "nowhere/pairs.jsonl", "nowhere/pairs.jsonl: no such file"),
        ("not a source", "no such thing", "is not a file, a directory or a hub dataset id; allowed: a .jsonl"),
        ("unsupported file", "pairs.txt", "unsupported file type '.txt'; allowed: .jsonl, .json, .parquet, .csv"),
    ],
)
def test_errors_name_the_problem(tmp_path, monkeypatch, setup, source, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "answer": "a"}])
    (tmp_path / "pairs.txt").write_text("p\tc\tr\n")
    _write_uf(tmp_path / "uf")
    with pytest.raises(UserError) as err:
        load_source(source, where="data.source")
    assert err.value.where == "data.source"
    assert message in err.value.message


def test_conversation_must_end_with_the_response(tmp_path):
    row = {"chosen": _user("hi") + [{"role": "assistant", "content": "hello"}], "rejected": _user("hi")}
    path = _write_jsonl(tmp_path / "pairs.jsonl", [row, row])
    with pytest.raises(UserError, match="row 0: a conversation ends with a 'user' message"):
        load_source(str(path))


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("name", ["wrld", "instruction", "pairs.txt"])
def test_an_unknown_source_name_is_one_line_naming_data_source(tmp_path, monkeypatch, name, dry_run):
    """A bare `data.source` that is no registered name, no existing file or directory and no hub id is a config
    error (exit 2, one line, nothing written), also under --dry-run: not read as a file that is missing."""
    import yaml
    from typer.testing import CliRunner

    from dpo_ref.cli import app

    monkeypatch.chdir(tmp_path)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({"name": "t", "objectives": [{"name": "dpo", "betas": [0.1]}], "data": name}))
    args = ["sweep-beta", str(exp), "--out", str(tmp_path / "out")] + (["--dry-run"] if dry_run else [])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: {exp}: data.source: {name!r} is not a source name, an existing local file or directory, or a hub "
        "dataset id; allowed: world, instructions, a local file or directory, or a hub dataset id owner/name"
    ]
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_sources_written_as_paths_or_hub_ids_pass_the_name_check(tmp_path, monkeypatch):
    """What is not a bare unknown word passes the config check: files.py names what is wrong with it, if anything."""
    from dpo_ref.config import Experiment
    from dpo_ref.data import check_source

    def exp(source):
        return Experiment.model_validate({"name": "t", "objectives": [{"name": "dpo", "betas": [0.1]}], "data": source})

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mydata").mkdir()
    for source in ["world", "instructions", "mydata", "owner/name", "prefs.jsonl", "./x", "~/x", "/abs/x"]:
        assert check_source(exp(source)) is None, source
    assert check_source(exp("wrld"))[0] == "data.source"
