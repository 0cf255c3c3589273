"""What every benchmark shares: figures and the table, RSS, percentiles, fakes, databases.

Kept free of heavy imports (no litellm, no composio): a benchmark that measures them
imports them itself, in the process it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
POSTGRES_ADMIN_DSN = os.environ.get(
    "TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

# Offline before anything imports litellm (price map download, model hub lookups).
OFFLINE_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1"}
os.environ.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
if str(ROOT) not in sys.path:  # `tests.fakes` and `bench` import from the checkout
    sys.path.insert(0, str(ROOT))


# --- figures and the table -----------------------------------------------------------------
@dataclass
class Figure:
    bench: str
    name: str
    value: str
    compared: str = ""
    raw: float | None = None


def fig(bench: str, name: str, value: float | str, unit: str = "", compared: str = "") -> Figure:
    if isinstance(value, str):
        return Figure(bench, name, value, compared)
    return Figure(bench, name, f"{fmt(value)} {unit}".strip(), compared, float(value))


def fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def mb(n_bytes: float) -> float:
    return n_bytes / (1024 * 1024)


def table(figures: Sequence[Figure], title: str = "") -> str:
    headers = ("benchmark", "figure", "value", "compared with (same run)")
    rows = [(f.bench, f.name, f.value, f.compared) for f in figures]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [title] if title else []
    out += [line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    ram = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemTotal:"):
                ram = int(row.split()[1]) / (1024 * 1024)
    return (
        f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


# --- statistics and memory -----------------------------------------------------------------
def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def _status_field(name: str, pid: int | str = "self") -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(name + ":"):
            return int(row.split()[1]) * 1024
    return 0


def rss(pid: int | str = "self") -> int:
    """Resident set size in bytes, now."""
    return _status_field("VmRSS", pid)


def peak_rss(pid: int | str = "self") -> int:
    """Highest RSS since start (or since `reset_peak_rss`), in bytes."""
    return _status_field("VmHWM", pid)


def reset_peak_rss() -> bool:
    """Linux lets a process reset its own high-water mark; False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# --- keeping everything on 127.0.0.1 ---------------------------------------------------------
class OfflineGuard:
    """Refuses every connection and name lookup that is not loopback, and counts them.

    Installed in the processes a benchmark measures, so "no network" is verified, not hoped.
    """

    attempts: list[str] = []  # noqa: RUF012 - process-wide on purpose

    @classmethod
    def install(cls) -> None:
        if getattr(socket, "_bench_guarded", False):
            return
        real_getaddrinfo = socket.getaddrinfo
        real_connect = socket.socket.connect
        real_connect_ex = socket.socket.connect_ex

        def local(host: object) -> bool:
            if host in (None, "localhost", b"localhost"):
                return True
            try:
                return ipaddress.ip_address(
                    host.decode() if isinstance(host, bytes) else str(host)
                ).is_loopback
            except ValueError:
                return False

        def getaddrinfo(host, *args, **kwargs):  # type: ignore[no-untyped-def]
            if not local(host):
                cls.attempts.append(f"lookup {host}")
                raise socket.gaierror(socket.EAI_NONAME, f"offline benchmark: {host}")
            return real_getaddrinfo(host, *args, **kwargs)

        def check(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
                cls.attempts.append(f"connect {address[0]}")
                raise ConnectionRefusedError(f"offline benchmark: {address[0]}")

        def connect(self, address):  # type: ignore[no-untyped-def]
            check(self, address)
            return real_connect(self, address)

        def connect_ex(self, address):  # type: ignore[no-untyped-def]
            check(self, address)
            return real_connect_ex(self, address)

        socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]
        socket.socket.connect = connect  # type: ignore[method-assign]
        socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
        socket._bench_guarded = True  # type: ignore[attr-defined]


# --- processes and ports ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fakes_process(*kinds: str, delay: float = 0.0) -> Iterator[dict[str, str]]:
    """Local fake services (`llm`, `composio`) in their own process: their CPU and memory
    never count against the process being measured. Yields {kind: base URL}."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench._fakes", *kinds, "--delay", str(delay)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        urls: dict[str, str] = {}
        assert proc.stdout is not None
        while len(urls) < len(kinds):
            row = proc.stdout.readline()
            if not row:
                raise RuntimeError("fake services failed to start")
            kind, url = row.split()
            urls[kind] = url
        yield urls
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    with contextlib.suppress(Exception):
        if proc.stdin:
            proc.stdin.close()
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ProcessExited(RuntimeError):
    """The server process ended before answering (e.g. its port was taken meanwhile)."""


def wait_http(
    url: str,
    within: float = 60.0,
    *,
    interval: float = 0.005,
    process: subprocess.Popen[Any] | None = None,
) -> float:
    """Poll until `url` answers 200; returns the moment (perf_counter) it did."""
    import httpx

    deadline = time.perf_counter() + within
    with httpx.Client(timeout=2.0) as client:
        while time.perf_counter() < deadline:
            if process is not None and process.poll() is not None:
                raise ProcessExited(f"exited with code {process.returncode} before {url} answered")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return time.perf_counter()
            time.sleep(interval)
    raise TimeoutError(f"{url} did not answer 200 within {within} s")


def gateway_command() -> list[str]:
    """The installed `gateway` entry point of this interpreter's venv, else `-m gateway.cli`."""
    script = Path(PYTHON).with_name("gateway")
    if script.exists():
        return [str(script)]
    return [PYTHON, "-m", "gateway.cli"]


def gateway_env(db_url: str, **settings: str) -> dict[str, str]:
    """Environment for a gateway subprocess: only what we set, no .env surprises."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(OFFLINE_ENV)
    env["DATABASE_URL"] = db_url
    env["LOG_LEVEL"] = "warning"
    env.update({k.upper(): v for k, v in settings.items()})
    return env


_SETTING_PREFIXES = (
    "DATABASE_",
    "LLM_",
    "COMPOSIO_",
    "WHATSAPP_",
    "TELEGRAM_",
    "SLACK_",
    "CONSOLE_",
    "ADMIN_",
    "POOL_",
    "LOG_",
)


# --- databases ------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def temp_database(kind: str) -> AsyncIterator[str]:
    """A fresh, empty database URL: a temp SQLite file, or a throwaway Postgres database
    created on the local server and dropped afterwards."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/gateway.db"
        return
    name = await _create_postgres()
    try:
        yield _postgres_url(name)
    finally:
        await _drop_postgres(name)


def _postgres_url(name: str) -> str:
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    return f"{base}/{name}"


async def _create_postgres() -> str:
    import asyncpg

    name = f"gw_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def _drop_postgres(name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.contextmanager
def temp_database_sync(kind: str) -> Iterator[str]:
    """`temp_database` for code without an event loop. Not by driving the async generator
    with two `asyncio.run`s: the first one's shutdown would finalise it (dropping the
    database) right after it was created."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
            yield f"sqlite+aiosqlite:///{tmp}/gateway.db"
        return
    name = asyncio.run(_create_postgres())
    try:
        yield _postgres_url(name)
    finally:
        asyncio.run(_drop_postgres(name))


async def postgres_problem() -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
        await conn.close()
    except Exception as exc:  # any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"
    return None


# --- the gateway, in process -----------------------------------------------------------------
def settings_for(db_url: str, llm_url: str | None, **overrides: Any) -> Any:
    from gateway.settings import Settings

    values: dict[str, Any] = {
        "database_url": db_url,
        "poll_interval_seconds": 0.5,
        "lease_seconds": 120,
        "shutdown_timeout_seconds": 10,
        "log_level": "warning",
    }
    if llm_url:
        values.update(
            llm_model="openai/fake-model",
            llm_api_base=f"{llm_url}/v1",
            llm_api_key="sk-bench-not-a-real-key",
            llm_timeout_seconds=60,
            llm_retries=0,
        )
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def counting_console() -> Any:
    """The console channel, minus the test aid that keeps the last 10,000 replies in memory:
    it only counts them, so memory figures are the pipeline's own."""
    from channels.console import ConsoleChannel

    class CountingConsole(ConsoleChannel):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0
            self.target = 0
            self.reached = asyncio.Event()
            self.on_send: Callable[[Any], None] | None = None

        def expect(self, total: int) -> None:
            self.target = total
            self.reached.clear()
            if self.count >= total:
                self.reached.set()

        async def send(self, message: Any) -> str:
            self.count += 1
            if self.on_send is not None:
                self.on_send(message)
            if self.target and self.count >= self.target:
                self.reached.set()
            return f"console-{self.count}"

    return CountingConsole()


# --- command line ---------------------------------------------------------------------------------
def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--full", action="store_true", help="full scale (slow)")
    parser.add_argument("--json-out", help="also write the figures as JSON here")
    return parser.parse_args(argv)


def emit(figures: list[Figure], args: argparse.Namespace, title: str) -> None:
    print(table(figures, f"{title} — {machine()}"), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps([asdict(f) for f in figures]))


def scale(args: argparse.Namespace, small: Any, full: Any) -> Any:
    return full if args.full else small
