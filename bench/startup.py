"""Start-up: seconds from process start to /healthz and /readyz answering 200.

The real command (`gateway run`, the venv's entry point) on a free port with a fresh
SQLite file (so the time includes creating the schema), repeated; plus the import time
of `gateway.app`. Compared with: a bare interpreter start and the import time of
litellm and composio, which the gateway keeps off this path; and whether either was
imported during start-up, /readyz and a webhook (`PYTHONPROFILEIMPORTTIME`), and when
they are configured, whether /readyz waited for their background warm-up.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import Figure, fig

BENCH = "startup"
HEAVY = ("litellm", "composio", "composio_client")


def _python_seconds(code: str, repeats: int) -> float:
    """Median wall time of `python -c code` in a fresh interpreter."""
    env = {**os.environ, **common.OFFLINE_ENV}
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([common.PYTHON, "-c", code], check=True, env=env, cwd=common.ROOT)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def _imported_heavy(code: str) -> list[str]:
    """Top-level heavy packages imported by `python -c code`."""
    env = {**os.environ, **common.OFFLINE_ENV, "PYTHONPROFILEIMPORTTIME": "1"}
    out = subprocess.run(
        [common.PYTHON, "-c", code], env=env, cwd=common.ROOT, capture_output=True, text=True
    )
    return sorted({name.split(".")[0] for name in _imports(out.stderr.splitlines())} & set(HEAVY))


def _imports(lines: list[str]) -> list[str]:
    """Module names from `-X importtime` lines (a package's line comes once it is done)."""
    names = []
    for row in lines:
        if row.startswith("import time:") and "|" in row:
            names.append(row.rsplit("|", 1)[1].strip())
    return names


def _start_once(tmp: Path, *, profile: bool = False, **settings: str) -> dict[str, Any]:
    """`_start` on a free port; again on another if the port was taken meanwhile."""
    for attempt in range(3):
        try:
            return _start(tmp, profile=profile, **settings)
        except common.ProcessExited:
            if attempt == 2:
                raise
            for leftover in tmp.iterdir():  # start again from an empty directory
                leftover.unlink()
    raise AssertionError("unreachable")


def _start(tmp: Path, *, profile: bool = False, **settings: str) -> dict[str, Any]:
    """One `gateway run`: seconds to /healthz and /readyz 200, then a graceful stop.

    With `profile`, stderr is read as it comes and the moment each heavy package finished
    importing is noted, to tell whether /readyz had to wait for it.
    """
    port = common.free_port()
    env = common.gateway_env(f"sqlite+aiosqlite:///{tmp}/gateway.db", **settings)
    if profile:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*common.gateway_command(), "run", "--port", str(port)],
        cwd=tmp,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stderr is not None
        for row in proc.stderr:
            lines.append((time.perf_counter() - started, row))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        try:
            healthy = common.wait_http(f"{base}/healthz", 120, process=proc) - started
            ready = common.wait_http(f"{base}/readyz", 120, process=proc) - started
        except common.ProcessExited as exc:
            reader.join(5)
            tail = "".join(row for _, row in lines[-30:])
            raise common.ProcessExited(f"{exc}:\n{tail}") from None
        webhook = None
        if settings.get("console_token"):
            webhook = httpx.post(
                f"{base}/webhooks/console",
                json={"user": "ann", "text": "hello"},
                headers={"Authorization": f"Bearer {settings['console_token']}"},
                timeout=10,
            ).status_code
        if profile and settings.get("llm_model"):
            _wait_for_import(lines, "litellm", within=120)
        stopping = time.perf_counter()
    finally:
        common.stop_process(proc, timeout=30)
        reader.join(10)
    stopped = time.perf_counter() - stopping
    imported: dict[str, float] = {}
    cost: dict[str, float] = {}
    for at, row in lines:
        for name in _imports([row]):
            if name in HEAVY and name not in imported:
                imported[name] = at
                cost[name] = int(row.split("|")[1]) / 1e6  # cumulative microseconds
    return {
        "healthz": healthy,
        "readyz": ready,
        "stop": stopped,
        "webhook": webhook,
        "imported": imported,
        "cost": cost,
    }


def _wait_for_import(lines: list[tuple[float, str]], name: str, within: float) -> None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if name in _imports([row for _, row in list(lines)]):
            return
        time.sleep(0.05)


def run(full: bool) -> list[Figure]:
    repeats = 10 if full else 3
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
            runs.append(_start_once(Path(tmp)))
    # Which heavy packages a running gateway imports, and when: (a) nothing configured:
    # start, /readyz and a webhook stored and answered (its turn needs no model); (b) LLM and
    # Composio configured (unreachable URLs): start and /readyz, then the warm-up.
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        bare_gateway = _start_once(Path(tmp), profile=True, console_token="bench-console-token")
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        configured = _start_once(
            Path(tmp),
            profile=True,
            llm_model="openai/fake",
            llm_api_base="http://127.0.0.1:9/v1",
            composio_api_key="bench-key",
            composio_base_url="http://127.0.0.1:9",
            composio_toolkits="asana",
        )
    app_import = _python_seconds("import gateway.app", repeats)
    app_heavy = _imported_heavy("import gateway.app, gateway.cli, gateway.runtime")
    bare = _python_seconds("pass", repeats)
    # What the warm-up thread spent importing them (`-X importtime` cumulative figures).
    litellm_import = configured["cost"].get("litellm", 0.0)
    composio_import = configured["cost"].get("composio", 0.0)

    ready = [float(r["readyz"]) for r in runs]
    healthy = [float(r["healthz"]) for r in runs]
    stop = [float(r["stop"]) for r in runs]
    heavy_cost = (
        f"warm-up threads importing litellm {litellm_import:.1f} s, composio "
        f"{composio_import:.1f} s (both at once)"
    )
    warmed = configured["imported"]
    warm_text = ", ".join(f"{name} done at {at:.2f} s" for name, at in sorted(warmed.items()))
    return [
        fig(
            BENCH,
            f"process start -> /readyz 200 (median of {repeats}, fresh SQLite)",
            statistics.median(ready),
            "s",
            f"max {max(ready):.2f} s; bare `python -c pass` {bare:.2f} s",
        ),
        fig(
            BENCH,
            "process start -> /healthz 200 (median)",
            statistics.median(healthy),
            "s",
            "uvicorn accepts connections only after the lifespan (migration) ran",
        ),
        fig(BENCH, "`import gateway.app` (median)", app_import, "s", heavy_cost),
        fig(
            BENCH,
            "litellm/composio imported by `import gateway.app, .cli, .runtime`",
            ", ".join(app_heavy) or "none",
            compared=heavy_cost,
        ),
        fig(
            BENCH,
            "... by `gateway run` without LLM/Composio: start, /readyz, a webhook",
            ", ".join(sorted(bare_gateway["imported"])) or "none",
            compared=f"webhook answered {bare_gateway['webhook']}",
        ),
        fig(
            BENCH,
            "... with LLM and Composio configured (background warm-up)",
            warm_text or "none",
            compared=f"/readyz answered at {configured['readyz']:.2f} s, "
            + (
                "before the warm-up finished"
                if warmed and configured["readyz"] < min(warmed.values())
                else "after the warm-up"
            ),
        ),
        fig(BENCH, "graceful stop (SIGTERM -> exit, median)", statistics.median(stop), "s"),
    ]


def main(argv: list[str] | None = None) -> None:
    args = common.parse_args(__doc__.splitlines()[0], argv)
    figures = run(args.full)
    common.emit(figures, args, "Start-up")


if __name__ == "__main__":
    main()
