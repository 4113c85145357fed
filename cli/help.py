"""`--help` in the seed's layout (clap's long help), generated from the parser's own arguments.

A section per argument group (`ARGS:`, `OPTIONS:`), options sorted by name, one block per option: the
names on a line of their own (never wrapped), then each paragraph of its help wrapped and indented, then
`[default: ...]` taken from `Settings` unless the help gives one. So a new flag is one `add_argument`
call with a `help` text; nothing here changes. Help paragraphs are separated by a blank line ("\\n\\n").
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Iterable
from typing import Any

from app.settings import Settings

WIDTH = 100
NAMES = 4  # where an option's names start ("    -b, --binary"; 8 without a short name)
TEXT = 12  # where its help starts


def sort_key(action: argparse.Action) -> str:
    """The seed's order: by long name, short-only flags by their letter (`-v` among the v's)."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    return (longs[0] if longs else action.option_strings[0]).lstrip("-").lower()


def default_of(dest: str) -> str | None:
    """`[default: ...]` text for the Settings field `dest`, or None when there is nothing to show."""
    field = Settings.model_fields.get(dest)
    if field is None:
        return None
    value: Any = field.get_default(call_default_factory=True)
    if value is None or value is False or value == "":
        return None
    if isinstance(value, tuple):
        return ":".join(str(v) for v in value)
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class SeedHelpFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=WIDTH)

    def _format_usage(self, usage: str | None, actions: Iterable[argparse.Action], groups: Any, prefix: Any) -> str:
        return f"USAGE:\n{' ' * NAMES}{usage}\n\n"

    def _format_text(self, text: str) -> str:
        return text.strip("\n") + "\n\n"  # the description as written, line breaks kept

    def _format_action(self, action: argparse.Action) -> str:
        if action.help == argparse.SUPPRESS:
            return ""
        lines = [self.names(action)]
        for paragraph in self.paragraphs(action):
            lines += textwrap.wrap(
                paragraph,
                WIDTH,
                initial_indent=" " * TEXT,
                subsequent_indent=" " * TEXT,
                break_on_hyphens=False,  # `--server-frame` never becomes `--server-` / `frame`
                break_long_words=False,
            )
            lines.append("")
        return "\n".join(lines) + "\n"

    @staticmethod
    def names(action: argparse.Action) -> str:
        """`    -b, --binary`, `        --addr <ADDR>`, `        --frame[=<MODE>]`, `    <CMD>`."""
        metavar = action.metavar if isinstance(action.metavar, str) else f"<{action.dest.upper()}>"
        if not action.option_strings:
            return " " * NAMES + metavar
        shorts = [o for o in action.option_strings if not o.startswith("--")]
        longs = [o for o in action.option_strings if o.startswith("--")][:1]  # aliases: a paragraph of their own
        value = ""
        if action.nargs != 0:  # a metavar starting with `=` or `[=` is written against the name
            value = metavar if metavar.startswith(("=", "[=")) else " " + metavar
        return " " * (NAMES if shorts else 2 * NAMES) + ", ".join(shorts + longs) + value

    @staticmethod
    def paragraphs(action: argparse.Action) -> list[str]:
        text = action.help or ""
        paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
        shown = action.option_strings and action.nargs != 0 and "[default" not in text  # a value to default
        default = default_of(action.dest) if shown else None
        aliases = [o for o in action.option_strings if o.startswith("--")][1:]
        if aliases:
            paragraphs.append(f"Also spelled {', '.join(aliases)}.")
        if default is not None:
            paragraphs.append(f"[default: {default}]")
        return paragraphs


def format_help(parser: argparse.ArgumentParser, extra: dict[str, list[argparse.Action]]) -> str:
    """The whole help: description, usage, then each group with its arguments (`extra` adds display-only ones)."""
    formatter = parser._get_formatter()
    formatter.add_text(parser.description)
    formatter.add_usage(parser.usage, parser._actions, [])
    for group in parser._action_groups:
        actions = [*group._group_actions, *extra.get(group.title or "", [])]
        if not actions:
            continue
        formatter.start_section(group.title)
        options = sorted((a for a in actions if a.option_strings), key=sort_key)
        formatter.add_arguments([a for a in actions if not a.option_strings] + options)
        formatter.end_section()
    formatter.add_text(parser.epilog)
    return formatter.format_help()
