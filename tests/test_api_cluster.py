"""SPEC §16 for `--api`: in a cluster, `/api/<room>` answers as the room's owner sees it, from any instance."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from tests.cluster_harness import REDIS, cluster
from tests.conftest import recv_text
from tests.test_cluster import all_reaped
from tests.test_nginx import NGINX

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(REDIS is None or NGINX is None, reason="needs redis-server and nginx (see .ci/run)"),
    pytest.mark.timeout(120),
]


async def test_room_api_answers_as_the_owner_sees_it(tmp_path: Path) -> None:
    async with cluster(tmp_path, count=2) as c:
        n1, n2 = c.instances
        async with connect(n1.url + "/where") as a, connect(n2.url + "/where") as b:
            await a.send("a")
            assert (await recv_text(a)).split()[0] == "n1"  # n1 owns the room; b is carried there
            await b.send("b")
            assert (await recv_text(b)).split()[0] == "n1"
            async with httpx.AsyncClient() as http:
                seen = [(await http.get(f"{n.http}/api/where")).json() for n in (n1, n2)]
                connections = (await http.get(f"{n2.http}/api/where/connections/")).json()
                unknown = await http.get(f"{n2.http}/api/where/bogus")
                nobody = (await http.get(f"{n2.http}/api/nobody")).json()
        assert seen == [{"name": "where", "connections": 2, "metadata": None}] * 2
        assert connections == 2 and unknown.status_code == 404
        assert nobody == {"name": "nobody", "connections": 0, "metadata": None}
        await all_reaped(c)
