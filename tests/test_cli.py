"""The `gateway` command as an operator uses it, in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fakes.llm import FakeLLM
from tests.fakes.server import serve
from tests.processes import ROOT


def gateway(*args: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "COMPOSIO_", "DATABASE_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args],
        cwd=ROOT,
        env={**clean, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_invalid_configuration_is_one_clear_error(tmp_path: Path) -> None:
    result = gateway("db", "upgrade", env={"DATABASE_URL": "mysql://nope", "POOL_CONCURRENCY": "0"})
    assert result.returncode == 2
    assert "Invalid configuration" in result.stderr
    assert "DATABASE_URL" in result.stderr and "POOL_CONCURRENCY" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_then_chat_then_users_list(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/data/gateway.db"}
    upgraded = gateway("db", "upgrade", env=env)
    assert upgraded.returncode == 0 and "database at revision" in upgraded.stdout

    fake = FakeLLM()
    with serve(fake.app) as llm:
        chat_env = {
            **env,
            "LLM_MODEL": "openai/fake",
            "LLM_API_BASE": f"{llm.url}/v1",
            "LLM_API_KEY": "sk-x",
        }
        chat = gateway("chat", "--user", "ann", env=chat_env, stdin="hello there\n/whoami\n")
    assert chat.returncode == 0, chat.stderr
    assert "assistant> echo: hello there" in chat.stdout
    assert "console: ann" in chat.stdout

    listed = gateway("users", "list", env=env)
    assert listed.returncode == 0 and "console:ann" in listed.stdout


def test_chat_without_a_model_says_what_to_configure(tmp_path: Path) -> None:
    env = {"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/gateway.db"}
    chat = gateway("chat", "--user", "bob", env=env, stdin="hi\n")
    assert chat.returncode == 0, chat.stderr
    assert "LLM_MODEL" in chat.stderr  # said once at start
    assert "assistant> This assistant has no language model configured" in chat.stdout
