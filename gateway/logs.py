"""Logging setup, with secrets and personal data masked unless explicitly unmasked.

Masking happens on the formatted line, so it covers library loggers too (a Graph API
URL with a token in it, an exception quoting a phone number). Every line logged while a
message is stored, turned or sent carries that message's envelope id (a context
variable, so library loggers' lines carry it too): grep one id to follow one message.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_envelope_id: ContextVar[str | None] = ContextVar("envelope_id", default=None)


@contextmanager
def correlated(envelope_id: str | None) -> Iterator[None]:
    """Lines logged inside (in this task) carry `envelope_id`."""
    token = _envelope_id.set(envelope_id)
    try:
        yield
    finally:
        _envelope_id.reset(token)


_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Telegram bot tokens: 123456789:AA...
    (re.compile(r"(?<!\d)\d{6,12}:[A-Za-z0-9_-]{30,}"), "[token]"),
    # Slack tokens, Composio keys, bearer tokens
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]+"), "[token]"),
    (re.compile(r"\bxapp-[A-Za-z0-9-]+"), "[token]"),
    (
        re.compile(
            r"(?i)\b(bearer|token|api[_-]?key|access_token|secret)([=:\s\"']+)([^\s\"'&,]{6,})"
        ),
        r"\1\2[secret]",
    ),
    (re.compile(r"\b(?:EAA|ak_|sk-)[A-Za-z0-9_-]{10,}"), "[token]"),
    # Connect links carry a one-time token bound to one person
    (re.compile(r"(https?://[^\s/]*connect[^\s/]*/link/)[A-Za-z0-9_-]+"), r"\1[link]"),
    # One-time link codes as shown to users (identity.linking: XXXX-XXXX, no I/L/O/U/0/1)
    (re.compile(r"(?<![\w-])[2-9A-HJKMNP-TV-Z]{4}-[2-9A-HJKMNP-TV-Z]{4}(?![\w-])"), "[code]"),
    # Phone numbers: "+" and 7-15 digits (optionally separated), or a bare run of 10-15 digits
    (re.compile(r"(?<![\w+])\+\d[\d\s().-]{5,18}\d(?!\w)"), "[phone]"),
    (re.compile(r"(?<![\w.:-])\d{10,15}(?![\w.:-])"), "[phone]"),
]


def mask(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class MaskingFormatter(logging.Formatter):
    def __init__(self, *, json_lines: bool, unmasked: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(envelope)s: %(message)s")
        self.json_lines = json_lines
        self.unmasked = unmasked

    def format(self, record: logging.LogRecord) -> str:
        envelope_id = _envelope_id.get()
        if self.json_lines:
            line = json.dumps(
                {
                    "time": self.formatTime(record),
                    "level": record.levelname.lower(),
                    "logger": record.name,
                    **({"envelope_id": envelope_id} if envelope_id else {}),
                    "message": record.getMessage(),
                    **({"exc": self.formatException(record.exc_info)} if record.exc_info else {}),
                }
            )
        else:
            record.envelope = f" [{envelope_id}]" if envelope_id else ""
            line = super().format(record)
        return line if self.unmasked else mask(line)


def configure_logging(
    level: str = "info", *, unmasked: bool = False, json_lines: bool = False
) -> None:
    """Unmasked only when both asked for and at debug level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        MaskingFormatter(json_lines=json_lines, unmasked=unmasked and level == "debug")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "LiteLLM", "aiosqlite", "asyncio", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
