"""Markdown -> Slack mrkdwn, and splitting into messages Slack accepts, in order."""

from __future__ import annotations

import re

import pytest

from channels.slack_format import SLACK_TEXT_LIMIT, render, to_mrkdwn
from channels.slack_parse import slack_to_markdown

LINK = re.compile(r"<[^<>]*>")


@pytest.mark.parametrize(
    ("markdown", "mrkdwn"),
    [
        ("**bold** and *italic* and ~~gone~~", "*bold* and _italic_ and ~gone~"),
        ("__bold__ _it_", "*bold* _it_"),
        ("***both***", "_*both*_"),
        ("use `x < y && z`", "use `x &lt; y &amp;&amp; z`"),
        (
            "[the docs](https://example.com/a?b=1&c=2)",
            "<https://example.com/a?b=1&amp;c=2|the docs>",
        ),
        ("<https://example.com>", "<https://example.com>"),
        ("[a|b](https://e.com/x|y)", "<https://e.com/x%7Cy|a|b>"),
        ("[mail me](mailto:a@b.co)", "<mailto:a@b.co|mail me>"),
        ("[relative](/path) stays words", "relative stays words"),
        ("![chart](https://e.com/c.png)", "<https://e.com/c.png|chart>"),
        ("# Title with **bold**", "*Title with bold*"),
        ("a & b < c > d", "a &amp; b &lt; c &gt; d"),
        ("line one\nline two", "line one\nline two"),
        ("---", "──────────"),
    ],
)
def test_inline_and_block_formatting(markdown: str, mrkdwn: str) -> None:
    assert to_mrkdwn(markdown) == mrkdwn


def test_the_model_cannot_ping_the_channel_or_forge_links() -> None:
    out = to_mrkdwn("Hey <!channel> and <@U123>, see <https://evil.example|bank.com>")
    assert "<!channel>" not in out and "<@U123>" not in out
    assert "&lt;!channel&gt;" in out and "&lt;@U123&gt;" in out
    # A Slack-style link typed by the model cannot hide its target behind a label.
    assert "<https://evil.example|bank.com>" not in out
    assert "|https://evil.example|bank.com>" in out


def test_lists_quotes_code_and_tables() -> None:
    markdown = (
        "- one\n- two\n  - nested **b**\n\n"
        "3. third\n4. fourth\n\n"
        "> quoted *text*\n> more\n\n"
        "```python\nif a < b:\n    print('&')\n```\n\n"
        "| name | n |\n|---|---|\n| ann | 1 |\n| bob | 22 |\n"
    )
    assert to_mrkdwn(markdown) == (
        "• one\n• two\n    ◦ nested *b*\n\n"
        "3. third\n4. fourth\n\n"
        "> quoted _text_\n> more\n\n"
        "```\nif a &lt; b:\n    print('&amp;')\n```\n\n"
        "```\nname | n\n-----+---\nann  | 1\nbob  | 22\n```"
    )


def test_empty_input_renders_nothing() -> None:
    assert render("") == [] and render("   \n ") == []


def test_short_reply_is_one_chunk() -> None:
    assert render("**Hi** there") == ["*Hi* there"]


def _assert_limit(chunks: list[str], limit: int) -> None:
    assert chunks, "nothing rendered"
    assert all(0 < len(chunk) <= limit for chunk in chunks), [len(c) for c in chunks]


def test_long_reply_splits_between_paragraphs_in_order() -> None:
    paragraphs = [f"Paragraph {i}: " + "word " * 150 for i in range(30)]
    chunks = render("\n\n".join(paragraphs))
    _assert_limit(chunks, SLACK_TEXT_LIMIT)
    assert len(chunks) > 1
    joined = "\n\n".join(chunks)
    positions = [joined.index(f"Paragraph {i}:") for i in range(30)]
    assert positions == sorted(positions)
    for chunk in chunks:  # each chunk ends at a paragraph end
        assert chunk.rstrip().endswith("word")
        assert chunk.startswith("Paragraph")


def test_links_are_never_cut() -> None:
    sentence = "See [this rather long link title](https://example.com/some/long/path?q=1&r=2) now. "
    chunks = render(sentence * 200, limit=500)
    _assert_limit(chunks, 500)
    for chunk in chunks:
        assert chunk.count("<") == chunk.count(">")
        for link in LINK.findall(chunk):
            assert (
                link
                == "<https://example.com/some/long/path?q=1&amp;r=2|this rather long link title>"
            )
    assert sum(len(LINK.findall(c)) for c in chunks) == 200


def test_code_fences_are_closed_and_reopened() -> None:
    code = "\n".join(f"line_{i:04d} = {i} < {i + 1}" for i in range(400))
    chunks = render(f"Intro.\n\n```\n{code}\n```\n\nOutro.", limit=1000)
    _assert_limit(chunks, 1000)
    inside = [c for c in chunks if "line_" in c]
    assert len(inside) > 3
    for chunk in inside:
        assert chunk.count("```") == 2, chunk[:80]
    for chunk in inside[1:]:
        assert chunk.startswith("```\nline_")
    lines = [ln for c in chunks for ln in c.split("\n") if ln.startswith("line_")]
    assert lines == [f"line_{i:04d} = {i} &lt; {i + 1}" for i in range(400)]


def test_bold_cut_mid_paragraph_is_closed_and_reopened() -> None:
    chunks = render("**" + "important words here " * 100 + "end**", limit=300)
    _assert_limit(chunks, 300)
    assert len(chunks) > 3
    for chunk in chunks:
        assert chunk.startswith("*") and chunk.endswith("*"), chunk
        assert chunk.count("*") == 2


def test_quote_cut_keeps_the_quote_marker() -> None:
    chunks = render("> " + "a quoted sentence goes on. " * 60, limit=300)
    _assert_limit(chunks, 300)
    assert all(chunk.startswith("> ") for chunk in chunks)


def test_unbroken_runs_are_cut_hard_but_not_inside_an_entity() -> None:
    chunks = render("&" * 1000, limit=100)
    _assert_limit(chunks, 100)
    assert "".join(chunks) == "&amp;" * 1000
    assert all(re.fullmatch(r"(&amp;)+", chunk) for chunk in chunks)


def test_long_list_splits_between_items() -> None:
    items = "\n".join(f"- item {i} " + "x" * 40 for i in range(100))
    chunks = render(items, limit=400)
    _assert_limit(chunks, 400)
    for chunk in chunks:
        assert all(line.startswith("• item ") for line in chunk.split("\n"))


@pytest.mark.parametrize(
    ("slack", "markdown"),
    [
        ("<@U0BOT> /connect asana", "/connect asana"),
        ("hi <@U0BOT|gateway>!", "hi !"),
        ("ask <@U0ANN> in <#C0GEN|general>", "ask @U0ANN in #general"),
        ("<!here> <!subteam^S1|@ops>", "@here @ops"),
        (
            "<https://e.com?a=1&amp;b=2|docs> <https://x.org>",
            "[docs](https://e.com?a=1&b=2) https://x.org",
        ),
        ("<mailto:a@b.co|a@b.co>", "[a@b.co](mailto:a@b.co)"),
        ("a &lt; b &amp;&amp; c &gt; d", "a < b && c > d"),
    ],
)
def test_inbound_slack_markup_to_markdown(slack: str, markdown: str) -> None:
    assert slack_to_markdown(slack, "U0BOT") == markdown
