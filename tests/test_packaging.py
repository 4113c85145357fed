"""The distribution's own module: `uvicorn scalesocket:asgi` serves the app even beside a user's own `app.py`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.conftest import TIMEOUT, recv
from tests.test_process import run

pytestmark = pytest.mark.anyio


def user_folder(tmp_path: Path) -> Path:
    """A project folder of a user's, with an `app.py` (and a `cli.py`) of its own, as is common."""
    (tmp_path / "app.py").write_text("raise RuntimeError('this is the user\\'s own app.py')\n")
    (tmp_path / "cli.py").write_text("raise RuntimeError('this is the user\\'s own cli.py')\n")
    return tmp_path


def env(**variables: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SCALESOCKET_") and k != "PYTHONPATH"}
    return clean | variables


def test_the_clash_is_real_in_such_a_folder(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)
    shadowed = subprocess.run(
        [sys.executable, "-c", "import app"], cwd=folder, env=env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    assert "the user's own app.py" in shadowed.stderr  # `import app` (so `uvicorn app:asgi`) finds the user's


async def test_uvicorn_scalesocket_asgi_serves_the_app_beside_a_users_app_py(tmp_path: Path) -> None:
    folder = user_folder(tmp_path)
    argv = [sys.executable, "-m", "uvicorn", "scalesocket:asgi", "--host", "127.0.0.1", "--port", "{port}"]
    variables = env(SCALESOCKET_CMD="cat", SCALESOCKET_JOINMSG="hi #ID")
    async with run(argv, env=variables, cwd=folder) as proc, connect(proc.url + "/r") as ws:
        assert await recv(ws) == "hi 1"
        await ws.send("echo")
        assert await recv(ws) == "echo"


def test_scalesocket_module_is_the_app_package() -> None:
    import app
    import scalesocket

    assert (scalesocket.create_app, scalesocket.Settings, scalesocket.__version__) == (
        app.create_app,
        app.Settings,
        app.__version__,
    )


def test_scalesocket_asgi_without_cmd_names_the_variable(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import scalesocket; scalesocket.asgi"],
        cwd=user_folder(tmp_path),
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == ["scalesocket: SCALESOCKET_CMD is not set (the command to wrap)"]


def test_another_app_already_imported_is_a_clear_import_error(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text("mine = True\n")
    done = subprocess.run(
        [sys.executable, "-c", "import app; import scalesocket"],
        cwd=tmp_path,
        env=env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode != 0
    assert "another module named `app` is already imported" in done.stderr
