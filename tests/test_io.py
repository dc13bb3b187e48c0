"""mtrec.io: atomic writes keep the old file on failure; read_mapping names the file and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtrec.features.schema import DatasetSchema, SchemaError
from mtrec.io import atomic_replace_dir, atomic_write, atomic_write_text, read_mapping


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_directory_build_keeps_the_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "data"
    atomic_replace_dir(target, lambda d: (d / "a").write_text("old"))

    def fail(d: Path) -> None:
        (d / "a").write_text("new")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_replace_dir(target, fail)
    assert (target / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.json", '{"a": 1,}', r"c\.json: not valid JSON: .*line 1"),
        ("c.yaml", "a: [1, 2", r"c\.yaml: not valid YAML"),
        ("c.yaml", "- 1\n- 2\n", r"c\.yaml: expected a mapping at the top level, got list"),
    ],
)
def test_read_mapping_errors_name_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        read_mapping(tmp_path / name, "config")


def test_read_mapping_reads_json_and_yaml_and_raises_the_given_error(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"a": [1, 2]}')
    (tmp_path / "c.yml").write_text("a: [1, 2]\n")
    assert read_mapping(tmp_path / "c.json", "config") == read_mapping(tmp_path / "c.yml", "config") == {"a": [1, 2]}
    with pytest.raises(SchemaError, match=r"schema file not found: .*missing\.json"):
        DatasetSchema.load(tmp_path / "missing.json")
    with pytest.raises(SchemaError, match="schema file expected, found a directory"):
        DatasetSchema.load(tmp_path)
