"""SPEC §1-§2: the CLI grammar, turned into Settings; usage errors exit 2 with one line, before anything runs."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from app import __version__
from app.settings import FrameMode
from cli.__main__ import USAGE, main, parser, to_settings
from tests.conftest import TIMEOUT, error_of

CAT = shutil.which("cat")
ECHO = shutil.which("echo")


def test_options_after_cmd_belong_to_scalesocket() -> None:
    s = to_settings(["cat", "--joinmsg=hi"])
    assert (s.cmd, s.args, s.joinmsg) == (CAT, [], "hi")


def test_arguments_for_cmd_only_after_double_dash() -> None:
    s = to_settings(["--addr", "127.0.0.1:9001", "echo", "--", "-n", "--frame", "hello"])
    assert (s.cmd, s.args, s.addr) == (ECHO, ["-n", "--frame", "hello"], "127.0.0.1:9001")


@pytest.mark.parametrize(
    ("argv", "frame", "cmd"),
    [
        (["--frame", "cat"], FrameMode.binary, CAT),
        (["--frame=json", "cat"], FrameMode.json, CAT),
        (["--frame=binary", "cat"], FrameMode.binary, CAT),
        (["cat", "--frame"], FrameMode.binary, CAT),
    ],
)
def test_bare_frame_means_binary(argv: list[str], frame: FrameMode, cmd: str) -> None:
    s = to_settings(argv)
    assert (s.frame, s.cmd) == (frame, cmd)
    assert s.client_framing == s.server_framing == frame


def test_client_and_server_frame_independently() -> None:
    s = to_settings(["--client-frame=json", "--server-frame=binary", "cat"])
    assert (s.client_framing, s.server_framing) == (FrameMode.json, FrameMode.binary)


def test_flags_and_defaults() -> None:
    s = to_settings(["-vv", "-b", "--json", "--oneshot", "--metrics", "--stats", "--passenv=", "cat"])
    assert (s.verbose, s.binary, s.json_logs, s.oneshot, s.metrics, s.stats, s.passenv) == (
        2,
        True,
        True,
        True,
        True,
        True,
        [],
    )
    d = to_settings(["cat"])
    assert (d.addr, d.passenv, d.tcpports, d.attach_delay, d.verbose) == (
        "0.0.0.0:9000",
        ["PATH", "DYLD_LIBRARY_PATH"],
        (9001, 9999),
        0.0,
        0,
    )
    assert to_settings(["--tcp", "cat"]).attach_delay == 1.0
    assert to_settings(["--tcp", "--cmd-attach-delay", "0.5", "cat"]).attach_delay == 0.5
    assert to_settings(["--passenv", "HOME,LANG", "cat"]).passenv == ["HOME", "LANG"]
    assert to_settings(["--addr", "[::1]:9000", "cat"]).host == "::1"


def test_flags_win_over_environment_which_fills_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_ADDR", "1.2.3.4:5")
    monkeypatch.setenv("SCALESOCKET_STOP_GRACE", "2.5")
    assert to_settings(["--addr", "127.0.0.1:80", "cat"]).addr == "127.0.0.1:80"
    s = to_settings(["cat"])
    assert (s.addr, s.stop_grace) == ("1.2.3.4:5", 2.5)


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--tcpports", "5", "cat"], "--tcpports"),
        (["--tcpports", "10:5", "cat"], "--tcpports"),
        (["--frame=xml", "cat"], "--frame"),
        (["--addr", "nowhere", "cat"], "--addr"),
        (["--addr", "::1:9000", "cat"], "--addr"),
        (["--cmd-attach-delay", "soon", "cat"], "--cmd-attach-delay"),
        (["--frame=json", "--client-frame=json", "cat"], "--frame"),
        (["--frame", "--server-frame=json", "cat"], "--frame"),
        (["no-such-command-here"], "CMD"),
        (["/etc/passwd"], "CMD"),
        ([], "CMD"),
        (["--bogus", "cat"], "--bogus"),
    ],
)
def test_bad_values_exit_2_with_one_line(argv: list[str], names: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert names in error_of(argv, capsys)


def test_cmd_and_args_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_CMD", "echo")
    monkeypatch.setenv("SCALESOCKET_ARGS", '["-n", "1"]')
    s = to_settings([])
    assert (s.cmd, s.args) == (ECHO, ["-n", "1"])
    s = to_settings(["--", "2"])  # ARGS after `--` win over the variable
    assert (s.cmd, s.args) == (ECHO, ["2"])
    s = to_settings(["cat"])  # a CMD on the command line never takes the environment's ARGS
    assert (s.cmd, s.args) == (CAT, [])


def test_every_flag_also_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [("FRAME", "json"), ("JSON", "true"), ("PASSENV", "HOME"), ("TCPPORTS", "7000:7010")]:
        monkeypatch.setenv(f"SCALESOCKET_{name}", value)
    s = to_settings(["cat"])
    assert (s.frame, s.json_logs, s.passenv, s.tcpports) == (FrameMode.json, True, ["HOME"], (7000, 7010))


@pytest.mark.parametrize(
    ("variable", "value", "names"),
    [
        ("SCALESOCKET_ADDR", "bogus", "--addr (from SCALESOCKET_ADDR)"),
        ("SCALESOCKET_FRAME", "xml", "--frame (from SCALESOCKET_FRAME)"),
        ("SCALESOCKET_JSON", "maybe", "--json (from SCALESOCKET_JSON)"),
        ("SCALESOCKET_STOP_GRACE", "-1", "SCALESOCKET_STOP_GRACE"),
        ("SCALESOCKET_ARGS", "not json", "SCALESOCKET_ARGS"),
    ],
)
def test_an_error_from_a_variable_names_it(
    variable: str, value: str, names: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(variable, value)
    assert names in error_of(["cat"], capsys)


def test_an_error_from_a_flag_names_the_flag_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SCALESOCKET_ADDR", "127.0.0.1:9000")
    err = error_of(["--addr", "bogus", "cat"], capsys)
    assert "--addr:" in err and "SCALESOCKET_ADDR" not in err


def test_missing_cmd_says_how_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(["--frame=json"], capsys)
    assert "<CMD>" in err and "SCALESOCKET_CMD" in err


@pytest.mark.parametrize("mode", ["json", "binary"])
def test_frame_with_a_space_says_to_write_it_with_equals(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert f"--frame={mode}" in error_of(["--frame", mode, "cat"], capsys)


@pytest.mark.parametrize(
    ("argv", "fixed"),
    [
        (["sh", "-c", "echo hi"], "scalesocket sh -- -c 'echo hi'"),
        (["--frame=json", "ls", "-l", "--joinmsg", "x", "/tmp"], "scalesocket --frame=json --joinmsg x ls -- -l /tmp"),
        (["grep", "-v", "x", "--", "f"], "scalesocket -v grep -- x f"),  # -v is ours: the rewrite shows that too
    ],
)
def test_arguments_for_cmd_without_double_dash_show_the_line_with_it(
    argv: list[str], fixed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    err = error_of(argv, capsys)
    assert err.rstrip("\n").endswith(fixed), err


def test_an_unknown_option_before_cmd_is_not_rewritten(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(["--bogus", "cat", "-x"], capsys)
    assert "unrecognized arguments: --bogus -x" in err and " -- " not in err


@pytest.mark.parametrize(
    ("first_line", "says"),
    [
        ("#!/usr/bin/no-such-python", "'/usr/bin/no-such-python'"),
        ("#!/usr/bin/env no-such-python", "'no-such-python'"),
        ("#!/usr/bin/env python3 -u", "#!/usr/bin/env -S python3 -u"),
        ("#!/bin/sh\r", "Windows line endings"),
    ],
)
def test_cmd_whose_interpreter_cannot_run_is_a_start_up_error(
    first_line: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "script"
    script.write_text(f"{first_line}\nprint('hi')\n")
    script.chmod(0o755)
    err = error_of([str(script)], capsys)
    assert "<CMD>" in err and says in err


def test_a_cmd_in_this_folder_or_without_x_says_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "game.py"
    script.write_text("#!/bin/sh\necho hi\n")
    assert "chmod +x ./game.py" in error_of(["./game.py"], capsys)
    script.chmod(0o755)
    assert "write ./game.py" in error_of(["game.py"], capsys)
    assert to_settings(["./game.py"]).cmd == str(script)


def test_port_in_use_names_the_address_and_exits_2() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-m", "cli", "--addr", addr, "cat"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=Path(__file__).parent.parent,
        )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr.splitlines()[-1]
        == f"scalesocket: error: --addr: {addr} is already in use (another server listens there)"
    )
    assert "Errno" not in done.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["-V"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("scalesocket 0.")


def test_help_describes_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for option in [action.option_strings for action in parser()._actions if action.option_strings]:
        assert any(flag in out for flag in option)
    for seed in ("Interface to bind to", "Command to wrap", "Serve only once", "Port range for TCP", "Log JSON"):
        assert seed in out


# The seed's `--help` (its names lines, in its order): ours keeps them all, verbatim, among any extra options.
SEED_NAMES = [
    "    <CMD>",
    "    <ARGS>...",
    "        --addr <ADDR>",
    "    -b, --binary",
    "        --client-frame=<MODE>",
    "        --cmd-attach-delay <SECONDS>",
    "        --frame[=<MODE>]",
    "    -h, --help",
    "        --joinmsg <MSG>",
    "        --json",
    "        --leavemsg <MSG>",
    "        --metrics",
    "        --oneshot",
    "        --passenv <LIST>",
    "        --server-frame=<MODE>",
    "        --staticdir <DIR>",
    "        --stats",
    "        --tcp",
    "        --tcpports <START:END>",
    "    -v",
    "    -V, --version",
]


def help_text(capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def help_blocks(text: str) -> dict[str, list[str]]:
    """Each argument's names line -> the lines of its help (a names line is indented 4 or 8, help 12)."""
    blocks: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        if line and not line.startswith(" "):
            section = line
        elif (
            section.endswith(":")
            and section not in ("USAGE:", "ENVIRONMENT:")
            and line.strip()
            and not line.startswith(" " * 12)
        ):
            assert line not in blocks, f"two blocks for {line!r}"
            blocks[line] = []
        elif section.endswith(":") and section not in ("USAGE:", "ENVIRONMENT:") and line.strip():
            blocks[list(blocks)[-1]].append(line.strip())
    return blocks


def test_help_matches_the_seed_layout(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys)
    lines = text.splitlines()
    assert lines[:5] == [
        f"scalesocket {__version__}",
        "A websocket server and autoscaler",
        "",
        "USAGE:",
        "    " + USAGE,
    ]
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    blocks = help_blocks(text)
    assert [name for name in blocks if name in SEED_NAMES] == SEED_NAMES  # all there, in the seed's order
    assert blocks["    <ARGS>..."] == ["Arguments to command"]
    assert blocks["    <CMD>"] == ["Command to wrap"]
    sections: dict[str, list[str]] = {}
    heading = ""
    for line in lines:  # the names lines of each section, in order
        if line and not line.startswith(" "):
            heading = line
        elif line in blocks:
            sections.setdefault(heading, []).append(line)
    assert sections["OPTIONS:"][0] == "        --addr <ADDR>"
    for section in sections.values():  # options are sorted by name within each section
        options = [name for name in section if name.lstrip().startswith("-")]
        assert options == sorted(options, key=lambda n: n.split(",")[-1].strip().lstrip("-").lower().split("=")[0])
    for names, default in [
        ("        --addr <ADDR>", "[default: 0.0.0.0:9000]"),
        ("        --passenv <LIST>", "[default: PATH,DYLD_LIBRARY_PATH]"),
        ("        --tcpports <START:END>", "[default: 9001:9999]"),
    ]:
        assert blocks[names][-1] == default
    assert "END exclusive" in " ".join(blocks["        --tcpports <START:END>"])
    for template in ("#ID", "#ROOM", "#REMOTE_ADDR", "#QUERY_STRING", "#QUERY_<NAME>"):
        assert template in " ".join(blocks["        --joinmsg <MSG>"])
        assert template in " ".join(blocks["        --leavemsg <MSG>"])


def test_help_has_one_whole_names_line_per_option(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = help_blocks(help_text(capsys))
    for action in parser()._actions:
        if action.option_strings:
            shorts = [o for o in action.option_strings if not o.startswith("--")]
            longs = [o for o in action.option_strings if o.startswith("--")]
            [names] = [n for n in blocks if set(shorts + longs[:1]) <= set(re.split(r"[ ,=\[]+", n.strip()))]
            assert names.startswith("    -" if shorts else "        --")
            for alias in longs[1:]:  # other spellings: named in the option's own block
                assert alias in " ".join(blocks[names]), (alias, blocks[names])
    for paragraph in blocks.values():  # a name is never cut at a hyphen across lines
        assert not any(line.endswith("-") and not line.endswith(" -") for line in paragraph), paragraph


def test_module_entry_point_exists() -> None:
    assert sys.modules["cli.__main__"].main is main
