"""Cluster metrics: this instance's part in a cluster (SPEC §16), read from `Cluster` at scrape time.

Registered in the app's own registry next to app.metrics' families when --metrics is on. Nothing
here runs per message: the cluster keeps plain counts, and the collector reads them.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from app.cluster import Cluster


class ClusterCollector:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        cluster = self.cluster
        info = GaugeMetricFamily(
            "scalesocket_instance", "This instance (--instance), and whether it is in a cluster", labels=["instance"]
        )
        info.add_metric([cluster.instance], 1 if cluster.clustered else 0)
        yield info
        yield GaugeMetricFamily(
            "scalesocket_ready", "1 while /health/ready answers 200 (takes new rooms)", value=int(cluster.ready)
        )
        owned = sum(1 for lease in cluster.leases.values() if not lease.fenced)
        yield GaugeMetricFamily("scalesocket_rooms_owned", "Rooms whose lease this instance holds", value=owned)
        yield CounterMetricFamily(
            "scalesocket_rooms_fenced", "Rooms closed because their lease ended (1012)", value=cluster.fenced_total
        )
        yield GaugeMetricFamily(
            "scalesocket_forwarded_connections_open",
            "Clients this instance carries to the instance that owns their room",
            value=cluster.forwarded_open,
        )
        yield CounterMetricFamily(
            "scalesocket_forwarded_connections",
            "Clients carried to another instance",
            value=cluster.forwarded_total,
        )
