"""A book-style grpcio client (the book's log.v1 messages, no topic or partition set) against
a three-node cluster formed with the book's flags: it produces through followers as through
the leader, and consumes every acknowledged record from every node.
"""

from __future__ import annotations

import time

import grpc

from conftest import claim_port
from log.v1 import log_pb2

RPC_TIMEOUT_S = 10.0
FORM_DEADLINE_S = 90.0


def produce(stub, value: bytes) -> int:
    req = log_pb2.ProduceRequest(record=log_pb2.Record(value=value))
    return stub.Produce(req, timeout=RPC_TIMEOUT_S).offset


def produce_when_formed(stub, value: bytes) -> int:
    """While the cluster forms, a produce may find no leader or the default topic not yet
    placed: UNAVAILABLE or NOT_FOUND, nothing stored. Retried until the deadline."""
    deadline = time.monotonic() + FORM_DEADLINE_S
    while True:
        try:
            return produce(stub, value)
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
                raise
            if "outcome unknown" in (e.details() or ""):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_book_client_against_every_node_of_a_cluster(server_factory):
    gossip = [claim_port() for _ in range(3)]
    try:
        first = f"127.0.0.1:{gossip[0][0]}"
        nodes = [server_factory.start("--shards", "1", "--node-name", "b1", "--bind-addr", first)]
        for i in (1, 2):
            nodes.append(
                server_factory.start(
                    "--shards", "1",
                    "--node-name", f"b{i + 1}",
                    "--bind-addr", f"127.0.0.1:{gossip[i][0]}",
                    "--start-join-addrs", first,
                )
            )
        stubs = [n.log() for n in nodes]
        acked = {}
        for i, stub in enumerate(stubs):
            value = f"formed-{i}".encode()
            off = produce_when_formed(stub, value)
            assert off not in acked
            acked[off] = value
        # Two nodes of three follow the partition's leader: every node takes produces.
        for round_ in range(5):
            for i, stub in enumerate(stubs):
                value = f"book-{i}-{round_}".encode()
                off = produce(stub, value)
                assert off not in acked, f"offset {off} acknowledged twice"
                acked[off] = value
        assert sorted(acked) == list(range(len(acked))), "offsets are dense"
        # Every node serves every acknowledged record, and OUT_OF_RANGE past the end.
        for stub in stubs:
            for off, value in acked.items():
                rec = stub.Consume(log_pb2.ConsumeRequest(offset=off), timeout=RPC_TIMEOUT_S).record
                assert (rec.offset, rec.value) == (off, value)
            try:
                stub.Consume(log_pb2.ConsumeRequest(offset=len(acked)), timeout=RPC_TIMEOUT_S)
                raise AssertionError("a record past the end")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.OUT_OF_RANGE, e
        # A follower's stream tails like the leader's: it sees a record produced elsewhere.
        tail = stubs[2].ConsumeStream(
            log_pb2.ConsumeRequest(offset=len(acked)), timeout=RPC_TIMEOUT_S
        )
        off = produce(stubs[0], b"tailed")
        rec = next(tail).record
        assert (rec.offset, rec.value) == (off, b"tailed")
        tail.cancel()
    finally:
        for _, lock in gossip:
            lock.close()
