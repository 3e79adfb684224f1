"""Falco rules files as Falco's rule loader reads them, for tests that check and evaluate
``falco/rules/mcp_audit_rules.yaml``.

:func:`load` reads one or more rules files in order (the shipped file, then an operator's
overrides), applies ``override: {items|condition|...: append|replace}`` the way Falco's
rule loader does (``userspace/engine/rule_loader_collector.cpp``: an override names an
item defined earlier; ``append`` adds to it, ``replace`` swaps it), and expands every
rule's condition: a macro's name becomes its parenthesised condition and a list's name
inside ``in (...)`` becomes its items, recursively, an item with a space quoted, as
Falco's compiler does. The expanded conditions are what a filter engine without macros
and lists (sysdig 0.29's, see ``tests/falco/sysdig.py``) evaluates.

:class:`RulesError` is what a loader refuses (an unknown list or macro, a cycle, an override
of something not defined before), and a second definition of a name without ``override``,
which Falco takes as a replacement with a warning and this project's files never need.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["REPO", "RULES_FILE", "Rule", "Rules", "RulesError", "condition_fields", "load", "output_fields"]

REPO = Path(__file__).resolve().parents[2]
RULES_FILE = REPO / "falco" / "rules" / "mcp_audit_rules.yaml"
SCHEMA_FILE = REPO / "falco" / "rules" / "rules.schema.json"

# Falco's condition tokens: quoted strings, parentheses and commas, comparison operators,
# and bare words (field names, values, macro names, keywords).
_TOKEN = re.compile(r"""\s*(?:("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|([(),])|(!=|<=|>=|=|<|>)|([^\s(),=<>!"']+))""")
_LIST_OPERATORS = {"in", "intersects", "pmatch"}
_KEYWORDS = {"and", "or", "not", "exists", *_LIST_OPERATORS, "contains", "icontains", "startswith",
             "endswith", "glob", "bcontains", "bstartswith", "regex"}
_COMPARISONS = {"=", "!=", "<", "<=", ">", ">=", "contains", "icontains", "startswith", "endswith", "glob",
                "bcontains", "bstartswith", "regex"}
_FIELD = re.compile(r"^[a-z][a-z0-9_]*\.[a-z0-9_.]+$")
_OUTPUT_FIELD = re.compile(r"%([a-z][a-z0-9_]*\.[a-z0-9_.]+)")


class RulesError(ValueError):
    """A rules file that Falco's loader would refuse (the message names the item)."""


@dataclass(frozen=True)
class Rule:
    """One rule after overrides, with its condition expanded (no macros, no lists)."""

    name: str
    desc: str
    condition: str
    output: str
    priority: str
    source: str
    enabled: bool = True
    tags: tuple[str, ...] = ()


@dataclass
class Rules:
    """What a sequence of rules files defines, in definition order."""

    required_engine_version: str | None = None
    required_plugins: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[Any]] = field(default_factory=dict)
    macros: dict[str, str] = field(default_factory=dict)
    rules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def expanded(self) -> list[Rule]:
        """Every rule with its condition expanded.

        Raises:
            RulesError: an unknown macro or list, or a cycle.
        """
        return [
            Rule(name=name, desc=r["desc"].strip(), condition=self.expand(r["condition"]), output=" ".join(r["output"].split()),
                 priority=r["priority"], source=r["source"], enabled=r.get("enabled", True),
                 tags=tuple(r.get("tags", ())))
            for name, r in self.rules.items()
        ]

    def expand(self, condition: str, _seen: tuple[str, ...] = ()) -> str:
        """``condition`` with macros and lists replaced by what they stand for.

        Raises:
            RulesError: an unknown macro or list, or a cycle of macros.
        """
        out: list[str] = []
        prev = ""
        depth_in_list = 0  # >0 inside the parentheses after in/intersects/pmatch
        for quoted, punct, op, word in _tokens(condition):
            token = quoted or punct or op or word
            if punct == "(":
                depth_in_list = depth_in_list + 1 if depth_in_list or prev in _LIST_OPERATORS else 0
            elif punct == ")" and depth_in_list:
                depth_in_list -= 1
            if word and depth_in_list:
                token = self._list_items(word, _seen) if word in self.lists else word
            elif word and prev not in _COMPARISONS and word not in _KEYWORDS and not _FIELD.match(word):
                if word not in self.macros:
                    raise RulesError(f"condition names {word!r}, which is no macro, field or keyword")
                if word in _seen:
                    raise RulesError(f"macro cycle: {' -> '.join((*_seen, word))}")
                token = f"({self.expand(self.macros[word], (*_seen, word))})"
            out.append(token)
            prev = (word or op or punct or "").lower()
        return _join(out)

    def _list_items(self, name: str, seen: tuple[str, ...]) -> str:
        if name in seen:
            raise RulesError(f"list cycle: {' -> '.join((*seen, name))}")
        items = []
        for item in self.lists[name]:
            text = str(item)
            if text in self.lists:
                nested = self._list_items(text, (*seen, name))
                if nested:
                    items.append(nested)
            else:
                items.append(f'"{text}"' if " " in text and text[0] not in "\"'" else text)
        return ", ".join(items)


def _tokens(condition: str) -> list[tuple[str, str, str, str]]:
    tokens, pos = [], 0
    text = condition.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise RulesError(f"cannot read condition at {text[pos:pos + 20]!r}")
        tokens.append(tuple(g or "" for g in m.groups()))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return tokens  # type: ignore[return-value]


def _join(tokens: list[str]) -> str:
    text = ""
    for token in tokens:
        if token in (")", ",") or text.endswith("(") or not text:
            text += token
        else:
            text += " " + token
    return text


def condition_fields(condition: str) -> set[str]:
    """The field names (``mcp.x``) an expanded condition reads."""
    return {w for _, _, _, w in _tokens(condition) if w and _FIELD.match(w)}


def output_fields(output: str) -> list[str]:
    """The ``%field`` names of a rule's output, in order, each once."""
    return list(dict.fromkeys(_OUTPUT_FIELD.findall(output)))


def load(*paths: Path) -> Rules:
    """Read rules files in order, applying each item as Falco's loader does.

    Raises:
        RulesError: a duplicate definition without ``override``, or an override of an
            item not defined earlier.
        OSError, yaml.YAMLError: an unreadable file.
    """
    rules = Rules()
    for path in paths or (RULES_FILE,):
        for item in yaml.safe_load(path.read_text()) or []:
            _apply(rules, item, path.name)
    return rules


def _apply(rules: Rules, item: dict[str, Any], where: str) -> None:
    override = item.get("override", {})
    if "required_engine_version" in item:
        rules.required_engine_version = str(item["required_engine_version"])
    elif "required_plugin_versions" in item:
        rules.required_plugins.update({p["name"]: p["version"] for p in item["required_plugin_versions"]})
    elif "list" in item:
        _merge(rules.lists, item["list"], "items", item["items"], override, where)
    elif "macro" in item:
        _merge(rules.macros, item["macro"], "condition", item["condition"], override, where)
    elif "rule" in item:
        name = item["rule"]
        if not override and set(item) != {"rule", "enabled"}:
            if name in rules.rules:
                raise RulesError(f"{where}: rule {name!r} defined twice (an override says override:)")
            rules.rules[name] = dict(item)
            return
        if name not in rules.rules:
            raise RulesError(f"{where}: rule {name!r} overridden before it is defined")
        current = rules.rules[name]
        if "enabled" in item and "enabled" not in override:
            current["enabled"] = item["enabled"]
        for key, how in override.items():
            if how == "replace" or key not in current:
                current[key] = item[key]
            elif isinstance(current[key], list):
                current[key] = [*current[key], *item[key]]
            else:
                current[key] = f"{current[key]} {item[key]}"
    else:
        raise RulesError(f"{where}: unknown item {sorted(item)}")


def _merge(table: dict[str, Any], name: str, key: str, value: Any, override: dict[str, str], where: str) -> None:
    how = override.get(key)
    if how is None:
        if name in table:
            raise RulesError(f"{where}: {key} of {name!r} defined twice (an override says override:)")
        table[name] = value
        return
    if name not in table:
        raise RulesError(f"{where}: {name!r} overridden before it is defined")
    if how == "replace":
        table[name] = value
    elif isinstance(value, list):
        table[name] = [*table[name], *value]
    else:
        table[name] = f"{table[name]} {value}"
