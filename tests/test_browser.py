"""The bundled chat example in a real headless Chromium, driven over the Chrome DevTools Protocol.

The server runs with the arguments of `make run` (read from the Makefile); two pages of one room talk through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import TIMEOUT
from tests.test_process import run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]

ROOT = Path(__file__).parent.parent


def make_run() -> list[str]:
    """The server command of the Makefile's `run` target (`make run`), on a free loopback port."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"(?m)^run:.*\n((?:\t.*\n?)+)", makefile)
    assert recipe is not None, "Makefile: no `run` target"
    words = shlex.split(recipe[1].replace("\\\n", " "))
    assert "$(BIN)/scalesocket" in words and "--addr" in words, f"Makefile: unexpected `run` recipe {words}"
    args = words[words.index("$(BIN)/scalesocket") + 1 :]
    args[args.index("--addr") + 1] = "127.0.0.1:{port}"
    return [sys.executable, "-m", "cli", *args]


class CdpError(Exception):
    pass


class Browser:
    """A Chrome DevTools Protocol client on the browser's websocket, with flat sessions for pages."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.last_id = 0

    async def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        self.last_id += 1
        request: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session is not None:
            request["sessionId"] = session
        await self.ws.send(json.dumps(request))
        with anyio.fail_after(TIMEOUT):
            while True:  # events come in between; one call at a time, so the first reply with our id is ours
                reply = json.loads(await self.ws.recv())
                if reply.get("id") == self.last_id:
                    break
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply["result"]

    async def open(self, url: str) -> Page:
        target = (await self.call("Target.createTarget", {"url": url}))["targetId"]
        session = (await self.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        return Page(self, target, session)


class Page:
    def __init__(self, browser: Browser, target: str, session: str) -> None:
        self.browser = browser
        self.target = target
        self.session = session

    async def evaluate(self, expression: str) -> Any:
        result = await self.browser.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True}, self.session
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str) -> Any:
        """Poll `expression` until it is truthy (the page may still be loading: errors count as not yet)."""
        last: object = None
        try:
            with anyio.fail_after(TIMEOUT):
                while True:
                    try:
                        last = await self.evaluate(expression)
                    except CdpError as error:
                        last = error
                    else:
                        if last:
                            return last
                    await anyio.sleep(0.02)
        except TimeoutError:
            log = await self.log()
            raise AssertionError(f"timed out waiting for {expression!r}; last {last!r}; #log: {log!r}") from None

    async def log(self) -> list[str]:
        """The lines of the page's #log."""
        lines = await self.evaluate("[...document.querySelectorAll('#log > div')].map((d) => d.textContent)")
        assert isinstance(lines, list)
        return [str(line) for line in lines]

    async def wait_line(self, line: str) -> None:
        await self.wait_for(
            f"[...document.querySelectorAll('#log > div')].some((d) => d.textContent === {json.dumps(line)})"
        )

    async def close(self) -> None:
        await self.browser.call("Target.closeTarget", {"targetId": self.target})


@asynccontextmanager
async def chromium(tmp: Path) -> AsyncIterator[Browser]:
    """A headless Chromium with its profile in `tmp`, killed at the end whatever happened."""
    assert CHROMIUM is not None
    profile = tmp / "profile"
    profile.mkdir()
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers have a small /dev/shm
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--remote-debugging-port=0",
        "about:blank",
    ]
    with (tmp / "chromium.log").open("wb") as output:
        process = await anyio.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
        )
    try:
        active = profile / "DevToolsActivePort"  # "<port>\n<browser websocket path>", once it listens
        with anyio.fail_after(TIMEOUT):
            while len(lines := (active.read_text() if active.exists() else "").splitlines()) < 2:
                if process.returncode is not None:
                    raise AssertionError(f"chromium exited: {(tmp / 'chromium.log').read_text()[-2000:]}")
                await anyio.sleep(0.02)
        async with connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_size=None, open_timeout=TIMEOUT) as ws:
            browser = Browser(ws)
            yield browser
            with anyio.move_on_after(TIMEOUT), contextlib.suppress(ConnectionClosed):
                await browser.call("Browser.close")
        with anyio.move_on_after(TIMEOUT):
            await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            # Whatever is left of the group this test started (browser, zygote, renderers): killed.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.aclose()


async def test_two_pages_chat_through_the_example(tmp_path: Path) -> None:
    async with run(make_run()) as server, chromium(tmp_path) as browser:
        url = f"http://127.0.0.1:{server.port}/?room=t"
        a = await browser.open(url)
        await a.wait_line("you are guest1; here: guest1")  # the first client of the server is id 1
        assert await a.evaluate("document.getElementById('room').textContent") == "t"
        b = await browser.open(url)
        await b.wait_line("you are guest2; here: guest1, guest2")
        await a.wait_line("guest2 joined")

        await a.evaluate(
            "(() => { document.getElementById('text').value = 'hello';"
            " document.getElementById('form').requestSubmit(); })()"
        )
        await b.wait_line("guest1: hello")
        await a.wait_line("guest1: hello")
        assert await a.evaluate("document.getElementById('text').value") == ""  # the form was sent and cleared

        # The welcome is private: routed by "id" to its own client only, and styled as such.
        assert await a.evaluate("[...document.querySelectorAll('#log > .private')].map((d) => d.textContent)") == [
            "you are guest1; here: guest1"
        ]
        assert not any(line.startswith("you are guest1") for line in await b.log())

        await b.close()  # --leavemsg reaches the child, which tells the room
        await a.wait_line("guest2 left")
