"""Reading a report back for the tests: its sections, ids, references, results table and chart text.

Importable as ``tests.unit.report.page``. A small :class:`html.parser.HTMLParser`, so the tests check the
document a browser would build (attributes unescaped, elements where they really are), not substrings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

#: Namespace names an inline SVG may carry (identifiers, never fetched).
SVG_NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
_URL = re.compile(r"""https?://[^\s"'<>)]*""", re.I)


@dataclass
class Cell:
    text: str
    value: str | None  # data-v, when the cell has one

    @property
    def key(self) -> str:
        """What the page's script sorts the cell by: data-v, else its text (as the script does)."""
        return self.text if self.value is None else self.value


@dataclass
class Page:
    """What the tests look at in a report."""

    ids: list[str] = field(default_factory=list)
    references: list[tuple[str, str, str]] = field(default_factory=list)  # (tag, attribute, value)
    tags: dict[str, int] = field(default_factory=dict)
    scripts: list[dict[str, str | None]] = field(default_factory=list)
    section_ids: list[str] = field(default_factory=list)
    section_text: dict[str, str] = field(default_factory=dict)
    svg_text: dict[str, list[str]] = field(default_factory=dict)  # section id -> the <text> of its charts
    svg_labels: dict[str, list[str]] = field(default_factory=dict)  # section id -> aria-label of its charts
    headers: list[tuple[str, str]] = field(default_factory=list)  # (data-col, aria-sort)
    rows: list[tuple[bool, list[Cell]]] = field(default_factory=list)  # (hidden, cells) of the results table
    body_attrs: dict[str, str | None] = field(default_factory=dict)

    def column(self, name: str, *, visible_only: bool = True) -> list[Cell]:
        """The cells of one results-table column, in page order."""
        index = [c for c, _ in self.headers].index(name)
        return [cells[index] for hidden, cells in self.rows if not (visible_only and hidden)]


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.section: str | None = None
        self.in_svg_text = False
        self.in_results = False
        self.in_tbody = False
        self.row: list[Cell] | None = None
        self.row_hidden = False
        self.cell: list[str] | None = None
        self.cell_value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.page.tags[tag] = self.page.tags.get(tag, 0) + 1
        if "id" in a and a["id"] is not None:
            self.page.ids.append(a["id"])
        for name in ("href", "xlink:href", "src", "action", "poster", "data", "srcset", "style"):
            if a.get(name):
                self.page.references.append((tag, name, str(a[name])))
        if tag == "body":
            self.page.body_attrs = a
        elif tag == "script":
            self.page.scripts.append(a)
        elif tag == "section" and a.get("id"):
            self.section = a["id"]
            self.page.section_ids.append(self.section)
            self.page.section_text[self.section] = ""
        elif tag == "svg" and self.section:
            self.page.svg_labels.setdefault(self.section, []).append(a.get("aria-label") or "")
        elif tag == "text" and self.section:
            self.in_svg_text = True
            self.page.svg_text.setdefault(self.section, []).append("")
        elif tag == "table" and a.get("id") == "results-table":
            self.in_results = True
        elif tag == "th" and self.in_results:
            self.page.headers.append((a.get("data-col") or "", a.get("aria-sort") or ""))
        elif tag == "tbody" and self.in_results:
            self.in_tbody = True
        elif tag == "tr" and self.in_tbody:
            self.row, self.row_hidden = [], "hidden" in a
        elif tag == "td" and self.row is not None:
            self.cell, self.cell_value = [], a.get("data-v")

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self.section = None
        elif tag == "text":
            self.in_svg_text = False
        elif tag == "table" and self.in_results:
            self.in_results = self.in_tbody = False
        elif tag == "td" and self.row is not None and self.cell is not None:
            self.row.append(Cell("".join(self.cell).strip(), self.cell_value))
            self.cell = None
        elif tag == "tr" and self.row is not None:
            self.page.rows.append((self.row_hidden, self.row))
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.section:
            self.page.section_text[self.section] += data
            if self.in_svg_text:
                self.page.svg_text[self.section][-1] += data
        if self.cell is not None:
            self.cell.append(data)


def parse(html: str) -> Page:
    """Parse a report (or the DOM a browser dumped of it)."""
    parser = _Parser()
    parser.feed(html)
    parser.close()
    return parser.page


def external_urls(html: str) -> list[str]:
    """Every http(s) URL in the text that is not an SVG namespace name."""
    return [u for u in _URL.findall(html) if u not in SVG_NAMESPACES]
