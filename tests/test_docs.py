"""The documentation stays true to the code: the generated references and the results page are what their scripts
write now, every setting has a description to write, and every measured figure carries its date, machine and
command."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path):
    """The scripts live beside what they write (docs/, bench/), outside the package."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return load_script(ROOT / "docs" / "gen_reference.py")


@pytest.fixture(scope="module")
def results():
    return load_script(ROOT / "bench" / "render_results.py")


def test_every_setting_has_a_description(reference):
    missing = [
        f"{model.__name__}.{name}"
        for _, _, model in reference.settings_models()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, f"settings without a description (Field(description=...)): {missing}"


def test_configuration_reference_lists_every_setting(reference):
    text = reference.configuration_md()
    for _, prefix, model in reference.settings_models():
        for name in model.model_fields:
            assert f"| `{prefix}{name}` |" in text


def test_cli_reference_lists_every_command_and_flag(reference):
    text = reference.cli_md()
    for name, command in reference.commands().items():
        section = text.split(f"## lorabench {name}\n", 1)[1].split("\n## ", 1)[0]
        for param in command.params:
            if param.name != "help":
                assert reference.flag_text(param) in section, (name, param.name)


def test_committed_references_are_up_to_date(reference):
    for path, text in reference.generated().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python docs/gen_reference.py"


def test_every_result_carries_date_machine_and_command(results):
    records = results.read_records()
    assert records
    for name, record in records.items():
        for key in ("title", "date", "machine", "command", "figures"):
            assert record.get(key), f"bench/results/{name}.json lacks {key}"
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", record["date"]), name


def test_results_page_is_up_to_date(results):
    page = ROOT / "docs" / "results.md"
    assert page.read_text(encoding="utf-8") == results.render(results.read_records()), (
        "docs/results.md is stale: run python bench/render_results.py"
    )


def test_results_render_any_record(results, tmp_path):
    """Another branch's record renders too: figures as a table of rows or as one mapping, optional keys absent."""
    facts = {"date": "2026-01-01", "machine": "M"}
    rows = {"title": "Rows", "command": ["c1", "c2"], "figures": [{"x": 1}, {"x": 2, "y": "z"}], **facts}
    mapping = {"title": "Mapping", "command": "c", "figures": {"f1": 0.5}, **facts}
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "mapping.json").write_text(json.dumps(mapping))
    page = results.render(results.read_records(tmp_path))
    assert '<a id="rows"></a>' in page and '<a id="mapping"></a>' in page
    assert "| f1 | 0.5 |" in page and "| 2 | z |" in page and "| 1 |  |" in page


def test_presets_point_to_records_that_exist():
    for preset in (ROOT / "src" / "lorabench" / "presets").glob("*.yaml"):
        for pointer in re.findall(r"bench/results/[\w.-]+\.json", preset.read_text(encoding="utf-8")):
            assert (ROOT / pointer).is_file(), f"{preset.name} points to {pointer}, which does not exist"


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda path: path.name)
def test_every_example_config_is_a_valid_comparison_config(path):
    from lorabench.workflows.members import load_compare_config

    settings = load_compare_config(path)
    for name, entry in settings.models.items():  # each member's entry holds only what it sets
        assert entry.model_fields_set, name
