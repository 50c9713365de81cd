"""A real Redis Cluster for tests: three redis-server processes of the test's own (free
ports, no persistence) joined with the cluster commands themselves (no redis-cli needed):
each node serves a third of the 16,384 slots, no replicas."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer, free_port

SLOTS = 16384


class RedisClusterProcesses:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        # The cluster bus port on a free port of its own too (by default it is the
        # client port + 10,000, which a free port above 55,535 cannot have).
        self.bus_ports = [free_port() for _ in range(nodes)]
        self.nodes = [RedisServer(workdir / f"node-{i}", extra=(
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000", "--cluster-port", str(bus)))
            for i, bus in enumerate(self.bus_ports)]

    @property
    def url(self) -> str:
        """Any node's address: a cluster client learns the rest from it."""
        return self.nodes[0].url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        clients = [node.client() for node in self.nodes]
        n = len(clients)
        for i, client in enumerate(clients):
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * SLOTS // n,
                                   (i + 1) * SLOTS // n - 1)
        for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
            clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, bus)
        # Up when every node says so and every node maps every slot to the same node (a
        # client may start from any of them). Gossip settles within seconds.
        deadline = time.monotonic() + 60
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients) \
                or len({self._slot_map(c) for c in clients}) != 1:
            if time.monotonic() > deadline:
                pytest.fail("the local Redis Cluster did not come up")
            time.sleep(0.05)

    @staticmethod
    def _slot_map(client: Any) -> tuple[tuple[int, int, int], ...]:
        """(first slot, last slot, port) of every range, as this node sees them."""
        ranges = client.execute_command("CLUSTER", "SLOTS")
        return tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in ranges))

    def node_of(self, key: bytes) -> RedisServer:
        """The node that serves `key`'s slot."""
        slot = int(self.nodes[0].client().execute_command("CLUSTER", "KEYSLOT", key))
        n = len(self.nodes)
        return next(node for i, node in enumerate(self.nodes)
                    if i * SLOTS // n <= slot <= (i + 1) * SLOTS // n - 1)

    def keys(self) -> list[bytes]:
        return sorted(k for node in self.nodes for k in node.client().keys("*"))

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
