"""scalesocket under the distribution's own name: `uvicorn scalesocket:asgi`, `scalesocket.create_app`.

The server itself is the top-level package `app` (`uvicorn app:asgi`, the design's layout). That name
is common: in a folder with an `app.py` or `app/` of its own, `import app` finds the user's first
(uvicorn puts the current directory first on sys.path), and `uvicorn app:asgi` fails with
`Attribute "asgi" not found`. This module loads scalesocket's `app` from where it is installed, beside
this file, whatever the current directory holds; `asgi` is then that package's `asgi`, built from
`SCALESOCKET_*` on first access.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_APP = Path(__file__).resolve().parent.parent / "app" / "__init__.py"


def _load_app() -> ModuleType:
    loaded = sys.modules.get("app")
    if loaded is not None:
        if Path(getattr(loaded, "__file__", None) or "").resolve() == _APP:
            return loaded
        raise ImportError(
            f"scalesocket: another module named `app` is already imported ({getattr(loaded, '__file__', loaded)}); "
            "scalesocket's own `app` package cannot be loaded beside it: import scalesocket first, or rename yours"
        )
    spec = importlib.util.spec_from_file_location("app", _APP, submodule_search_locations=[str(_APP.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module  # before running it: its own `from app.x import ...` must find this one
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["app"]
        raise
    return module


_app = _load_app()

from app import Settings, __version__, create_app  # noqa: E402  # ours now, whatever the current directory holds

__all__ = ["Settings", "__version__", "create_app"]


def __getattr__(name: str) -> object:
    # PEP 562, as in `app`: importing needs no environment; `asgi` is built on first access.
    if name != "asgi":
        raise AttributeError(name)
    return _app.asgi
