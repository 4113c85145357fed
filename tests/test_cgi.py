"""SPEC §14: `--cgi` (websocketd's CGI environment) and `#HTTP_<NAME>` in join/leave messages."""

from __future__ import annotations

import json
import string
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app import __version__
from app.cgi import cgi_environment, http_variables
from app.templates import ClientInfo, Template
from tests.conftest import Serve, child_settings, recv_text

SETTINGS = settings(max_examples=200, deadline=None, database=None)


def scope(headers: list[tuple[bytes, bytes]], **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "type": "websocket",
        "http_version": "1.1",
        "scheme": "ws",
        "server": ("127.0.0.1", 9000),
        "client": ("10.1.2.3", 40000),
        "path": "/lobby",
        "raw_path": b"/lobby",
        "query_string": b"a=1&b=%20",
        "headers": headers,
    }
    values.update(overrides)
    return values


# --- pure -------------------------------------------------------------------------------------


def test_every_header_as_http_name_repeated_joined() -> None:
    headers = [(b"host", b"example.com"), (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")]
    assert http_variables(headers) == {"HTTP_HOST": "example.com", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 2.2.2.2"}


def test_cgi_environment_of_a_request() -> None:
    env = cgi_environment(scope([(b"host", b"example.com:8443"), (b"cookie", b"s=1")]), "lobby")
    assert env == {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": f"scalesocket/{__version__}",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "8443",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/lobby?a=1&b=%20",
        "SCRIPT_NAME": "/lobby",
        "PATH_INFO": "",
        "REMOTE_HOST": "10.1.2.3",
        "REMOTE_PORT": "40000",
        "HTTP_HOST": "example.com:8443",
        "HTTP_COOKIE": "s=1",
    }


@pytest.mark.parametrize(
    ("host", "name", "port"),
    [
        (b"example.com", "example.com", "9000"),  # no port in Host: the bound one
        (b"[::1]:7000", "::1", "7000"),
        (b"[::1]", "::1", "9000"),
        (None, "127.0.0.1", "9000"),  # no Host at all: the bound address
    ],
)
def test_server_name_and_port_from_host_else_bound(host: bytes | None, name: str, port: str) -> None:
    env = cgi_environment(scope([] if host is None else [(b"host", host)]), "r")
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)


def test_no_http_proxy_from_a_client_header() -> None:
    """httpoxy: a `Proxy:` header must not become the child's HTTP_PROXY (its libraries' proxy)."""
    env = cgi_environment(scope([(b"proxy", b"http://evil.example:8080"), (b"x-a", b"1")]), "r")
    assert "HTTP_PROXY" not in env and env["HTTP_X_A"] == "1"


def test_https_on_only_under_tls() -> None:
    assert "HTTPS" not in cgi_environment(scope([]), "r")
    assert cgi_environment(scope([], scheme="wss"), "r")["HTTPS"] == "on"


def test_slash_room_script_name() -> None:
    assert cgi_environment(scope([], path="/", raw_path=b"/", query_string=b""), "")["SCRIPT_NAME"] == "/"
    assert cgi_environment(scope([], path="/", raw_path=b"/", query_string=b""), "")["REQUEST_URI"] == "/"


def info(headers: list[tuple[bytes, bytes]]) -> ClientInfo:
    return ClientInfo(3, "", "10.0.0.1:1", "r", scope(headers))


@pytest.mark.parametrize(
    ("template", "expanded"),
    [
        ('{"cookie":"#HTTP_COOKIE"}', '{"cookie":"s%3D1%3B%20t%3D%22x%22"}'),
        ("#HTTP_USER_AGENT/#ID", "probe%2F1.0/3"),
        ("#HTTP_AUTHORIZATION", "#HTTP_AUTHORIZATION"),  # absent: left as written
        ("#HTTP_cookie", "#HTTP_cookie"),  # NAME is matched as written, against upper-cased names
        ("#HTTP_", "#HTTP_"),
    ],
)
def test_http_variables_in_templates(template: str, expanded: str) -> None:
    headers = [(b"cookie", b's=1; t="x"'), (b"user-agent", b"probe/1.0")]
    assert Template(template).expand(info(headers)) == expanded


@SETTINGS
@given(st.binary(max_size=64).filter(lambda b: b"\r" not in b and b"\n" not in b))
def test_header_values_in_templates_cannot_inject(value: bytes) -> None:
    expanded = Template('{"v":"#HTTP_X_TOKEN","id":#ID}').expand(info([(b"x-token", value)]))
    inner = expanded.removeprefix('{"v":"').removesuffix('","id":3}')
    assert set(inner) <= set(string.ascii_letters + string.digits + "_.-~%")
    assert unquote_to_bytes(inner) == value  # exactly the bytes sent, recoverable


@SETTINGS
@given(st.binary(max_size=64))
def test_header_bytes_reach_the_environment_exactly(value: bytes) -> None:
    text = http_variables([(b"x-token", value)])["HTTP_X_TOKEN"]
    assert text.encode("utf-8", "surrogateescape") == value  # as os.fsencode gives the child


# --- through a real server --------------------------------------------------------------------


@pytest.mark.anyio
async def test_cgi_gives_the_child_the_starters_request(server: Serve) -> None:
    async with server(child_settings("env", cgi=True)) as s:
        first = [("Cookie", "who=first"), ("X-Dup", "a"), ("X-Dup", "b")]
        async with s.connect("/game?level=2", additional_headers=first) as ws:
            env = json.loads(await recv_text(ws))
            async with s.connect("/game", additional_headers=[("Cookie", "who=second")]):
                pass  # joins the running child: its environment is already made
    assert env["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert env["SERVER_SOFTWARE"] == f"scalesocket/{__version__}"
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("127.0.0.1", str(s.port))
    assert (env["REQUEST_METHOD"], env["REQUEST_URI"], env["SCRIPT_NAME"]) == ("GET", "/game?level=2", "/game")
    assert (env["PATH_INFO"], env["SERVER_PROTOCOL"], env["REMOTE_HOST"]) == ("", "HTTP/1.1", "127.0.0.1")
    assert env["REMOTE_PORT"].isdigit() and env["REMOTE_ADDR"] == "127.0.0.1:" + env["REMOTE_PORT"]
    assert (env["HTTP_COOKIE"], env["HTTP_X_DUP"]) == ("who=first", "a, b")
    assert env["HTTP_UPGRADE"] == "websocket" and "HTTP_SEC_WEBSOCKET_KEY" in env
    assert "HTTPS" not in env
    assert (env["QUERY_STRING"], env["ROOM"]) == ("level=2", "game")  # §7's set is still there


@pytest.mark.anyio
async def test_without_cgi_no_http_variables(server: Serve) -> None:
    async with server(child_settings("env", passenv=[])) as s:
        async with s.connect("/r", additional_headers=[("Cookie", "c=1")]) as ws:
            env = json.loads(await recv_text(ws))
    env.pop("LC_CTYPE", None)
    assert env.keys() == {"QUERY_STRING", "REMOTE_ADDR", "ROOM", "INSTANCE"}  # no HTTP_*, no CGI set


@pytest.mark.anyio
async def test_each_joiner_brings_its_own_headers_without_cgi(server: Serve) -> None:
    joinmsg = '{"type":"join","id":#ID,"cookie":"#HTTP_COOKIE","auth":"#HTTP_AUTHORIZATION"}'
    async with server(child_settings("echo", joinmsg=joinmsg, leavemsg="left #ID #HTTP_COOKIE")) as s:
        async with s.connect("/shared", additional_headers=[("Cookie", "player=ann")]) as ann:
            await recv_text(ann)  # ready
            assert json.loads(await recv_text(ann)) == {
                "type": "join",
                "id": 1,
                "cookie": "player%3Dann",
                "auth": "#HTTP_AUTHORIZATION",
            }
            evil = 'bob","id":99,"x":"'  # would rewrite the message if spliced in as it is
            async with s.connect("/shared", additional_headers=[("Cookie", evil)]):
                joined = json.loads(await recv_text(ann))
                assert (joined["id"], unquote_to_bytes(joined["cookie"])) == (2, evil.encode())
            assert await recv_text(ann) == "left 2 bob%22%2C%22id%22%3A99%2C%22x%22%3A%22"
