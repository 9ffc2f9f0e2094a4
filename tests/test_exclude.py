"""tasks/photos/exclude.py: the exclude list a person edits (data/exclude.txt): parsing, errors, matching."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tasks.core.errors import PawflowError
from tasks.photos import exclude

SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_the_shipped_file_is_a_valid_empty_list():
    assert exclude.read(Path(__file__).resolve().parents[1] / "data" / "exclude.txt") == []


def test_paths_quoted_names_and_sha256_with_their_reasons():
    text = (
        "# a comment\n"
        "\n"
        "Cat/cat.12.jpg  # a drawing, not a photo\n"
        '  "Dog/odd # name.jpg"   #  a watermark  \n'
        f"{SHA.upper()} # the same photo under any name\n"
        "Dog/with space.jpg # a # in the reason is fine\n"
    )
    assert exclude.parse(text, "x") == [
        exclude.Entry(3, "path", "Cat/cat.12.jpg", "a drawing, not a photo"),
        exclude.Entry(4, "path", "Dog/odd # name.jpg", "a watermark"),
        exclude.Entry(5, "sha256", SHA, "the same photo under any name"),
        exclude.Entry(6, "path", "Dog/with space.jpg", "a # in the reason is fine"),
    ]


def test_every_malformed_line_is_named_in_one_message():
    text = "\n".join(
        [
            "Cat/ok.jpg # fine",
            "Cat/no-reason.jpg",
            "Cat/empty-reason.jpg #   ",
            "no-folder.jpg # a file name alone is not a place in the collection",
            "/Cat/abs.jpg # absolute",
            "Cat/../x.jpg # dot dot",
            "Cat\\\\win.jpg # backslash",
            '"Cat/unterminated.jpg # quote',
            "Cat/ok.jpg # again",
        ]
    )
    with pytest.raises(PawflowError) as err:
        exclude.parse(text, "data/exclude.txt")
    message = str(err.value)
    assert message.startswith("data/exclude.txt: 8 line(s) cannot be read:")
    for line in range(2, 10):
        assert f"  line {line}: " in message
    assert "line 1:" not in message and "listed already, at line 1" in message
    assert "give the reason after ' # '" in message and "What to do: One photo per line" in message


def test_a_pasted_wrong_file_is_one_short_message():
    with pytest.raises(PawflowError) as err:
        exclude.parse("\n".join(f"junk{i}" for i in range(100)), "x")
    assert "100 line(s)" in str(err.value) and "... and 80 more" in str(err.value)
    assert str(err.value).count("\n  line ") == exclude.MAX_PROBLEMS


def test_missing_file_is_an_empty_list_and_a_binary_one_is_refused(tmp_path: Path):
    assert exclude.read(tmp_path / "none.txt") == []
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(PawflowError, match="is not UTF-8 text"):
        exclude.read(tmp_path / "bin.txt")


def test_matches_by_path_or_bytes_and_the_entries_that_name_nothing():
    photos = pd.DataFrame(
        {
            "path": ["Cat/a.jpg", "Dog/moved.jpg", "Dog/b.jpg", "Cat/c.jpg"],
            "sha256": ["1" * 64, SHA, "2" * 64, SHA],
        }
    )
    entries = exclude.parse(f"Cat/c.jpg # first\n{SHA} # by bytes\nCat/gone.jpg # left the source\n", "x")
    found = exclude.matches(entries, photos)
    assert found.to_dict("records") == [
        {"path": "Cat/c.jpg", "sha256": SHA, "reason": "first", "line": 1},  # the first entry naming it
        {"path": "Dog/moved.jpg", "sha256": SHA, "reason": "by bytes", "line": 2},
    ]
    assert [e.key for e in exclude.unmatched(entries, photos)] == ["Cat/gone.jpg"]
    assert exclude.matches([], photos).empty
