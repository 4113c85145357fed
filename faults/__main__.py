"""`make faults`: run every fault scenario against a real server and print one table.

`python -m faults [--small] [--only SUBSTRING] [--markdown FILE]`. Each row: the scenario, the
outcome SPEC names, what was observed, what was left behind (processes / zombies / descriptors),
the server's peak RSS, and /health during the scenario (failures, worst latency).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from dataclasses import dataclass

from faults.harness import serve
from faults.scenarios import SCENARIOS, Scenario

MiB = 1 << 20
SCENARIO_TIMEOUT = 180.0


@dataclass
class Row:
    scenario: str
    expected: str
    observed: str
    ok: bool
    leaked: str
    peak_rss: str
    health: str

    def cells(self) -> list[str]:
        verdict = "yes" if self.ok else "**NO**"
        return [self.scenario, self.expected, self.observed, verdict, self.leaked, self.peak_rss, self.health]


HEADER = ["scenario", "expected (SPEC)", "observed", "as expected", "leaked procs/zombies/fds", "peak RSS", "/health"]


async def run_one(item: Scenario, big: bool) -> Row:
    try:
        async with serve(item.options, item.cmd, item.env) as live:
            async with live.watched() as watch:
                try:
                    observed, ok = await asyncio.wait_for(item.run(live, big), SCENARIO_TIMEOUT)
                except Exception as error:  # a scenario that breaks is a row that says so
                    observed, ok = f"{type(error).__name__}: {error}"[:120], False
            census = await live.census(item.settle)  # after the probe's own connection has gone
            clean = census.processes == 0 and census.zombies == 0 and census.fds == 0
            worst = f"{max(watch.latencies) * 1000:.0f} ms" if watch.latencies else "n/a"
            health = f"{watch.failures} failed of {len(watch.latencies)}, worst {worst}"
            if live.settled > 1:
                observed += f"; rooms gone {live.settled:.0f} s after"
            return Row(
                item.name,
                item.expected,
                observed,
                ok and clean and watch.failures == 0,
                f"{census.processes}/{census.zombies}/{census.fds}"
                + (f" ({', '.join(census.names)})" if census.names else ""),
                f"{watch.peak_rss / MiB:.0f} MiB",
                health,
            )
    except Exception as error:
        return Row(item.name, item.expected, f"harness: {error}"[:120], False, "?", "?", "?")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in rows:
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row.cells()) + " |")
    return "\n".join(lines)


async def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m faults")
    p.add_argument("--small", action="store_true", help="the smaller counts that make test runs")
    p.add_argument("--only", help="scenarios whose name contains this")
    p.add_argument("--markdown", help="also write the table to this file")
    args = p.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 3,000 clients need their descriptors too
    chosen = [s for s in SCENARIOS if args.only is None or args.only in s.name]
    rows = []
    started = time.monotonic()
    for item in chosen:
        row = await run_one(item, not args.small)
        rows.append(row)
        print(f"{'ok ' if row.ok else 'NO '} {row.scenario}: {row.observed}", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    failed = sum(1 for row in rows if not row.ok)
    print(f"\n{len(rows) - failed} as expected, {failed} not, in {time.monotonic() - started:.0f} s")
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(text + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
