"""The README is the user's reference: every option and every setting is in it (issue 11)."""

from __future__ import annotations

import re
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


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_within_the_readme_has_its_heading() -> None:
    anchors = {slug(line.lstrip("#")) for line in README.splitlines() if line.startswith("#")}
    links = set(re.findall(r"\]\(#([^)]+)\)", README))
    assert links and links <= anchors, sorted(links - anchors)


def test_every_file_the_readme_links_exists() -> None:
    root = Path(__file__).parent.parent
    files = set(re.findall(r"\]\(((?:docs|deploy|examples)/[^)#]*)\)", README))
    assert files and all((root / f).exists() for f in files), sorted(f for f in files if not (root / f).exists())


def test_every_anchor_into_docs_has_its_heading() -> None:
    root = Path(__file__).parent.parent
    for path, anchor in set(re.findall(r"\]\(((?:docs|deploy)/[^)#]+\.md)#([^)]+)\)", README)):
        headings = {slug(line.lstrip("#")) for line in (root / path).read_text().splitlines() if line.startswith("#")}
        assert anchor in headings, (path, anchor)
