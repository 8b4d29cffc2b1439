//! Every unary RPC of log.v1.Log, log.v1.Admin and grpc.health.v1.Health, and the error
//! statuses clients depend on.

use crate::common;

use common::*;
use net::Code;
use prost::Message;
use proto::google::rpc;
use proto::log::v1::*;

#[test]
fn produce_consume_and_get_servers() {
    let s = TestServer::start();
    let ch = s.channel();
    // A book client sends no topic: it lands in "default", partition 0.
    assert_eq!(produce(&ch, "", 0, "hello").unwrap(), 0);
    assert_eq!(produce(&ch, "", 0, "world").unwrap(), 1);
    let r = consume(&ch, "", 0, 1).unwrap();
    assert_eq!(&r.value[..], b"world");
    assert_eq!(r.offset, 1);
    assert!(r.timestamp_ms > 0, "the server stamps the append time");
    assert_eq!(&consume(&ch, "default", 0, 0).unwrap().value[..], b"hello");

    let servers: GetServersResponse = ch
        .unary_prost(paths::GET_SERVERS, &GetServersRequest {}, opts())
        .unwrap();
    assert_eq!(
        servers.servers,
        vec![Server {
            id: "test-node".into(),
            rpc_addr: s.addr.to_string(),
            is_leader: true
        }]
    );
}

#[test]
fn consume_past_the_end_is_out_of_range_with_details() {
    let s = TestServer::start();
    let ch = s.channel();
    produce(&ch, "", 0, "only").unwrap();
    let st = consume(&ch, "", 0, 5).unwrap_err();
    assert_eq!(st.code, Code::OutOfRange);
    assert_eq!(st.message, "offset out of range: 5");
    let details = rpc::Status::decode(st.details.as_ref()).expect("grpc-status-details-bin");
    assert_eq!(details.code, 11);
    assert_eq!(details.message, "offset out of range: 5");
    assert_eq!(
        details.details[0].type_url,
        "type.googleapis.com/google.rpc.LocalizedMessage"
    );
    let lm = rpc::find_localized_message(&details).expect("LocalizedMessage");
    assert_eq!(lm.locale, "en-US");
    assert_eq!(lm.message, "The requested offset is outside of the log: 5");
    // The offset just past the last record too.
    assert_eq!(consume(&ch, "", 0, 1).unwrap_err().code, Code::OutOfRange);
}

#[test]
fn unknown_topic_and_partition_are_not_found() {
    let s = TestServer::start();
    let ch = s.channel();
    assert_eq!(
        produce(&ch, "nope", 0, "x").unwrap_err().code,
        Code::NotFound
    );
    assert_eq!(consume(&ch, "nope", 0, 0).unwrap_err().code, Code::NotFound);
    assert_eq!(produce(&ch, "", 1, "x").unwrap_err().code, Code::NotFound);
    // A request without a record is the client's mistake.
    let st = ch
        .unary_prost::<_, ProduceResponse>(paths::PRODUCE, &ProduceRequest::default(), opts())
        .unwrap_err();
    assert_eq!(st.code, Code::InvalidArgument);
}

#[test]
fn admin_topics_lifecycle() {
    let s = TestServer::start();
    let ch = s.channel();
    let t = create_topic(&ch, "events", 3).unwrap();
    assert_eq!(t.name, "events");
    assert_eq!(t.partitions.len(), 3);
    assert_eq!(t.config.as_ref().map(|c| c.partitions), Some(3));
    assert_eq!(
        create_topic(&ch, "events", 1).unwrap_err().code,
        Code::AlreadyExists
    );
    let bad = create_topic(&ch, "bad/name", 1).unwrap_err();
    assert_eq!(bad.code, Code::InvalidArgument);
    // The reason, once: the code says "invalid argument" already.
    assert!(
        bad.message.starts_with("topic name \"bad/name\" must be"),
        "{bad}"
    );

    // Partitions land on different shards; routing is invisible to the client.
    for p in 0..3 {
        for i in 0..=p {
            assert_eq!(
                produce(&ch, "events", p, &format!("{p}-{i}")).unwrap(),
                i as u64
            );
        }
    }
    assert_eq!(&consume(&ch, "events", 2, 2).unwrap().value[..], b"2-2");

    assert_eq!(
        topic_names(&ch),
        vec!["default".to_string(), "events".to_string()]
    );

    let d: DescribeTopicResponse = ch
        .unary_prost(
            paths::DESCRIBE_TOPIC,
            &DescribeTopicRequest {
                name: "events".into(),
            },
            opts(),
        )
        .unwrap();
    let parts = d.topic.unwrap().partitions;
    let next: Vec<u64> = parts.iter().map(|p| p.next_offset).collect();
    assert_eq!(next, vec![1, 2, 3]);
    assert!(parts.iter().all(|p| p.size_bytes > 0));

    delete_topic(&ch, "events");
    let st = ch
        .unary_prost::<_, DescribeTopicResponse>(
            paths::DESCRIBE_TOPIC,
            &DescribeTopicRequest {
                name: "events".into(),
            },
            opts(),
        )
        .unwrap_err();
    assert_eq!(st.code, Code::NotFound);
    assert_eq!(
        produce(&ch, "events", 0, "x").unwrap_err().code,
        Code::NotFound
    );
}

#[test]
fn produce_batch_and_consume_batch() {
    let s = TestServer::start();
    let ch = s.channel();
    let records = (0..10).map(|i| record(format!("v{i}")).unwrap()).collect();
    let r: ProduceBatchResponse = ch
        .unary_prost(
            paths::PRODUCE_BATCH,
            &ProduceBatchRequest {
                records,
                ..Default::default()
            },
            opts(),
        )
        .unwrap();
    assert_eq!((r.base_offset, r.last_offset, r.count), (0, 9, 10));

    let get = |offset, max_records| -> Result<ConsumeBatchResponse, net::Status> {
        ch.unary_prost(
            paths::CONSUME_BATCH,
            &ConsumeBatchRequest {
                offset,
                max_records,
                ..Default::default()
            },
            opts(),
        )
    };
    let b = get(3, 4).unwrap();
    let offsets: Vec<u64> = b.records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![3, 4, 5, 6]);
    assert_eq!(&b.records[0].value[..], b"v3");
    assert_eq!((b.next_offset, b.high_watermark), (7, 10));
    // At the end: empty, not an error; past it: OUT_OF_RANGE.
    let end = get(10, 0).unwrap();
    assert!(end.records.is_empty());
    assert_eq!((end.next_offset, end.high_watermark), (10, 10));
    assert_eq!(get(11, 0).unwrap_err().code, Code::OutOfRange);

    // An empty batch is invalid.
    let st = ch
        .unary_prost::<_, ProduceBatchResponse>(
            paths::PRODUCE_BATCH,
            &ProduceBatchRequest::default(),
            opts(),
        )
        .unwrap_err();
    assert_eq!(st.code, Code::InvalidArgument);
}

#[test]
fn oversized_messages_are_resource_exhausted_and_the_connection_survives() {
    let s = TestServer::start_with(&[
        "--max-message-bytes",
        "64KiB",
        "--max-record-bytes",
        "16KiB",
    ]);
    let ch = s.channel();
    // Over the gRPC message limit: refused by the codec.
    let big = "x".repeat(100 * 1024);
    assert_eq!(
        produce(&ch, "", 0, &big).unwrap_err().code,
        Code::ResourceExhausted
    );
    // Within the message limit but over the record limit: refused by the engine.
    let mid = "y".repeat(20 * 1024);
    assert_eq!(
        produce(&ch, "", 0, &mid).unwrap_err().code,
        Code::ResourceExhausted
    );
    // Same connection, still fine.
    assert_eq!(produce(&ch, "", 0, "small").unwrap(), 0);
    assert_eq!(&consume(&ch, "", 0, 0).unwrap().value[..], b"small");
}

#[test]
fn health_check() {
    use proto::health::v1::health_check_response::ServingStatus;
    use proto::health::v1::*;
    let s = TestServer::start();
    let ch = s.channel();
    for service in ["", "log.v1.Log", "log.v1.Admin"] {
        let r: HealthCheckResponse = ch
            .unary_prost(
                paths::CHECK,
                &HealthCheckRequest {
                    service: service.into(),
                },
                opts(),
            )
            .unwrap();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let st = ch
        .unary_prost::<_, HealthCheckResponse>(
            paths::CHECK,
            &HealthCheckRequest {
                service: "no.such.Service".into(),
            },
            opts(),
        )
        .unwrap_err();
    assert_eq!(st.code, Code::NotFound);
}

#[test]
fn unknown_method_is_unimplemented() {
    let s = TestServer::start();
    let ch = s.channel();
    let st = ch
        .unary("/log.v1.Log/Nope", bytes::Bytes::new(), opts())
        .unwrap_err();
    assert_eq!(st.code, Code::Unimplemented);
}

/// Server reflection over a real socket, as grpcurl asks it (v1): list the services, fetch
/// the file of `log.v1.Log` with its imports, be told NOT_FOUND for an unknown symbol on the
/// same stream, then build a ProduceRequest from the reflected descriptor and send it.
#[test]
fn reflection_v1_describes_the_api() {
    use proto::prost_types::FileDescriptorProto;
    use proto::reflection::v1::server_reflection_request::MessageRequest as Q;
    use proto::reflection::v1::server_reflection_response::MessageResponse as A;
    use proto::reflection::v1::ServerReflectionRequest;
    use proto::reflection::{v1, v1alpha};

    let s = TestServer::start();
    let ask = |q: Q| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(q),
    };
    let answers = reflect(
        s.addr,
        s.client.clone(),
        v1::paths::INFO,
        vec![
            ask(Q::ListServices(String::new())),
            ask(Q::FileContainingSymbol("log.v1.Log".into())),
            ask(Q::FileContainingSymbol("log.v1.NoSuchThing".into())),
            ask(Q::FileByFilename("google/rpc/status.proto".into())),
        ],
    )
    .unwrap();
    let Some(A::ListServicesResponse(list)) = &answers[0].message_response else {
        panic!("{:?}", answers[0]);
    };
    let services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "log.v1.Admin",
            "log.v1.Log",
        ]
    );

    let files = |a: &A| -> Vec<FileDescriptorProto> {
        let A::FileDescriptorResponse(f) = a else {
            panic!("{a:?}");
        };
        f.file_descriptor_proto
            .iter()
            .map(|b| FileDescriptorProto::decode(b.clone()).unwrap())
            .collect()
    };
    let log_files = files(answers[1].message_response.as_ref().unwrap());
    let log = &log_files[0];
    assert_eq!(log.name(), "log/v1/log.proto");
    let svc = log.service.iter().find(|s| s.name() == "Log").unwrap();
    let methods: Vec<&str> = svc.method.iter().map(|m| m.name()).collect();
    for m in [
        "Produce",
        "Consume",
        "ConsumeStream",
        "ProduceStream",
        "GetServers",
    ] {
        assert!(methods.contains(&m), "{m} in {methods:?}");
    }
    // Every import of the file came along.
    for dep in &log.dependency {
        assert!(log_files.iter().any(|f| f.name() == dep), "{dep}");
    }

    let Some(A::ErrorResponse(e)) = &answers[2].message_response else {
        panic!("{:?}", answers[2]);
    };
    assert_eq!(e.error_code, Code::NotFound.as_i32());
    assert!(e.error_message.contains("log.v1.NoSuchThing"), "{e:?}");
    let status_files = files(answers[3].message_response.as_ref().unwrap());
    let names: Vec<&str> = status_files.iter().map(|f| f.name()).collect();
    assert_eq!(
        names,
        ["google/rpc/status.proto", "google/protobuf/any.proto"]
    );

    // A request made from the reflected field numbers alone: field 1 of ProduceRequest holds
    // a Record whose field 1 is the value.
    let req = log
        .message_type
        .iter()
        .find(|m| m.name() == "ProduceRequest")
        .unwrap();
    let record = req.field.iter().find(|f| f.name() == "record").unwrap();
    assert_eq!(record.type_name(), ".log.v1.Record");
    let mut bytes = Vec::new();
    prost::encoding::bytes::encode(1, &b"reflected".to_vec(), &mut bytes);
    let mut msg = Vec::new();
    prost::encoding::encode_key(
        record.number() as u32,
        prost::encoding::WireType::LengthDelimited,
        &mut msg,
    );
    prost::encoding::encode_varint(bytes.len() as u64, &mut msg);
    msg.extend_from_slice(&bytes);
    let ch = s.channel();
    let reply = ch.unary(paths::PRODUCE, msg.into(), opts()).unwrap();
    let offset = ProduceResponse::decode(reply).unwrap().offset;
    assert_eq!(
        &consume(&ch, "", 0, offset).unwrap().value[..],
        b"reflected"
    );

    // The older version answers on its own path, the same way.
    let alpha = reflect(
        s.addr,
        s.client.clone(),
        v1alpha::paths::INFO,
        vec![ask(Q::FileContainingSymbol("log.v1.Log.Produce".into()))],
    )
    .unwrap();
    assert_eq!(
        files(alpha[0].message_response.as_ref().unwrap())[0].name(),
        "log/v1/log.proto"
    );

    // Bytes that are no request end the call with INVALID_ARGUMENT.
    let bad = run_async({
        let addr = s.addr;
        move || async move {
            let ch = net::client::Channel::connect(addr, Default::default())
                .await
                .unwrap();
            let (mut tx, mut rx) = ch.streaming(v1::paths::INFO, opts()).await.unwrap();
            tx.send(bytes::Bytes::from_static(&[0xff, 0xff, 0xff]))
                .await
                .unwrap();
            tx.finish().unwrap();
            rx.message().await.unwrap_err()
        }
    });
    assert_eq!(bad.code, Code::InvalidArgument, "{bad:?}");
}

/// `proglog-read-consistency: linearizable` on the consume RPCs: served (a node leads its
/// partitions alone, and takes a read point all the same), the high watermark covers every
/// acknowledged record, past the end is still OUT_OF_RANGE; an unknown consistency is
/// INVALID_ARGUMENT.
#[test]
fn linearizable_reads_on_request() {
    let s = TestServer::start();
    let ch = s.channel();
    for v in ["a", "b", "c"] {
        produce(&ch, "", 0, v).unwrap();
    }
    let with = |value: &str| {
        let mut o = opts();
        o.metadata.insert(
            "proglog-read-consistency",
            http::HeaderValue::from_str(value).unwrap(),
        );
        o
    };
    let req = |offset| ConsumeRequest {
        offset,
        topic: String::new(),
        partition: 0,
    };
    let r: ConsumeResponse = ch
        .unary_prost(paths::CONSUME, &req(1), with("linearizable"))
        .unwrap();
    assert_eq!(&r.record.unwrap().value[..], b"b");
    let b: ConsumeBatchResponse = ch
        .unary_prost(
            paths::CONSUME_BATCH,
            &ConsumeBatchRequest {
                offset: 0,
                ..Default::default()
            },
            with("linearizable"),
        )
        .unwrap();
    assert_eq!((b.records.len(), b.high_watermark), (3, 3));
    let past = ch
        .unary_prost::<_, ConsumeResponse>(paths::CONSUME, &req(3), with("linearizable"))
        .unwrap_err();
    assert_eq!(past.code, Code::OutOfRange);
    let r: ConsumeResponse = ch
        .unary_prost(paths::CONSUME, &req(0), with("default"))
        .unwrap();
    assert_eq!(&r.record.unwrap().value[..], b"a");
    let bad = ch
        .unary_prost::<_, ConsumeResponse>(paths::CONSUME, &req(0), with("sequential"))
        .unwrap_err();
    assert_eq!(bad.code, Code::InvalidArgument);
    assert!(
        bad.message.contains("proglog-read-consistency"),
        "{}",
        bad.message
    );
}

fn topic_names(ch: &net::blocking::BlockingChannel) -> Vec<String> {
    let list: ListTopicsResponse = ch
        .unary_prost(paths::LIST_TOPICS, &ListTopicsRequest {}, opts())
        .unwrap();
    list.names
}

fn delete_topic(ch: &net::blocking::BlockingChannel, name: &str) {
    let _: DeleteTopicResponse = ch
        .unary_prost(
            paths::DELETE_TOPIC,
            &DeleteTopicRequest { name: name.into() },
            opts(),
        )
        .unwrap();
}

#[test]
fn topic_creations_past_the_partition_bound_are_refused_and_leave_nothing() {
    // Two shards (the harness's) of at most 2 partitions each: `default` holds one.
    let s = TestServer::start_with(&["--max-partitions-per-shard", "2"]);
    let ch = s.channel();
    create_topic(&ch, "a", 3).unwrap();
    let st = create_topic(&ch, "b", 1).unwrap_err();
    assert_eq!(st.code, Code::ResourceExhausted, "{st}");
    for part in [
        "topic \"b\" (1 partitions x 1 replicas) is not created",
        "would hold 5 partition replicas, over its limit of 4",
        "(2 shards x --max-partitions-per-shard 2; it holds 4)",
    ] {
        assert!(st.message.contains(part), "{part:?} in {st}");
    }
    // A bound, not a failure: nothing of "b" exists, and the rest serves on.
    assert_eq!(topic_names(&ch), ["a", "default"]);
    assert_eq!(produce(&ch, "a", 2, "x").unwrap(), 0);
    assert_eq!(produce(&ch, "", 0, "y").unwrap(), 0);
    // Room made, the same creation succeeds.
    delete_topic(&ch, "a");
    create_topic(&ch, "b", 3).unwrap();
    assert_eq!(produce(&ch, "b", 2, "z").unwrap(), 0);
}

#[test]
fn a_topic_creation_without_file_descriptors_is_resource_exhausted_and_leaves_nothing() {
    let s = TestServer::start();
    let ch = s.channel();
    let limit = NofileLimit::of(s.pid());
    // Room for a few files, not for 24 partitions' (two each).
    limit.set(limit.open_now() + 8);
    let st = create_topic(&ch, "wide", 24).unwrap_err();
    limit.restore();
    assert_eq!(st.code, Code::ResourceExhausted, "{st}");
    assert!(st.message.contains("Too many open files"), "{st}");
    assert!(st.message.contains("RLIMIT_NOFILE"), "{st}");
    assert_eq!(topic_names(&ch), ["default"]);
    // Descriptors back, the same creation succeeds and every partition takes writes.
    create_topic(&ch, "wide", 24).unwrap();
    for p in 0..24 {
        assert_eq!(produce(&ch, "wide", p, "x").unwrap(), 0);
    }
}
