"""Label and field selectors, parsed the way the API server parses them.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``,
comma-separated (all must hold). Field selectors: ``path=value`` / ``path!=value`` on any
dotted path of the object (``metadata.name``, ``metadata.namespace``, ``status.phase``,
``spec.nodeName``...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from modelrepo.testing.cluster.errors import bad_request

Predicate = Callable[[dict[str, Any]], bool]

_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_./-]+$")


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _label_term(term: str) -> Callable[[Mapping[str, str]], bool]:
    match = _SET_RE.match(term)
    if match:
        key, op, values_text = match.groups()
        values = {v.strip() for v in values_text.split(",") if v.strip()}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    for op in ("!=", "==", "="):
        if op in term:
            key, value = (s.strip() for s in term.split(op, 1))
            if not _KEY_RE.match(key):
                break
            if op == "!=":
                return lambda labels: labels.get(key) != value
            return lambda labels: labels.get(key) == value
    else:
        if term.startswith("!") and _KEY_RE.match(term[1:].strip()):
            key = term[1:].strip()
            return lambda labels: key not in labels
        if _KEY_RE.match(term):
            return lambda labels: term in labels
    raise bad_request(f"unable to parse requirement: invalid label selector term {term!r}")


def label_selector(text: str | None) -> Predicate:
    """A predicate on objects for a ``labelSelector`` query string."""
    if not text:
        return lambda obj: True
    terms = [_label_term(t) for t in _split_top(text)]

    def predicate(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(t(labels) for t in terms)

    return predicate


def match_label_selector(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether labels match a structured ``LabelSelector`` (matchLabels + matchExpressions)."""
    if not selector:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def field_selector(text: str | None) -> Predicate:
    """A predicate on objects for a ``fieldSelector`` query string."""
    if not text:
        return lambda obj: True
    checks: list[tuple[str, bool, str]] = []
    for term in _split_top(text):
        for op in ("!=", "==", "="):
            if op in term:
                path, value = (s.strip() for s in term.split(op, 1))
                checks.append((path, op == "!=", value))
                break
        else:
            raise bad_request(f"invalid field selector: {term!r} is not of the form field=value")

    def predicate(obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, path) == value) != negate for path, negate, value in checks)

    return predicate
