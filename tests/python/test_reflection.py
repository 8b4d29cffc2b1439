"""Server reflection from a real reflection client: grpcio-reflection's descriptor database
(which speaks grpc.reflection.v1alpha), the way a tool with no .proto files learns the API."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from log.v1 import log_pb2


def test_list_resolve_and_produce_from_reflected_descriptors(fresh_server):
    ch = fresh_server.default_channel
    db = ProtoReflectionDescriptorDatabase(ch)
    services = set(db.get_services())
    assert {"log.v1.Log", "log.v1.Admin", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= services, services

    # A pool of its own, filled only from the server: nothing from the generated stubs.
    pool = descriptor_pool.DescriptorPool(db)
    log = pool.FindServiceByName("log.v1.Log")
    assert {"Produce", "Consume", "ConsumeStream", "ProduceStream", "GetServers"} <= \
        {m.name for m in log.methods}
    produce = log.FindMethodByName("Produce")
    Request = message_factory.GetMessageClass(produce.input_type)
    Response = message_factory.GetMessageClass(produce.output_type)
    req = Request()
    req.record.value = b"built from reflection"
    call = ch.unary_unary("/log.v1.Log/Produce",
                          request_serializer=Request.SerializeToString,
                          response_deserializer=Response.FromString)
    offset = call(req, timeout=10).offset

    got = fresh_server.log().Consume(log_pb2.ConsumeRequest(offset=offset), timeout=10)
    assert got.record.value == b"built from reflection"

    # An unknown symbol: the server answers NOT_FOUND on the stream, the pool raises KeyError.
    with pytest.raises(KeyError):
        pool.FindMessageTypeByName("log.v1.NoSuchMessage")
    # ... and the server keeps answering.
    assert pool.FindMessageTypeByName("log.v1.ConsumeResponse").fields_by_name["record"].number == 2
