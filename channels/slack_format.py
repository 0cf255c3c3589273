"""Markdown (what the model writes) -> Slack mrkdwn, split into messages of at most 4000 chars.

Why a renderer and not regexes: Slack's syntax differs from markdown (`*bold*`, `_italic_`,
`~strike~`, `<url|text>`), `&`, `<`, `>` must be escaped everywhere except in our own link
syntax, and a long reply must be cut where the reader will not notice: between blocks, then
lines, then sentences, then words; never inside a link or an entity, and a cut inside a code
block or inside bold text closes it and reopens it in the next message. So the renderer
produces the text together with the places where it may be cut and what to close/reopen
there, and the splitter only chooses among those places.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

SLACK_TEXT_LIMIT = 4000

BLOCK, LINE, SENTENCE, SPACE = 4, 3, 2, 1
_FENCE_CLOSE, _FENCE_OPEN = "\n```", "```\n"
_BULLETS = ("•", "◦", "▪")
_MARKS = {"strong": "*", "em": "_", "s": "~"}
_SPACE_RUN = re.compile(r"\s+")
_ENTITY_MAX = len("&amp;")

_md = MarkdownIt("commonmark").enable(["strikethrough", "table"])


def escape(text: str) -> str:
    """Escape Slack's three control characters; everything else is literal."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _escape_url(url: str) -> str:
    # Inside <url|text> the URL ends at `|` or `>`: percent-encode those, entity-escape `&`.
    url = url.replace("|", "%7C").replace("<", "%3C").replace(">", "%3E")
    return url.replace("&", "&amp;")


@dataclass(frozen=True)
class Cut:
    """A place the text may be split: before `pos`, closing and reopening what is open there."""

    pos: int
    rank: int
    close: str = ""
    reopen: str = ""


@dataclass
class Doc:
    """Rendered text plus where it may be cut, what must not be cut, and code-block spans."""

    text: str = ""
    cuts: list[Cut] = field(default_factory=list)
    atomic: list[tuple[int, int]] = field(default_factory=list)
    fences: list[tuple[int, int]] = field(default_factory=list)


class _Builder:
    def __init__(self) -> None:
        self._parts: list[str] = []
        self._len = 0
        self.doc = Doc()

    @property
    def pos(self) -> int:
        return self._len

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._len += len(text)

    def write_atomic(self, text: str) -> None:
        self.doc.atomic.append((self._len, self._len + len(text)))
        self.write(text)

    def cut(self, rank: int, close: str = "", reopen: str = "") -> None:
        if self._len > 0:
            self.doc.cuts.append(Cut(self._len, rank, close, reopen))

    def extend(self, other: Doc) -> None:
        base = self._len
        self.doc.cuts.extend(Cut(c.pos + base, c.rank, c.close, c.reopen) for c in other.cuts)
        self.doc.atomic.extend((a + base, b + base) for a, b in other.atomic)
        self.doc.fences.extend((a + base, b + base) for a, b in other.fences)
        self.write(other.text)

    def build(self) -> Doc:
        self.doc.text = "".join(self._parts)
        return self.doc


def _indent(doc: Doc, first: str, rest: str, carry: str) -> Doc:
    """Prefix the first line with `first` and the others with `rest` (list items, quotes).

    A cut at a line start moves before that line's prefix (the prefix starts the next
    message); a cut inside a line reopens with `carry` (e.g. "> " inside a quote).
    """
    lines = doc.text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def shift(p: int) -> int:
        k = bisect.bisect_right(starts, p) - 1
        return p + len(first) + k * len(rest)

    out = Doc(text=first + ("\n" + rest).join(lines))
    for c in doc.cuts:
        if c.pos in starts[1:]:
            out.cuts.append(Cut(shift(c.pos) - len(rest), c.rank, c.close, c.reopen))
        else:
            out.cuts.append(Cut(shift(c.pos), c.rank, c.close, carry + c.reopen))
    out.atomic = [(shift(a), shift(b)) for a, b in doc.atomic]
    out.fences = [(shift(a), shift(b)) for a, b in doc.fences]
    return out


class _Inline:
    """Renders one inline run (paragraph, heading, list item text) with a stack of open marks."""

    def __init__(self, builder: _Builder, marks: list[str] | None = None) -> None:
        self.b = builder
        self.marks = marks or []

    def close(self) -> str:
        return "".join(reversed(self.marks))

    def reopen(self) -> str:
        return "".join(self.marks)

    def render(self, node: SyntaxTreeNode) -> None:
        for child in node.children:
            self.node(child)

    def node(self, node: SyntaxTreeNode) -> None:
        kind = node.type
        if kind == "text":
            self.text(node.content)
        elif kind in ("softbreak", "hardbreak"):
            self.b.write("\n")
            self.b.cut(LINE, self.close(), self.reopen())
        elif kind in _MARKS:
            mark = _MARKS[kind]
            if mark in self.marks:  # Slack cannot nest the same mark: keep the outer one
                self.render(node)
                return
            self.b.write(mark)
            self.marks.append(mark)
            self.render(node)
            self.marks.pop()
            self.b.write(mark)
        elif kind == "code_inline":
            if node.content:
                self.b.write_atomic(f"`{escape(node.content)}`")
        elif kind in ("link", "image"):
            self.link(node)
        elif kind == "html_inline":
            self.text(node.content)
        elif node.children:
            self.render(node)
        else:
            self.text(node.content)

    def link(self, node: SyntaxTreeNode) -> None:
        url = str(node.attrs.get("href") or node.attrs.get("src") or "")
        label = _plain(node) if node.type == "link" else str(node.attrs.get("alt") or _plain(node))
        if not re.match(r"^(https?|mailto|tel|slack):", url, re.IGNORECASE):
            self.text(label or url)  # relative or odd scheme: Slack cannot link it, keep the words
            return
        if not label or label == url or label == url.removeprefix("mailto:"):
            self.b.write_atomic(f"<{_escape_url(url)}>")
        else:
            self.b.write_atomic(f"<{_escape_url(url)}|{escape(' '.join(label.split()))}>")

    def text(self, text: str) -> None:
        escaped = escape(text)
        last = 0
        for match in _SPACE_RUN.finditer(escaped):
            self.b.write(escaped[last : match.end()])
            last = match.end()
            before = escaped[match.start() - 1] if match.start() > 0 else ""
            rank = SENTENCE if before in ".!?…:;" else SPACE
            self.b.cut(rank, self.close(), self.reopen())
        self.b.write(escaped[last:])


def _plain(node: SyntaxTreeNode) -> str:
    """The words of an inline subtree without formatting (link labels, table cells)."""
    if node.type in ("text", "code_inline", "html_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    if node.type == "image":
        return str(node.attrs.get("alt") or "") or "".join(_plain(c) for c in node.children)
    return "".join(_plain(child) for child in node.children)


def _code(content: str) -> Doc:
    if not content.strip():
        return Doc()
    b = _Builder()
    b.write(_FENCE_OPEN)
    start = b.pos
    lines = escape(content.rstrip("\n")).split("\n")
    for i, line in enumerate(lines):
        if i:
            b.write("\n")
            b.cut(LINE, _FENCE_CLOSE, _FENCE_OPEN)
        b.write(line)
    end = b.pos
    b.write(_FENCE_CLOSE)
    doc = b.build()
    doc.fences.append((start, end))
    return doc


def _table(node: SyntaxTreeNode) -> Doc:
    """Slack has no tables: a monospaced block with aligned columns reads best."""
    rows: list[list[str]] = []
    for section in node.children:
        for tr in section.children:
            rows.append([" ".join(_plain(cell).split()) for cell in tr.children])
    if not rows:
        return Doc()
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    sizes = [max(len(r[i]) for r in rows) for i in range(width)]
    lines = [" | ".join(cell.ljust(sizes[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * s for s in sizes))
    return _code("\n".join(lines))


def _blocks(nodes: list[SyntaxTreeNode], tight: bool = False, depth: int = 0) -> Doc:
    b = _Builder()
    for node in nodes:
        doc = _block(node, depth)
        if not doc.text:
            continue
        if b.pos:
            b.write("\n" if tight else "\n\n")
            b.cut(LINE if tight else BLOCK)
        b.extend(doc)
    return b.build()


def _block(node: SyntaxTreeNode, depth: int) -> Doc:
    kind = node.type
    if kind in ("paragraph", "heading"):
        b = _Builder()
        inline = node.children[0] if node.children else None
        if kind == "heading":
            b.write("*")
            if inline is not None:
                _Inline(b, ["*"]).render(inline)
            b.write("*")
        elif inline is not None:
            _Inline(b).render(inline)
        return b.build()
    if kind in ("fence", "code_block"):
        return _code(node.content)
    if kind == "blockquote":
        return _indent(_blocks(node.children, depth=depth), "> ", "> ", "> ")
    if kind in ("bullet_list", "ordered_list"):
        return _list(node, depth)
    if kind == "hr":
        return Doc(text="──────────")
    if kind == "table":
        return _table(node)
    if kind == "html_block":
        b = _Builder()
        _Inline(b).text(node.content.rstrip("\n"))
        return b.build()
    return _blocks(node.children, depth=depth)


def _list(node: SyntaxTreeNode, depth: int) -> Doc:
    items = node.children
    tight = all(
        child.hidden for item in items for child in item.children if child.type == "paragraph"
    )
    number = int(node.attrs.get("start", 1) or 1)
    b = _Builder()
    for item in items:
        if node.type == "ordered_list":
            marker = f"{number}. "
            number += 1
        else:
            marker = _BULLETS[min(depth, len(_BULLETS) - 1)] + " "
        inner = _blocks(item.children, tight=tight, depth=depth + 1)
        if b.pos:
            b.write("\n" if tight else "\n\n")
            b.cut(LINE if tight else BLOCK)
        b.extend(_indent(inner, marker, "    ", ""))
    return b.build()


def to_mrkdwn_doc(markdown: str) -> Doc:
    """Render markdown to Slack mrkdwn with its cut points."""
    tree = SyntaxTreeNode(_md.parse(markdown))
    return _blocks(tree.children)


def to_mrkdwn(markdown: str) -> str:
    """Render markdown to one Slack mrkdwn string (no length limit)."""
    return to_mrkdwn_doc(markdown).text


def split_doc(doc: Doc, limit: int = SLACK_TEXT_LIMIT) -> list[str]:
    """Split a rendered doc into chunks of at most `limit` chars at its best cut points."""
    if limit < 16:
        raise ValueError("limit too small for Slack formatting")
    text, chunks = doc.text, []
    cuts = sorted(doc.cuts, key=lambda c: c.pos)
    positions = [c.pos for c in cuts]
    start, reopen = 0, ""
    while len(reopen) + len(text) - start > limit:
        budget = limit - len(reopen)
        cut = _choose(cuts, positions, start, budget)
        if cut is None:
            cut = _hard_cut(doc, start, budget)
        head = text[start : cut.pos].rstrip()
        if head.strip():
            chunks.append(reopen + head + cut.close)
            reopen = cut.reopen
        start = cut.pos
        while start < len(text) and text[start] == "\n":
            start += 1
    tail = text[start:].rstrip()
    if tail.strip():
        chunks.append(reopen + tail)
    return chunks


def _choose(cuts: list[Cut], positions: list[int], start: int, budget: int) -> Cut | None:
    lo = bisect.bisect_right(positions, start)
    hi = bisect.bisect_right(positions, start + budget)
    floor = start + budget // 3  # never make absurdly small chunks when a boundary is far back
    best: dict[int, Cut] = {}
    for cut in cuts[lo:hi]:
        if cut.pos - start + len(cut.close) <= budget:
            best[cut.rank] = cut  # ascending positions: the last one per rank is the furthest
    for rank in (BLOCK, LINE, SENTENCE, SPACE):
        cut = best.get(rank)
        if cut is not None and cut.pos > floor:
            return cut
    if best:
        return max(best.values(), key=lambda c: c.pos)
    return None


def _hard_cut(doc: Doc, start: int, budget: int) -> Cut:
    """No natural boundary fits: cut an unbroken run, but never inside a link or an entity."""
    close, reopen = "", ""
    pos = start + budget
    for a, b in doc.fences:
        if a <= pos - len(_FENCE_CLOSE) <= b:
            close, reopen = _FENCE_CLOSE, _FENCE_OPEN
            pos -= len(_FENCE_CLOSE)
            break
    for a, b in doc.atomic:
        if a < pos < b and a > start:
            pos = a
            break
    amp = doc.text.rfind("&", max(start, pos - _ENTITY_MAX + 1), pos)
    if amp > start and ";" not in doc.text[amp:pos]:
        pos = amp
    return Cut(max(pos, start + 1), 0, close, reopen)


def render(markdown: str, limit: int = SLACK_TEXT_LIMIT) -> list[str]:
    """Markdown -> ordered Slack mrkdwn chunks, each at most `limit` characters."""
    if not markdown or not markdown.strip():
        return []
    return split_doc(to_mrkdwn_doc(markdown), limit)
