"""tasks.core.text: names made literal for Markdown and for tab-separated output."""

from __future__ import annotations

import html
import string
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from tasks.core.text import md, shown, tsv_field, tsv_value

HOSTILE = [
    '"><img src=x onerror=alert(1)>',
    "a`b` c``d",
    "x | y | z",
    "*bold* _it_ **b** ~~s~~",
    "[link](javascript:alert(1)) ![i](x)",
    "# heading",
    "1. list",
    "- item",
    "> quote",
    "&amp; &lt;",
    "a\\b\\",
    "line\nbreak\ttab\rret\x00nul\u2028sep",
    "$x^2$ {attr} ^sup^ =hi=",
    "www.example.com http://example.com <http://example.com>",
    string.punctuation,
]


def rendered_text(markdown: str) -> str:
    """What a CommonMark renderer (with tables and raw HTML on) shows for `markdown` in a table cell:
    the HTML of the cell, which must be plain text."""
    page = (
        MarkdownIt("commonmark", {"html": True})
        .enable(["table", "strikethrough"])
        .render(f"| a | b |\n|---|---|\n| {markdown} | end |\n")
    )
    cells = page.split("<td>")[1:]
    assert len(cells) == 2 and cells[1].startswith("end</td>"), page  # the name stayed in its cell
    return cells[0].split("</td>", 1)[0]


def shown_as(name: str) -> str:
    """How md shows a name: itself, with control characters and line separators as escapes."""
    return "".join({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, c) for c in name)


def test_every_hostile_name_renders_as_itself_and_nothing_else():
    for name in HOSTILE:
        cell = rendered_text(md(name))
        assert "<" not in cell.replace("&lt;", ""), (name, cell)  # no tag at all: text only
        expected = shown_as(name).replace("\x00", "\\x00").replace("\u2028", "\\u2028")
        assert html.unescape(cell) == expected.replace("\x00", "\ufffd"), (name, cell)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(codec="utf-8", categories=["L", "N", "P", "S", "Zs"]), max_size=40))
def test_any_printable_name_renders_as_itself_in_a_table_cell(name: str):
    cell = html.unescape(rendered_text(md(name)))
    # CommonMark trims a cell's surrounding spaces and folds runs of them nowhere else
    assert cell == name.strip(" ") or cell == name.strip(), (name, cell)


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(["\\", "\udc80", "\udcff", "\x85"])))
def test_a_tsv_field_is_one_line_without_tabs_and_round_trips(text: str):
    field = tsv_field(text)
    assert not [c for c in field if unicodedata.category(c) in ("Cc", "Zl", "Zp", "Cs")]  # one line, UTF-8
    assert tsv_value(field) == text


def test_a_forged_line_stays_inside_its_field():
    name = "cat.jpg\tDog\t0.9999\nfake.jpg"
    line = "\t".join([tsv_field(name), "Cat", "0.5100"])
    assert line.split("\t") == ["cat.jpg\\tDog\\t0.9999\\nfake.jpg", "Cat", "0.5100"]
    assert tsv_value(line.split("\t")[0]) == name


def test_undefined_metrics_are_n_a():
    assert [shown(None), shown(float("nan")), shown(0.91234), shown(0.5, 3), shown(40)] == [
        "n/a",
        "n/a",
        "0.9123",
        "0.500",
        "40",
    ]
