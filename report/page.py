"""The page: one self-contained HTML file, its style, a strict Content-Security-Policy, and small HTML helpers.

Every string that came from outside (crawl text, URLs, ids, reasons, model answers) goes through `esc`
(`html.escape`) before it is placed in the page; the CSP forbids scripts, network requests and every
resource except inline styles and `data:` images, so a hostile page that slipped past escaping still
could neither run nor phone home.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Sequence

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px 48px;color:#222}
h1{margin:20px 0 4px}h2{margin-top:36px;border-bottom:2px solid #ddd;padding-bottom:4px}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}td.n{text-align:right}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:6px;max-height:16em;overflow:auto;margin:4px 0}
.doc{border-left:3px solid #c33;padding-left:8px;margin:10px 0}.muted{color:#777}
del{background:#fcc;text-decoration:none}ins{background:#cfc;text-decoration:none}
summary{cursor:pointer;margin:6px 0}.charts{display:flex;flex-wrap:wrap;gap:12px}svg{background:#fff;border:1px solid #eee}
"""


@dataclass
class Section:
    """One part of the page: an anchor id, a title, and its HTML (already escaped where needed)."""

    id: str
    title: str
    body: str


def esc(value: Any) -> str:
    """Any value as text safe to place in HTML content or a quoted attribute."""
    return html.escape(str(value), quote=True)


def number(value: Any) -> str:
    """A number as a table shows it: thousands separators, 4 significant digits for fractions."""
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return esc(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="n">{number(value)}</td>' if numeric else f"<td>{number(value)}</td>"


def text_block(text: str, max_chars: int = 1500) -> str:
    """Crawl text, escaped, cut to `max_chars`."""
    cut = text[:max_chars] + (f" … ({len(text) - max_chars:,} more characters)" if len(text) > max_chars else "")
    return f"<pre>{esc(cut)}</pre>"


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    nav = " ".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    parts = [f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=\"muted\">{esc(subtitle)}</p><nav>{nav}</nav>"
        + "".join(parts) + "</body></html>\n"
    )
