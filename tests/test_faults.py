"""The fault report's scenarios (faults/), with the smaller counts: each must end as SPEC says, leave
no process, zombie or descriptor behind, and keep /health answering (issue 10; `make faults` for the
heavy counts and the table in docs/faults.md)."""

from __future__ import annotations

import pytest

from faults.__main__ import run_one
from faults.scenarios import SCENARIOS

pytestmark = pytest.mark.anyio

# What SPEC asks and the server does not do yet, as the fault report says: kept visible as xfail.
KNOWN: dict[str, str] = {}


def params() -> list[object]:
    xfail = {name: pytest.mark.xfail(reason=why) for name, why in KNOWN.items()}
    return [pytest.param(s.name, marks=[xfail[s.name]] if s.name in xfail else []) for s in SCENARIOS]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", params())
async def test_fault_scenario(name: str) -> None:
    item = next(s for s in SCENARIOS if s.name == name)
    row = await run_one(item, big=False)
    assert row.ok, f"{row.observed} | leaked {row.leaked} | peak {row.peak_rss} | /health {row.health}"
