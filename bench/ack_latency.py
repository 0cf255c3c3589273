"""Webhook ack latency: signed requests at a fixed rate into a running gateway process.

For every channel registered in gateway/registry.py (and the console channel), a fresh
`gateway run` subprocess (SQLite file, the fake LLM answering instantly, the platform's
fake API receiving the replies), once it has answered one message end to end, takes
signed webhook requests at 100 and 500 msg/s from a separate load-generator process
(bench/_loadgen.py, open loop); `--db postgres` runs it on a throwaway Postgres database.
Figures: time to HTTP 200 p50/p99/max, the requests that failed (an answer later than
10 s counts as failed: the platforms retry sooner) and the rate actually served. Turns
run in the same process while the load lasts, as they would in production.
Compared with: /healthz latency measured at the same time (the HTTP stack without
verification and storage), the generator's own lateness, and Slack's 3 s acknowledgement
deadline (the strictest of the three platforms).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench import common
from bench.common import Figure, fig, percentile
from bench.webhooks import TARGETS, Target

BENCH = "ack_latency"


def registered() -> set[str]:
    from gateway.registry import SPECS

    return {"console", *(spec.name for spec in SPECS)}


def _load(
    target: Target,
    settings: dict[str, str],
    llm: Any,
    rate: int,
    seconds: float,
    users: int,
    db: str,
) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-ack-") as tmp_name,
        common.temp_database_sync(db) as db_url,
    ):
        tmp = Path(tmp_name)
        env = common.gateway_env(
            db_url,
            llm_model="openai/fake-model",
            llm_api_base=f"{llm.url}/v1",
            llm_api_key="sk-bench",
            llm_retries="0",
            **settings,
        )
        proc, base, log = _start_gateway(tmp, env)
        try:
            run = uuid.uuid4().hex[:8]
            _warm_up(target, base, llm, run)
            count = int(rate * seconds)
            requests = [target.request(i, i % users, run) for i in range(count)]
            (tmp / "requests.json").write_text(
                json.dumps(
                    [
                        {
                            "path": r.path,
                            "body": base64.b64encode(r.body).decode(),
                            "headers": r.headers,
                        }
                        for r in requests
                    ]
                )
            )
            subprocess.run(
                [
                    common.PYTHON,
                    "-m",
                    "bench._loadgen",
                    str(tmp / "requests.json"),
                    base,
                    str(rate),
                    str(tmp / "out.json"),
                ],
                cwd=common.ROOT,
                check=True,
            )
            out = json.loads((tmp / "out.json").read_text())
        finally:
            proc.kill()  # its backlog is of no interest; a graceful drain would take long
            proc.wait()
            log.close()
    return out


def _start_gateway(tmp: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Any]:
    """`gateway run` on a free port, ready; tried again if the port was taken meanwhile."""
    for attempt in range(3):
        port = common.free_port()
        log = open(tmp / "gateway.log", "w+")  # noqa: SIM115 - closed by the caller
        proc = subprocess.Popen(
            [*common.gateway_command(), "run", "--port", str(port)],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            common.wait_http(f"{base}/readyz", 120, process=proc)
            return proc, base, log
        except (TimeoutError, common.ProcessExited):
            proc.kill()
            proc.wait()
            log.seek(0)
            text = log.read()[-3000:]
            log.close()
            if attempt == 2 or "address already in use" not in text.lower():
                raise RuntimeError(f"gateway did not start:\n{text}") from None
    raise AssertionError("unreachable")


def _warm_up(target: Target, base: str, llm: Any, run: str) -> None:
    """One message answered end to end first: /readyz is 200 before the gateway has warmed
    its LLM client (in a thread), and this measures the steady state, not a restart."""
    llm.requests.clear()
    warm = target.request(10**6, 10**6, run)
    response = httpx.post(base + warm.path, content=warm.body, headers=warm.headers, timeout=60)
    response.raise_for_status()
    deadline = time.monotonic() + 120
    while not llm.requests:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target.name}: the warm-up message was never answered")
        time.sleep(0.05)


def _figures(name: str, rate: int, out: dict[str, Any]) -> Figure:
    results = out["results"]
    ok = [r["latency"] for r in results if r["status"] == 200]
    failed = [r["status"] for r in results if r["status"] != 200]
    kinds = sorted({str(s) for s in failed})
    health = out["healthz"]
    late = [r["late"] for r in results]
    finished = max((r["done"] for r in results if r["status"] == 200), default=0.0)
    served = len(ok) / finished if finished else 0.0
    timing = (
        f"{percentile(ok, 50) * 1000:.0f} / {percentile(ok, 99) * 1000:.0f} / "
        f"{max(ok) * 1000:.0f} ms"
        if ok
        else "none answered"
    )
    value = (
        f"{timing}, failed {len(failed)}/{len(results)}"
        + (f" ({', '.join(kinds)})" if kinds else "")
        + f"; served {served:.0f}/s"
    )
    compared = (
        f"/healthz meanwhile p50 {percentile(health, 50) * 1000:.1f} / p99 "
        f"{percentile(health, 99) * 1000:.1f} ms; generator lateness p99 "
        f"{percentile(late, 99) * 1000:.1f} ms; Slack deadline 3,000 ms"
    )
    return fig(BENCH, f"{name} @ {rate}/s: p50 / p99 / max to 200", value, compared=compared)


def run(full: bool, db: str = "sqlite") -> list[Figure]:
    from tests.fakes.llm import FakeLLM
    from tests.fakes.server import serve

    rates = (100, 500)
    seconds = 10.0 if full else 2.0
    users = 1000 if full else 300
    enabled = registered()
    figures: list[Figure] = []
    llm = FakeLLM()
    with serve(llm.app) as llm_server:
        llm.url = llm_server.url  # type: ignore[attr-defined]
        for target_class in TARGETS:
            if target_class.name not in enabled:
                figures.append(
                    fig(
                        BENCH,
                        target_class.name,
                        "skipped",
                        compared="not registered in gateway/registry.py SPECS",
                    )
                )
                continue
            target = target_class()
            with target.fake() as settings:
                for rate in rates:
                    out = _load(target, settings, llm, rate, seconds, users, db)
                    llm.requests.clear()
                    figures.append(
                        _figures(
                            target.name if db == "sqlite" else f"{target.name} (Postgres)",
                            rate,
                            out,
                        )
                    )
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--json-out")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args(argv)
    figures = run(args.full, args.db)
    common.emit(figures, args, "Webhook ack latency")


if __name__ == "__main__":
    main()
