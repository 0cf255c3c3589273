"""Markdown -> WhatsApp formatting and chunking at 4096 characters."""

from __future__ import annotations

import re

import pytest

from channels.whatsapp_format import MAX_TEXT_LENGTH, render_chunks, split_protected, to_whatsapp


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("**bold**", "*bold*"),
        ("__bold__", "*bold*"),
        ("*italic*", "_italic_"),
        ("_italic_", "_italic_"),
        ("~~gone~~", "~gone~"),
        ("***both***", "_*both*_"),
        ("use `x = 1` here", "use `x = 1` here"),
        ("[the docs](https://example.com/a)", "the docs (https://example.com/a)"),
        ("<https://example.com>", "https://example.com"),
        ("[https://example.com](https://example.com)", "https://example.com"),
        ("[mail me](mailto:a@example.com)", "mail me (mailto:a@example.com)"),
        ("![a cat](https://example.com/cat.png)", "a cat (https://example.com/cat.png)"),
        ("# Title", "*Title*"),
        ("### Smaller **title**", "*Smaller title*"),
        ("**outer *inner* outer**", "*outer _inner_ outer*"),
        ("snake_case_name stays", "snake_case_name stays"),
        ("a &amp; b", "a & b"),
        ("line one\nline two", "line one\nline two"),
    ],
)
def test_inline_and_heading_formatting(markdown: str, expected: str) -> None:
    assert to_whatsapp(markdown) == expected


def test_code_block_becomes_triple_backticks() -> None:
    assert to_whatsapp("```python\nprint('hi')\nx = 2\n```") == "```print('hi')\nx = 2```"


def test_lists_quotes_and_rules() -> None:
    md = "- one\n- two **b**\n  1. nested\n\n5. five\n6. six\n\n> quoted\n> more\n\n---\n\nend"
    assert to_whatsapp(md) == (
        "- one\n- two *b*\n  1. nested\n\n5. five\n6. six\n\n> quoted\n> more\n\n———\n\nend"
    )


def test_table_rows_become_lines() -> None:
    assert to_whatsapp("| a | b |\n|---|---|\n| 1 | 2 |") == "*a* | *b*\n1 | 2"


def test_raw_html_is_not_interpreted() -> None:
    assert "<b>" in to_whatsapp("<b>hi</b> there")


def test_short_text_is_one_chunk() -> None:
    assert render_chunks("Hello **world**") == ["Hello *world*"]
    assert render_chunks("   ") == []


def test_long_reply_splits_on_paragraphs_within_limit_in_order() -> None:
    paragraphs = [f"Paragraph {i}: " + ("word " * 180).strip() + "." for i in range(40)]
    chunks = render_chunks("\n\n".join(paragraphs))
    assert len(chunks) > 1
    assert all(len(chunk) <= MAX_TEXT_LENGTH for chunk in chunks)
    joined = "\n\n".join(chunks)
    assert joined == "\n\n".join(paragraphs)  # nothing lost, nothing reordered
    assert all(chunk.startswith("Paragraph ") for chunk in chunks)  # cut between paragraphs


def test_long_paragraph_splits_at_sentence_end() -> None:
    sentences = [f"Sentence {i} says something mildly interesting." for i in range(200)]
    chunks = render_chunks(" ".join(sentences))
    assert len(chunks) >= 2
    assert all(len(c) <= MAX_TEXT_LENGTH for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == " ".join(sentences)


def test_cut_never_falls_inside_bold_span() -> None:
    filler = "Filler text goes here. " * 18
    bold = " ".join(["bold words."] * 20)
    chunks = render_chunks(f"{filler}**{bold}** tail.", limit=500)
    assert all(len(c) <= 500 for c in chunks)
    for chunk in chunks:
        assert chunk.count("*") % 2 == 0, chunk  # every bold span opened is closed
    assert f"*{bold}*" in chunks[-1]


def test_oversized_code_block_is_refenced_per_chunk() -> None:
    code = "\n".join(f"line {i} of some code" for i in range(400))
    chunks = render_chunks(f"Intro.\n\n```\n{code}\n```\n\nOutro.")
    assert len(chunks) >= 3
    assert all(len(c) <= MAX_TEXT_LENGTH for c in chunks)
    fenced = [c for c in chunks if "```" in c]
    for chunk in fenced:
        assert chunk.count("```") % 2 == 0
    lines = re.findall(r"line (\d+) of some code", "\n".join(chunks))
    assert [int(n) for n in lines] == list(range(400))


def test_unbreakable_run_is_cut_hard() -> None:
    chunks = split_protected("x" * 25, 10)
    assert chunks == ["x" * 10, "x" * 10, "x" * 5]


def test_sentinel_characters_in_input_do_not_leak() -> None:
    assert to_whatsapp("a\ue000b\ue001c") == "abc"
