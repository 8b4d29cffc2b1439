#!/usr/bin/env python3
"""Reads records from proglog and prints "<offset>\t<value>" for each.

    python consumer.py --addr 127.0.0.1:8400                 # from offset 0 to the end
    python consumer.py --addr 127.0.0.1:8400 --follow        # then wait for new records
    python consumer.py --addr 127.0.0.1:8400 --offset 42 --follow --topic orders

Without --follow it reads with unary Consume calls, each with a deadline, until the server
answers OUT_OF_RANGE: that is how a client finds the end of a log. When there is nothing at
--offset at all (an empty log, or an offset past its end), it says so and exits 1, as
`proglog consume` does. With --follow it opens one
ConsumeStream, which sends what is stored and then each new record as it becomes readable,
costing the server nothing while idle. Ctrl-C (SIGINT) or SIGTERM cancels the stream and the
consumer exits 0; the server counts that call as CANCELLED.

Needs grpcio, connect.py (beside this file) and the stubs generated from proto/proto (see
README.md). TLS flags as in producer.py.
"""

from __future__ import annotations

import argparse
import signal
import sys

import grpc

import connect
from log.v1 import log_pb2, log_pb2_grpc


def show(record: log_pb2.Record, out) -> None:
    print(f"{record.offset}\t{record.value.decode('utf-8', 'backslashreplace')}",
          file=out, flush=True)


def read_to_end(stub: log_pb2_grpc.LogStub, topic: str, partition: int, offset: int,
                timeout_s: float, out=sys.stdout) -> int:
    """Unary Consume from `offset` until OUT_OF_RANGE; returns the next offset to read.
    Nothing at `offset` itself is the caller's error: OUT_OF_RANGE is raised."""
    first = True
    while True:
        try:
            resp = stub.Consume(
                log_pb2.ConsumeRequest(offset=offset, topic=topic, partition=partition),
                timeout=timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.OUT_OF_RANGE and not first:
                return offset
            raise
        first = False
        show(resp.record, out)
        offset = resp.record.offset + 1


def follow(stub: log_pb2_grpc.LogStub, topic: str, partition: int, offset: int,
           out=sys.stdout) -> None:
    """One ConsumeStream from `offset`, printed until SIGINT or SIGTERM cancels it."""
    # No deadline: a tail is meant to stay open. Keepalive (connect.py) notices a dead server.
    call = stub.ConsumeStream(
        log_pb2.ConsumeRequest(offset=offset, topic=topic, partition=partition))

    def cancel(_sig, _frame):
        call.cancel()  # ends the iteration below with CANCELLED, and resets the stream

    signal.signal(signal.SIGINT, cancel)
    signal.signal(signal.SIGTERM, cancel)
    try:
        for resp in call:
            show(resp.record, out)
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.CANCELLED:
            raise


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    connect.add_flags(p)
    p.add_argument("--topic", default="", help="topic (empty: the default topic)")
    p.add_argument("--partition", type=int, default=0)
    p.add_argument("--offset", type=int, default=0, help="first offset to read")
    p.add_argument("--follow", action="store_true",
                   help="keep reading new records until interrupted")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="deadline of each unary Consume, seconds")
    args = p.parse_args()
    with connect.channel(args) as ch:
        stub = log_pb2_grpc.LogStub(ch)
        try:
            if args.follow:
                follow(stub, args.topic, args.partition, args.offset)
            else:
                read_to_end(stub, args.topic, args.partition, args.offset, args.timeout)
        except grpc.RpcError as e:
            print(f"consumer: {e.code().name}: {e.details()}", file=sys.stderr)
            if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                print(f"consumer: no record at offset {args.offset}: the log is empty or ends "
                      "before it (--follow waits for it)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
