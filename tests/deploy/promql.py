"""Just enough PromQL reading to list the metrics and labels an expression refers to.

Not a parser: it strips strings, range selectors and Grafana variables, then
reads ``name{matchers}`` selectors, ``by (...)``-style label lists and the bare
names left over. Good for the expressions we write; tests of it are in
test_metrics_referenced.py so that a blind spot shows up as a failing test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"\blabel_values\(\s*(.*?)\s*,\s*([A-Za-z_]\w*)\s*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")


@dataclass
class References:
    """What one expression reads."""

    metrics: set[str] = field(default_factory=set)
    matchers: dict[str, set[str]] = field(default_factory=dict)
    """metric -> label names used in its {matchers}"""
    grouping: set[str] = field(default_factory=set)
    """label names in by/without/on/ignoring/group_* lists and label_values()"""


def references(expr: str) -> References:
    found = References()
    text = _STRING.sub('""', expr)
    text = _RANGE.sub(" ", text)
    text = _VARIABLE.sub("x", text)

    def label_values(match: re.Match[str]) -> str:
        found.grouping.add(match.group(2))
        return f" {match.group(1)} "

    text = _LABEL_VALUES.sub(label_values, text)

    def selector(match: re.Match[str]) -> str:
        name = match.group(1)
        labels = set(_MATCHER_LABEL.findall(match.group(2)))
        if name and name not in KEYWORDS:
            found.metrics.add(name)
            found.matchers.setdefault(name, set()).update(labels)
        else:
            found.grouping.update(labels)
        return " "

    text = _SELECTOR.sub(selector, text)

    def label_list(match: re.Match[str]) -> str:
        found.grouping.update(label.strip() for label in match.group(2).split(",") if label.strip())
        return " "

    text = _LABEL_LIST.sub(label_list, text)
    for name in _IDENTIFIER.findall(text):
        if name.lower() not in KEYWORDS and not name.startswith("__"):
            found.metrics.add(name)
    return found
