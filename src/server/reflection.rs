//! gRPC server reflection, `grpc.reflection.v1` and `grpc.reflection.v1alpha`: grpcurl,
//! grpcui, Postman, Kreya and grpcio-reflection learn the API from the server, without the
//! `.proto` files.
//!
//! Answers come from the descriptor set the `proto` crate embeds at build time
//! ([`proto::FILE_DESCRIPTOR_SET`]: every `.proto` file we compile and all they import), so
//! they describe exactly the messages this binary speaks. The two versions have the same
//! messages field for field; both paths decode and answer with the v1 types.
//!
//! One stream carries any number of questions, answered in order, one response each. A
//! question about an unknown file or symbol gets an `error_response` (NOT_FOUND) and the
//! stream stays open, as the protocol asks; bytes that are no request end the call with
//! INVALID_ARGUMENT. A file answer holds the file asked for first, then every file it imports,
//! transitively, each once, every time: a client that kept nothing from earlier answers can
//! still build its descriptor pool.
//!
//! Authorization: reflection reveals the API, not data, so under ACLs any authenticated
//! client may use it (no policy line needed); without TLS or a client certificate it is
//! UNAUTHENTICATED, like every Log call.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use net::server::{MessageStream, Request, ResponseSink, Router};
use net::{Code, Status};
use prost::Message;
use proto::prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorSet,
};
use proto::reflection::v1::server_reflection_request::MessageRequest;
use proto::reflection::v1::server_reflection_response::MessageResponse;
use proto::reflection::v1::{
    paths as v1_paths, ErrorResponse, ExtensionNumberResponse, ExtensionRequest,
    FileDescriptorResponse, ListServiceResponse, ServerReflectionRequest, ServerReflectionResponse,
    ServiceResponse,
};
use proto::reflection::v1alpha::paths as v1alpha_paths;

use super::state::AppState;

/// What reflection knows: the files of a descriptor set and where each symbol is defined.
#[derive(Debug)]
pub struct Descriptors {
    /// Each file, encoded as a `FileDescriptorProto`.
    files: Vec<Bytes>,
    by_name: HashMap<String, usize>,
    /// Direct imports of each file, as indexes into `files`.
    imports: Vec<Vec<usize>>,
    /// Fully-qualified name (no leading dot) of every service, method, message, field, oneof,
    /// enum, enum value and extension, to the file that defines it.
    symbols: HashMap<String, usize>,
    /// (extended message, field number) to the file defining the extension.
    extensions: HashMap<(String, i32), usize>,
    /// The services this server serves, sorted.
    services: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("descriptor set does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("descriptor set: {file} imports {import}, which is not in the set")]
    MissingImport { file: String, import: String },
}

fn join(scope: &str, name: &str) -> String {
    if scope.is_empty() {
        name.to_owned()
    } else {
        format!("{scope}.{name}")
    }
}

impl Descriptors {
    /// Indexes an encoded `FileDescriptorSet` that must hold every file its files import.
    /// `served` names the services to list (fully qualified, e.g. `log.v1.Log`).
    pub fn new(
        descriptor_set: &[u8],
        served: impl IntoIterator<Item = String>,
    ) -> Result<Descriptors, DescriptorError> {
        let set = FileDescriptorSet::decode(descriptor_set)?;
        let by_name: HashMap<String, usize> = set
            .file
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().to_owned(), i))
            .collect();
        let mut d = Descriptors {
            files: Vec::with_capacity(set.file.len()),
            imports: Vec::with_capacity(set.file.len()),
            by_name,
            symbols: HashMap::new(),
            extensions: HashMap::new(),
            services: served.into_iter().collect(),
        };
        d.services.sort_unstable();
        d.services.dedup();
        for (i, file) in set.file.iter().enumerate() {
            let mut imports = Vec::with_capacity(file.dependency.len());
            for dep in &file.dependency {
                let Some(&j) = d.by_name.get(dep) else {
                    return Err(DescriptorError::MissingImport {
                        file: file.name().to_owned(),
                        import: dep.clone(),
                    });
                };
                imports.push(j);
            }
            d.imports.push(imports);
            let pkg = file.package();
            for s in &file.service {
                let name = join(pkg, s.name());
                for m in &s.method {
                    d.symbols.insert(join(&name, m.name()), i);
                }
                d.symbols.insert(name, i);
            }
            for m in &file.message_type {
                d.add_message(pkg, m, i);
            }
            for e in &file.enum_type {
                d.add_enum(pkg, e, i);
            }
            for x in &file.extension {
                d.add_extension(pkg, x, i);
            }
            d.files.push(Bytes::from(file.encode_to_vec()));
        }
        Ok(d)
    }

    fn add_message(&mut self, scope: &str, m: &DescriptorProto, file: usize) {
        let name = join(scope, m.name());
        for f in &m.field {
            self.symbols.insert(join(&name, f.name()), file);
        }
        for o in &m.oneof_decl {
            self.symbols.insert(join(&name, o.name()), file);
        }
        for x in &m.extension {
            self.add_extension(&name, x, file);
        }
        for n in &m.nested_type {
            self.add_message(&name, n, file);
        }
        for e in &m.enum_type {
            self.add_enum(&name, e, file);
        }
        self.symbols.insert(name, file);
    }

    /// Enum values are named as siblings of their enum, as protobuf scopes them.
    fn add_enum(&mut self, scope: &str, e: &EnumDescriptorProto, file: usize) {
        for v in &e.value {
            self.symbols.insert(join(scope, v.name()), file);
        }
        self.symbols.insert(join(scope, e.name()), file);
    }

    fn add_extension(&mut self, scope: &str, x: &FieldDescriptorProto, file: usize) {
        self.symbols.insert(join(scope, x.name()), file);
        let extendee = x.extendee().trim_start_matches('.').to_owned();
        self.extensions.insert((extendee, x.number()), file);
    }

    /// File `root` first, then everything it imports, transitively, each once.
    fn with_imports(&self, root: usize) -> Vec<Bytes> {
        let mut order = vec![root];
        let mut seen: HashSet<usize> = HashSet::from([root]);
        let mut i = 0;
        while i < order.len() {
            for &dep in &self.imports[order[i]] {
                if seen.insert(dep) {
                    order.push(dep);
                }
            }
            i += 1;
        }
        order.into_iter().map(|f| self.files[f].clone()).collect()
    }

    fn files_of(&self, file: Option<usize>, what: impl FnOnce() -> String) -> MessageResponse {
        match file {
            Some(f) => MessageResponse::FileDescriptorResponse(FileDescriptorResponse {
                file_descriptor_proto: self.with_imports(f),
            }),
            None => not_found(what()),
        }
    }

    /// The answer to one request.
    pub fn answer(&self, req: ServerReflectionRequest) -> ServerReflectionResponse {
        let response = match &req.message_request {
            Some(MessageRequest::FileByFilename(name)) => self
                .files_of(self.by_name.get(name).copied(), || {
                    format!("file {name:?} not found")
                }),
            Some(MessageRequest::FileContainingSymbol(symbol)) => {
                let symbol = symbol.trim_start_matches('.');
                self.files_of(self.symbols.get(symbol).copied(), || {
                    format!("symbol {symbol:?} not found")
                })
            }
            Some(MessageRequest::FileContainingExtension(ExtensionRequest {
                containing_type,
                extension_number,
            })) => {
                let key = (
                    containing_type.trim_start_matches('.').to_owned(),
                    *extension_number,
                );
                self.files_of(self.extensions.get(&key).copied(), || {
                    format!("no extension {extension_number} of {containing_type:?}")
                })
            }
            Some(MessageRequest::AllExtensionNumbersOfType(ty)) => {
                let ty = ty.trim_start_matches('.');
                if self.symbols.contains_key(ty) {
                    let mut numbers: Vec<i32> = self
                        .extensions
                        .keys()
                        .filter(|(t, _)| t == ty)
                        .map(|(_, n)| *n)
                        .collect();
                    numbers.sort_unstable();
                    MessageResponse::AllExtensionNumbersResponse(ExtensionNumberResponse {
                        base_type_name: ty.to_owned(),
                        extension_number: numbers,
                    })
                } else {
                    not_found(format!("type {ty:?} not found"))
                }
            }
            Some(MessageRequest::ListServices(_)) => {
                MessageResponse::ListServicesResponse(ListServiceResponse {
                    service: self
                        .services
                        .iter()
                        .map(|name| ServiceResponse { name: name.clone() })
                        .collect(),
                })
            }
            None => MessageResponse::ErrorResponse(ErrorResponse {
                error_code: Code::InvalidArgument.as_i32(),
                error_message: "the request asks nothing: set one of its message_request fields"
                    .into(),
            }),
        };
        ServerReflectionResponse {
            valid_host: req.host.clone(),
            original_request: Some(req),
            message_response: Some(response),
        }
    }
}

fn not_found(message: String) -> MessageResponse {
    MessageResponse::ErrorResponse(ErrorResponse {
        error_code: Code::NotFound.as_i32(),
        error_message: message,
    })
}

/// The service part of a method path: `/log.v1.Log/Produce` is `log.v1.Log`.
fn service_of(path: &str) -> Option<&str> {
    path.strip_prefix('/')?.split_once('/').map(|(s, _)| s)
}

/// Adds both reflection services to `router`, describing every service it serves (the
/// reflection services included).
pub fn register(router: Router, state: &Arc<AppState>) -> Router {
    let mut served: Vec<String> = router
        .paths()
        .filter_map(service_of)
        .map(str::to_owned)
        .collect();
    served.push(v1_paths::SERVICE.to_owned());
    served.push(v1alpha_paths::SERVICE.to_owned());
    // The set is compiled into this binary, and `proto`'s tests check that it decodes and is
    // closed under imports: failing here is a build defect, found at start-up.
    let descriptors = Arc::new(
        Descriptors::new(proto::FILE_DESCRIPTOR_SET, served)
            .expect("the embedded descriptor set is valid"),
    );
    let mut router = router;
    for path in [v1_paths::INFO, v1alpha_paths::INFO] {
        let (state, descriptors) = (state.clone(), descriptors.clone());
        router = router.bidi_streaming(path, move |req, sink| {
            handle(state.clone(), descriptors.clone(), req, sink)
        });
    }
    router
}

async fn handle(
    state: Arc<AppState>,
    descriptors: Arc<Descriptors>,
    req: Request<MessageStream>,
    sink: ResponseSink,
) -> Result<(), Status> {
    state.authenticate(&req)?;
    let mut requests = req.message;
    let answer = async {
        while let Some(q) = requests.message_as::<ServerReflectionRequest>().await? {
            sink.send_message(&descriptors.answer(q)).await?;
        }
        Ok(())
    };
    // A tool may hold its reflection stream for a whole session: draining must not wait.
    futures_lite::future::or(answer, state.draining()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::prost_types::FileDescriptorProto;

    fn descriptors() -> Descriptors {
        Descriptors::new(
            proto::FILE_DESCRIPTOR_SET,
            ["log.v1.Log".to_owned(), "grpc.health.v1.Health".to_owned()],
        )
        .unwrap()
    }

    fn ask(d: &Descriptors, q: MessageRequest) -> MessageResponse {
        let r = d.answer(ServerReflectionRequest {
            host: "localhost".into(),
            message_request: Some(q.clone()),
        });
        assert_eq!(r.valid_host, "localhost");
        assert_eq!(r.original_request.unwrap().message_request, Some(q));
        r.message_response.unwrap()
    }

    fn file_names(r: MessageResponse) -> Vec<String> {
        let MessageResponse::FileDescriptorResponse(f) = r else {
            panic!("not files: {r:?}");
        };
        f.file_descriptor_proto
            .iter()
            .map(|b| {
                FileDescriptorProto::decode(b.clone())
                    .unwrap()
                    .name()
                    .to_owned()
            })
            .collect()
    }

    fn error_code(r: MessageResponse) -> i32 {
        let MessageResponse::ErrorResponse(e) = r else {
            panic!("not an error: {r:?}");
        };
        e.error_code
    }

    #[test]
    fn symbols_of_every_kind_resolve_to_their_file_first() {
        let d = descriptors();
        for symbol in [
            "log.v1.Log",
            ".log.v1.Log",
            "log.v1.Log.Produce",
            "log.v1.ProduceRequest",
            "log.v1.ProduceRequest.record",
            "log.v1.Record",
            "log.v1.Admin.CreateTopic",
        ] {
            let files = file_names(ask(&d, MessageRequest::FileContainingSymbol(symbol.into())));
            assert_eq!(files[0], "log/v1/log.proto", "{symbol}");
        }
        let health = file_names(ask(
            &d,
            MessageRequest::FileContainingSymbol(
                "grpc.health.v1.HealthCheckResponse.ServingStatus".into(),
            ),
        ));
        assert_eq!(health, ["grpc/health/v1/health.proto"]);
        // An enum value is a sibling of its enum.
        let value = file_names(ask(
            &d,
            MessageRequest::FileContainingSymbol(
                "grpc.health.v1.HealthCheckResponse.SERVING".into(),
            ),
        ));
        assert_eq!(value, ["grpc/health/v1/health.proto"]);
    }

    #[test]
    fn files_come_with_their_imports_each_once() {
        let d = descriptors();
        let files = file_names(ask(
            &d,
            MessageRequest::FileByFilename("google/rpc/status.proto".into()),
        ));
        assert_eq!(
            files,
            ["google/rpc/status.proto", "google/protobuf/any.proto"]
        );
        let unique: HashSet<&String> = files.iter().collect();
        assert_eq!(unique.len(), files.len());
    }

    #[test]
    fn unknown_names_are_not_found_and_empty_requests_invalid() {
        let d = descriptors();
        for q in [
            MessageRequest::FileContainingSymbol("log.v1.Nope".into()),
            MessageRequest::FileContainingSymbol(String::new()),
            MessageRequest::FileByFilename("log.proto".into()),
            MessageRequest::FileContainingExtension(ExtensionRequest {
                containing_type: "log.v1.Record".into(),
                extension_number: 100,
            }),
            MessageRequest::AllExtensionNumbersOfType("log.v1.Nope".into()),
        ] {
            assert_eq!(error_code(ask(&d, q)), Code::NotFound.as_i32());
        }
        let r = d.answer(ServerReflectionRequest::default());
        assert_eq!(
            error_code(r.message_response.unwrap()),
            Code::InvalidArgument.as_i32()
        );
    }

    #[test]
    fn services_are_listed_sorted_and_extensions_are_empty() {
        let d = descriptors();
        let MessageResponse::ListServicesResponse(l) =
            ask(&d, MessageRequest::ListServices("*".into()))
        else {
            panic!("not a list");
        };
        let names: Vec<&str> = l.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["grpc.health.v1.Health", "log.v1.Log"]);
        let MessageResponse::AllExtensionNumbersResponse(x) = ask(
            &d,
            MessageRequest::AllExtensionNumbersOfType("log.v1.Record".into()),
        ) else {
            panic!("not extension numbers");
        };
        assert_eq!(x.base_type_name, "log.v1.Record");
        assert!(x.extension_number.is_empty());
    }

    #[test]
    fn a_set_missing_an_import_is_refused() {
        let set = FileDescriptorSet {
            file: vec![FileDescriptorProto {
                name: Some("a.proto".into()),
                dependency: vec!["b.proto".into()],
                ..Default::default()
            }],
        };
        let e = Descriptors::new(&set.encode_to_vec(), []).unwrap_err();
        assert!(e.to_string().contains("imports b.proto"), "{e}");
    }

    #[test]
    fn service_names_come_from_paths() {
        assert_eq!(service_of("/log.v1.Log/Produce"), Some("log.v1.Log"));
        assert_eq!(service_of("nope"), None);
    }
}
