//! gRPC status: the 17 codes, and how a status travels in trailers.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

/// `grpc-status`: the decimal code.
pub const GRPC_STATUS: &str = "grpc-status";
/// `grpc-message`: percent-encoded UTF-8.
pub const GRPC_MESSAGE: &str = "grpc-message";
/// `grpc-status-details-bin`: base64 of a serialized `google.rpc.Status`.
pub const GRPC_STATUS_DETAILS_BIN: &str = "grpc-status-details-bin";

/// The canonical gRPC status codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// Maps a wire value to a code; values outside 0..=16 are `Unknown`, as
    /// the gRPC spec asks of clients.
    pub fn from_i32(v: i32) -> Code {
        match v {
            0 => Code::Ok,
            1 => Code::Cancelled,
            2 => Code::Unknown,
            3 => Code::InvalidArgument,
            4 => Code::DeadlineExceeded,
            5 => Code::NotFound,
            6 => Code::AlreadyExists,
            7 => Code::PermissionDenied,
            8 => Code::ResourceExhausted,
            9 => Code::FailedPrecondition,
            10 => Code::Aborted,
            11 => Code::OutOfRange,
            12 => Code::Unimplemented,
            13 => Code::Internal,
            14 => Code::Unavailable,
            15 => Code::DataLoss,
            16 => Code::Unauthenticated,
            _ => Code::Unknown,
        }
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The upper-snake name used by gRPC tooling (`OUT_OF_RANGE`).
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The outcome of a call other than OK, or OK itself when read from trailers.
///
/// `details` is opaque here (the codec knows nothing of protobuf schemas);
/// by convention it is a serialized `google.rpc.Status`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Status {
    pub code: Code,
    pub message: String,
    pub details: Bytes,
}

macro_rules! ctor {
    ($($name:ident => $code:ident),* $(,)?) => {
        $(
            #[doc = concat!("A status with code `", stringify!($code), "`.")]
            pub fn $name(message: impl Into<String>) -> Status {
                Status::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
            details: Bytes::new(),
        }
    }

    /// Attaches `grpc-status-details-bin` content (a serialized `google.rpc.Status`).
    pub fn with_details(mut self, details: Bytes) -> Status {
        self.details = details;
        self
    }

    ctor! {
        cancelled => Cancelled,
        unknown => Unknown,
        invalid_argument => InvalidArgument,
        deadline_exceeded => DeadlineExceeded,
        not_found => NotFound,
        already_exists => AlreadyExists,
        permission_denied => PermissionDenied,
        resource_exhausted => ResourceExhausted,
        failed_precondition => FailedPrecondition,
        aborted => Aborted,
        out_of_range => OutOfRange,
        unimplemented => Unimplemented,
        internal => Internal,
        unavailable => Unavailable,
        data_loss => DataLoss,
        unauthenticated => Unauthenticated,
    }

    pub fn ok() -> Status {
        Status::new(Code::Ok, "")
    }

    /// Writes `grpc-status`, `grpc-message` and `grpc-status-details-bin`.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert(GRPC_STATUS, HeaderValue::from(self.code.as_i32()));
        if !self.message.is_empty() {
            let encoded = percent_encode(&self.message);
            // Percent-encoding leaves only visible ASCII, always a valid value.
            if let Ok(v) = HeaderValue::from_str(&encoded) {
                headers.insert(GRPC_MESSAGE, v);
            }
        }
        if !self.details.is_empty() {
            use base64::Engine;
            let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&self.details);
            if let Ok(v) = HeaderValue::from_str(&b64) {
                headers.insert(GRPC_STATUS_DETAILS_BIN, v);
            }
        }
    }

    /// Reads a status from trailers (or trailers-only headers). `None` when
    /// there is no `grpc-status` at all.
    pub fn from_headers(headers: &HeaderMap) -> Option<Status> {
        let raw = headers.get(GRPC_STATUS)?;
        let code = match raw.to_str().ok().and_then(|s| s.trim().parse::<i32>().ok()) {
            Some(v) => Code::from_i32(v),
            None => Code::Unknown,
        };
        let mut message = headers
            .get(GRPC_MESSAGE)
            .map(|v| percent_decode(v.as_bytes()))
            .unwrap_or_default();
        if code == Code::Unknown && message.is_empty() {
            // Keep an invalid code visible (the reference server sends 404).
            message = format!("invalid grpc-status {:?}", raw);
        }
        let details = headers
            .get(GRPC_STATUS_DETAILS_BIN)
            .and_then(|v| decode_base64(v.as_bytes()))
            .map(Bytes::from)
            .unwrap_or_default();
        Some(Status {
            code,
            message,
            details,
        })
    }

    /// Maps an h2 failure on a call, following the gRPC HTTP/2 spec's table
    /// of RST_STREAM error codes.
    pub fn from_h2(err: &h2::Error) -> Status {
        if let Some(reason) = err.reason() {
            let code = match reason {
                h2::Reason::NO_ERROR
                | h2::Reason::PROTOCOL_ERROR
                | h2::Reason::INTERNAL_ERROR
                | h2::Reason::FLOW_CONTROL_ERROR
                | h2::Reason::SETTINGS_TIMEOUT
                | h2::Reason::FRAME_SIZE_ERROR
                | h2::Reason::COMPRESSION_ERROR
                | h2::Reason::CONNECT_ERROR => Code::Internal,
                h2::Reason::REFUSED_STREAM => Code::Unavailable,
                h2::Reason::CANCEL => Code::Cancelled,
                h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
                h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
                _ => Code::Unknown,
            };
            let code = if err.is_go_away() {
                Code::Unavailable
            } else {
                code
            };
            return Status::new(code, format!("h2: {err}"));
        }
        if let Some(st) = err.get_io().and_then(client_certificate_refused) {
            return st;
        }
        // I/O failures and the like: the connection is gone.
        Status::unavailable(format!("connection error: {err}"))
    }
}

/// A server that refuses the client's certificate does so after the client's side of a TLS
/// 1.3 handshake is done, so the refusal (an alert) arrives on the connection's first read:
/// UNAUTHENTICATED, saying what to give, rather than a bare alert name. h2 keeps an I/O
/// error's kind and text only (it hands a copy to every stream), so the alert is read from
/// rustls's text for it, `received fatal alert: <name>` (pinned by a unit test).
fn client_certificate_refused(io: &std::io::Error) -> Option<Status> {
    use rustls::AlertDescription as A;
    let text = io.to_string();
    let name = text.strip_prefix("received fatal alert: ")?;
    let refusals = [
        A::BadCertificate,
        A::UnknownCA,
        A::DecryptError,
        A::CertificateUnknown,
        A::CertificateExpired,
        A::CertificateRevoked,
        A::UnsupportedCertificate,
        A::AccessDenied,
    ];
    let message = if name == format!("{:?}", A::CertificateRequired) {
        "the server requires a client certificate (mutual TLS), and none was given".to_owned()
    } else if refusals.iter().any(|a| name == format!("{a:?}")) {
        format!(
            "the server refused this client's certificate (TLS alert {name}): it must be \
             signed by a CA the server trusts (its --server-tls-ca-file) and valid now"
        )
    } else {
        return None;
    };
    Some(Status::unauthenticated(message))
}

impl From<h2::Error> for Status {
    fn from(err: h2::Error) -> Status {
        Status::from_h2(&err)
    }
}

fn decode_base64(b: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose, DecodePaddingMode, GeneralPurpose};
    use base64::Engine;
    // The spec says senders omit padding but receivers must accept it.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        general_purpose::NO_PAD.with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(b).ok()
}

/// Percent-encodes per the gRPC spec: everything outside 0x20..=0x7E, and `%`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a percent-encoded `grpc-message`; malformed escapes are kept
/// literally rather than failing, as the spec asks.
pub fn percent_decode(b: &[u8]) -> String {
    fn hex(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_client_certificate_is_unauthenticated_with_what_to_do() {
        // rustls's own text for an alert, as it reaches us through h2.
        let io = |alert| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(alert).to_string(),
            )
        };
        let st = client_certificate_refused(&io(rustls::AlertDescription::CertificateRequired))
            .expect("refusal");
        assert_eq!(st.code, Code::Unauthenticated);
        assert!(
            st.message.contains("requires a client certificate"),
            "{}",
            st.message
        );
        let st =
            client_certificate_refused(&io(rustls::AlertDescription::UnknownCA)).expect("refusal");
        assert_eq!(st.code, Code::Unauthenticated);
        assert!(st.message.contains("TLS alert UnknownCA"), "{}", st.message);
        assert!(client_certificate_refused(&io(rustls::AlertDescription::CloseNotify)).is_none());
        assert!(client_certificate_refused(&std::io::Error::other("broken pipe")).is_none());
    }

    #[test]
    fn percent_roundtrip() {
        for s in ["", "plain", "100% sure", "naïve ☃\n\ttabs", "%zz%", "%"] {
            assert_eq!(percent_decode(percent_encode(s).as_bytes()), s);
        }
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
        // Malformed escapes are left alone.
        assert_eq!(percent_decode(b"%zz%4"), "%zz%4");
    }

    #[test]
    fn headers_roundtrip() {
        let st = Status::out_of_range("offset out of range: 9 ✓")
            .with_details(Bytes::from_static(b"\x00\x01\xffdetails"));
        let mut h = HeaderMap::new();
        st.write_headers(&mut h);
        assert!(!h[GRPC_STATUS_DETAILS_BIN].as_bytes().contains(&b'='));
        assert_eq!(Status::from_headers(&h), Some(st));
    }

    #[test]
    fn invalid_code_is_unknown() {
        let mut h = HeaderMap::new();
        h.insert(GRPC_STATUS, HeaderValue::from_static("404"));
        assert_eq!(
            Status::from_headers(&h).map(|s| s.code),
            Some(Code::Unknown)
        );
        h.insert(GRPC_STATUS, HeaderValue::from_static("x"));
        assert_eq!(
            Status::from_headers(&h).map(|s| s.code),
            Some(Code::Unknown)
        );
        // Padded base64 is accepted.
        h.insert(GRPC_STATUS_DETAILS_BIN, HeaderValue::from_static("YQ=="));
        assert_eq!(
            Status::from_headers(&h).map(|s| s.details),
            Some(Bytes::from_static(b"a"))
        );
    }
}
