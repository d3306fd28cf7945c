"""The README's YAML reference is the one generated from the code's field descriptions."""

from pathlib import Path

from dpo_ref.docs import END, START, yaml_reference

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_yaml_reference_is_current():
    text = README.read_text()
    current = text[text.index(START) + len(START) : text.index(END)]
    assert current.strip() == yaml_reference().strip(), "README is stale: run `python -m dpo_ref.docs README.md`"


def test_every_config_field_is_documented():
    assert "|  |" not in yaml_reference()  # an empty description cell
