"""The YAML reference of the docs site (docs/reference.md) is the one generated from the code's field descriptions."""

from pathlib import Path

from dpo_ref.docs import END, START, yaml_reference

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference.md"


def test_yaml_reference_page_is_current():
    text = REFERENCE.read_text()
    current = text[text.index(START) + len(START) : text.index(END)]
    assert current.strip() == yaml_reference().strip(), (
        "docs/reference.md is stale: run `python -m dpo_ref.docs docs/reference.md`"
    )


def test_every_config_field_is_documented():
    assert "|  |" not in yaml_reference()  # an empty description cell
