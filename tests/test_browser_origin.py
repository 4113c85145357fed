"""Cross-site websocket hijacking, in a real headless Chromium (SPEC §13): a page of the server's own
origin connects; a page of another site, or an opaque (`null`) one, is refused before the upgrade."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import CHILD
from tests.test_browser import CHROMIUM, Browser, Page, chromium
from tests.test_process import run

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]


async def open_websocket(browser: Browser, page: Page, url: str) -> str:
    """What the page's `new WebSocket(url)` comes to: `open <first message>` or `closed <code>`."""
    script = (
        "new Promise((done) => { const ws = new WebSocket(" + json.dumps(url) + ");"
        " ws.onmessage = (e) => { done('open ' + e.data); ws.close(); };"
        " ws.onclose = (e) => done('closed ' + e.code); })"
    )
    result = await browser.call(
        "Runtime.evaluate", {"expression": script, "awaitPromise": True, "returnByValue": True}, page.session
    )
    return str(result["result"]["value"])


async def loaded(page: Page, url: str) -> None:
    await page.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")


async def test_only_pages_of_the_servers_own_origin_connect(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "cli", "--addr", "127.0.0.1:{port}", sys.executable, "--", "-u", CHILD, "echo"]
    async with run(argv) as server, chromium(tmp_path) as browser:
        room = f"ws://127.0.0.1:{server.port}/hijack"
        own = await browser.open(f"http://127.0.0.1:{server.port}/health")
        await loaded(own, f"http://127.0.0.1:{server.port}/health")
        assert (await open_websocket(browser, own, room)).startswith("open ready ")

        # Another site: same machine and port, another host name, so another origin to the browser.
        other = await browser.open(f"http://localhost:{server.port}/health")
        await loaded(other, f"http://localhost:{server.port}/health")
        assert await open_websocket(browser, other, room) == "closed 1006"  # all a page learns of a 403
        await server.wait_stderr(f"origin 'http://localhost:{server.port}' not allowed".encode())
        await server.wait_stderr(f"--origin http://localhost:{server.port}".encode())

        page = tmp_path / "page.html"  # a file: page has an opaque origin: the browser sends `Origin: null`
        page.write_text("<!doctype html><title>a saved page</title>")
        opaque = await browser.open(page.as_uri())
        await loaded(opaque, page.as_uri())
        assert await open_websocket(browser, opaque, room) == "closed 1006"
        await server.wait_stderr(b"origin 'null' not allowed")
