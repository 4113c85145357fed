"""Report: medians over rounds, ratios scalesocket/websocketd, and the markdown table.

A run that lost, duplicated or reordered anything is incomplete: its figures are left out of the
medians (kept only in the JSON), and the `complete` column says what went wrong.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from typing import Any

from bench.driver import CEILING, disturbance
from bench.workloads import METRICS

Result = dict[str, Any]
NOT_RUN = "not run"
DISTURBED = 0.25  # cores of foreign CPU above which a run is repeated (--retries) and reported


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def runs(results: list[Result], workload: str, target: str) -> list[Result]:
    return [r for r in results if r["workload"] == workload and r["target"] == target]


def median(rs: list[Result], key: str, group: str = "metrics") -> float | None:
    vals = [r[group][key] for r in rs if r.get(group, {}).get(key) is not None]
    return statistics.median(vals) if vals else None


def cell(rs: list[Result], key: str, group: str = "metrics") -> str:
    """Median of the complete runs, with the spread (max - min) / median when there are several."""
    ok = [r for r in rs if r.get("complete")]
    if not rs:
        return NOT_RUN
    m = median(ok, key, group)
    if m is None:
        return "invalid" if not ok else "—"
    vals = [r[group][key] for r in ok]
    spread = f" ({(max(vals) - min(vals)) / m:.0%})" if len(vals) > 1 and m else ""
    return fmt(m) + spread


def completeness(rs: list[Result], target: str) -> str:
    """'' when every run is complete, else what went wrong: runs, early closes, errors."""
    bad = [r for r in rs if not r.get("complete")]
    if not bad:
        return ""
    closes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in bad:
        closes.update(r.get("early_close") or {})
        errors.update(r.get("errors") or {})
    why = [f"close {json.dumps(dict(closes))}"] if closes else []
    why += [f"{e[:60]}" for e in list(errors)[:2]]
    return f"{target} {len(rs) - len(bad)}/{len(rs)} ok" + (f" ({'; '.join(why)})" if why else "")


def bound(client: float, server: float, machine: float, ncpu: float, wall: float) -> str:
    """What limited a run, from its CPU figures: a single-threaded client (or Python server) at ~1
    core has no idle time left; a machine with all cores busy limits everyone on it."""
    hits = [name for name, v in (("client", client), ("server", server)) if v >= 0.9]
    # /proc/stat counts whole 10 ms ticks: the machine figure means little over shorter runs
    if machine >= 0.9 * ncpu and wall >= 0.5:
        hits.append("machine")
    return "+".join(hits) + "-bound" if hits else ""


def cores(rs: list[Result]) -> str:
    """client/server/children cores (medians), and what they say limited the run."""
    ok = [r for r in rs if r.get("complete")] or rs
    if not rs:
        return NOT_RUN
    c, s, k, m, n, w = (median(ok, key, "cpu") for key in ("client", "server", "children", "machine", "ncpu", "wall_s"))
    if c is None or s is None or k is None:
        return "—"
    limit = bound(c, s, m or 0.0, n or 1.0, w or 0.0)
    return "/".join(fmt(v) for v in (c, s, k)) + (f" {limit}" if limit else "")


def table(results: list[Result], workloads: list[str], targets: list[str]) -> str:
    head = ["workload", "metric", "better", "websocketd", "scalesocket", "ratio ss/wsd", "complete", "client ceiling"]
    rows = [head, ["---"] * len(head)]
    for w in workloads:
        by = {t: runs(results, w, t) for t in ("websocketd", "scalesocket")}
        done = [t for t in targets if by.get(t)]
        problems = [p for t in done if (p := completeness(by[t], t))]
        complete = "NO: " + "; ".join(problems) if problems else ("yes" if done else NOT_RUN)
        ceiling = runs(results, w, CEILING)
        for m in METRICS[w]:
            a, b = (median([r for r in by[t] if r.get("complete")], m.key) for t in ("websocketd", "scalesocket"))
            ratio = fmt(b / a) if a and b is not None and m.higher_is_better is not None else ""
            better = "" if m.higher_is_better is None else "higher" if m.higher_is_better else "lower"
            ceil = cell(ceiling, m.key) if ceiling and m.key == "lines_per_s" else ""
            rows.append(
                [
                    w,
                    m.label,
                    better,
                    cell(by["websocketd"], m.key),
                    cell(by["scalesocket"], m.key),
                    ratio,
                    complete,
                    ceil,
                ]
            )
        if w != "idle-memory":  # memory is read after settling: nothing is timed, so no CPU figure
            ceil = cores(ceiling) if ceiling else ""
            rows.append(
                [
                    w,
                    "cores client/server/children",
                    "",
                    cores(by["websocketd"]),
                    cores(by["scalesocket"]),
                    "",
                    complete,
                    ceil,
                ]
            )
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def notes(results: list[Result]) -> list[str]:
    """Things a reader must know about individual runs: disturbance, leaks, forced stops."""
    out = []
    for r in results:
        where = f"{r['target']} {r['workload']} round {r.get('round', '?')}"
        if (other := disturbance(r)) > DISTURBED:
            tries = f" (least disturbed of {r['attempts']} attempts)" if r.get("attempts", 1) > 1 else ""
            out.append(f"{where}: {other} cores used outside the benchmark during the run{tries}")
        if r.get("children_left"):
            out.append(f"{where}: {r['children_left']} children still alive 5 s after every client left")
        stop = r.get("server_stop") or {}
        if stop.get("sigkill"):
            out.append(f"{where}: server ignored SIGTERM for 5 s and was SIGKILLed")
        if stop.get("leftovers_killed"):
            out.append(f"{where}: {stop['leftovers_killed']} children outlived the server and were SIGKILLed")
    return out


LEGEND = """\
Cells: median of the complete runs (spread = (max - min) / median over rounds, when more than one).
ratio = scalesocket / websocketd; `better` says which direction wins (latency and memory: lower).
cores = CPU seconds per wall second over the timed phase: load generator / server process / all its
children (live + reaped). "X-bound": the client or server process at >= 0.9 core (all that a
single-threaded Python process can use; websocketd is multi-threaded Go), or a machine with >= 90%
of its cores busy. A client-bound figure is a lower bound for the server.
client ceiling: the same load generator against bench/ceiling.py, a server that writes pre-built
frames and does ~nothing per line, so its rate is the client's own limit.
fanout: scalesocket runs 100 clients in ONE room (one child, one `go`); websocketd has no rooms, so
it runs its nearest equivalent: 100 connections with a child each, every client sending `go`.
idle-memory: (server PSS + children PSS - idle server PSS) / clients, from /proc/<pid>/smaps_rollup."""
