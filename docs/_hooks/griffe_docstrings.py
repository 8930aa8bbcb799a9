"""Griffe extension: render modelrepo's reST-flavoured docstrings well in Markdown.

Sphinx roles become cross-references, doctest lines (``>>>``) become code blocks, and
``#:`` comments above a module attribute become its docstring.

The docstrings say ``:class:`ModelRepo``` (readable in ``help()`` and in editors); the site
shows that as a link to the object's API entry when the site documents it, else as code.
Links are "optional" autorefs: a target the site does not document renders as plain code
instead of failing the build, while links written in the pages themselves stay strict.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|func|meth|mod|data|attr|exc|obj):`(~?)([\w.]+)(\(\))?`")


def _resolve(obj: griffe.Object, name: str) -> str | None:
    """The full path ``name`` means inside ``obj`` (its scope, then its parents')."""
    if name.startswith("modelrepo."):
        return name
    head, _, rest = name.partition(".")
    scope: Any = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
            path = None
        if path:
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return None


def _replace(obj: griffe.Object, text: str) -> str:
    def one(match: re.Match[str]) -> str:
        _role, tilde, name, call = match.groups()
        shown = (name.rsplit(".", 1)[-1] if tilde else name) + (call or "")
        code = f"<code>{html.escape(shown)}</code>"
        target = _resolve(obj, name)
        if target is None:
            return code
        return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'

    return _ROLE.sub(one, text)


def _fence_doctests(text: str) -> str:
    """Wrap each run of ``>>>`` / ``...`` lines in a ``pycon`` fence.

    In Markdown a line starting with ``>`` is a quotation; a doctest must stay code.
    """
    out: list[str] = []
    in_block = False
    for line in text.split("\n"):
        stripped = line.lstrip()
        is_doctest = stripped.startswith(">>>") or (in_block and stripped.startswith("..."))
        if is_doctest and not in_block:
            out.append("```pycon")
            in_block = True
        elif not is_doctest and in_block:
            out.append("```")
            in_block = False
        out.append(stripped if is_doctest else line)
    if in_block:
        out.append("```")
    return "\n".join(out)


def _comment_docstring(obj: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above a module attribute (Sphinx's attribute docs)."""
    module = obj.module
    if not obj.is_attribute or obj.lineno is None or not module.filepath:
        return None
    lines = module.lines
    found: list[str] = []
    index = obj.lineno - 2  # the line above the assignment (lineno is 1-based)
    while index >= 0 and lines[index].lstrip().startswith("#:"):
        found.insert(0, lines[index].lstrip()[2:].strip())
        index -= 1
    return " ".join(found) or None


class ReSTDocstrings(griffe.Extension):
    """Rewrite roles and doctests in every docstring once the package is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is None and (comment := _comment_docstring(obj)):
            obj.docstring = griffe.Docstring(comment, parent=obj)
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _replace(obj, obj.docstring.value)
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = _fence_doctests(obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)
