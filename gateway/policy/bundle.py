"""The policy bundle on disk: OPA bundle layout, read once per load and checked before use.

Layout (https://www.openpolicyagent.org/docs/management-bundles#bundle-file-format):
``*.rego`` modules, ``data.json`` files (one in ``a/b/`` is mounted at ``data.a.b``) and a
``.manifest`` with the ``revision`` and ``roots``. ``*_test.rego`` files are Rego unit
tests, loaded only for ``mcp-gateway policy test``.

A load is all or nothing: :func:`load_policy_dir` either returns a complete, validated
:class:`PolicySource` or raises :class:`~gateway.errors.PolicyEngineError` saying which
file and which key is wrong. The layered data under ``data.mcp`` (global config, tenant
and principal overrides; see ``policies/mcp/layers.rego``) is validated against the
bundle's own ``mcp/config.schema.json`` (JSON Schema 2020-12), so an unknown key or a
wrong type is refused at load, never discovered by a request.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from gateway.errors import PolicyEngineError

__all__ = ["SCHEMA_FILE", "PolicySource", "ignores_context", "load_policy_dir"]

#: The data schema, relative to the bundle root. OPA's bundle reader ignores it (only
#: ``.rego``, ``data.json``/``data.yaml`` and ``.manifest`` files are bundle content).
SCHEMA_FILE = "mcp/config.schema.json"

_WITH_WHOLE_INPUT = re.compile(r"\bwith\s+input\s+as\b")


@dataclass(frozen=True)
class PolicySource:
    """A policy directory as read from disk, in OPA bundle layout.

    Attributes:
        modules: ``(relative path, source)`` of every ``*.rego`` file, sorted by path.
        data: all ``data.json`` files merged; one in ``a/b/`` is mounted at ``data.a.b``.
        revision: ``.manifest`` ``revision``, else the first 12 hex digits of the
            SHA-256 of the sources.
        digest: SHA-256 (hex) of every module and data file, path and content; equal
            digests mean the same bundle whatever the revision says.
    """

    modules: tuple[tuple[str, str], ...]
    data: dict[str, Any]
    revision: str
    digest: str = ""


# Where a module may name ``input`` without reading ``input.context``: ``input.x``,
# ``input["x"]``, ``object.get(input, "x", d)`` and ``object.get(input, ["x", ...], d)``,
# for any top-level key x other than context.
_INPUT_WORD = re.compile(r"\binput\b")
_KEY = r'(?!context\b)[A-Za-z_]'
_SAFE_AFTER = re.compile(rf'\s*\.\s*{_KEY}|\s*\[\s*"{_KEY}')
_SAFE_GET_AFTER = re.compile(rf'\s*,\s*(\[\s*)?"{_KEY}')
_GET_BEFORE = re.compile(r"object\.get\(\s*$")


def ignores_context(source: PolicySource) -> bool:
    """True when no module can read ``input.context`` (the per-call part of the input:
    transport, client address, request id, time), so a decision depends on the rest of
    the input and the bundle only and may be cached.

    Conservative and lexical: every occurrence of the word ``input`` (comments and strings
    included) must select a top-level key other than ``context`` in one of the forms
    ``input.k``, ``input["k"]``, ``object.get(input, "k" | ["k", ...], d)``; anything
    else (``x := input``, ``input[k]``, ``walk(input, ...)``, an ``import input``) answers
    False.
    """
    for _, text in source.modules:
        for match in _INPUT_WORD.finditer(text):
            after = text[match.end():match.end() + 80]
            if _SAFE_AFTER.match(after):
                continue
            if _GET_BEFORE.search(text[max(0, match.start() - 40):match.start()]) and _SAFE_GET_AFTER.match(after):
                continue
            return False
    return True


def load_policy_dir(policy_dir: Path, *, include_tests: bool = False) -> PolicySource:
    """Read and check the ``*.rego`` modules, ``data.json`` files and ``.manifest``.

    ``*_test.rego`` files are skipped unless ``include_tests``.

    Raises:
        PolicyEngineError: the directory is missing or has no module; a file cannot be
            read or parsed; two data files set the same key; ``data.mcp`` does not match
            ``mcp/config.schema.json`` (the message names the file and the key); or a
            module (not a test) replaces the whole input with ``with input as``, which
            crashes rego-cpp 1.5.
    """
    root = Path(policy_dir)
    if not root.is_dir():
        raise PolicyEngineError(f"policy directory {root} does not exist")
    modules: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    data_files: list[tuple[str, dict[str, Any]]] = []
    digest = hashlib.sha256()
    try:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            # Hidden entries are not bundle content: .manifest is read below, and a
            # Kubernetes ConfigMap mount holds every file twice (..data/ and a symlink).
            if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.suffix == ".rego":
                is_test = path.name.endswith("_test.rego")
                if is_test and not include_tests:
                    continue
                source = path.read_text(encoding="utf-8")
                if not is_test:
                    _refuse_whole_input_override(rel, source)
                modules.append((rel, source))
            elif path.name == "data.json":
                source = path.read_text(encoding="utf-8")
                mounted = _mounted(path.parent.relative_to(root).parts, json.loads(source))
                _merge_data(data, copy.deepcopy(mounted), rel)
                data_files.append((rel, mounted))
            else:
                continue
            digest.update(rel.encode() + b"\0" + source.encode() + b"\0")
        manifest = root / ".manifest"
        revision = ""
        if manifest.is_file():
            revision = json.loads(manifest.read_text(encoding="utf-8")).get("revision", "")
        schema_path = root / SCHEMA_FILE
        schema = json.loads(schema_path.read_text(encoding="utf-8")) if schema_path.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise PolicyEngineError(f"cannot load policy from {root}: {exc}") from exc
    if not modules:
        raise PolicyEngineError(f"no Rego modules under {root}")
    if schema is not None:
        _validate_layers(data, schema, data_files)
    if not isinstance(revision, str) or not revision:
        revision = digest.hexdigest()[:12]
    return PolicySource(modules=tuple(modules), data=data, revision=revision, digest=digest.hexdigest())


def _validate_layers(data: dict[str, Any], schema: dict[str, Any], files: list[tuple[str, dict[str, Any]]]) -> None:
    """Check ``data.mcp`` against the schema; the first few errors, with file and key."""
    try:
        validator = jsonschema.Draft202012Validator(_with_partial_defs(schema))
        validator.check_schema(validator.schema)
    except (jsonschema.SchemaError, KeyError, TypeError) as exc:
        raise PolicyEngineError(f"{SCHEMA_FILE} is not a valid JSON Schema: {exc}") from exc
    errors = sorted(validator.iter_errors(data.get("mcp", {})), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    lines = []
    for error in errors[:5]:
        at = ["mcp", *(str(p) for p in error.absolute_path)]
        where = _origin(files, at)
        message = error.message
        if error.validator == "additionalProperties":
            message = f"unknown key(s): {message.split('(', 1)[-1].rstrip(')')}"
        lines.append(f"{where}: data.{'.'.join(at)}: {message}")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    raise PolicyEngineError("policy data does not match " + SCHEMA_FILE + ": " + "; ".join(lines) + more)


def _with_partial_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema plus ``partial_<name>`` for every ``$defs`` entry: the same shape with
    no ``required`` keys anywhere, for override layers."""
    schema = copy.deepcopy(schema)
    defs = schema["$defs"]

    def partial(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: partial(v) for k, v in node.items() if k != "required"}
            ref = out.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                out["$ref"] = "#/$defs/partial_" + ref.removeprefix("#/$defs/")
            return out
        if isinstance(node, list):
            return [partial(v) for v in node]
        return node

    for name in list(defs):
        defs["partial_" + name] = partial(defs[name])
    return schema


def _origin(files: list[tuple[str, dict[str, Any]]], path: list[str]) -> str:
    """The data file that sets the longest prefix of ``path``."""
    best, depth = "data", -1
    for rel, doc in files:
        node: Any = doc
        for i, key in enumerate(path):
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
            if i > depth:
                best, depth = rel, i
    return best


def _refuse_whole_input_override(rel: str, text: str) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if _WITH_WHOLE_INPUT.search(line.split("#", 1)[0]):
            raise PolicyEngineError(
                f"{rel}:{number}: 'with input as' crashes rego-cpp 1.5; "
                "override input keys instead (with input.command as ...)"
            )


def _mounted(parts: tuple[str, ...], value: Any) -> dict[str, Any]:
    if not parts:
        if not isinstance(value, dict):
            raise ValueError("a data.json at the bundle root must hold a JSON object")
        return value
    for part in reversed(parts):
        value = {part: value}
    return value


def _merge_data(into: dict[str, Any], new: dict[str, Any], rel: str, at: str = "data") -> None:
    for key, value in new.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge_data(into[key], value, rel, f"{at}.{key}")
        else:
            raise ValueError(f"{rel} sets {at}.{key}, already set by another data file")
