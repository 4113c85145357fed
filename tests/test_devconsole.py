"""SPEC §14 `--devconsole`: the page itself, and the console driven in a real headless Chromium.

Screenshots of the console (laptop and phone sizes) go to tests/screenshots/, which git ignores.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import httpx
import pytest

from app.devconsole import PAGE
from tests.conftest import CHILD, Serve, child_settings, error_of
from tests.test_browser import CHROMIUM, Page, chromium
from tests.test_process import run
from tests.test_tls import OPENSSL, make_pair

SCREENSHOTS = Path(__file__).parent / "screenshots"


def test_the_page_is_self_contained() -> None:
    html = PAGE.read_text()
    # No external asset of any kind: no URL with a scheme or protocol-relative, no src= at all.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", html)
    assert "@import" not in html and "url(" not in html
    assert not re.search(r"https?://|//cdn", html)


@pytest.mark.anyio
async def test_served_at_slash_only_with_the_option(server: Serve) -> None:
    async with server(child_settings("echo", devconsole=True)) as s, httpx.AsyncClient(base_url=s.http) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
        assert page.text == PAGE.read_text()
        assert (await http.head("/")).status_code == 200
        assert (await http.get("/other")).status_code == 404
    async with server(child_settings("echo")) as s, httpx.AsyncClient(base_url=s.http) as http:
        assert (await http.get("/")).status_code == 404


def test_devconsole_with_staticdir_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(["--devconsole", "--staticdir", str(tmp_path), "cat"], capsys)
    assert "--devconsole" in err and "--staticdir" in err, err


# --- in a real browser ------------------------------------------------------------------------


def console(*options: str) -> list[str]:
    return [sys.executable, "-m", "cli", "--addr", "127.0.0.1:{port}", "--devconsole", *options]


async def key(page: Page, text: str = "", enter: bool = False) -> None:
    """Type `text` into the focused element and press Enter, as a keyboard does (DevTools Input)."""
    call = page.browser.call
    if text:
        await call("Input.insertText", {"text": text}, page.session)
    if enter:
        for kind in ("keyDown", "keyUp"):
            event = {"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13}
            await call("Input.dispatchKeyEvent", event | ({"text": "\r"} if kind == "keyDown" else {}), page.session)


def rows(kind: str) -> str:
    """JS: the bodies of the log's rows of `kind` (in, out, event)."""
    return f"[...document.querySelectorAll('#log > div.{kind} .body')].map((b) => b.textContent)"


async def wait_row(page: Page, kind: str, text: str) -> None:
    await page.wait_for(f"{rows(kind)}.includes({json.dumps(text)})")


async def wait_state(page: Page, text: str) -> None:
    await page.wait_for(f"document.getElementById('state').textContent === {json.dumps(text)}")


async def screenshot(page: Page, name: str, width: int, height: int, mobile: bool, dark: bool = False) -> Path:
    call = page.browser.call
    metrics = {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile}
    await call("Emulation.setDeviceMetricsOverride", metrics, page.session)
    scheme = {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}
    await call("Emulation.setEmulatedMedia", {"features": [scheme]}, page.session)
    shot = await call("Page.captureScreenshot", {"format": "png"}, page.session)
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"devconsole-{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


@pytest.mark.anyio
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_console_connects_sends_sees_the_echo_and_the_close(tmp_path: Path) -> None:
    argv = console(sys.executable, "--", "-u", CHILD, "wait-exit")
    async with run(argv) as server, chromium(tmp_path) as browser:
        page = await browser.open(f"http://127.0.0.1:{server.port}/")
        await wait_state(page, "idle")
        assert await page.evaluate("document.getElementById('base').textContent") == f"ws://127.0.0.1:{server.port}/"

        # Keyboard only: the room field has the focus; Enter connects.
        await page.evaluate("document.getElementById('room').focus()")
        await key(page, "lobby?name=ann", enter=True)
        await wait_state(page, "open")
        await wait_row(page, "event", f"connecting to ws://127.0.0.1:{server.port}/lobby?name=ann")
        await wait_row(page, "in", "ready")  # the child's first line

        # The message box has the focus once open; Enter sends, the echo comes back.
        assert await page.evaluate("document.activeElement.id") == "message"
        await key(page, "hello, room", enter=True)
        await wait_row(page, "out", "hello, room")
        await wait_row(page, "in", "hello, room")
        assert await page.evaluate("document.getElementById('message').value") == ""
        assert await page.evaluate("document.getElementById('counts').textContent") == "2 in · 1 out"
        times = await page.evaluate("[...document.querySelectorAll('#log > div time')].map((t) => t.textContent)")
        assert times and all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", t) for t in times)

        # The child exits 3: the console shows the close code and the reason.
        await key(page, "exit 3", enter=True)
        await wait_state(page, "closed 1011")
        await wait_row(page, "event", "closed: code 1011 (internal error), reason: process exited with code 3")
        assert await page.evaluate("document.getElementById('message').disabled")

        laptop = await screenshot(page, "laptop", 1280, 720, mobile=False)
        phone = await screenshot(page, "phone", 390, 844, mobile=True)
        dark = await screenshot(page, "phone-dark", 390, 844, mobile=True, dark=True)
        for path in (laptop, phone, dark):
            assert path.read_bytes().startswith(b"\x89PNG")

        # Empty room: websocketd's `/`, a child of its own. Disconnect closes with 1000.
        await page.evaluate("document.getElementById('room').value = ''")
        await page.evaluate("document.getElementById('connect').click()")
        await wait_state(page, "open")
        await wait_row(page, "event", f"connecting to ws://127.0.0.1:{server.port}/")
        await page.evaluate("document.getElementById('connect').click()")
        await wait_state(page, "closed 1000")
        await wait_row(page, "event", "closed: code 1000 (normal), reason: closed from the console")


@pytest.mark.anyio
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_console_shows_binary_messages_as_hex(tmp_path: Path) -> None:
    argv = console("-b", sys.executable, "--", "-u", CHILD, "bytes", "00ff0a41")
    async with run(argv) as server, chromium(tmp_path) as browser:
        page = await browser.open(f"http://127.0.0.1:{server.port}/?room=bin")
        await wait_state(page, "idle")
        assert await page.evaluate("document.getElementById('room').value") == "bin"  # from ?room=
        await page.evaluate("document.getElementById('connect').click()")
        await wait_row(page, "in", "binary, 4 bytes: 00 ff 0a 41")
        assert await page.evaluate("document.querySelector('#log > div.in').classList.contains('binary')")
        await page.evaluate("document.getElementById('message').focus()")
        await key(page, "hi", enter=True)  # the child gets it raw and prints it in hex: "6869\n", binary too
        await wait_row(page, "in", "binary, 5 bytes: 36 38 36 39 0a")
        await screenshot(page, "binary", 900, 400, mobile=False)

        # A refused handshake (a reserved name: 400): the browser only says 1006; the console says more.
        await page.evaluate("document.getElementById('connect').click()")
        await wait_state(page, "closed 1000")
        await page.evaluate("document.getElementById('room').value = 'health'")
        await page.evaluate("document.getElementById('connect').click()")
        await wait_state(page, "closed 1006")
        await wait_row(
            page, "event", "never opened: the server refused the handshake or is unreachable (its log says why)"
        )


@pytest.mark.anyio
@pytest.mark.skipif(CHROMIUM is None or OPENSSL is None, reason="needs chromium and openssl")
async def test_console_over_https_connects_with_wss(server: Serve, tmp_path: Path) -> None:
    cert, private_key = make_pair(tmp_path, "console")
    settings = child_settings("echo", devconsole=True, sslcert=cert, sslkey=private_key)
    async with server(settings) as s, chromium(tmp_path) as browser:
        await browser.call("Security.setIgnoreCertificateErrors", {"ignore": True})  # our own self-signed one
        page = await browser.open(f"https://127.0.0.1:{s.port}/?room=tls")
        await wait_state(page, "idle")
        assert await page.evaluate("document.getElementById('base').textContent") == f"wss://127.0.0.1:{s.port}/"
        await page.evaluate("document.getElementById('connect').click()")
        await wait_state(page, "open")
        await wait_row(page, "event", f"connecting to wss://127.0.0.1:{s.port}/tls")
        await page.evaluate("document.getElementById('message').focus()")
        await key(page, "secret", enter=True)
        await wait_row(page, "in", "secret")
