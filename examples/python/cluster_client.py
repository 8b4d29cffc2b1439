#!/usr/bin/env python3
"""A cluster-aware proglog client with grpcio: the book's resolver and picker, without their
bugs. Give it one node of a cluster or several; it learns the servers (GetServers) and each
partition's leader and replicas (the Admin service's DescribeCluster), sends produces to the
partition's leader, and reads from the leader or round-robin from its followers.

    printf 'a\\nb\\n' | python cluster_client.py --addr 10.0.0.1:8400,10.0.0.2:8400 produce
    python cluster_client.py --addr node-1:8400 consume --offset 0 --read-from followers

What it refreshes on, and what it retries (docs/clients.md, "A cluster-aware client"):

* `NOT_LEADER` naming the leader: that node is used at once; `NOT_LEADER` without a name,
  `NO_LEADER`, a connection that cannot be made, or a deadline: the view is asked for again
  before the next call; and every `refresh_interval_s` anyway.
* A produce is sent again only when it was certainly not taken: after `NOT_LEADER` or
  `NO_LEADER`, or when no connection could be made to send it on (the channel is checked
  ready, within the call's deadline, before the request goes out). Any other failure (a
  deadline, a connection lost mid-call) is raised: the record may be in the log, and sending
  it again could store it twice.
* Reads change nothing: they are tried on the next server after any UNAVAILABLE.

Nothing is global: two ClusterClient objects share no state. Not thread-safe: one per thread.

Needs grpcio, connect.py (beside this file) and the stubs generated from proto/proto (see
README.md); TLS flags as the other examples.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time

import grpc

import connect
from google.rpc import error_details_pb2, status_pb2
from log.v1 import log_pb2, log_pb2_grpc

DOMAIN = "proglog.log.v1"
CONTROLLER_TOPIC = "__cluster"
NO_LEADER_PAUSE_S = 0.25
REFRESH_INTERVAL_S = 30.0


def cluster_error(err: grpc.RpcError) -> tuple[str | None, str | None]:
    """(reason, leader address) from the ErrorInfo of a proglog UNAVAILABLE, else (None, None)."""
    if err.code() != grpc.StatusCode.UNAVAILABLE:
        return None, None
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Is(info.DESCRIPTOR) and detail.Unpack(info) and info.domain == DOMAIN:
                return info.reason, info.metadata.get("leader_addr") or None
    return None, None


# How long grpcio's connectivity poller may still use a channel after its watch ended (it
# polls in steps of 0.2 s).
_POLLER_LINGER_S = 0.3


def _wait_ready(ch: grpc.Channel, timeout_s: float) -> bool:
    """Connects `ch` if it is not, within `timeout_s`. A refused connection fails at once
    (grpc.channel_ready_future would keep retrying until the timeout): the caller moves on
    to the next server, and a failed channel is replaced by a new one."""
    done = threading.Event()
    seen = []

    def on_change(state):
        seen.append(state)
        if state in (grpc.ChannelConnectivity.READY,
                     grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                     grpc.ChannelConnectivity.SHUTDOWN):
            done.set()

    ch.subscribe(on_change, try_to_connect=True)
    try:
        done.wait(timeout_s)
    finally:
        ch.unsubscribe(on_change)
    return bool(seen) and seen[-1] == grpc.ChannelConnectivity.READY


class NoConnection(Exception):
    """No server could be reached (nothing was sent)."""


class ClusterClient:
    def __init__(self, addrs, channel=None, read_from: str = "leader",
                 refresh_interval_s: float = REFRESH_INTERVAL_S):
        """`addrs`: "host:port" strings; `channel(addr)` makes a grpcio channel (default:
        plaintext); `read_from`: "leader" or "followers"."""
        self.seeds = [a.strip() for a in addrs if a.strip()]
        if not self.seeds:
            raise ValueError("no server address given")
        self._make_channel = channel or (lambda addr: grpc.insecure_channel(addr))
        self.read_from = read_from
        self.refresh_interval_s = refresh_interval_s
        self.servers: list[str] = []
        # (topic, partition) -> {"leader": addr | None, "followers": [addr], "term": int}
        self.routes: dict[tuple[str, int], dict] = {}
        self._channels: dict[str, grpc.Channel] = {}
        self._dropped: list[grpc.Channel] = []
        self._refreshed_at: float | None = None
        # When a connectivity watch last ended (see `close`).
        self._watched_at: float | None = None
        self._stale = True
        self._describe_denied = False
        # Round-robin positions: servers tried, followers read from.
        self._turn = itertools.count()
        self._read_turn = itertools.count()

    # --- connections -------------------------------------------------------------------

    def channel(self, addr: str, deadline: float) -> grpc.Channel:
        """A channel to `addr` that is connected, waiting at most until `deadline`."""
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = self._make_channel(addr)
        ready = _wait_ready(ch, max(0.0, deadline - time.monotonic()))
        self._watched_at = time.monotonic()
        if not ready:
            self.unreachable(addr)
            raise NoConnection(f"no connection to {addr}")
        return ch

    def unreachable(self, addr: str) -> None:
        # Dropped, not closed: grpcio's connectivity poller may still look at it for a moment
        # (closing under it raises in that thread); it is closed with the client.
        ch = self._channels.pop(addr, None)
        if ch is not None:
            self._dropped.append(ch)
        for route in self.routes.values():
            if route["leader"] == addr:
                route["leader"] = None
        self._stale = True

    def close(self) -> None:
        # grpcio's connectivity poller (a thread per watched channel) looks at the channel
        # again up to 0.2 s after the last watch ended, and raises in that thread ("Channel
        # closed!") if the channel is closed by then: let it finish first.
        if self._watched_at is not None:
            rest = _POLLER_LINGER_S - (time.monotonic() - self._watched_at)
            if rest > 0:
                time.sleep(rest)
        for ch in [*self._channels.values(), *self._dropped]:
            ch.close()
        self._channels.clear()
        self._dropped.clear()

    def _candidates(self) -> list[str]:
        learned = list(self.servers)
        if learned:
            k = next(self._turn) % len(learned)
            learned = learned[k:] + learned[:k]
        return learned + [s for s in self.seeds if s not in learned]

    # --- the resolver ------------------------------------------------------------------

    def refresh(self, deadline: float, want: tuple[str, int] | None = None) -> None:
        """Asks one server after another for the servers and leaders, until one answers."""
        last = None
        for addr in self._candidates():
            if time.monotonic() >= deadline:
                break
            try:
                stub = log_pb2_grpc.LogStub(self.channel(addr, deadline))
                left = max(0.001, deadline - time.monotonic())
                servers = stub.GetServers(log_pb2.GetServersRequest(), timeout=left)
            except (NoConnection, grpc.RpcError) as e:
                last = e
                continue
            live = [s.rpc_addr for s in servers.servers if s.rpc_addr]
            if live:
                self.servers = live
            described = self._describe(addr, deadline)
            if described is None:
                # The book's view: the default partition's leader only.
                leader = next((s.rpc_addr for s in servers.servers if s.is_leader), None)
                self.routes[("default", 0)] = {
                    "leader": leader,
                    "followers": [s.rpc_addr for s in servers.servers if not s.is_leader],
                    "term": 0,
                }
            elif want is not None and not self.leader_known(*want):
                # The answering node holds no replica of it: ask one that does.
                for replica in self._replicas(described, want):
                    if replica != addr and self._describe(replica, deadline) is not None:
                        if self.leader_known(*want):
                            break
            self._refreshed_at = time.monotonic()
            self._stale = False
            return
        raise NoConnection(f"no connection available to discover the cluster: {last}")

    def _describe(self, addr: str, deadline: float):
        if self._describe_denied:
            return None
        try:
            admin = log_pb2_grpc.AdminStub(self.channel(addr, deadline))
            left = max(0.001, deadline - time.monotonic())
            d = admin.DescribeCluster(log_pb2.DescribeClusterRequest(), timeout=left)
        except NoConnection:
            return None
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
                            grpc.StatusCode.UNIMPLEMENTED):
                # Leaders then come from GetServers and from NOT_LEADER answers.
                self._describe_denied = True
            return None
        self._apply(d)
        return d

    @staticmethod
    def _replicas(d, want: tuple[str, int]) -> list[str]:
        addrs = {n.id: n.rpc_addr for n in d.nodes if not n.removed}
        return [addrs[r.node] for p in d.partitions if (p.topic, p.partition) == want
                for r in p.replicas if r.node in addrs]

    def _apply(self, d) -> None:
        """Merges one node's view: a leader from its own replica replaces ours unless ours
        is from a later term; followers are the live voters (or the placed replicas)."""
        addrs = {n.id: n.rpc_addr for n in d.nodes if not n.removed and n.rpc_addr}
        live = {n.id for n in d.nodes if n.live and not n.removed}
        seen = set()
        for p in d.partitions:
            if p.topic == CONTROLLER_TOPIC:
                continue
            key = (p.topic, p.partition)
            seen.add(key)
            route = self.routes.setdefault(key, {"leader": None, "followers": [], "term": 0})
            if p.local and p.term >= route["term"]:
                route["leader"] = addrs.get(p.leader) if p.leader else None
                route["term"] = p.term
            route["followers"] = [
                addrs[r.node] for r in p.replicas
                if (r.voter or not p.local) and r.node in live and r.node in addrs
                and addrs[r.node] != route["leader"]
            ]
        for key in [k for k in self.routes if k not in seen]:
            del self.routes[key]

    def leader_known(self, topic: str, partition: int) -> bool:
        return bool(self.routes.get((topic or "default", partition), {}).get("leader"))

    # --- the picker --------------------------------------------------------------------

    def _freshen(self, key, deadline: float) -> None:
        age = None if self._refreshed_at is None else time.monotonic() - self._refreshed_at
        unknown = not self._describe_denied and key not in self.routes and (age is None or age >= 1)
        if self._stale or unknown or age is None or age >= self.refresh_interval_s:
            try:
                self.refresh(deadline, key)
            except NoConnection:
                pass

    def pick(self, topic: str, partition: int, deadline: float, read: bool = False):
        """(addr, channel) for a call on the partition: its leader, or for a read with
        read_from="followers" the next follower; with neither reachable, any server. Keeps
        trying until the deadline; raises NoConnection if nothing answers."""
        key = (topic or "default", partition)
        last = None
        while True:
            self._freshen(key, deadline)
            route = self.routes.get(key, {"leader": None, "followers": []})
            order = []
            if read and self.read_from == "followers" and route["followers"]:
                f = route["followers"]
                k = next(self._read_turn) % len(f)
                order += f[k:] + f[:k]
            if route["leader"]:
                order.append(route["leader"])
            order += [a for a in self._candidates() if a not in order]
            for addr in order:
                try:
                    return addr, self.channel(addr, deadline)
                except NoConnection as e:
                    last = e
            if time.monotonic() + NO_LEADER_PAUSE_S >= deadline:
                raise NoConnection(f"no connection available for {key[0]}/{key[1]}: {last}")
            time.sleep(NO_LEADER_PAUSE_S)

    def report(self, topic: str, partition: int, addr: str, err: grpc.RpcError) -> None:
        """Learns from how a call on `addr` failed."""
        key = (topic or "default", partition)
        reason, leader = cluster_error(err)
        route = self.routes.setdefault(key, {"leader": None, "followers": [], "term": 0})
        if reason == "NOT_LEADER" and leader:
            if route["leader"] and route["leader"] not in route["followers"]:
                route["followers"].append(route["leader"])
            route["leader"] = leader
            route["followers"] = [f for f in route["followers"] if f != leader]
        elif reason in ("NOT_LEADER", "NO_LEADER"):
            route["leader"] = None
            self._stale = True
        elif err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            if route["leader"] == addr:
                route["leader"] = None
            self._stale = True

    # --- calls -------------------------------------------------------------------------

    def produce(self, value: bytes, topic: str = "", partition: int = 0,
                timeout_s: float = 10.0) -> int:
        """Appends one record at the partition's leader; returns its offset."""
        deadline = time.monotonic() + timeout_s
        request = log_pb2.ProduceRequest(record=log_pb2.Record(value=value), topic=topic,
                                          partition=partition)
        redirected = False
        while True:
            addr, ch = self.pick(topic, partition, deadline)
            try:
                left = max(0.001, deadline - time.monotonic())
                return log_pb2_grpc.LogStub(ch).Produce(request, timeout=left).offset
            except grpc.RpcError as e:
                self.report(topic, partition, addr, e)
                reason, leader = cluster_error(e)
                # Only what the cluster says it did not take is sent again.
                if reason not in ("NOT_LEADER", "NO_LEADER"):
                    raise
                if time.monotonic() + NO_LEADER_PAUSE_S >= deadline:
                    raise
                named = reason == "NOT_LEADER" and leader is not None and leader != addr
                if not named or redirected:
                    time.sleep(NO_LEADER_PAUSE_S)
                redirected = named

    def consume(self, offset: int, topic: str = "", partition: int = 0,
                timeout_s: float = 10.0):
        """The record at `offset` from the leader or a follower (per read_from)."""
        deadline = time.monotonic() + timeout_s
        request = log_pb2.ConsumeRequest(offset=offset, topic=topic, partition=partition)
        while True:
            addr, ch = self.pick(topic, partition, deadline, read=True)
            try:
                left = max(0.001, deadline - time.monotonic())
                return log_pb2_grpc.LogStub(ch).Consume(request, timeout=left).record
            except grpc.RpcError as e:
                self.report(topic, partition, addr, e)
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if time.monotonic() + NO_LEADER_PAUSE_S >= deadline:
                    raise
                time.sleep(NO_LEADER_PAUSE_S)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    connect.add_flags(p)
    p.add_argument("--topic", default="")
    p.add_argument("--partition", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("produce", help="one record per line of standard input")
    c = sub.add_parser("consume", help="from --offset to the end")
    c.add_argument("--offset", type=int, default=0)
    c.add_argument("--read-from", choices=("leader", "followers"), default="leader")
    args = p.parse_args()

    def make_channel(addr: str) -> grpc.Channel:
        return connect.channel(argparse.Namespace(**{**vars(args), "addr": addr}))

    client = ClusterClient(args.addr.split(","), channel=make_channel,
                           read_from=getattr(args, "read_from", "leader"))
    try:
        if args.command == "produce":
            for line in sys.stdin:
                value = line.rstrip("\n")
                offset = client.produce(value.encode(), args.topic, args.partition, args.timeout)
                print(f"{offset}\t{value}", flush=True)
            return 0
        offset = args.offset
        while True:
            try:
                rec = client.consume(offset, args.topic, args.partition, args.timeout)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    return 0
                raise
            print(f"{rec.offset}\t{rec.value.decode(errors='replace')}", flush=True)
            offset = rec.offset + 1
    except (grpc.RpcError, NoConnection) as e:
        detail = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else str(e)
        print(f"cluster_client: {detail}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`| head`): done, as `proglog consume | head` is.
        sys.stdout = None
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
