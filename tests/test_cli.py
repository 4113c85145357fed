"""SPEC §1-§2: the CLI grammar, turned into Settings; usage errors exit 2 with one line, before anything runs."""

from __future__ import annotations

import shutil
import sys

import pytest

from app.settings import FrameMode
from cli.__main__ import main, parser, to_settings

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
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert names in err


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


def test_module_entry_point_exists() -> None:
    assert sys.modules["cli.__main__"].main is main
