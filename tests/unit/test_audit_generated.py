"""Everything derived from the audit field table is current, and the table is sound."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest

from gateway.audit.fields import FIELDS, json_schema
from gateway.audit.generated import DOC_MARKERS, render

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted(render(REPO)), ids=lambda p: str(p.relative_to(REPO)))
def test_derived_file_is_current(path: Path) -> None:
    assert path.read_text() == render(REPO)[path], "stale: run .venv/bin/python scripts/gen_audit.py"


def test_schema_is_valid_and_names_each_field_once() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())
    assert len({f.name for f in FIELDS}) == len(FIELDS)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", f.name) for f in FIELDS)


def test_integers_are_never_negative() -> None:
    """Falco extracts integers as uint64: a negative value could not be compared."""
    assert all(f.minimum is not None and f.minimum >= 0 for f in FIELDS if f.type == "integer")


def test_the_go_table_lists_every_field_with_its_falco_type() -> None:
    go = (REPO / "falco" / "pkg" / "mcpaudit" / "fields_gen.go").read_text()
    kinds = dict(re.findall(r'\{Name: "([a-z0-9_]+)", Kind: (Kind\w+)', go))
    assert kinds == {f.name: {"string": "KindString", "integer": "KindUint64", "boolean": "KindBool"}[f.type]
                     for f in FIELDS}


def test_the_doc_table_has_one_row_per_field() -> None:
    doc = (REPO / "docs" / "audit.md").read_text()
    table = doc.split(DOC_MARKERS[0])[1].split(DOC_MARKERS[1])[0]
    assert re.findall(r"^\| `mcp\.([a-z0-9_]+)` \|", table, re.M) == [f.name for f in FIELDS]

