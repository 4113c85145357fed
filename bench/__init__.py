"""Load harness: scalesocket against websocketd on loopback, same workloads, one run, one table.

Modules:
    workloads  the workload catalogue: sizes (scaled), the child each server runs, reported metrics
    load       the load generator (picows, one asyncio process); run by the driver as a subprocess
    procs      /proc readers: CPU of the server / its descendants / the machine, PSS, process trees
    driver     server lifecycle (start, wait for accept, stop, reap leftovers) and one workload run
    ceiling    a stand-in server that costs ~nothing per line, to measure the load generator's ceiling
    report     medians over rounds, ratios, the markdown table
    __main__   the command line: `python -m bench --help`
"""
