"""The bundled chat example in a real headless Chromium, driven over the Chrome DevTools Protocol.

The server runs with the arguments of `make run` (read from the Makefile); two pages of one room talk through it.
"""

from __future__ import annotations

import base64
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
        self.events: list[dict[str, Any]] = []  # every event seen so far (Network.*, ...), in order

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
                if "method" in reply:
                    self.events.append(reply)
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        return reply["result"]

    async def open(self, url: str) -> Page:
        """A page at `url`, watched from its first request (network events are recorded in `events`)."""
        # A window each, so both pages are visible and render (a background tab may not paint a screenshot).
        target = (await self.call("Target.createTarget", {"url": "about:blank", "newWindow": True}))["targetId"]
        session = (await self.call("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        await self.call("Network.enable", {}, session)
        viewport = {"width": 900, "height": 620, "deviceScaleFactor": 1, "mobile": False}
        await self.call("Emulation.setDeviceMetricsOverride", viewport, session)
        await self.call("Page.navigate", {"url": url}, session)
        return Page(self, target, session)

    def responses(self) -> list[tuple[int, str]]:
        """(status, url) of every HTTP response the pages got so far."""
        return [
            (event["params"]["response"]["status"], event["params"]["response"]["url"])
            for event in self.events
            if event["method"] == "Network.responseReceived"
        ]


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

    async def log(self) -> list[dict[str, Any]]:
        """The entries of the page's #log: kind, who, body, and whether it is styled as our own."""
        entries = await self.evaluate(
            "[...document.querySelectorAll('#log > .entry')].map((e) => ({kind: e.dataset.kind,"
            " who: e.querySelector('.who')?.textContent ?? '', body: e.querySelector('.body').textContent,"
            " mine: e.classList.contains('mine'), time: e.querySelector('time').textContent}))"
        )
        assert isinstance(entries, list)
        return entries

    async def wait_entry(self, kind: str, body: str, who: str | None = None) -> dict[str, Any]:
        """Wait for an entry of `kind` with `body` (and `who`) in #log; return it."""
        check = f"e.dataset.kind === {json.dumps(kind)} && e.querySelector('.body').textContent === {json.dumps(body)}"
        if who is not None:
            check += f" && e.querySelector('.who')?.textContent === {json.dumps(who)}"
        await self.wait_for(f"[...document.querySelectorAll('#log > .entry')].some((e) => {check})")
        return next(e for e in await self.log() if e["kind"] == kind and e["body"] == body)

    async def people(self) -> list[str]:
        names = await self.evaluate("[...document.querySelectorAll('#people .name')].map((n) => n.textContent)")
        assert isinstance(names, list)
        return [str(name) for name in names]

    async def wait_people(self, names: list[str]) -> None:
        await self.wait_for(
            "JSON.stringify([...document.querySelectorAll('#people .name')].map((n) => n.textContent)) === "
            + json.dumps(json.dumps(names, separators=(",", ":")))
        )

    async def type(self, text: str) -> None:
        """Type `text` into the message box and send it, as a user would with Enter."""
        await self.evaluate(
            f"(() => {{ document.getElementById('text').value = {json.dumps(text)};"
            " document.getElementById('form').requestSubmit(); })()"
        )

    async def screenshot(self, path: Path) -> None:
        await self.browser.call("Page.bringToFront", {}, self.session)
        shot = await self.browser.call("Page.captureScreenshot", {"format": "png"}, self.session)
        await anyio.Path(path).write_bytes(base64.b64decode(shot["data"]))

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


SCREENSHOTS = ROOT / "tests" / "screenshots"  # kept out of git (.gitignore): look at them after a run


async def test_two_pages_chat_through_the_example(tmp_path: Path) -> None:
    async with run(make_run()) as server, chromium(tmp_path) as browser:
        url = f"http://127.0.0.1:{server.port}/?room=t"
        a = await browser.open(url)
        await a.wait_entry("system", "You joined as guest1. Type /name to pick another name.")  # id 1: first client
        assert await a.evaluate("document.getElementById('room').textContent") == "t"
        await a.wait_people(["guest1 (you)"])
        b = await browser.open(url)
        await b.wait_entry("system", "You joined as guest2. Type /name to pick another name.")
        await b.wait_people(["guest1", "guest2 (you)"])
        await a.wait_entry("system", "guest2 joined")
        await a.wait_people(["guest1 (you)", "guest2"])

        await a.type("hello")
        theirs = await b.wait_entry("said", "hello", who="guest1")
        mine = await a.wait_entry("said", "hello", who="you")
        assert (mine["mine"], theirs["mine"]) == (True, False)  # our own messages are told apart
        assert re.fullmatch(r"\d\d:\d\d( [AP]M)?", mine["time"]), mine  # timestamped
        assert await a.evaluate("document.getElementById('text').value") == ""  # the form was sent and cleared
        # The joiner sees its welcome, never also "guest2 joined" (it came before "hello", so it would be here).
        assert [e["body"] for e in await b.log() if e["kind"] == "system"] == [
            "You joined as guest2. Type /name to pick another name."
        ]

        await b.type("/name bob")
        await a.wait_entry("system", "guest2 is now bob")
        await b.wait_entry("system", "You are now bob")
        await a.wait_people(["guest1 (you)", "bob"])

        # Whisper by clicking bob in the list: only bob gets it; the sender sees its receipt.
        await a.evaluate("[...document.querySelectorAll('#people button')].find((b) => !b.disabled).click()")
        assert await a.evaluate("document.getElementById('whisper-to').textContent") == "whisper to bob"
        await a.type("psst")
        await b.wait_entry("whisper", "psst", who="guest1 whispers")
        await a.wait_entry("whispered", "psst", who="you whisper to bob")
        await b.type("/w guest1 back at you")  # and with the command
        await a.wait_entry("whisper", "back at you", who="bob whispers")
        assert not any(e["kind"] == "said" and e["body"] == "psst" for e in await b.log())
        await b.type("all good")
        await a.wait_entry("said", "all good", who="bob")

        await anyio.Path(SCREENSHOTS).mkdir(exist_ok=True)
        await a.screenshot(SCREENSHOTS / "chat-guest1.png")
        await b.screenshot(SCREENSHOTS / "chat-bob.png")

        # Every request of both pages was answered, /favicon.ico included (the page declares an inline icon).
        responses = browser.responses()
        assert responses and all(status < 400 for status, _ in responses), responses
        assert not any(url.endswith("/favicon.ico") for _, url in responses), responses

        await b.close()  # --leavemsg reaches the child, which tells the room
        await a.wait_entry("system", "bob left")
        await a.wait_people(["guest1 (you)"])
