"""Import direction: models and blocks never reach into data or training, objectives never into models
or training, data never into metrics or scikit-learn (every import in the file counts, a function-level
one included); and no module outside ``data/formats/`` names a known raw format."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mtrec.data.formats import format_names

SRC = Path(__file__).resolve().parents[1] / "src" / "mtrec"

RULES = {  # package -> packages none of its modules may import
    "nn": ("mtrec.data", "mtrec.training"),
    "models": ("mtrec.data", "mtrec.training"),
    "objectives": ("mtrec.models", "mtrec.training"),
    "data": ("mtrec.metrics", "sklearn"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` in the file names (absolute names)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(RULES))
def test_no_module_imports_against_the_layering(package: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files, f"no modules under {SRC / package}"
    bad = [f"{path.relative_to(SRC)} imports {name}"
           for path in files for name in sorted(imported_modules(path))
           if any(name == banned or name.startswith(banned + ".") for banned in RULES[package])]
    assert not bad, bad


def format_mentions(path: Path, names: tuple[str, ...]) -> list[str]:
    """``file:line`` of each line of ``path`` that names one of the formats ``names`` (any case)."""
    pattern = re.compile("|".join(re.escape(n) for n in names), re.IGNORECASE)
    return [f"{path.name}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]


def test_no_module_outside_formats_names_a_format() -> None:
    names = format_names()
    assert "userbehavior" in names
    outside = [path for path in sorted(SRC.rglob("*.py")) if (SRC / "data" / "formats") not in path.parents]
    bad = [mention for path in outside for mention in format_mentions(path, names)]
    assert not bad, bad


def test_the_check_sees_a_format_named(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text('"""Reads logs."""\nif source.format == "UserBehavior":\n    pass\n')
    assert format_mentions(module, ("userbehavior",)) == ["m.py:2"]


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mtrec.data.batches import Batch\n    return Batch\n")
    assert "mtrec.data.batches" in imported_modules(module)
