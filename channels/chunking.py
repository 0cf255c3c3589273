"""Split long text into platform-sized chunks at the most natural boundary available."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def split_text(text: str, limit: int) -> list[str]:
    """Split `text` into chunks of at most `limit` characters, keeping order.

    Prefers paragraph breaks, then line breaks, then sentence ends, then spaces; cuts hard
    only inside a single unbroken run longer than `limit`.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    text = text.strip()
    if not text:
        return []
    chunks: list[str] = []
    while len(text) > limit:
        cut = _best_cut(text, limit)
        head, text = text[:cut].rstrip(), text[cut:].lstrip()
        if head:
            chunks.append(head)
    if text:
        chunks.append(text)
    return chunks


def _best_cut(text: str, limit: int) -> int:
    window = text[: limit + 1]
    floor = limit // 3  # never produce absurdly small chunks when a boundary is far back
    for separator in ("\n\n", "\n"):
        index = window.rfind(separator)
        if index > floor:
            return index + len(separator)
    sentence_ends = [m.end() for m in _SENTENCE_END.finditer(window) if floor < m.end() <= limit]
    if sentence_ends:
        return sentence_ends[-1]
    index = window.rfind(" ")
    if index > floor:
        return index + 1
    return limit
