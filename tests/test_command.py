"""CMD's `#!` line, checked at start-up (SPEC §2: a CMD that cannot run exits 2 before anything runs)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.command import interpreter_problem, shebang


@pytest.mark.parametrize(
    ("head", "parsed"),
    [
        (b"#!/bin/sh\necho", ("/bin/sh", "")),
        (b"#! /bin/sh -e\n", ("/bin/sh", "-e")),
        (b"#!/usr/bin/env -S python3 -u\n", ("/usr/bin/env", "-S python3 -u")),
        (b"#!/usr/bin/env python3 -u\n", ("/usr/bin/env", "python3 -u")),  # one argument, as the kernel passes it
        (b"\x7fELF", None),
        (b"echo hi\n", None),
    ],
)
def test_shebang(head: bytes, parsed: tuple[str, str] | None) -> None:
    assert shebang(head) == parsed


@pytest.mark.parametrize(
    "head",
    [b"#!/bin/sh\n", b"#!/usr/bin/env sh\n", b"#!/usr/bin/env -S sh -e\n", b"#!/usr/bin/env -i A=1 sh\n", b"ELF"],
)
def test_runnable_interpreters_pass(head: bytes) -> None:
    assert interpreter_problem(head) is None


@pytest.mark.parametrize(
    ("head", "says"),
    [
        (b"#!/no/such/sh\n", "'/no/such/sh'"),
        (b"#!/usr/bin/env no-such-program-here\n", "'no-such-program-here'"),
        (b"#!/usr/bin/env -S no-such-program-here -u\n", "'no-such-program-here'"),
        (b"#!/usr/bin/env sh -e\n", "-S sh -e"),
        (b"#!/bin/sh\r\n", "Windows line endings"),
        (b"#!/usr/bin/env sh\r\n", "Windows line endings"),
        (b"#!\n", "empty"),
    ],
)
def test_interpreters_that_cannot_run_say_why(head: bytes, says: str) -> None:
    problem = interpreter_problem(head)
    assert problem is not None and says in problem


@given(st.binary(max_size=300))
def test_any_first_bytes_are_judged_without_raising(head: bytes) -> None:
    problem = interpreter_problem(head)
    assert problem is None or isinstance(problem, str)
