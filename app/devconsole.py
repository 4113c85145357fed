"""--devconsole: a developer console page at `/` (SPEC §14), for poking at a wrapped program.

One self-contained page (app/devconsole.html: HTML, CSS and JS, no external assets, no build
step). It connects to `ws(s)://<the page's host>/<room>`, the same origin as the page, so it
passes an origin check. Its inline script and style are allowed by hash in a strict Content
Security Policy: nothing else may run or load, whatever a child prints into the log.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

PAGE = Path(__file__).with_name("devconsole.html")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@cache
def _page() -> tuple[bytes, dict[str, str]]:
    """The page and its headers, read and hashed once per process."""
    html = PAGE.read_text(encoding="utf-8")
    scripts = " ".join(_hash(body) for body in re.findall(r"<script>(.*?)</script>", html, re.S))
    styles = " ".join(_hash(body) for body in re.findall(r"<style>(.*?)</style>", html, re.S))
    policy = (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self' ws: wss:; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode(), {"Content-Security-Policy": policy, "Cache-Control": "no-cache"}


async def devconsole(request: Request) -> Response:
    """GET / under --devconsole: the console page."""
    body, headers = _page()
    return HTMLResponse(body, headers=headers)
