"""The cluster-aware grpcio client (examples/python/cluster_client.py) against a real
three-node cluster formed with the book's flags: told of one follower, it learns the servers
and the leader, sends produces to the leader, reads round-robin from the followers, and
after a kill -9 of the leader produces on through the new one; every acknowledged record
reads back at its offset. The example's command line (produce, consume) runs too.
"""

from __future__ import annotations

import subprocess
import sys
import time

import grpc

from conftest import ROOT, claim_port
from log.v1 import log_pb2
from test_examples import env

EXAMPLES = ROOT / "examples" / "python"
sys.path.insert(0, str(EXAMPLES))

import cluster_client  # noqa: E402  (the example under test)

DEADLINE_S = 90.0


def wait(what: str, cond, deadline_s: float = DEADLINE_S):
    until = time.monotonic() + deadline_s
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < until, f"{what}: not within {deadline_s} s"
        time.sleep(0.1)


def leader_of(nodes, topic: str = "default", voters: int = 3):
    """The node that leads topic/0 with `voters` voters, as it says itself."""
    for n in nodes:
        try:
            d = n.admin().DescribeCluster(log_pb2.DescribeClusterRequest(), timeout=5)
        except grpc.RpcError:
            continue
        for p in d.partitions:
            if (p.topic, p.partition) == (topic, 0) and p.local and p.leader == d.node_id \
                    and sum(r.voter for r in p.replicas) == voters:
                return n
    return None


def produce_when_placed(client, value: bytes) -> int:
    """While the cluster forms, `default` may not be placed yet (NOT_FOUND, nothing stored)."""
    until = time.monotonic() + DEADLINE_S
    while True:
        try:
            return client.produce(value, timeout_s=10)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > until:
                raise
            time.sleep(0.2)


def test_cluster_client_routes_to_the_leader_and_survives_its_kill(server_factory):
    gossip = [claim_port() for _ in range(3)]
    client = None
    try:
        first = f"127.0.0.1:{gossip[0][0]}"
        nodes = [server_factory.start("--shards", "1", "--node-name", "p1",
                                      "--bind-addr", first, "--bootstrap")]
        for i in (1, 2):
            nodes.append(server_factory.start(
                "--shards", "1", "--node-name", f"p{i + 1}",
                "--bind-addr", f"127.0.0.1:{gossip[i][0]}", "--start-join-addrs", first))
        leader = wait("default/0 led with three voters", lambda: leader_of(nodes))
        seed = next(n for n in nodes if n is not leader)
        client = cluster_client.ClusterClient([seed.address], read_from="followers")
        acked = {}
        for i in range(5):
            value = f"r{i}".encode()
            acked[produce_when_placed(client, value)] = value
        assert sorted(acked) == list(range(5))
        # Produce went to the leader; the followers were learned.
        route = client.routes[("default", 0)]
        assert route["leader"] == leader.address
        followers = sorted(n.address for n in nodes if n is not leader)
        assert sorted(route["followers"]) == followers
        # Reads round-robin over the followers, never the leader.
        picks = [client.pick("", 0, time.monotonic() + 10, read=True)[0] for _ in range(4)]
        assert set(picks) == set(followers) and picks[0] != picks[1], picks
        assert picks[0] == picks[2] and picks[1] == picks[3], picks

        def read_all():
            # A follower applies a committed record a little after the leader acknowledged it.
            try:
                return all(client.consume(o, timeout_s=5).value == v for o, v in acked.items())
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise
                return False

        wait("every record read from the followers", read_all)

        # kill -9 of the leader: the client finds the new one.
        leader.proc.kill()
        leader.proc.wait()
        for i in range(5, 10):
            value = f"r{i}".encode()
            until = time.monotonic() + DEADLINE_S
            while True:
                try:
                    off = client.produce(value, timeout_s=10)
                    break
                except (grpc.RpcError, cluster_client.NoConnection) as e:
                    # A call cut by the kill has an unknown outcome: a new value is sent,
                    # never the same one again.
                    assert time.monotonic() < until, f"no produce after the kill: {e}"
                    value += b"+"
            assert off not in acked, f"offset {off} acknowledged twice"
            acked[off] = value
        assert client.routes[("default", 0)]["leader"] != leader.address
        client.read_from = "leader"
        for off, value in acked.items():
            assert client.consume(off, timeout_s=30).value == value, off

        # The command line, given a dead address and a live one.
        live = [n.address for n in nodes if n is not leader]
        addrs = f"{leader.address},{live[0]}"
        p = subprocess.run(
            [sys.executable, str(EXAMPLES / "cluster_client.py"), "--addr", addrs, "produce"],
            input="cli-1\ncli-2\n", text=True, capture_output=True, timeout=60, env=env())
        assert p.returncode == 0, p.stderr
        produced = [line.split("\t") for line in p.stdout.splitlines()]
        assert [v for _, v in produced] == ["cli-1", "cli-2"]
        start = produced[0][0]
        c = subprocess.run(
            [sys.executable, str(EXAMPLES / "cluster_client.py"), "--addr", addrs, "consume",
             "--offset", start],
            text=True, capture_output=True, timeout=60, env=env())
        assert c.returncode == 0, c.stderr
        assert c.stdout.splitlines() == [f"{o}\t{v}" for o, v in produced]
    finally:
        if client is not None:
            client.close()
        for _, lock in gossip:
            lock.close()
