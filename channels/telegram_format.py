"""Markdown from the model → Telegram HTML, split into sendable chunks.

Telegram's HTML parse mode accepts a handful of tags and four named entities; anything
else makes the Bot API reject the whole message. So the model's markdown is parsed with
markdown-it (never regexes) and rebuilt from the supported tags only, with every piece
of text escaped. Splitting then works on the finished HTML, cutting only between tags
and entities, closing the tags open at the cut and reopening them in the next chunk, so
every chunk is valid HTML on its own.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

MAX_MESSAGE_LENGTH = 4096
"""`telegram.constants.MessageLimit.MAX_TEXT_LENGTH`."""

_md = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])

_SAFE_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_LANGUAGE = re.compile(r"[^A-Za-z0-9_+#.-]")
_INLINE_TAGS = {"strong": "b", "em": "i", "s": "s"}
_RULE = "──────────"


def escape(text: str) -> str:
    """Escape text for Telegram HTML: `&`, `<` and `>` are the characters it insists on."""
    return html.escape(text, quote=False)


def to_html(markdown: str, *, max_href: int = 2048) -> str:
    """Render markdown as Telegram HTML (not yet split)."""
    tree = SyntaxTreeNode(_md.parse(markdown))
    return _Renderer(max_href).blocks(tree.children, tight=False).strip()


def to_plain(telegram_html: str) -> str:
    """Telegram HTML back to the text a reader would see, for the plain-text resend.

    Every literal `<` in our HTML is escaped, so each `<...>` is a tag.
    """
    return html.unescape(re.sub(r"<[^>]*>", "", telegram_html))


def render(markdown: str, limit: int = MAX_MESSAGE_LENGTH) -> list[str]:
    """Markdown → Telegram HTML chunks of at most `limit` characters, in order."""
    return split_html(to_html(markdown, max_href=max(16, limit // 4)), limit)


class _Renderer:
    """Walks markdown-it's syntax tree and emits the HTML Telegram understands."""

    def __init__(self, max_href: int) -> None:
        self.max_href = max_href
        self.quote_depth = 0

    # --- blocks -------------------------------------------------------------------
    def blocks(self, nodes: list[SyntaxTreeNode], *, tight: bool) -> str:
        parts = [self.block(node) for node in nodes]
        return ("\n" if tight else "\n\n").join(part for part in parts if part)

    def block(self, node: SyntaxTreeNode) -> str:
        kind = node.type
        if kind == "paragraph":
            return self.inline_children(node)
        if kind == "heading":
            return f"<b>{self.inline_children(node)}</b>"
        if kind in ("bullet_list", "ordered_list"):
            return self.listing(node)
        if kind == "blockquote":
            return self.quote(node)
        if kind in ("fence", "code_block"):
            return self.code_block(node)
        if kind == "hr":
            return _RULE
        if kind == "table":
            return self.table(node)
        if kind == "inline":
            return self.inlines(node.children)
        # Raw HTML is disabled in the parser; anything unforeseen is shown as text.
        return escape(node.content)

    def listing(self, node: SyntaxTreeNode) -> str:
        ordered = node.type == "ordered_list"
        number = int(node.attrs.get("start", 1) or 1) if ordered else 0
        tight = all(
            child.hidden for item in node.children for child in item.children
            if child.type == "paragraph"
        )
        items = []
        for item in node.children:
            marker = f"{number}. " if ordered else "• "
            number += 1
            body = self.blocks(item.children, tight=tight)
            indent = " " * len(marker)
            items.append(marker + body.replace("\n", "\n" + indent))
        return ("\n" if tight else "\n\n").join(items)

    def quote(self, node: SyntaxTreeNode) -> str:
        # Telegram refuses nested blockquotes: only the outermost one becomes a tag.
        self.quote_depth += 1
        try:
            body = self.blocks(node.children, tight=False)
        finally:
            self.quote_depth -= 1
        if self.quote_depth or not body:
            return body
        return f"<blockquote>{body}</blockquote>"

    def code_block(self, node: SyntaxTreeNode) -> str:
        code = escape(node.content.rstrip("\n"))
        if not code:
            return ""
        language = _LANGUAGE.sub("", (node.info or "").split(" ", 1)[0])[:32]
        if language:
            return f'<pre><code class="language-{language}">{code}</code></pre>'
        return f"<pre>{code}</pre>"

    def table(self, node: SyntaxTreeNode) -> str:
        """Telegram has no tables: show one as aligned monospace text."""
        rows = [
            [self.plain(cell) for cell in row.children]
            for section in node.children
            for row in section.children
        ]
        if not rows:
            return ""
        width = max(len(row) for row in rows)
        rows = [row + [""] * (width - len(row)) for row in rows]
        sizes = [max(len(row[col]) for row in rows) for col in range(width)]
        lines = [" | ".join(cell.ljust(sizes[col]) for col, cell in enumerate(row)).rstrip()
                 for row in rows]
        lines.insert(1, "-+-".join("-" * size for size in sizes))
        return f"<pre>{escape(chr(10).join(lines))}</pre>"

    def plain(self, node: SyntaxTreeNode) -> str:
        if node.type in ("text", "code_inline"):
            return node.content
        if node.type in ("softbreak", "hardbreak"):
            return " "
        return "".join(self.plain(child) for child in node.children)

    # --- inlines ------------------------------------------------------------------
    def inline_children(self, node: SyntaxTreeNode) -> str:
        return "".join(self.inlines(child.children) for child in node.children)

    def inlines(self, nodes: list[SyntaxTreeNode]) -> str:
        return "".join(self.inline(node) for node in nodes)

    def inline(self, node: SyntaxTreeNode) -> str:
        kind = node.type
        if kind == "text":
            return escape(node.content)
        if kind in ("softbreak", "hardbreak"):
            return "\n"
        if kind == "code_inline":
            return f"<code>{escape(node.content)}</code>" if node.content else ""
        if kind in _INLINE_TAGS:
            inner = self.inlines(node.children)
            tag = _INLINE_TAGS[kind]
            return f"<{tag}>{inner}</{tag}>" if inner else ""
        if kind == "link":
            return self.link(str(node.attrs.get("href", "")), self.inlines(node.children))
        if kind == "image":
            alt = self.inlines(node.children) or escape(str(node.attrs.get("src", "")))
            return self.link(str(node.attrs.get("src", "")), alt)
        return escape(node.content)

    def link(self, href: str, inner: str) -> str:
        if not inner:
            inner = escape(href)
        if not href.lower().startswith(_SAFE_SCHEMES) or len(href) > self.max_href:
            return inner if href in to_plain(inner) else f"{inner} ({escape(href)})"
        return f'<a href="{escape(href).replace(chr(34), "&quot;")}">{inner}</a>'


# --- splitting ------------------------------------------------------------------------
_ATOM = re.compile(r"<[^>]*>|&#?[A-Za-z0-9]+;|.", re.DOTALL)
_TAG_NAME = re.compile(r"</?\s*([A-Za-z0-9-]+)")
_EMPTY_PAIR = re.compile(r"<([A-Za-z0-9-]+)(?:\s[^>]*)?></\1>")


@dataclass(frozen=True)
class _Atom:
    text: str
    size: int  # UTF-16 code units: never larger than what Telegram counts
    kind: str  # "open", "close" or "text"
    name: str = ""


def _atoms(markup: str) -> list[_Atom]:
    atoms = []
    for match in _ATOM.finditer(markup):
        piece = match.group()
        size = len(piece.encode("utf-16-le")) // 2
        if piece.startswith("<"):
            name_match = _TAG_NAME.match(piece)
            name = name_match.group(1).lower() if name_match else ""
            kind = "close" if piece.startswith("</") else "open"
            atoms.append(_Atom(piece, size, kind, name))
        else:
            atoms.append(_Atom(piece, size, "text"))
    return atoms


def _closing(stack: tuple[_Atom, ...]) -> str:
    return "".join(f"</{atom.name}>" for atom in reversed(stack))


def _closing_size(stack: tuple[_Atom, ...]) -> int:
    return sum(len(atom.name) + 3 for atom in stack)


def _push(stack: tuple[_Atom, ...], atom: _Atom) -> tuple[_Atom, ...]:
    if atom.kind == "open":
        return (*stack, atom)
    if atom.kind == "close" and stack and stack[-1].name == atom.name:
        return stack[:-1]
    return stack


@dataclass(frozen=True)
class _Cut:
    index: int  # atoms before this index go into the chunk
    priority: int  # 3 paragraph, 2 line, 1 word
    size: int
    stack: tuple[_Atom, ...]


def split_html(markup: str, limit: int = MAX_MESSAGE_LENGTH) -> list[str]:
    """Split Telegram HTML into chunks of at most `limit` UTF-16 units, each balanced.

    Prefers paragraph breaks, then line breaks, then spaces (but not absurdly early in a
    chunk); never cuts inside a tag or an entity. Tags open at a cut are closed there
    and reopened at the start of the next chunk.
    """
    if limit < 16:
        raise ValueError("limit too small to hold a tag")
    atoms = _atoms(markup)
    chunks: list[str] = []
    start, stack = 0, ()
    while start < len(atoms):
        reopen = "".join(atom.text for atom in stack)
        size = sum(atom.size for atom in stack)
        index, current = start, stack
        cuts: list[_Cut] = []
        while index < len(atoms):
            atom = atoms[index]
            after = _push(current, atom)
            if size + atom.size + _closing_size(after) > limit:
                break
            size += atom.size
            current = after
            index += 1
            if atom.kind == "text" and atom.text in ("\n", " "):
                previous = atoms[index - 2].text if index - 2 >= start else ""
                priority = 1 if atom.text == " " else (3 if previous == "\n" else 2)
                cuts.append(_Cut(index, priority, size, current))
        if index >= len(atoms):
            _emit(chunks, reopen, atoms[start:], current)
            break
        cut = _best(cuts, limit) or _Cut(max(index, start + 1), 0, size, current)
        if cut.index == start + 1 and index == start:
            cut = _Cut(start + 1, 0, size, _push(stack, atoms[start]))
        _emit(chunks, reopen, atoms[start:cut.index], cut.stack)
        start, stack = cut.index, cut.stack
    return chunks


def _best(cuts: list[_Cut], limit: int) -> _Cut | None:
    floor = limit // 3
    for priority in (3, 2, 1):
        eligible = [cut for cut in cuts if cut.priority == priority and cut.size > floor]
        if eligible:
            return eligible[-1]
    return None


def _emit(chunks: list[str], reopen: str, body: list[_Atom], stack: tuple[_Atom, ...]) -> None:
    while body and body[-1].kind == "text" and body[-1].text.isspace():
        body = body[:-1]
    chunk = reopen + "".join(atom.text for atom in body) + _closing(stack)
    previous = None
    while previous != chunk:
        previous, chunk = chunk, _EMPTY_PAIR.sub("", chunk)
    chunk = chunk.strip()
    if to_plain(chunk).strip():
        chunks.append(chunk)
