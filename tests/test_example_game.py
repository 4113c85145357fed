"""The tic-tac-toe example (examples/tictactoe) in a real headless Chromium, run with the README's command.

Two players and a late spectator in one game, and the lobby page listing it from `/api/rooms`: json framing,
`_meta` lines for the lobby, private replies by "id", join/leave messages, and `--cache=tagged:` history for
the late joiner. Screenshots go to tests/screenshots/ (kept out of git): look at them after a run.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import anyio
import pytest

from tests.test_browser import CHROMIUM, ROOT, Page, chromium
from tests.test_process import run

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"),
]

SCREENSHOTS = ROOT / "tests" / "screenshots"


def readme_command() -> list[str]:
    """The README's command for the example (a line of its own, `\\` continuations joined), on a free port."""
    text = (ROOT / "README.md").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if "examples/tictactoe/game.py" in line and line.lstrip().startswith("scalesocket "):
            words = shlex.split(line.lstrip().removeprefix("scalesocket "))
            return [sys.executable, "-m", "cli", "--addr", "127.0.0.1:{port}", *words]
    raise AssertionError("README.md: no command line for examples/tictactoe")


async def log(page: Page) -> list[str]:
    """The lines of the game page's #log."""
    lines = await page.evaluate("[...document.querySelectorAll('#log > div')].map((d) => d.textContent)")
    assert isinstance(lines, list)
    return [str(line) for line in lines]


async def wait_line(page: Page, line: str) -> None:
    await page.wait_for(
        f"[...document.querySelectorAll('#log > div')].some((d) => d.textContent === {json.dumps(line)})"
    )


async def click(page: Page, selector: str) -> None:
    await page.wait_for(
        f"document.querySelector({json.dumps(selector)}) && !document.querySelector({json.dumps(selector)}).disabled"
    )
    await page.evaluate(f"document.querySelector({json.dumps(selector)}).click()")


async def say(page: Page, text: str) -> None:
    await page.evaluate(
        f"(() => {{ document.getElementById('text').value = {json.dumps(text)};"
        " document.getElementById('chat').requestSubmit(); })()"
    )


def cell(i: int) -> str:
    return f'#board button[data-cell="{i}"]'


async def test_two_players_a_spectator_and_the_lobby(tmp_path: Path) -> None:
    async with run(readme_command()) as server, chromium(tmp_path) as browser:
        base = f"http://127.0.0.1:{server.port}"
        lobby = await browser.open(base + "/")
        await lobby.wait_for("document.querySelector('#rooms td.empty')?.textContent.startsWith('no open games')")

        x = await browser.open(base + "/game.html?room=duel")
        await wait_line(x, "you play X")
        o = await browser.open(base + "/game.html?room=duel")
        await wait_line(o, "you play O")
        await x.wait_for("document.getElementById('status').textContent === 'your move'")

        await click(x, cell(4))
        await wait_line(o, "X took cell 4")
        await o.wait_for(f"document.querySelector({json.dumps(cell(4))}).textContent === 'X'")
        await o.evaluate(f"document.querySelector({json.dumps(cell(0))}).disabled = false")  # a move out of turn
        await x.evaluate(f"document.querySelector({json.dumps(cell(0))}).disabled = false")
        await x.evaluate(f"document.querySelector({json.dumps(cell(0))}).click()")
        await wait_line(x, "not your turn")  # private: to X alone
        await click(o, cell(0))
        await wait_line(x, "O took cell 0")
        await say(o, "good luck")
        await wait_line(x, "O (#2): good luck")

        # The lobby lists the game with the state its child published in a _meta line.
        row = "document.querySelector('#rooms tr.room[data-name=\"duel\"]')"
        await lobby.wait_for(f"{row}?.textContent.includes('playing, X to move')")
        assert await lobby.evaluate(f"[...{row}.children].map((td) => td.textContent)") == [
            "duel",
            "2 / 2",
            "0",
            "playing, X to move",
            "watch",
        ]

        # A late spectator: the moves and the chat so far, from the cache; nothing private of anyone else.
        watcher = await browser.open(base + "/game.html?room=duel")
        await wait_line(watcher, "you are watching")
        seen = await log(watcher)
        assert seen[: seen.index("you are watching")] == ["X took cell 4", "O took cell 0", "O (#2): good luck"]
        assert "not your turn" not in seen and "you play X" not in seen and "you play O" not in seen
        assert await watcher.evaluate("[...document.querySelectorAll('.history')].length") == 3
        await wait_line(x, "#3 joined")
        await lobby.wait_for(f"[...{row}.children][2]?.textContent === '1'")

        for move, page in [(1, x), (3, o), (7, x)]:  # X takes the middle column: 1, 4, 7
            await click(page, cell(move))
            await wait_line(watcher, f"{'X' if page is x else 'O'} took cell {move}")
        await x.wait_for("document.getElementById('status').textContent.startsWith('X wins')")
        await watcher.wait_for("document.getElementById('status').textContent === 'X wins'")
        await lobby.wait_for(f"{row}?.textContent.includes('X wins')")

        await anyio.Path(SCREENSHOTS).mkdir(exist_ok=True)
        await x.screenshot(SCREENSHOTS / "tictactoe-x.png")
        await watcher.screenshot(SCREENSHOTS / "tictactoe-spectator.png")
        await lobby.screenshot(SCREENSHOTS / "tictactoe-lobby.png")

        # O leaves: the room hears it, and the spectator takes the free seat.
        await o.close()
        await wait_line(x, "O (#2) left")
        await wait_line(watcher, "a seat came free: you play O")
        await lobby.wait_for(f"[...{row}.children][1]?.textContent === '2 / 2'")
        await lobby.wait_for(f"[...{row}.children][2]?.textContent === '0'")
