"""HTML snippets the panel puts in ``ipywidgets.HTML``: tables, messages and error boxes.

Inline styles only: they render the same in JupyterLab, Notebook 7, VS Code and Voila, with
no stylesheet or front-end extension to install. Every cell is escaped.
"""

from __future__ import annotations

import html
import traceback
from collections.abc import Mapping, Sequence

from modelrepo.errors import ModelRepoError

_BOX = (
    "padding:6px 10px;margin:4px 0;border-radius:4px;border:1px solid {border};"
    "background:{background};color:{color};white-space:pre-wrap;font-size:13px"
)

_KINDS: dict[str, dict[str, str]] = {
    "info": {"border": "#90caf9", "background": "#e3f2fd", "color": "#0d3c61"},
    "running": {"border": "#90caf9", "background": "#e3f2fd", "color": "#0d3c61"},
    "success": {"border": "#81c784", "background": "#edf7ed", "color": "#1e4620"},
    "warning": {"border": "#ffb74d", "background": "#fff4e5", "color": "#663c00"},
    "error": {"border": "#d32f2f", "background": "#fdecea", "color": "#611a15"},
}

#: Colours of a model state on a Triton replica.
STATE_COLOURS = {
    "READY": "#1b5e20",
    "LOADING": "#0d47a1",
    "UNLOADING": "#0d47a1",
    "UNAVAILABLE": "#757575",
    "unreachable": "#b71c1c",
    "error": "#b71c1c",
}


def message_html(text: str, kind: str = "info") -> str:
    """A coloured one-box message (``kind``: info, running, success, warning, error)."""
    style = _BOX.format(**_KINDS[kind])
    return f'<div class="modelrepo-msg modelrepo-{kind}" style="{style}">{html.escape(text)}</div>'


def error_parts(exc: BaseException) -> tuple[str, str | None]:
    """(what went wrong, what to do) for any exception."""
    if isinstance(exc, ModelRepoError):
        what = exc.message if exc.hint else str(exc)
        return f"{type(exc).__name__}: {what}", exc.hint
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}", None


def error_html(exc: BaseException, *, doing: str = "") -> str:
    """The red box: what failed, the message, the hint and (for surprises) the traceback."""
    what, hint = error_parts(exc)
    style = _BOX.format(**_KINDS["error"])
    parts = [f'<div class="modelrepo-error" style="{style}">']
    if doing:
        parts.append(f"<b>{html.escape(doing)} failed</b>\n")
    parts.append(html.escape(what))
    if hint:
        parts.append(f"\n<b>What to do:</b> {html.escape(hint)}")
    if not isinstance(exc, ModelRepoError):
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        parts.append(
            "<details><summary>traceback</summary>"
            f'<pre style="font-size:11px">{html.escape(trace)}</pre></details>'
        )
    parts.append("</div>")
    return "".join(parts)


def state_html(state: str, reason: str = "") -> str:
    """A model state on one replica, coloured, with Triton's reason as a tooltip."""
    colour = STATE_COLOURS.get(state, "#424242")
    title = f' title="{html.escape(reason, quote=True)}"' if reason else ""
    weight = "bold" if state == "READY" else "normal"
    # Triton says UNAVAILABLE both for "unloaded" (normal) and for a failed load: tell them apart
    label = "unloaded" if state == "UNAVAILABLE" and reason == "unloaded" else state
    if state == "UNAVAILABLE" and label == state and reason:
        colour = STATE_COLOURS["error"]
    return (
        f'<span class="modelrepo-state" data-state="{html.escape(state, quote=True)}"{title} '
        f'style="color:{colour};font-weight:{weight}">{html.escape(label)}</span>'
    )


def table_html(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    row_attrs: Sequence[Mapping[str, str]] | None = None,
    raw_columns: frozenset[int] = frozenset(),
    css_class: str = "modelrepo-table",
    empty: str = "(nothing yet)",
) -> str:
    """A compact table; cells are escaped except the columns in ``raw_columns`` (trusted HTML)."""
    th = "padding:3px 10px;text-align:left;border-bottom:2px solid #bbb;white-space:nowrap"
    td = "padding:3px 10px;text-align:left;border-bottom:1px solid #e0e0e0;white-space:nowrap"
    head = "".join(f'<th style="{th}">{html.escape(h)}</th>' for h in headers)
    body = []
    for i, row in enumerate(rows):
        attrs = ""
        if row_attrs is not None:
            attrs = "".join(f' {k}="{html.escape(v, quote=True)}"' for k, v in row_attrs[i].items())
        cells = "".join(
            f'<td style="{td}">{c if j in raw_columns else html.escape(c)}</td>'
            for j, c in enumerate(row)
        )
        body.append(f"<tr{attrs}>{cells}</tr>")
    if not rows:
        body.append(
            f'<tr><td style="{td};color:#757575" colspan="{len(headers)}">'
            f"{html.escape(empty)}</td></tr>"
        )
    return (
        f'<table class="{css_class}" style="border-collapse:collapse;font-size:13px">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )
