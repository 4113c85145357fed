"""SPEC §15: scalesocket 0.2's spellings are aliases; where 0.2 changed a meaning, the seed's stands."""

from __future__ import annotations

import pytest

from app.settings import FrameMode, Settings
from cli.__main__ import to_settings
from tests.conftest import error_of


def test_delay_is_cmd_attach_delay() -> None:
    assert to_settings(["--delay", "2.5", "cat"]).attach_delay == 2.5
    assert to_settings(["--delay=0", "--tcp", "cat"]).attach_delay == 0.0


def test_clientframe_and_serverframe() -> None:
    s = to_settings(["--clientframe=json", "--serverframe=binary", "cat"])
    assert (s.client_framing, s.server_framing) == (FrameMode.json, FrameMode.binary)


@pytest.mark.parametrize(
    "argv",
    [["--frame=gwsocket", "cat"], ["--client-frame=gwsocket", "--server-frame=gwsocket", "cat"]],
)
def test_gwsocket_is_binary(argv: list[str]) -> None:
    s = to_settings(argv)
    assert s.client_framing == s.server_framing == FrameMode.binary


def test_gwsocket_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_CMD", "cat")
    monkeypatch.setenv("SCALESOCKET_FRAME", "gwsocket")
    assert Settings().frame is FrameMode.binary


@pytest.mark.parametrize(
    ("argv", "json_logs"),
    [
        (["--log=json", "cat"], True),
        (["--log", "text", "cat"], False),
        (["--log=json", "--json", "cat"], True),
        (["cat"], False),
    ],
)
def test_log_format(argv: list[str], json_logs: bool) -> None:
    assert to_settings(argv).json_logs is json_logs


def test_seed_meanings_stand() -> None:
    assert to_settings(["--frame", "cat"]).frame is FrameMode.binary  # 0.2's bare --frame was json
    assert to_settings(["--json", "cat"]).json_logs is True  # 0.2's --json was framing


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--log=xml", "cat"], "--log"),
        (["--log=text", "--json", "cat"], "--log"),
        (["--delay", "soon", "cat"], "--delay"),
        (["--serverframe=xml", "cat"], "--serverframe"),
        (["--frame=gwsocket", "--clientframe=json", "cat"], "--frame"),
    ],
)
def test_bad_values_exit_2(argv: list[str], names: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(argv, capsys)
    assert names in err, err


def test_maxforks_is_maxrooms(monkeypatch: pytest.MonkeyPatch) -> None:
    assert to_settings(["--maxforks", "3", "cat"]).maxrooms == 3
    assert to_settings(["--maxforks=2", "cat"]).maxrooms == 2
    monkeypatch.setenv("SCALESOCKET_MAXFORKS", "4")
    assert to_settings(["cat"]).maxrooms == 4
