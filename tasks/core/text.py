"""Names from the photos (class folders, file names) as text for the places pawflow shows them.

Every renderer pawflow hands a name to reads some characters as markup: Markdown (Prefect's artifacts)
makes `<img ...>` a tag, a backtick a code span, `|` a table cell, `*` emphasis; rich (the terminal
tables) reads `[bold]` and fails on `[/]`; a tab or newline forges a line of tab-separated output. Each
function here makes a name literal for one of them, so that what is shown is the name, whatever it
holds. HTML goes through jinja's escaping (tasks/reports/datareport.py, tasks/evaluate.py); matplotlib draws
with math text off (tasks/evaluate.py literal_text).
"""

from __future__ import annotations

import math
import re
import string
import unicodedata

# How a metric that is not defined (None: e.g. the ROC AUC of a test split missing a class) is shown.
UNDEFINED = "n/a"

# CommonMark lets any ASCII punctuation be escaped with a backslash (the escaped character is then plain
# text): escaping every one that can open or close a construct (a tag, an entity, a link, a code span,
# emphasis, a table cell, a heading, a list, a quote, math in renderers that have it) leaves no way for a
# name to be read as markup, wherever in a line it lands. Left as they are: , ; ' " % / ? @, which start
# nothing (quotes matter only inside a link, which cannot open).
_MD_PUNCTUATION = frozenset(string.punctuation) - set(",;'\"%/?@")
# Control characters shown as their usual escapes (a line break would end a table row or a list item).
_ESCAPES = {"\n": "n", "\r": "r", "\t": "t"}


def _visible(c: str) -> str:
    """The escape text of a character that does not print (a control or line separator): n, t, x01,
    u0085 (`\\xNN` is kept for ASCII, so that above it can only mean a byte that is not UTF-8)."""
    return _ESCAPES.get(c) or (f"x{ord(c):02x}" if ord(c) < 0x80 else f"u{ord(c):04x}")


def _invisible(c: str) -> bool:
    return unicodedata.category(c) in ("Cc", "Zl", "Zp")


def md(text: object) -> str:
    """`text` as Markdown that renders exactly as `text` (on one line): every ASCII punctuation
    character backslash-escaped, control characters and line separators shown as `\\n`, `\\t`, `\\x01`.
    The one escaping function for every Markdown artifact pawflow publishes."""
    out = []
    for c in str(text):
        if c in _MD_PUNCTUATION:
            out.append("\\" + c)
        elif _invisible(c):
            out.append("\\\\" + _visible(c))  # an escaped backslash, then the letters: reads \n
        else:
            out.append(c)
    return "".join(out)


def tsv_field(text: str) -> str:
    """One field of tab-separated output, on one line and round-trippable (tsv_value undoes it): a
    backslash as `\\\\`, tab, newline and carriage return as `\\t`, `\\n`, `\\r`, other control characters
    and line separators as `\\xNN`/`\\uNNNN`, and a byte of a file name that is not UTF-8 (Python's
    surrogate escape) as `\\xNN` too, so `cat.jpg<TAB>Dog<TAB>0.9999` in a name stays inside its field."""
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif "\udc80" <= c <= "\udcff":  # an undecodable byte of a file name (os.fsdecode)
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif _invisible(c):
            out.append("\\" + _visible(c))
        else:
            out.append(c)
    return "".join(out)


_TSV_ESCAPE = re.compile(r"\\(\\|n|r|t|x[0-9a-f]{2}|u[0-9a-f]{4})")


def tsv_value(field: str) -> str:
    """The text tsv_field escaped (a byte that was not UTF-8 comes back as its surrogate escape, as
    os.fsdecode gives it: os.fsencode of the result is the file name's bytes)."""

    def one(m: re.Match[str]) -> str:
        code = m.group(1)
        if code in ("\\", "n", "r", "t"):
            return {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}[code]
        value = int(code[1:], 16)
        return chr(0xDC00 + value) if code[0] == "x" and value >= 0x80 else chr(value)

    return _TSV_ESCAPE.sub(one, field)


def shown(value: object, digits: int = 4) -> str:
    """A metric for a report or a summary: a number with `digits` decimals, n/a when it is not defined
    (None, or a NaN that reached this far), anything else as text."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return UNDEFINED
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)
