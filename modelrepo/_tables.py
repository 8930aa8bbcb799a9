"""Small text and HTML tables: the readable ``repr`` of every result object."""

from __future__ import annotations

import html
from collections.abc import Sequence


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, align: str = "left"
) -> str:
    """Columns padded to their widest cell, a dashed rule under the headers."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [headers, ["-" * w for w in widths], *rows]
    pad = str.rjust if align == "right" else str.ljust
    return "\n".join(
        "  ".join(pad(str(c), w) for c, w in zip(line, widths, strict=False)).rstrip()
        for line in lines
    )


def html_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    caption: str = "",
    align: str = "left",
    escape: bool = True,
) -> str:
    """An HTML table; cells are escaped unless ``escape=False`` (they are HTML already)."""
    cell = html.escape if escape else str
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{cell(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    title = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    style = "" if align == "left" else f" style='text-align:{align}'"
    return f"<table{style}>{title}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
