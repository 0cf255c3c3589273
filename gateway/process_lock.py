"""SQLite mode is single-process: a second gateway on the same file must refuse to start.

Two processes claiming from one SQLite file would each believe they own the queue; an
advisory lock beside the database file makes the second one stop with a clear message.
The OS releases the lock when the process dies, so a crash never leaves it stuck.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    pass


class ProcessLock:
    def __init__(self, database_path: str) -> None:
        self.path = Path(f"{database_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(
                f"another gateway process (pid {holder}) is already using {self.path.with_suffix('')}. "
                "SQLite mode runs one process only: stop the other one, or use Postgres "
                "(DATABASE_URL=postgresql+asyncpg://...) to run several."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def sqlite_path(database_url: str) -> str | None:
    """The file behind a sqlite URL, or None for in-memory databases."""
    path = database_url.split("///", 1)[-1].split("?", 1)[0]
    return None if not path or path == ":memory:" else path
