"""grpcio clients against the real `proglog` server.

Book-compatible calls leave the extension fields (topic, partition) unset, as a client
generated from the book's log.proto would, and so talk to topic `default`, partition 0.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from conftest import MiB
from google.rpc import error_details_pb2, status_pb2
from health.v1 import health_pb2
from log.v1 import log_pb2

RPC_TIMEOUT_S = 10.0
SERVING = health_pb2.HealthCheckResponse.SERVING


def produce(stub, value: bytes, **kw) -> int:
    req = log_pb2.ProduceRequest(record=log_pb2.Record(value=value), **kw)
    return stub.Produce(req, timeout=RPC_TIMEOUT_S).offset


def consume(stub, offset: int, **kw) -> log_pb2.Record:
    return stub.Consume(log_pb2.ConsumeRequest(offset=offset, **kw), timeout=RPC_TIMEOUT_S).record


def expect_error(code: grpc.StatusCode, fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    err = info.value
    assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()!r}"
    return err


class Feeder:
    """A request iterator for client streams that the test feeds one request at a time."""

    _END = object()

    def __init__(self):
        self._q: queue.Queue = queue.Queue()

    def send(self, req) -> None:
        self._q.put(req)

    def close(self) -> None:
        self._q.put(self._END)

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is self._END:
                return
            yield item


# --- the book's RPCs ---------------------------------------------------------------------

def test_produce_consume_round_trip(server):
    stub = server.log()
    before_ms = int(time.time() * 1000)
    first = produce(stub, b"hello world")
    second = produce(stub, b"")
    third = produce(stub, bytes(range(256)))
    assert (second, third) == (first + 1, first + 2), "offsets are dense"

    rec = consume(stub, first)
    assert rec.value == b"hello world"
    assert rec.offset == first
    # The server stamps records that come without a timestamp.
    assert before_ms - 5_000 <= rec.timestamp_ms <= int(time.time() * 1000) + 5_000
    assert consume(stub, second).value == b""
    assert consume(stub, second).offset == second
    assert consume(stub, third).value == bytes(range(256))


def test_fresh_log_starts_at_offset_zero(fresh_server):
    stub = fresh_server.log()
    assert [produce(stub, b"r%d" % i) for i in range(5)] == [0, 1, 2, 3, 4]
    assert [consume(stub, i).value for i in range(5)] == [b"r%d" % i for i in range(5)]


def test_consume_past_end_is_out_of_range_with_book_details(server):
    stub = server.log()
    last = produce(stub, b"the end")
    past = last + 1
    err = expect_error(grpc.StatusCode.OUT_OF_RANGE, consume, stub, past)
    assert err.details() == f"offset out of range: {past}"

    details = [v for k, v in err.trailing_metadata() if k == "grpc-status-details-bin"]
    assert len(details) == 1, f"trailing metadata: {err.trailing_metadata()!r}"
    st = status_pb2.Status.FromString(details[0])
    assert st.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    assert st.message == f"offset out of range: {past}"
    localized = []
    for any_msg in st.details:
        if any_msg.Is(error_details_pb2.LocalizedMessage.DESCRIPTOR):
            lm = error_details_pb2.LocalizedMessage()
            any_msg.Unpack(lm)
            localized.append(lm)
    assert len(localized) == 1, f"details: {st.details!r}"
    assert localized[0].locale == "en-US"
    assert localized[0].message == f"The requested offset is outside of the log: {past}"

    # Far past the end too, and the channel is fine afterwards.
    far = past + 1_000_000
    err = expect_error(grpc.StatusCode.OUT_OF_RANGE, consume, stub, far)
    assert err.details() == f"offset out of range: {far}"
    assert consume(stub, last).value == b"the end"


def test_produce_stream_pipelined_in_order(server):
    stub = server.log()
    n = 200
    values = [b"stream-%03d" % i for i in range(n)]
    reqs = (log_pb2.ProduceRequest(record=log_pb2.Record(value=v)) for v in values)
    call = stub.ProduceStream(reqs, timeout=60)
    offsets = [resp.offset for resp in call]
    assert call.code() == grpc.StatusCode.OK, (call.code(), call.details())
    assert len(offsets) == n
    assert offsets == list(range(offsets[0], offsets[0] + n)), "one response per request, in order"
    for i in (0, 1, n // 2, n - 1):
        assert consume(stub, offsets[i]).value == values[i]


def test_produce_stream_lock_step(server):
    """The book's client style: send one, wait for its response, send the next."""
    stub = server.log()
    feeder = Feeder()
    call = stub.ProduceStream(iter(feeder), timeout=60)
    responses = iter(call)
    offsets = []
    for i in range(20):
        feeder.send(log_pb2.ProduceRequest(record=log_pb2.Record(value=b"ls-%d" % i)))
        offsets.append(next(responses).offset)
    feeder.close()
    assert list(responses) == [], "no extra responses after half-close"
    assert call.code() == grpc.StatusCode.OK, (call.code(), call.details())
    assert offsets == list(range(offsets[0], offsets[0] + 20))


def test_produce_stream_empty(server):
    call = server.log().ProduceStream(iter(()), timeout=RPC_TIMEOUT_S)
    assert list(call) == []
    assert call.code() == grpc.StatusCode.OK


def test_consume_stream_from_zero_then_cancel(fresh_server):
    stub = fresh_server.log()
    n = 50
    for i in range(n):
        assert produce(stub, b"cs-%d" % i) == i
    call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=0), timeout=60)
    got = []
    for resp in call:
        got.append(resp.record)
        if len(got) == n:
            break
    call.cancel()
    assert [r.offset for r in got] == list(range(n))
    assert [r.value for r in got] == [b"cs-%d" % i for i in range(n)]
    assert call.code() == grpc.StatusCode.CANCELLED
    # Cancelling the stream leaves the channel and server usable.
    assert consume(stub, n - 1).value == b"cs-%d" % (n - 1)


def test_consume_stream_wakes_on_append(server):
    stub = server.log()
    nxt = produce(stub, b"before") + 1
    call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=nxt), timeout=30)
    received: queue.Queue = queue.Queue()

    def reader():
        try:
            for resp in call:
                received.put(resp.record)
        except grpc.RpcError as e:
            received.put(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        time.sleep(0.3)
        assert received.empty(), "nothing is past the end yet"
        for i in range(3):
            assert produce(stub, b"after-%d" % i) == nxt + i
        for i in range(3):
            rec = received.get(timeout=10)
            assert not isinstance(rec, Exception), rec
            assert (rec.offset, rec.value) == (nxt + i, b"after-%d" % i)
    finally:
        call.cancel()
        t.join(10)


def test_get_servers(server):
    resp = server.log().GetServers(log_pb2.GetServersRequest(), timeout=RPC_TIMEOUT_S)
    assert len(resp.servers) == 1, resp
    only = resp.servers[0]
    assert only.is_leader
    assert only.rpc_addr == server.address
    assert only.id != ""


# --- health ------------------------------------------------------------------------------

def test_health_check_and_watch(server):
    health = server.health()
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=RPC_TIMEOUT_S)
    assert resp.status == SERVING

    call = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
    first = next(iter(call))
    assert first.status == SERVING
    call.cancel()


def test_health_check_unknown_service(server):
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        server.health().Check,
        health_pb2.HealthCheckRequest(service="no.such.Service"),
        timeout=RPC_TIMEOUT_S,
    )


# --- batch RPCs --------------------------------------------------------------------------

def test_produce_batch_consume_batch(server):
    stub = server.log()
    n = 50
    values = [b"batch-%02d" % i for i in range(n)]
    resp = stub.ProduceBatch(
        log_pb2.ProduceBatchRequest(records=[log_pb2.Record(value=v) for v in values]),
        timeout=RPC_TIMEOUT_S,
    )
    assert resp.count == n
    assert resp.last_offset == resp.base_offset + n - 1
    base = resp.base_offset

    # The batch is visible to the book's Consume too.
    assert consume(stub, base + 7).value == values[7]

    got = stub.ConsumeBatch(
        log_pb2.ConsumeBatchRequest(offset=base, max_records=10), timeout=RPC_TIMEOUT_S
    )
    assert [r.offset for r in got.records] == list(range(base, base + 10))
    assert [r.value for r in got.records] == values[:10]
    assert got.next_offset == base + 10
    assert got.high_watermark >= base + n

    # Read the rest, following next_offset.
    records = list(got.records)
    offset = got.next_offset
    while offset < base + n:
        got = stub.ConsumeBatch(
            log_pb2.ConsumeBatchRequest(offset=offset, max_records=17), timeout=RPC_TIMEOUT_S
        )
        assert got.records, "no progress before the end"
        records.extend(got.records)
        offset = got.next_offset
    assert [r.value for r in records[:n]] == values

    # At the high watermark: an empty batch, not an error.
    hw = stub.ConsumeBatch(
        log_pb2.ConsumeBatchRequest(offset=base), timeout=RPC_TIMEOUT_S
    ).high_watermark
    at_end = stub.ConsumeBatch(log_pb2.ConsumeBatchRequest(offset=hw), timeout=RPC_TIMEOUT_S)
    assert list(at_end.records) == []
    assert at_end.next_offset == hw
    assert at_end.high_watermark == hw

    # Past it: OUT_OF_RANGE.
    expect_error(
        grpc.StatusCode.OUT_OF_RANGE,
        stub.ConsumeBatch,
        log_pb2.ConsumeBatchRequest(offset=hw + 1),
        timeout=RPC_TIMEOUT_S,
    )


def test_consume_batch_respects_max_bytes(server):
    stub = server.log()
    value = b"x" * 1000
    base = stub.ProduceBatch(
        log_pb2.ProduceBatchRequest(records=[log_pb2.Record(value=value)] * 20),
        timeout=RPC_TIMEOUT_S,
    ).base_offset
    got = stub.ConsumeBatch(
        log_pb2.ConsumeBatchRequest(offset=base, max_bytes=5_500), timeout=RPC_TIMEOUT_S
    )
    assert 1 <= len(got.records) <= 5, len(got.records)
    assert got.next_offset == base + len(got.records)


def test_consume_batch_stream(fresh_server):
    stub = fresh_server.log()
    n = 120
    values = [b"cbs-%03d" % i for i in range(n)]
    first = stub.ProduceBatch(
        log_pb2.ProduceBatchRequest(records=[log_pb2.Record(value=v) for v in values[:100]]),
        timeout=RPC_TIMEOUT_S,
    )
    assert (first.base_offset, first.last_offset, first.count) == (0, 99, 100)

    call = stub.ConsumeBatchStream(
        log_pb2.ConsumeBatchRequest(offset=0, max_records=30), timeout=60
    )
    it = iter(call)
    records = []
    expected_next = 0
    produced_more = False
    while len(records) < n:
        batch = next(it)
        assert len(batch.records) <= 30
        assert batch.records, "the stream sends no empty batches while data is there"
        assert batch.records[0].offset == expected_next
        expected_next = batch.next_offset
        assert batch.next_offset == batch.records[-1].offset + 1
        assert batch.high_watermark >= batch.next_offset
        records.extend(batch.records)
        if len(records) == 100 and not produced_more:
            # Caught up: the stream must wake for records appended now.
            more = stub.ProduceBatch(
                log_pb2.ProduceBatchRequest(
                    records=[log_pb2.Record(value=v) for v in values[100:]]
                ),
                timeout=RPC_TIMEOUT_S,
            )
            assert more.base_offset == 100
            produced_more = True
    call.cancel()
    assert [r.offset for r in records] == list(range(n))
    assert [r.value for r in records] == values


# --- topics ------------------------------------------------------------------------------

def test_admin_topic_lifecycle(server):
    admin, stub = server.admin(), server.log()
    name = "orders-%d" % time.monotonic_ns()

    created = admin.CreateTopic(
        log_pb2.CreateTopicRequest(name=name, config=log_pb2.TopicConfig(partitions=3)),
        timeout=RPC_TIMEOUT_S,
    ).topic
    assert created.name == name
    assert created.config.partitions == 3
    assert sorted(p.partition for p in created.partitions) == [0, 1, 2]

    names = admin.ListTopics(log_pb2.ListTopicsRequest(), timeout=RPC_TIMEOUT_S).names
    assert name in names
    assert "default" in names

    expect_error(
        grpc.StatusCode.ALREADY_EXISTS,
        admin.CreateTopic,
        log_pb2.CreateTopicRequest(name=name),
        timeout=RPC_TIMEOUT_S,
    )

    desc = admin.DescribeTopic(log_pb2.DescribeTopicRequest(name=name), timeout=RPC_TIMEOUT_S).topic
    assert desc.name == name
    assert desc.config.partitions == 3
    assert len(desc.partitions) == 3
    for p in desc.partitions:
        assert p.next_offset == p.lowest_offset == 0

    # Each partition has its own offsets, from 0.
    for part in range(3):
        for i in range(part + 1):
            assert produce(stub, b"p%d-%d" % (part, i), topic=name, partition=part) == i
    for part in range(3):
        for i in range(part + 1):
            rec = consume(stub, i, topic=name, partition=part)
            assert (rec.offset, rec.value) == (i, b"p%d-%d" % (part, i))
    batch = stub.ConsumeBatch(
        log_pb2.ConsumeBatchRequest(topic=name, partition=2, offset=0), timeout=RPC_TIMEOUT_S
    )
    assert [r.value for r in batch.records] == [b"p2-0", b"p2-1", b"p2-2"]
    assert batch.high_watermark == 3
    expect_error(grpc.StatusCode.OUT_OF_RANGE, consume, stub, 1, topic=name, partition=0)

    desc = admin.DescribeTopic(log_pb2.DescribeTopicRequest(name=name), timeout=RPC_TIMEOUT_S).topic
    by_part = {p.partition: p for p in desc.partitions}
    assert [by_part[i].next_offset for i in range(3)] == [1, 2, 3]

    # A partition the topic does not have.
    expect_error(grpc.StatusCode.NOT_FOUND, produce, stub, b"x", topic=name, partition=3)

    admin.DeleteTopic(log_pb2.DeleteTopicRequest(name=name), timeout=RPC_TIMEOUT_S)
    names = admin.ListTopics(log_pb2.ListTopicsRequest(), timeout=RPC_TIMEOUT_S).names
    assert name not in names
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        admin.DescribeTopic,
        log_pb2.DescribeTopicRequest(name=name),
        timeout=RPC_TIMEOUT_S,
    )
    expect_error(grpc.StatusCode.NOT_FOUND, produce, stub, b"x", topic=name)
    expect_error(grpc.StatusCode.NOT_FOUND, consume, stub, 0, topic=name)

    # The name can be used again, and starts empty.
    admin.CreateTopic(log_pb2.CreateTopicRequest(name=name), timeout=RPC_TIMEOUT_S)
    assert produce(stub, b"again", topic=name) == 0
    admin.DeleteTopic(log_pb2.DeleteTopicRequest(name=name), timeout=RPC_TIMEOUT_S)


def test_alter_topic_retention(server):
    admin, stub = server.admin(), server.log()
    name = "trimmed-%d" % time.monotonic_ns()
    admin.CreateTopic(
        log_pb2.CreateTopicRequest(
            name=name, config=log_pb2.TopicConfig(segment_bytes=64 * 1024)
        ),
        timeout=RPC_TIMEOUT_S,
    )
    value = b"v" * 1000
    for _ in range(20):
        stub.ProduceBatch(
            log_pb2.ProduceBatchRequest(
                topic=name, records=[log_pb2.Record(value=value)] * 25
            ),
            timeout=RPC_TIMEOUT_S,
        )

    # A field left out keeps its setting (proto3 `optional`: absent is not 0).
    altered = admin.AlterTopic(
        log_pb2.AlterTopicRequest(name=name, retention_bytes=128 * 1024),
        timeout=RPC_TIMEOUT_S,
    ).topic
    assert altered.config.retention_bytes == 128 * 1024
    assert altered.config.retention_ms == 0
    assert altered.config.segment_bytes == 64 * 1024
    lowest = altered.partitions[0].lowest_offset
    assert lowest > 0, "applied before the answer"
    assert altered.partitions[0].next_offset == 500
    assert consume(stub, lowest, topic=name).value == value
    expect_error(grpc.StatusCode.OUT_OF_RANGE, consume, stub, 0, topic=name)

    altered = admin.AlterTopic(
        log_pb2.AlterTopicRequest(name=name, retention_ms=60_000), timeout=RPC_TIMEOUT_S
    ).topic
    assert (altered.config.retention_bytes, altered.config.retention_ms) == (128 * 1024, 60_000)
    desc = admin.DescribeTopic(log_pb2.DescribeTopicRequest(name=name), timeout=RPC_TIMEOUT_S).topic
    assert (desc.config.retention_bytes, desc.config.retention_ms) == (128 * 1024, 60_000)

    err = expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        admin.AlterTopic,
        log_pb2.AlterTopicRequest(name=name),
        timeout=RPC_TIMEOUT_S,
    )
    assert "changes nothing" in err.details()
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        admin.AlterTopic,
        log_pb2.AlterTopicRequest(name=name + "-missing", retention_bytes=1),
        timeout=RPC_TIMEOUT_S,
    )
    admin.DeleteTopic(log_pb2.DeleteTopicRequest(name=name), timeout=RPC_TIMEOUT_S)


def test_default_topic_exists_with_one_partition(server):
    desc = server.admin().DescribeTopic(
        log_pb2.DescribeTopicRequest(name="default"), timeout=RPC_TIMEOUT_S
    ).topic
    assert desc.name == "default"
    assert desc.config.partitions == 1
    assert [p.partition for p in desc.partitions] == [0]
    # An empty topic name is the default topic.
    off = produce(server.log(), b"explicit default", topic="default")
    assert consume(server.log(), off).value == b"explicit default"


def test_unknown_topic_is_not_found(server):
    stub, admin = server.log(), server.admin()
    t = "no-such-topic"
    expect_error(grpc.StatusCode.NOT_FOUND, produce, stub, b"x", topic=t)
    expect_error(grpc.StatusCode.NOT_FOUND, consume, stub, 0, topic=t)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.ProduceBatch,
        log_pb2.ProduceBatchRequest(topic=t, records=[log_pb2.Record(value=b"x")]),
        timeout=RPC_TIMEOUT_S,
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.ConsumeBatch,
        log_pb2.ConsumeBatchRequest(topic=t),
        timeout=RPC_TIMEOUT_S,
    )
    call = stub.ConsumeStream(log_pb2.ConsumeRequest(topic=t), timeout=RPC_TIMEOUT_S)
    expect_error(grpc.StatusCode.NOT_FOUND, list, call)
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        admin.DescribeTopic,
        log_pb2.DescribeTopicRequest(name=t),
        timeout=RPC_TIMEOUT_S,
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        admin.DeleteTopic,
        log_pb2.DeleteTopicRequest(name=t),
        timeout=RPC_TIMEOUT_S,
    )
    # The default topic has only partition 0.
    expect_error(grpc.StatusCode.NOT_FOUND, produce, stub, b"x", partition=1)


# --- message size limits -----------------------------------------------------------------

SMALL_MAX = 1 * MiB
RECORD_FRAMING = 64  # the server's per-record overhead allowance (max-record-bytes + 64 <= max)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    from conftest import ServerFactory

    factory = ServerFactory(tmp_path_factory.mktemp("small"))
    try:
        yield factory.start(
            "--max-message-bytes", str(SMALL_MAX),
            "--max-record-bytes", str(SMALL_MAX - RECORD_FRAMING),
        )
    finally:
        factory.stop_all()


def big_channel(srv, receive_limit=8 * MiB):
    # grpcio would refuse to send or receive over 4 MiB itself: lift its limits so that
    # the server's limit is the one tested.
    return srv.channel(
        options=[
            ("grpc.max_send_message_length", 8 * MiB),
            ("grpc.max_receive_message_length", receive_limit),
        ]
    )


def test_message_just_under_limit_succeeds(small_server):
    stub = small_server.log(big_channel(small_server))
    value = bytes(i % 251 for i in range(SMALL_MAX - RECORD_FRAMING))
    req = log_pb2.ProduceRequest(record=log_pb2.Record(value=value))
    assert SMALL_MAX - 100 < req.ByteSize() < SMALL_MAX
    off = stub.Produce(req, timeout=30).offset
    rec = consume(stub, off)
    assert rec.value == value
    assert rec.offset == off


def test_message_over_limit_is_resource_exhausted(small_server):
    ch = big_channel(small_server)
    stub = small_server.log(ch)
    before = produce(stub, b"before")
    for size in (SMALL_MAX + 1, 3 * MiB):
        req = log_pb2.ProduceRequest(record=log_pb2.Record(value=b"z" * size))
        expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Produce, req, timeout=30)
        # The same channel keeps working.
        assert produce(stub, b"after %d" % size) > before
    # Also inside a stream, after good messages.
    reqs = [log_pb2.ProduceRequest(record=log_pb2.Record(value=b"ok"))] * 3 + [
        log_pb2.ProduceRequest(record=log_pb2.Record(value=b"z" * (SMALL_MAX + 1)))
    ]
    call = stub.ProduceStream(iter(reqs), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert consume(stub, produce(stub, b"still fine")).value == b"still fine"


def test_record_over_record_limit_is_rejected(small_server):
    """A record bigger than max-record-bytes whose message still fits the max."""
    stub = small_server.log(big_channel(small_server))
    req = log_pb2.ProduceRequest(record=log_pb2.Record(value=b"r" * (SMALL_MAX - 32)))
    assert req.ByteSize() < SMALL_MAX
    expect_error(grpc.StatusCode.RESOURCE_EXHAUSTED, stub.Produce, req, timeout=30)
    assert produce(stub, b"small") >= 0


def test_server_replies_fit_the_limit(small_server):
    """Batches of big records are cut so that no reply exceeds max-message-bytes: a client
    that accepts exactly that much gets every record."""
    stub = small_server.log(big_channel(small_server, receive_limit=SMALL_MAX))
    values = [bytes([65 + i]) * (400 * 1024) for i in range(4)]
    offsets = [produce(stub, v) for v in values]
    got = []
    offset = offsets[0]
    while offset <= offsets[-1]:
        batch = stub.ConsumeBatch(log_pb2.ConsumeBatchRequest(offset=offset), timeout=30)
        assert batch.records, "no progress"
        assert batch.ByteSize() <= SMALL_MAX
        got.extend(batch.records)
        offset = batch.next_offset
    assert [r.value for r in got[:4]] == values

    call = stub.ConsumeBatchStream(log_pb2.ConsumeBatchRequest(offset=offsets[0]), timeout=30)
    streamed = []
    for batch in call:
        streamed.extend(batch.records)
        if len(streamed) >= 4:
            break
    call.cancel()
    assert [r.value for r in streamed[:4]] == values


# --- concurrency -------------------------------------------------------------------------

def test_many_concurrent_unary_calls_on_one_channel(server):
    stub = server.log()
    n = 200
    values = [b"fut-%03d" % i for i in range(n)]
    futures = [
        stub.Produce.future(log_pb2.ProduceRequest(record=log_pb2.Record(value=v)), timeout=30)
        for v in values
    ]
    offsets = [f.result().offset for f in futures]
    assert len(set(offsets)) == n, "distinct offsets"
    assert sorted(offsets) == list(range(min(offsets), min(offsets) + n)), "and dense"
    reads = [
        stub.Consume.future(log_pb2.ConsumeRequest(offset=o), timeout=30) for o in offsets
    ]
    assert [f.result().record.value for f in reads] == values


def test_many_concurrent_clients_on_own_connections(server):
    n_threads, per_thread = 16, 10
    channels = [server.channel(own_connection=True) for _ in range(n_threads)]

    def work(t):
        stub = server.log(channels[t])
        out = []
        for i in range(per_thread):
            v = b"thr-%02d-%02d" % (t, i)
            out.append((produce(stub, v), v))
        return out

    with ThreadPoolExecutor(max_workers=n_threads) as pool:
        results = [r for chunk in pool.map(work, range(n_threads)) for r in chunk]
    offsets = [o for o, _ in results]
    assert len(set(offsets)) == n_threads * per_thread
    stub = server.log()
    for o, v in results:
        assert consume(stub, o).value == v


def test_concurrent_streams(server):
    """Streams and unary calls interleaved on one channel."""
    stub = server.log()
    n_streams, per_stream = 12, 25

    def one_stream(s):
        reqs = [
            log_pb2.ProduceRequest(record=log_pb2.Record(value=b"cs-%d-%d" % (s, i)))
            for i in range(per_stream)
        ]
        call = stub.ProduceStream(iter(reqs), timeout=60)
        offs = [r.offset for r in call]
        assert call.code() == grpc.StatusCode.OK
        return offs

    with ThreadPoolExecutor(max_workers=n_streams) as pool:
        per = list(pool.map(one_stream, range(n_streams)))
    for offs in per:
        assert len(offs) == per_stream
        assert offs == sorted(offs), "each stream's offsets increase"
    flat = [o for offs in per for o in offs]
    assert len(set(flat)) == len(flat)


# --- process-level behaviour ---------------------------------------------------------------

def idle_cpu_seconds(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_consume_streams_use_no_cpu(fresh_server):
    """The reference spins a core per stream waiting past the end; ours must sleep."""
    stub = fresh_server.log()
    produce(stub, b"only")
    calls = [stub.ConsumeStream(log_pb2.ConsumeRequest(offset=1), timeout=60) for _ in range(8)]
    try:
        time.sleep(0.5)  # let the streams settle past the end
        before = idle_cpu_seconds(fresh_server.proc.pid)
        time.sleep(2.0)
        used = idle_cpu_seconds(fresh_server.proc.pid) - before
        assert used < 0.3, f"server used {used:.2f}s CPU in 2s with 8 idle streams"
    finally:
        for c in calls:
            c.cancel()


def test_sigterm_stops_cleanly_and_data_survives_restart(server_factory):
    srv = server_factory.start()
    stub = srv.log()
    offsets = [produce(stub, b"durable-%d" % i) for i in range(10)]
    assert offsets == list(range(10))
    code = srv.terminate()
    assert code == 0, f"exit code after SIGTERM: {code}\n{srv.stderr_tail()}"

    again = server_factory.restart(srv)
    stub = again.log()
    assert [consume(stub, i).value for i in range(10)] == [b"durable-%d" % i for i in range(10)]
    assert produce(stub, b"next") == 10, "offsets continue after a restart"

    # Topics and their partitions survive a restart too.
    again.admin().CreateTopic(
        log_pb2.CreateTopicRequest(name="kept", config=log_pb2.TopicConfig(partitions=2)),
        timeout=RPC_TIMEOUT_S,
    )
    assert produce(stub, b"k1", topic="kept", partition=1) == 0
    assert again.terminate() == 0
    third = server_factory.restart(again)
    desc = third.admin().DescribeTopic(
        log_pb2.DescribeTopicRequest(name="kept"), timeout=RPC_TIMEOUT_S
    ).topic
    assert len(desc.partitions) == 2
    assert consume(third.log(), 0, topic="kept", partition=1).value == b"k1"
    assert consume(third.log(), 10).value == b"next"


# --- protocol edges ------------------------------------------------------------------------

def test_client_offsets_are_ignored(server):
    stub = server.log()
    nxt = produce(stub, b"x") + 1
    req = log_pb2.ProduceRequest(record=log_pb2.Record(value=b"liar", offset=10**12))
    assert stub.Produce(req, timeout=RPC_TIMEOUT_S).offset == nxt
    assert consume(stub, nxt).offset == nxt


def test_gzip_compressed_requests(server):
    """grpcio can compress messages; the server must either read them or refuse them with
    UNIMPLEMENTED (the gRPC rule for an unsupported grpc-encoding), and stay usable."""
    ch = server.channel(own_connection=True)
    stub = server.log(ch)
    req = log_pb2.ProduceRequest(record=log_pb2.Record(value=b"squeeze me " * 100))
    try:
        off = stub.Produce(req, timeout=RPC_TIMEOUT_S, compression=grpc.Compression.Gzip).offset
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNIMPLEMENTED, (e.code(), e.details())
    else:
        assert consume(stub, off).value == b"squeeze me " * 100
    assert consume(stub, produce(stub, b"plain")).value == b"plain"


def test_unknown_method_and_service_are_unimplemented(server):
    ch = server.default_channel
    for path in ("/log.v1.Log/NoSuchMethod", "/no.such.Service/Produce"):
        call = ch.unary_unary(path, request_serializer=None, response_deserializer=None)
        expect_error(grpc.StatusCode.UNIMPLEMENTED, call, b"", timeout=RPC_TIMEOUT_S)
    assert consume(server.log(), produce(server.log(), b"ok")).value == b"ok"


def test_malformed_request_bytes(server):
    raw = server.default_channel.unary_unary(
        "/log.v1.Log/Produce", request_serializer=None, response_deserializer=None
    )
    # Field 1 (record) claims 100 bytes but the message ends: not a valid ProduceRequest.
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\x0a\x64abc", timeout=RPC_TIMEOUT_S)
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL), (
        info.value.code(),
        info.value.details(),
    )
    assert consume(server.log(), produce(server.log(), b"ok")).value == b"ok"


def test_topic_defaults_and_invalid_names(server):
    admin = server.admin()
    name = "plain-%d" % time.monotonic_ns()
    topic = admin.CreateTopic(log_pb2.CreateTopicRequest(name=name), timeout=RPC_TIMEOUT_S).topic
    assert topic.config.partitions == 1, "0 partitions means the default, 1"
    assert topic.config.segment_bytes > 0, "effective settings have defaults filled in"
    admin.DeleteTopic(log_pb2.DeleteTopicRequest(name=name), timeout=RPC_TIMEOUT_S)

    for bad in ("", ".", "..", "../escape", "a/b", "a\x00b", "x" * 250):
        expect_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            admin.CreateTopic,
            log_pb2.CreateTopicRequest(name=bad),
            timeout=RPC_TIMEOUT_S,
        )
    names = admin.ListTopics(log_pb2.ListTopicsRequest(), timeout=RPC_TIMEOUT_S).names
    assert not [n for n in names if "/" in n or n in ("", ".", "..")], names

    with pytest.raises(grpc.RpcError) as info:
        admin.CreateTopic(
            log_pb2.CreateTopicRequest(
                name="huge-%d" % time.monotonic_ns(),
                config=log_pb2.TopicConfig(partitions=1_000_000),
            ),
            timeout=30,
        )
    assert info.value.code() in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ), (info.value.code(), info.value.details())
    resp = server.health().Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
    assert resp.status == SERVING


def test_consume_stream_slow_reader_gets_everything(fresh_server):
    """Several MiB behind a reader that does not read at first: flow control must hold the
    server back without losing or reordering anything."""
    stub = fresh_server.log()
    n, size = 600, 8 * 1024
    for start in range(0, n, 100):
        stub.ProduceBatch(
            log_pb2.ProduceBatchRequest(
                records=[log_pb2.Record(value=(b"%06d" % i) * (size // 6)) for i in range(start, start + 100)]
            ),
            timeout=RPC_TIMEOUT_S,
        )
    call = stub.ConsumeStream(log_pb2.ConsumeRequest(offset=0), timeout=60)
    time.sleep(1.0)  # the server fills the windows and must then wait
    got = 0
    for resp in call:
        assert resp.record.offset == got
        assert resp.record.value[:6] == b"%06d" % got
        got += 1
        if got == n:
            break
    call.cancel()
    assert got == n


def test_sigterm_with_open_streams(server_factory):
    """Tailing streams never end by themselves; SIGTERM must still stop the server promptly,
    and the clients' calls must end rather than hang."""
    srv = server_factory.start()
    stub = srv.log()
    produce(stub, b"one")
    calls = [stub.ConsumeStream(log_pb2.ConsumeRequest(offset=0), timeout=60) for _ in range(3)]
    for c in calls:
        assert next(iter(c)).record.value == b"one"
    watch = iter(srv.health().Watch(health_pb2.HealthCheckRequest(), timeout=60))
    assert next(watch).status == SERVING
    ended: queue.Queue = queue.Queue()

    def drain(c):
        try:
            for _ in c:
                pass
            ended.put(grpc.StatusCode.OK)
        except grpc.RpcError as e:
            ended.put(e.code())

    threads = [threading.Thread(target=drain, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    time.sleep(0.2)
    srv.proc.send_signal(__import__("signal").SIGTERM)
    codes = [ended.get(timeout=15) for _ in calls]
    # Health watchers hear NOT_SERVING (or just see the stream end) during shutdown.
    try:
        statuses = [m.status for m in watch]
    except grpc.RpcError:
        statuses = []
    assert SERVING not in statuses, statuses
    assert all(c in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) for c in codes), codes
    start = time.monotonic()
    code = srv.proc.wait(15)
    assert code == 0, f"exit code {code} after SIGTERM\n{srv.stderr_tail()}"
    assert time.monotonic() - start < 15


def test_sigterm_ends_an_open_produce_stream_with_every_record_read_answered(server_factory):
    """A producer that keeps its stream open does not hold the server's stop for the drain
    timeout: at SIGTERM the stream stops being read, what was read is answered, and the call
    ends UNAVAILABLE with reason NO_LEADER (what was not read was not stored: send it to
    another node). The answered records are there after a restart."""
    srv = server_factory.start("--drain-timeout", "60s")
    stub = srv.log()
    feeder = Feeder()
    call = stub.ProduceStream(iter(feeder), timeout=120)
    responses = iter(call)
    offsets = []
    for i in range(10):
        feeder.send(log_pb2.ProduceRequest(record=log_pb2.Record(value=b"open-%d" % i)))
        offsets.append(next(responses).offset)
    start = time.monotonic()
    srv.proc.send_signal(__import__("signal").SIGTERM)
    with pytest.raises(grpc.RpcError) as ended:
        for r in responses:
            offsets.append(r.offset)
    feeder.close()
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
    assert "shutting down" in ended.value.details(), ended.value.details()
    status = status_pb2.Status.FromString(
        dict(ended.value.trailing_metadata())["grpc-status-details-bin"]
    )
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert info.reason == "NO_LEADER", info
    assert srv.proc.wait(50) == 0, srv.stderr_tail()
    # Well before the 60 s drain timeout the stream would have held it for.
    assert time.monotonic() - start < 50
    again = server_factory.restart(srv)
    for i, off in enumerate(offsets[:10]):
        assert consume(again.log(), off).value == b"open-%d" % i


def test_deleting_a_topic_ends_its_tailing_streams(server):
    admin, stub = server.admin(), server.log()
    name = "doomed-%d" % time.monotonic_ns()
    admin.CreateTopic(log_pb2.CreateTopicRequest(name=name), timeout=RPC_TIMEOUT_S)
    produce(stub, b"a", topic=name)
    calls = [
        stub.ConsumeStream(log_pb2.ConsumeRequest(topic=name, offset=1), timeout=60),
        stub.ConsumeBatchStream(log_pb2.ConsumeBatchRequest(topic=name, offset=1), timeout=60),
    ]
    ended: queue.Queue = queue.Queue()

    def drain(c):
        try:
            got = list(c)
            ended.put(("OK", got))
        except grpc.RpcError as e:
            ended.put((e.code(), e.details()))

    for c in calls:
        threading.Thread(target=drain, args=(c,), daemon=True).start()
    time.sleep(0.3)
    admin.DeleteTopic(log_pb2.DeleteTopicRequest(name=name), timeout=RPC_TIMEOUT_S)
    for _ in calls:
        code, detail = ended.get(timeout=10)  # the streams end instead of waiting forever
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, detail


def test_128_threads_at_once(server):
    """128 blocking calls released together by a barrier, on one channel and on 8 own
    connections (so several of the server's cores take part)."""
    n = 128
    channels = [server.default_channel] + [server.channel(own_connection=True) for _ in range(7)]
    barrier = threading.Barrier(n)

    def work(i):
        stub = server.log(channels[i % len(channels)])
        barrier.wait(30)
        return produce(stub, b"barrier-%03d" % i)

    with ThreadPoolExecutor(max_workers=n) as pool:
        offsets = list(pool.map(work, range(n)))
    assert len(set(offsets)) == n
    assert sorted(offsets) == list(range(min(offsets), min(offsets) + n))
    stub = server.log()
    assert [consume(stub, o).value for o in offsets] == [b"barrier-%03d" % i for i in range(n)]


def test_long_names_in_errors_stay_within_client_metadata_limits(server):
    """grpcio refuses response metadata over 16 KiB (8 KiB soft limit). A status message
    that repeats an arbitrary-length client value must be cut short."""
    long_name = "x" * 20_000
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        server.admin().CreateTopic,
        log_pb2.CreateTopicRequest(name=long_name),
        timeout=RPC_TIMEOUT_S,
    )
    with pytest.raises(grpc.RpcError) as info:
        produce(server.log(), b"x", topic=long_name)
    assert info.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), (
        info.value.code(),
        info.value.details()[:200],
    )
