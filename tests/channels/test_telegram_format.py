"""Markdown → Telegram HTML and its splitting, checked with the fake Bot API's HTML parser.

`parse_html` accepts exactly what Telegram's HTML parse mode accepts (supported tags,
balanced nesting, the four named entities), so "valid" here means "the Bot API would
not answer can't parse entities".
"""

from __future__ import annotations

import random

import pytest

from channels.telegram_format import render, split_html, to_html, to_plain
from tests.fakes.bot_api import HTMLParseError, parse_html, utf16_len


def visible(chunks: list[str]) -> str:
    return "".join(parse_html(chunk) for chunk in chunks)


def squash(text: str) -> str:
    return "".join(text.split())


def test_special_characters_are_escaped() -> None:
    markup = to_html("if a < b && c > d then <script>alert(1)</script> AT&T")
    assert "<script>" not in markup
    assert parse_html(markup) == "if a < b && c > d then <script>alert(1)</script> AT&T"


def test_inline_formatting_maps_to_supported_tags() -> None:
    markup = to_html('**bold** *it* ~~gone~~ `x<y` [site](https://example.com/?a=1&b="2")')
    assert markup == (
        "<b>bold</b> <i>it</i> <s>gone</s> <code>x&lt;y</code> "
        '<a href="https://example.com/?a=1&amp;b=%222%22">site</a>'
    )
    parse_html(markup)


def test_code_block_keeps_language_and_escapes() -> None:
    markup = to_html("```python\nif x < 1 and y > 2:\n    print('&')\n```")
    assert markup == (
        '<pre><code class="language-python">if x &lt; 1 and y &gt; 2:\n'
        "    print('&amp;')</code></pre>"
    )
    assert parse_html(markup).startswith("if x < 1")


def test_blocks_headings_lists_quotes_tables() -> None:
    markdown = (
        "# Title\n\nSome *text*.\n\n- one\n- two\n  1. nested\n\n3. three\n4. four\n\n"
        "> quoted\n> > deeper\n\n---\n\n| a | bb |\n|---|---|\n| 1 | 2 |\n"
    )
    markup = to_html(markdown)
    text = parse_html(markup)  # nested blockquotes would be refused: only the outer one
    assert markup.startswith("<b>Title</b>\n\nSome <i>text</i>.")
    assert "• one\n• two\n  1. nested" in text
    assert "3. three\n4. four" in text
    assert markup.count("<blockquote>") == 1 and "deeper" in text
    assert "<pre>a | bb\n--+---\n1 | 2</pre>" in markup


def test_raw_html_and_unsafe_links_are_text() -> None:
    markup = to_html('<b onclick="x">hi</b> [click](javascript:alert(1)) ![i](data:image/png;x)')
    text = parse_html(markup)
    assert "<a " not in markup
    assert '<b onclick="x">hi</b>' in text


def test_plain_text_fallback_unescapes() -> None:
    markup = to_html("**a < b** & `c`")
    assert to_plain(markup) == "a < b & c"


def test_empty_input_gives_no_chunks() -> None:
    assert render("") == []
    assert render("   \n\n ") == []


def test_long_text_is_split_in_order_at_paragraphs() -> None:
    paragraphs = [f"Paragraph {n}: " + "lorem ipsum & <dolor> " * 20 for n in range(60)]
    chunks = render("\n\n".join(paragraphs))
    assert len(chunks) > 1
    for chunk in chunks:
        assert utf16_len(chunk) <= 4096
        parse_html(chunk)
    assert squash(visible(chunks)) == squash("".join(paragraphs))
    # Cut at paragraph boundaries: every chunk starts with a paragraph.
    assert all(parse_html(chunk).startswith("Paragraph") for chunk in chunks)


def test_long_code_block_is_closed_and_reopened() -> None:
    code = "\n".join(f"line_{n} = compute({n}) < limit && ok" for n in range(400))
    chunks = render(f"Intro\n\n```js\n{code}\n```\n\nOutro")
    assert len(chunks) > 2
    for chunk in chunks[1:-1]:
        assert chunk.startswith('<pre><code class="language-js">')
        assert chunk.endswith("</code></pre>")
    for chunk in chunks:
        assert utf16_len(chunk) <= 4096
        parse_html(chunk)
    assert squash(visible(chunks)) == squash("Intro" + code + "Outro")


@pytest.mark.parametrize("unit", ["&", "<", "😀", "x"])
def test_unbroken_runs_are_cut_between_entities_and_characters(unit: str) -> None:
    chunks = render(unit * 9000)
    for chunk in chunks:
        assert utf16_len(chunk) <= 4096
        parse_html(chunk)
    assert visible(chunks) == unit * 9000


def test_formatting_spanning_a_cut_stays_balanced() -> None:
    markup = "<b>" + "word " * 2000 + "</b>"
    chunks = split_html(markup, 500)
    assert len(chunks) > 10
    for chunk in chunks:
        assert chunk.startswith("<b>") and chunk.endswith("</b>")
        assert len(chunk) <= 500
        parse_html(chunk)


def test_the_fake_parser_rejects_what_telegram_rejects() -> None:
    for bad in (
        "a & b",
        "<foo>x</foo>",
        "<b>x",
        "<b><i>x</b></i>",
        "1 < 2",
        "<blockquote><blockquote>x</blockquote></blockquote>",
        "<code><b>x</b></code>",
    ):
        with pytest.raises(HTMLParseError):
            parse_html(bad)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("limit", [64, 300, 4096])
def test_random_markdown_always_gives_valid_bounded_chunks(seed: int, limit: int) -> None:
    rng = random.Random(seed)
    pieces = [
        "**bold**",
        "*it*",
        "~~s~~",
        "`a<b`",
        "[l](https://x.org/?q=1&r=2)",
        "&",
        "<",
        ">",
        "word",
        "😀",
        "\n",
        "\n\n",
        "- item\n",
        "> quote\n",
        "```py\nx = 1 < 2\n```\n",
        "# head\n",
        "1. one\n",
        "| a | b |\n|---|---|\n| 1 | 2 |\n",
        " ",
    ]
    markdown = "".join(
        rng.choice(pieces) + rng.choice(["", " "]) for _ in range(rng.randint(50, 900))
    )
    chunks = render(markdown, limit)
    for chunk in chunks:
        assert utf16_len(chunk) <= limit
        parse_html(chunk)
    assert squash(visible(chunks)) == squash(parse_html(to_html(markdown, max_href=limit // 4)))
