#!/usr/bin/env python3
"""Produces one record per line of standard input to proglog, over one pipelined
ProduceStream, and prints "<offset>\t<line>" for each record once the server acknowledged it.

    python producer.py --addr 127.0.0.1:8400 < lines.txt
    printf 'a\nb\n' | python producer.py --addr 127.0.0.1:8400 --topic orders

Up to --window records are in flight at once; the server answers them in order, each after
it is durable (under the server's durability policy). If the stream fails, the records sent
but not acknowledged have an UNKNOWN outcome: they may be in the log. This script reports
them and exits 1 rather than sending them again, which could store them twice (see
docs/clients.md, "Retrying"). When the server refused a record (too large, an unknown topic,
not allowed, the disk full: the codes in REFUSED), it ended the stream there, storing
neither that record nor any after it: the script says so.

Needs grpcio, connect.py (beside this file) and the stubs generated from proto/proto (see
README.md). TLS: --tls-ca-file (server certificate check), plus --tls-cert-file and
--tls-key-file for mutual TLS.
"""

from __future__ import annotations

import argparse
import sys
import threading

import grpc

import connect
from log.v1 import log_pb2, log_pb2_grpc


# Codes with which the server refuses a request before storing it. It handles a stream's
# requests in order and ends the stream at the refused one, so nothing it had not answered
# was stored (docs/clients.md, the ProduceStream row). Any other failure (a broken connection,
# a deadline, UNAVAILABLE) leaves the unanswered records' outcome unknown.
REFUSED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DATA_LOSS,
}


def produce(stub: log_pb2_grpc.LogStub, lines, topic: str, partition: int,
            window: int, out=sys.stdout) -> int:
    """Sends `lines`, at most `window` unacknowledged at a time. Returns the exit code."""
    slots = threading.Semaphore(window)
    stop = threading.Event()
    sent: list[str] = []

    def requests():
        for line in lines:
            # Blocks while `window` records wait for their offsets: memory stays bounded
            # however fast standard input is.
            slots.acquire()
            if stop.is_set():
                return
            text = line.rstrip("\n")
            sent.append(text)
            yield log_pb2.ProduceRequest(
                record=log_pb2.Record(value=text.encode()), topic=topic, partition=partition)

    acked = 0
    # No deadline: the stream lives as long as standard input. Each response is the offset of
    # the request at the same position.
    call = stub.ProduceStream(requests())
    try:
        for resp in call:
            print(f"{resp.offset}\t{sent[acked]}", file=out, flush=True)
            acked += 1
            slots.release()
    except grpc.RpcError as e:
        stop.set()
        slots.release()  # wakes a request generator waiting for a slot, so it can end
        unanswered = len(sent) - acked
        if e.code() in REFUSED:
            fate = "not stored (the server refused the first of them and ended the stream)"
        else:
            fate = "sent without an answer (outcome unknown: they may be in the log)"
        print(f"producer: {e.code().name}: {e.details()}; {acked} acknowledged, "
              f"{unanswered} {fate}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    connect.add_flags(p)
    p.add_argument("--topic", default="", help="topic (empty: the default topic)")
    p.add_argument("--partition", type=int, default=0)
    p.add_argument("--window", type=int, default=256,
                   help="records in flight at most (pipelining)")
    args = p.parse_args()
    if args.window < 1:
        p.error("--window must be at least 1")
    with connect.channel(args) as ch:
        return produce(log_pb2_grpc.LogStub(ch), sys.stdin, args.topic, args.partition,
                       args.window)


if __name__ == "__main__":
    sys.exit(main())
