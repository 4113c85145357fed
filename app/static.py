"""Static files: `--staticdir DIR` over plain HTTP GET/HEAD (SPEC §8), behind every other route.

Starlette's `StaticFiles` does the confinement: the request path is decoded (so `%2e%2e%2f` is
`../`) and normalised, then resolved with `realpath` and served only if it still lies under DIR —
so traversal and symlinks that leave DIR answer 404. `/` serves `index.html`; there is no listing.
This subclass only makes content types independent of the host's `/etc/mime.types`: the web's own
types are fixed, anything unknown is `application/octet-stream`, and browsers are told not to sniff.
"""

from __future__ import annotations

import mimetypes
import os

from starlette.datastructures import Headers
from starlette.responses import FileResponse, Response
from starlette.staticfiles import NotModifiedResponse, PathLike, StaticFiles
from starlette.types import Scope

# What a browser insists on (module scripts and wasm streaming check them); the rest from mimetypes.
WEB_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".webmanifest": "application/manifest+json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".txt": "text/plain",
}


def content_type(path: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    return WEB_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


class StaticDir(StaticFiles):
    """StaticFiles with fixed web content types and `X-Content-Type-Options: nosniff`."""

    def __init__(self, directory: PathLike) -> None:
        super().__init__(directory=directory, html=True)  # html: `/` and `dir/` serve index.html

    def file_response(
        self, full_path: PathLike, stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = FileResponse(
            full_path,
            status_code=status_code,
            headers={"X-Content-Type-Options": "nosniff"},
            media_type=content_type(os.fspath(full_path)),
            stat_result=stat_result,
        )
        if self.is_not_modified(response.headers, Headers(scope=scope)):
            return NotModifiedResponse(response.headers)
        return response
