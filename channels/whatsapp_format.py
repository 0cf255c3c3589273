"""Markdown (what the model writes) to WhatsApp formatting, split into sendable chunks.

WhatsApp knows `*bold*`, `_italic_`, `~strike~`, `` `code` ``, ```` ```block``` ````, `> quote`
and `- ` / `1. ` lists, and has no links with hidden targets, so a link becomes
"text (url)". The markdown is parsed with markdown-it (not regexes) and rendered from
its syntax tree. While rendering, every formatted span is wrapped in two private-use
sentinel characters so the splitter knows where it must not cut; a chunk never ends
inside a `*bold*` span or a code block (an oversized code block is re-fenced per chunk).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

MAX_TEXT_LENGTH = 4096
"""WhatsApp Cloud API limit of a text message body, in characters."""

_OPEN = "\ue000"  # start of a span the splitter must keep whole
_CLOSE = "\ue001"  # its end
_SENTINELS = re.compile(f"[{_OPEN}{_CLOSE}]")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_FENCE = "```"

_parser = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])


def to_whatsapp(markdown: str) -> str:
    """The whole reply in WhatsApp formatting, unsplit (useful for short texts and tests)."""
    return _SENTINELS.sub("", _Renderer(limit=None).render(markdown))


def render_chunks(markdown: str, limit: int = MAX_TEXT_LENGTH) -> list[str]:
    """WhatsApp-formatted chunks of at most `limit` characters, in order.

    Cuts prefer paragraph breaks, then line breaks, then sentence ends, then spaces, and
    never fall inside a formatted span or code block that fits in one chunk.
    """
    if limit < 16:
        raise ValueError("limit too small to hold a fenced code block")
    marked = _Renderer(limit=limit - 2 * len(_FENCE)).render(markdown)
    text, ranges = _extract_ranges(marked)
    return split_protected(text, limit, ranges)


# --- rendering ---------------------------------------------------------------------------


def _protect(text: str) -> str:
    return f"{_OPEN}{text}{_CLOSE}" if text else ""


def _wrap(marker: str, inner: str) -> str:
    """`*inner*`, moving surrounding spaces outside so WhatsApp still sees the markers."""
    stripped = inner.strip()
    if not stripped:
        return inner
    lead = inner[: len(inner) - len(inner.lstrip())]
    trail = inner[len(inner.rstrip()) :]
    return f"{lead}{_protect(f'{marker}{stripped}{marker}')}{trail}"


class _Renderer:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit  # longest code block kept in one fence; None: never split
        self._active: set[str] = set()  # markers already open: `*a **b** c*` must not nest

    def _styled(self, marker: str, node: SyntaxTreeNode) -> str:
        if marker in self._active:
            return self._inline_of(node)
        self._active.add(marker)
        try:
            return _wrap(marker, self._inline_of(node))
        finally:
            self._active.discard(marker)

    def render(self, markdown: str) -> str:
        source = _SENTINELS.sub("", markdown or "")
        root = SyntaxTreeNode(_parser.parse(source))
        return "\n\n".join(self._blocks(root.children)).strip()

    # blocks
    def _blocks(self, nodes: Iterable[SyntaxTreeNode]) -> list[str]:
        out: list[str] = []
        for node in nodes:
            text = self._block(node)
            if text.strip():
                out.append(text)
        return out

    def _block(self, node: SyntaxTreeNode) -> str:
        kind = node.type
        if kind in ("paragraph", "inline"):
            return self._inline_of(node)
        if kind == "heading":
            return self._styled("*", node)
        if kind in ("fence", "code_block"):
            return self._code(node.content)
        if kind == "blockquote":
            inner = "\n\n".join(self._blocks(node.children))
            return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
        if kind in ("bullet_list", "ordered_list"):
            return self._list(node)
        if kind == "table":
            return self._table(node)
        if kind == "hr":
            return "———"
        if kind == "html_block":
            return node.content.strip()
        return "\n\n".join(self._blocks(node.children))

    def _code(self, content: str) -> str:
        code = content.rstrip("\n")
        if not code.strip():
            return ""
        if self.limit is None or len(code) <= self.limit:
            return _protect(f"{_FENCE}{code}{_FENCE}")
        parts: list[str] = []
        current = ""
        for line in code.split("\n"):
            while len(line) > self.limit:  # a single monstrous line: cut hard
                if current:
                    parts.append(current)
                    current = ""
                parts.append(line[: self.limit])
                line = line[self.limit :]
            candidate = f"{current}\n{line}" if current else line
            if len(candidate) > self.limit and current:
                parts.append(current)
                candidate = line
            current = candidate
        if current:
            parts.append(current)
        return "\n\n".join(_protect(f"{_FENCE}{part}{_FENCE}") for part in parts)

    def _list(self, node: SyntaxTreeNode) -> str:
        ordered = node.type == "ordered_list"
        start = int(node.attrs.get("start", 1) or 1) if ordered else 1
        lines: list[str] = []
        for index, item in enumerate(node.children):
            bullet = f"{start + index}. " if ordered else "- "
            body = "\n".join(self._blocks(item.children))
            indent = " " * len(bullet)
            item_lines = body.split("\n") if body else [""]
            lines.append(bullet + item_lines[0])
            lines.extend(indent + line if line else line for line in item_lines[1:])
        return "\n".join(lines)

    def _table(self, node: SyntaxTreeNode) -> str:
        rows: list[str] = []
        for section in node.children:
            for row in section.children:
                cells = [self._inline_of(cell).strip() for cell in row.children]
                if section.type == "thead":
                    cells = [_wrap("*", cell) if cell else cell for cell in cells]
                rows.append(" | ".join(cells))
        return "\n".join(rows)

    # inline
    def _inline_of(self, node: SyntaxTreeNode) -> str:
        return "".join(self._inline(child) for child in node.children)

    def _inline(self, node: SyntaxTreeNode) -> str:
        kind = node.type
        if kind == "inline":
            return self._inline_of(node)
        if kind == "text":
            return node.content
        if kind in ("softbreak", "hardbreak"):
            return "\n"
        if kind == "strong":
            return self._styled("*", node)
        if kind == "em":
            return self._styled("_", node)
        if kind == "s":
            return self._styled("~", node)
        if kind == "code_inline":
            return _protect(f"`{node.content}`") if node.content.strip() else node.content
        if kind == "link":
            return self._link(str(node.attrs.get("href", "")), self._inline_of(node))
        if kind == "image":
            alt = self._inline_of(node) or str(node.attrs.get("alt", ""))
            return self._link(str(node.attrs.get("src", "")), alt)
        if kind == "html_inline":
            return node.content
        return self._inline_of(node)

    @staticmethod
    def _link(href: str, label: str) -> str:
        plain = _SENTINELS.sub("", label).strip()
        bare = href.removeprefix("mailto:").removeprefix("tel:")
        if not href or plain in (href, bare) or not plain:
            return href or label
        return f"{label} ({_protect(href)})"


# --- splitting ----------------------------------------------------------------------------


def _extract_ranges(marked: str) -> tuple[str, list[tuple[int, int]]]:
    """Remove the sentinels; return the text and the outermost protected (start, end) spans."""
    out: list[str] = []
    ranges: list[tuple[int, int]] = []
    depth = 0
    start = 0
    length = 0
    for char in marked:
        if char == _OPEN:
            if depth == 0:
                start = length
            depth += 1
        elif char == _CLOSE:
            depth = max(depth - 1, 0)
            if depth == 0:
                ranges.append((start, length))
        else:
            out.append(char)
            length += 1
    return "".join(out), ranges


def split_protected(
    text: str, limit: int, ranges: list[tuple[int, int]] | None = None
) -> list[str]:
    """Split `text` into chunks of at most `limit` characters, never cutting inside a range
    that is itself short enough to fit in a chunk."""
    if limit < 1:
        raise ValueError("limit must be positive")
    keep = [(s, e) for s, e in (ranges or []) if e - s <= limit]
    chunks: list[str] = []
    start = _skip_space(text, 0)
    while len(text) - start > limit:
        cut = _best_cut(text, start, limit, keep)
        head = text[start:cut].rstrip()
        if head:
            chunks.append(head)
        start = _skip_space(text, cut)
    tail = text[start:].rstrip()
    if tail:
        chunks.append(tail)
    return chunks


def _skip_space(text: str, index: int) -> int:
    while index < len(text) and text[index].isspace():
        index += 1
    return index


def _inside(pos: int, ranges: list[tuple[int, int]]) -> tuple[int, int] | None:
    for s, e in ranges:
        if s < pos < e:
            return (s, e)
    return None


def _best_cut(text: str, start: int, limit: int, ranges: list[tuple[int, int]]) -> int:
    window = text[start : start + limit + 1]
    local = [(s, e) for s, e in ranges if e > start and s < start + limit + 1]
    for floor in (limit // 3, 0):
        for separator in ("\n\n", "\n"):
            index = window.rfind(separator)
            while index > floor:
                if not _inside(start + index, local):
                    return start + index + len(separator)
                index = window.rfind(separator, 0, index)
        for match in reversed(list(_SENTENCE_END.finditer(window))):
            if floor < match.end() <= limit and not _inside(start + match.start(), local):
                return start + match.end()
        index = window.rfind(" ")
        while index > floor:
            if not _inside(start + index, local):
                return start + index + 1
            index = window.rfind(" ", 0, index)
    hard = start + limit
    span = _inside(hard, local)
    if span and span[0] > start:
        return span[0]
    return hard
