"""Small readers for the deploy/ tests: the rules file's alerts and records, and the
metric selectors of a PromQL expression.

pyyaml is no dependency of this project, so `read_rules` reads the subset of YAML that
deploy/prometheus/gatehouse-rules.yml is written in (`- alert:`/`- record:` items with
`expr` as a `|` block or one line, `for`, and `labels`/`annotations` maps of one-line
scalars), and fails on anything else instead of guessing. promtool, which the tests also
run, is the judge of the YAML and the PromQL themselves; these readers only find names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Rule:
    kind: str  # "alert" or "record"
    name: str
    expr: str = ""
    for_: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


_ITEM = re.compile(r"^(\s*)- (alert|record): (\S+)\s*$")
_KEY = re.compile(r"^([a-z_]+):\s*(.*)$")


def _scalar(text: str, where: str) -> str:
    text = text.strip()
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ValueError(f"{where}: unterminated single-quoted scalar")
        return text[1:-1].replace("''", "'")
    if text.startswith('"'):
        value = json.loads(text)
        if not isinstance(value, str):
            raise ValueError(f"{where}: not a string")
        return value
    if text.startswith(("|", ">", "{", "[", "&", "*", "!")):
        raise ValueError(f"{where}: {text[:1]!r} scalars are not read here; write one line")
    return text


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def read_rules(path: Path) -> list[Rule]:
    """Every alerting and recording rule of a rules file, in file order."""
    lines = path.read_text().splitlines()
    rules: list[Rule] = []
    i = 0
    while i < len(lines):
        item = _ITEM.match(lines[i])
        i += 1
        if item is None:
            continue
        rule = Rule(kind=item.group(2), name=item.group(3))
        rules.append(rule)
        key_indent = len(item.group(1)) + 2
        while i < len(lines):
            line = lines[i]
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                i += 1
                continue
            if _indent(line) < key_indent or _ITEM.match(line):
                break
            where = f"{path.name}:{i + 1} ({rule.name})"
            if _indent(line) != key_indent:
                raise ValueError(f"{where}: unexpected indentation")
            key = _KEY.match(stripped)
            if key is None:
                raise ValueError(f"{where}: not a `key: value` line")
            name, value = key.groups()
            i += 1
            if name == "expr":
                if value == "|":
                    block: list[str] = []
                    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > key_indent):
                        block.append(lines[i].strip())
                        i += 1
                    rule.expr = "\n".join(block).strip()
                else:
                    rule.expr = _scalar(value, where)
            elif name == "for":
                rule.for_ = _scalar(value, where)
            elif name in ("labels", "annotations"):
                if value:
                    raise ValueError(f"{where}: write {name} as a block map")
                target = rule.labels if name == "labels" else rule.annotations
                while i < len(lines) and lines[i].strip() and _indent(lines[i]) > key_indent:
                    entry = _KEY.match(lines[i].strip())
                    if entry is None:
                        raise ValueError(f"{path.name}:{i + 1} ({rule.name}): not a `key: value` line")
                    target[entry.group(1)] = _scalar(entry.group(2), f"{path.name}:{i + 1}")
                    i += 1
            else:
                raise ValueError(f"{where}: unknown rule key {name!r}")
    return rules


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: str  # what stood between the braces ("" without braces)


_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
                       "offset", "bool", "inf", "nan"})
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{@(\d+)\})?(\s*\()?")


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of a PromQL expression: `rate(a{x="1"}[5m]) / b` → a, b.
    Functions, aggregations, keywords, grouping labels and durations are not metrics."""
    braces: list[str] = []

    def hide(match: re.Match[str]) -> str:
        braces.append(match.group(1))
        return "{@%d}" % (len(braces) - 1)

    text = re.sub(r"\{([^{}]*)\}", hide, expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery durations
    text = _GROUPING.sub(" ", text)
    found: list[Selector] = []
    for match in _IDENT.finditer(text):
        name, _, brace, call = match.groups()
        if call is not None or name.lower() in _KEYWORDS:
            continue
        found.append(Selector(name, braces[int(brace)] if brace is not None else ""))
    # A selector with only braces: `{__name__="x"}` is not written here; say so if it ever is.
    if re.search(r"(?<![\w:])\{@\d+\}", text):
        raise ValueError(f"a selector without a metric name in {expr!r}")
    return found
