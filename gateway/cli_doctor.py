"""The `gateway doctor` command (registered in gateway/cli.py with `app.command()(doctor)`)."""

from __future__ import annotations

import asyncio

import typer


def doctor(
    llm: bool = typer.Option(
        False, "--llm", help="Also send one tiny completion to the configured model."
    ),
    timeout: float = typer.Option(10.0, help="Seconds each check may take."),
) -> None:
    """Check settings, database, channel credentials, Composio and (with --llm) the model.

    One row per check (✔ ok, ✘ failed, – skipped), with the fix under each ✘.
    Exits 1 if anything failed, so it can gate a deployment.
    """
    from gateway.doctor import SYMBOLS, render, run

    checks = asyncio.run(run(llm=llm, seconds=timeout))
    colours = {SYMBOLS["ok"]: "green", SYMBOLS["fail"]: "red"}
    for line in render(checks).splitlines():
        colour = colours.get(line[:1]) or ("yellow" if line.lstrip().startswith("fix:") else None)
        typer.secho(line, fg=colour)
    if any(check.failed for check in checks):
        raise typer.Exit(1)
