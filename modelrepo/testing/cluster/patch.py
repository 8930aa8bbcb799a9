"""The three PATCH flavours the API server accepts.

- JSON merge patch (RFC 7386): ``application/merge-patch+json``.
- Strategic merge patch: ``application/strategic-merge-patch+json`` (what ``kubectl apply``
  and ``kubectl patch`` send). Lists of objects with a ``name`` (containers, env, volumes,
  volumeMounts...) or a port are merged by that key, as the real server does for built-in
  kinds; other lists are replaced; ``$patch``/``$setElementOrder``/``$retainKeys`` directives
  are honoured or dropped.
- JSON patch (RFC 6902): ``application/json-patch+json``.
"""

from __future__ import annotations

import copy
from typing import Any

from modelrepo.testing.cluster.errors import StatusError, bad_request

_MERGE_KEYS = ("name", "containerPort", "port", "mountPath", "devicePath", "ip", "type")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_key(items: list[Any]) -> str | None:
    if not items or not all(isinstance(i, dict) for i in items):
        return None
    for key in _MERGE_KEYS:
        if all(key in i for i in items if "$patch" not in i):
            return key
    return None


def _merge_list(target: list[Any], patch: list[Any], order: list[Any] | None) -> list[Any]:
    key = _merge_key(patch) or _merge_key(target)
    if key is None or not all(isinstance(i, dict) for i in target):
        if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
            return [i for i in patch if not (isinstance(i, dict) and "$patch" in i)]
        return copy.deepcopy(patch)
    if any(i.get("$patch") == "replace" for i in patch):
        return [copy.deepcopy(i) for i in patch if "$patch" not in i]
    result = [copy.deepcopy(i) for i in target]
    for item in patch:
        index = next((n for n, t in enumerate(result) if t.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        if index is None:
            result.append(strategic_merge_patch({}, item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    if order:
        rank = {o.get(key) if isinstance(o, dict) else o: n for n, o in enumerate(order)}
        result.sort(key=lambda i: rank.get(i.get(key), len(rank)))
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """A strategic merge patch for built-in kinds (see the module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    orders = {k.split("/", 1)[1]: v for k, v in patch.items() if k.startswith("$setElementOrder/")}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, orders.get(key))
        elif isinstance(value, dict):
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = copy.deepcopy(value)
    for key, values in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(result.get(name), list):
                result[name] = [v for v in result[name] if v not in values]
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"invalid JSON pointer {path!r} in json patch")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 operations: add, remove, replace, move, copy, test."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in operations:
        try:
            doc = _apply_op(doc, op)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise StatusError(
                422,
                f"the server rejected our request due to an error in our request: "
                f"json patch {op.get('op')} operation on {op.get('path')!r} failed: {exc}",
                reason="Invalid",
            ) from exc
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    kind = op.get("op")
    parts = _pointer(op.get("path", ""))
    if kind == "test":
        if _walk(doc, parts) != op.get("value"):
            raise ValueError("test failed")
        return doc
    if kind in ("move", "copy"):
        source = _pointer(op.get("from", ""))
        value = copy.deepcopy(_walk(doc, source))
        if kind == "move":
            doc = _apply_op(doc, {"op": "remove", "path": op["from"]})
        return _apply_op(doc, {"op": "add", "path": op["path"], "value": value})
    if not parts:
        if kind == "remove":
            return None
        return copy.deepcopy(op.get("value"))
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if kind == "remove":
        if isinstance(parent, list):
            parent.pop(int(last))
        else:
            del parent[last]
    elif kind in ("add", "replace"):
        value = copy.deepcopy(op.get("value"))
        if isinstance(parent, list):
            if last == "-":
                parent.append(value)
            elif kind == "add":
                parent.insert(int(last), value)
            else:
                parent[int(last)] = value
        else:
            if kind == "replace" and last not in parent:
                raise KeyError(last)
            parent[last] = value
    else:
        raise ValueError(f"unknown json patch operation {kind!r}")
    return doc
