"""CMD at start-up: resolved to a full path, and its `#!` interpreter checked, so a bad CMD exits 2 at once.

Without the interpreter check a script whose `#!` names a missing program passes start-up and then fails
every room (exec gives ENOENT for the script itself, which reads as if the script were missing).
"""

from __future__ import annotations

import os
import shutil

SHEBANG_MAX = 256  # what Linux reads of a `#!` line (BINPRM_BUF_SIZE)


def resolve(cmd: str) -> str:
    """The full path of `cmd` (looked up in the server's PATH); ValueError if it cannot run."""
    # Resolved with the server's PATH: with --passenv= the child has no PATH to look it up.
    found = shutil.which(cmd)
    if found is None or os.path.isdir(found):
        raise ValueError(_not_found(cmd))
    path = os.path.abspath(found)
    try:
        with open(path, "rb") as file:
            head = file.read(SHEBANG_MAX)
    except OSError:
        return path  # executable but unreadable: only the kernel can tell; let the spawn report it
    problem = interpreter_problem(head)
    if problem is not None:
        raise ValueError(f"{cmd!r}: {problem}")
    return path


def _not_found(cmd: str) -> str:
    """Why `cmd` cannot run, with what a newcomer most likely meant (`x.py` here is `./x.py`)."""
    if os.path.isfile(cmd) and not os.access(cmd, os.X_OK):
        return f"{cmd!r} is not executable: chmod +x {cmd}"
    if os.path.isfile(cmd) and os.sep not in cmd:
        return f"{cmd!r} is not on PATH: write ./{cmd} for the one in this folder"
    return f"{cmd!r} not found or not executable"


def shebang(head: bytes) -> tuple[str, str] | None:
    """`#!/usr/bin/env -S python3 -u` -> ("/usr/bin/env", "-S python3 -u"); None without a `#!` line."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace")
    # The kernel splits once, at the first blank after the interpreter; the rest is one argument.
    interpreter, _, argument = line.strip(" \t").partition(" ")
    if "\t" in interpreter:
        interpreter, _, argument = line.strip(" \t").partition("\t")
    return interpreter, argument.strip(" \t")


def interpreter_problem(head: bytes) -> str | None:
    """Why the `#!` line at the start of a file cannot run, or None (also for files without one)."""
    found = shebang(head)
    if found is None:
        return None
    interpreter, argument = found
    crlf = " (the file has Windows line endings: convert it with dos2unix)"
    if not interpreter:
        return "empty #! line"
    if not _executable(interpreter):
        return f"its interpreter {interpreter!r} (from the #! line) is not found or not executable" + (
            crlf if interpreter.endswith("\r") else ""
        )
    if os.path.basename(interpreter) == "env":
        program = _env_program(argument)
        if program is not None and " " in program:
            fix = f"#!{interpreter} -S {argument}"
            return f"`#!{interpreter} {argument}` runs a program named {program!r}: write `{fix}`"
        if program is not None and shutil.which(program) is None:
            line = f"#!{interpreter} {argument}".rstrip("\r")
            return f"its interpreter {program!r} (from `{line}`) is not on PATH" + (
                crlf if program.endswith("\r") else ""
            )
    elif argument.endswith("\r"):
        return f"its #! line ends in a carriage return{crlf}"
    return None


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _env_program(argument: str) -> str | None:
    """The program `env` would run for this `#!` argument (`-S python3 -u` -> `python3`), if it can be told."""
    if not argument.startswith("-S"):
        # Without -S env gets the whole rest of the line as one word: `python3 -u` is one program name.
        return None if not argument or argument.startswith("-") else argument
    for word in argument[2:].split():
        if word.startswith("-") or "=" in word:
            continue  # an option of env's, or a variable it sets
        return word
    return None
