"""SPEC §14 TLS: `--sslcert`/`--sslkey` serve https:// and wss:// (uvicorn's TLS); a bad pair exits 2."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage

from app.settings import Settings
from tests.conftest import TIMEOUT, Serve, child_settings, recv_text
from tests.test_process import ROOT, free_port

OPENSSL = shutil.which("openssl")
pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed (apt-get install openssl)")


def make_pair(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made here by openssl."""
    assert OPENSSL is not None
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = make_pair(directory, "server")
    other_cert, other_key = make_pair(directory, "other")
    assert OPENSSL is not None
    encrypted = directory / "encrypted.key"
    subprocess.run(
        [OPENSSL, "pkey", "-in", str(key), "-aes128", "-passout", "pass:secret", "-out", str(encrypted)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    garbage = directory / "garbage.pem"
    garbage.write_text("not a certificate\n")
    return {"cert": cert, "key": key, "other_key": other_key, "encrypted": encrypted, "garbage": garbage}


@pytest.mark.anyio
async def test_wss_and_https_with_a_certificate_the_test_made(server: Serve, pairs: dict[str, Path]) -> None:
    settings = child_settings("env", sslcert=pairs["cert"], sslkey=pairs["key"], cgi=True)
    context = ssl.create_default_context(cafile=str(pairs["cert"]))  # trusts exactly our certificate
    async with server(settings) as s:
        async with connect(f"wss://127.0.0.1:{s.port}/secure", ssl=context, open_timeout=TIMEOUT) as ws:
            env = json.loads(await recv_text(ws))
            assert env["HTTPS"] == "on"  # under --cgi, the child knows the connection is TLS
            await ws.send("over tls")
            assert await recv_text(ws) == "over tls"
        async with httpx.AsyncClient(verify=context) as http:
            response = await http.get(f"https://127.0.0.1:{s.port}/health")
            assert (response.status_code, response.json()) == (200, {"status": "ok"})
        with pytest.raises((InvalidMessage, OSError, EOFError)):  # plain ws:// to a TLS port: no handshake
            async with connect(f"ws://127.0.0.1:{s.port}/secure", open_timeout=TIMEOUT):
                pass


def run_cli(*options: str) -> subprocess.CompletedProcess[str]:
    port = free_port()
    return subprocess.run(
        [sys.executable, "-m", "cli", "--addr", f"127.0.0.1:{port}", *options, "cat"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--ssl"], "--ssl needs --sslcert and --sslkey"),
        (["--sslcert", "{cert}"], "--sslcert needs --sslkey"),
        (["--sslkey", "{key}"], "--sslkey needs --sslcert"),
        (["--sslcert", "{missing}", "--sslkey", "{key}"], "--sslcert: cannot read"),
        (["--sslcert", "{cert}", "--sslkey", "{directory}"], "--sslkey: cannot read"),  # unreadable, even as root
        (["--sslcert", "{garbage}", "--sslkey", "{key}"], "--sslcert: no PEM certificate"),
        (["--sslcert", "{key}", "--sslkey", "{key}"], "--sslcert: no PEM certificate"),
        (["--sslcert", "{cert}", "--sslkey", "{garbage}"], "--sslkey: no PEM private key"),
        (["--sslcert", "{cert}", "--sslkey", "{other_key}"], "is not the key of the certificate"),
        (["--ssl", "--sslcert", "{cert}", "--sslkey", "{encrypted}"], "is encrypted"),
    ],
)
def test_bad_tls_files_exit_2_before_binding(options: list[str], needle: str, pairs: dict[str, Path]) -> None:
    names = {name: str(path) for name, path in pairs.items()}
    names |= {"missing": str(pairs["cert"].parent / "nope.crt"), "directory": str(pairs["cert"].parent)}
    result = run_cli(*(option.format(**names) for option in options))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr  # one line: nothing was started or bound


def test_tls_from_the_environment(pairs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCALESOCKET_SSLCERT", str(pairs["cert"]))
    monkeypatch.setenv("SCALESOCKET_SSLKEY", str(pairs["key"]))
    monkeypatch.setenv("SCALESOCKET_SSL", "true")
    assert Settings(cmd="cat").tls


@pytest.mark.anyio
async def test_the_cli_server_speaks_tls(pairs: dict[str, Path]) -> None:
    """The real process (uvloop, our protocol): https:// answers, wss:// connects, HTTPS=on under --cgi."""
    port = free_port()
    argv = [sys.executable, "-m", "cli", "--addr", f"127.0.0.1:{port}", "--cgi", "--ssl"]
    argv += ["--sslcert", str(pairs["cert"]), "--sslkey", str(pairs["key"]), "/usr/bin/env"]
    context = ssl.create_default_context(cafile=str(pairs["cert"]))
    process = await anyio.open_process(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        with anyio.fail_after(TIMEOUT):
            async with httpx.AsyncClient(verify=context) as http:
                while True:
                    try:
                        if (await http.get(f"https://127.0.0.1:{port}/health")).status_code == 200:
                            break
                    except httpx.TransportError:
                        assert process.returncode is None, "server exited"
                        await anyio.sleep(0.05)
        async with connect(f"wss://127.0.0.1:{port}/r", ssl=context, open_timeout=TIMEOUT) as ws:
            lines = []
            with pytest.raises(ConnectionClosed):  # env prints its environment and exits
                while True:
                    lines.append(await recv_text(ws))
        assert "HTTPS=on" in lines and f"SERVER_PORT={port}" in lines
    finally:
        process.terminate()
        with anyio.move_on_after(TIMEOUT):
            await process.wait()
        if process.returncode is None:
            process.kill()
        await process.aclose()
