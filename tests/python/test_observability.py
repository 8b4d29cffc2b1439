"""The admin port seen by the tools operators use: /metrics parsed by the Prometheus
client's own exposition parser after a known grpcio workload, /healthz and /readyz, and a
grpcio call's `traceparent` in the server's log."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from log.v1 import log_pb2

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scrape(srv) -> dict:
    """{family name: [samples]} as the Prometheus parser reads them; the parser raises on
    anything that is not valid exposition format."""
    status, text = fetch(srv.admin_url + "/metrics")
    assert status == 200, text
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families, family, sample_name, **labels) -> float:
    for s in families[family].samples:
        if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample_name}{labels} in {family}")


def test_metrics_after_a_known_workload(fresh_server):
    srv = fresh_server
    srv.admin().CreateTopic(log_pb2.CreateTopicRequest(
        name="py-obs", config=log_pb2.TopicConfig(partitions=1)))
    log = srv.log()
    for i in range(7):
        log.Produce(log_pb2.ProduceRequest(
            topic="py-obs", record=log_pb2.Record(value=b"v%d" % i)))
    for off in range(3):
        log.Consume(log_pb2.ConsumeRequest(topic="py-obs", offset=off))
    with pytest.raises(grpc.RpcError) as e:
        log.Consume(log_pb2.ConsumeRequest(topic="py-obs", offset=100))
    assert e.value.code() == grpc.StatusCode.OUT_OF_RANGE

    fams = scrape(srv)
    req = "proglog_rpc_requests"  # the parser names counter families without _total
    assert fams[req].type == "counter"
    assert value(fams, req, "proglog_rpc_requests_total",
                 method="/log.v1.Log/Produce", code="OK") == 7
    assert value(fams, req, "proglog_rpc_requests_total",
                 method="/log.v1.Log/Consume", code="OK") == 3
    assert value(fams, req, "proglog_rpc_requests_total",
                 method="/log.v1.Log/Consume", code="OUT_OF_RANGE") == 1
    dur = "proglog_rpc_duration_seconds"
    assert fams[dur].type == "histogram"
    assert value(fams, dur, dur + "_count", method="/log.v1.Log/Produce") == 7
    assert value(fams, dur, dur + "_bucket", method="/log.v1.Log/Produce", le="+Inf") == 7
    part = dict(topic="py-obs", partition="0")
    assert value(fams, "proglog_partition_highest_offset",
                 "proglog_partition_highest_offset", **part) == 6
    assert value(fams, "proglog_partition_lowest_offset",
                 "proglog_partition_lowest_offset", **part) == 0
    assert value(fams, "proglog_partition_appends", "proglog_partition_appends_total",
                 **part) == 7
    assert value(fams, "proglog_group_commit_appends",
                 "proglog_group_commit_appends_sum") == 7
    assert value(fams, "proglog_fdatasync_duration_seconds",
                 "proglog_fdatasync_duration_seconds_count") >= 1
    assert value(fams, "process_resident_memory_bytes", "process_resident_memory_bytes") > 0
    assert sum(s.value for s in fams["proglog_connections_open"].samples) >= 1


def test_health_endpoints(fresh_server):
    assert fetch(fresh_server.admin_url + "/healthz") == (200, "ok\n")
    assert fetch(fresh_server.admin_url + "/readyz") == (200, "serving\n")
    assert fetch(fresh_server.admin_url + "/nope")[0] == 404


def test_traceparent_from_grpcio_reaches_the_log(server_factory):
    srv = server_factory.start("--log-level", "info,proglog::rpc=debug")
    srv.log().Produce(
        log_pb2.ProduceRequest(record=log_pb2.Record(value=b"traced")),
        metadata=(("traceparent", f"00-{TRACE_ID}-b7ad6b7169203331-01"),),
    )
    # The call's line is written just after its status goes out: give it a moment.
    deadline = time.monotonic() + 5
    while True:
        lines = [l for l in srv.stderr_tail().splitlines() if TRACE_ID in l]
        if any("/log.v1.Log/Produce" in l and "code=OK" in l for l in lines):
            break
        assert time.monotonic() < deadline, srv.stderr_tail()
        time.sleep(0.02)
