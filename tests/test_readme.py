"""The README is the user's reference: every option and every setting is in it (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import Settings
from cli.__main__ import env_name, parser

README = (Path(__file__).parent.parent / "README.md").read_text()


@pytest.mark.parametrize(
    "flags", [action.option_strings for action in parser()._actions if action.option_strings], ids=str
)
def test_every_flag_is_in_the_readme(flags: list[str]) -> None:
    assert any(f"`{flag}" in README or f"{flag}`" in README for flag in flags), f"README.md does not mention {flags}"


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme(field: str) -> None:
    """Each setting is named by its flag or by its variable."""
    flags = [a.option_strings for a in parser()._actions if a.dest == field and a.option_strings]
    named = env_name(field) in README or any(f"`{flag}" in README for option in flags for flag in option)
    assert named or field in ("cmd", "args"), f"README.md names neither {env_name(field)} nor a flag for it"
