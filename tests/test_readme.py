"""The README's configuration table stays true: every setting is documented there."""

from __future__ import annotations

from pathlib import Path

from gateway.settings import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    missing = [
        name.upper() for name in Settings.model_fields if f"| `{name.upper()}` |" not in README
    ]
    assert missing == []


def test_readme_gives_the_two_commands() -> None:
    assert "make run" in README and "make test" in README
