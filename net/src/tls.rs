//! TLS for both ends: rustls with the `ring` provider, ALPN `h2`, TLS 1.2 and 1.3.
//!
//! # Server
//!
//! [`ServerTlsFiles::load`] reads a certificate chain, its key and (for mutual TLS) a CA
//! that client certificates must chain to, all PEM. The result goes into a [`ServerTls`],
//! which every shard's [`Server`](crate::server::Server) shares through
//! [`ServerConfig::tls`](crate::server::ServerConfig::tls); [`ServerTls::replace`] swaps in
//! new certificates without a restart (new connections use them, open ones keep theirs).
//! A call learns what the handshake proved about its peer from
//! [`Request::tls`](crate::server::Request::tls).
//!
//! # Client
//!
//! ```no_run
//! # fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use net::client::ClientConfig;
//! use net::tls::ClientTlsOptions;
//!
//! let tls = ClientTlsOptions {
//!     ca_file: Some("ca.pem".into()),          // required: the CA that signed the server
//!     cert_file: Some("root-client.pem".into()), // for mutual TLS, with key_file
//!     key_file: Some("root-client-key.pem".into()),
//!     server_name: None,                         // default: the host of the address
//! };
//! let config = ClientConfig { tls: tls.load()?, ..ClientConfig::default() };
//! // Channel::connect(addr, config) and BlockingChannel::connect(addr, config) now speak TLS.
//! # Ok(()) }
//! ```
//!
//! Only the `ring` provider is ever named: if `aws-lc-rs` were compiled in as well, rustls
//! could not choose a process default, so nothing here relies on one.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub use rustls;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The only application protocol spoken over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// Why TLS settings could not be loaded. Every variant names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: not valid PEM: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path}: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub(crate) fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn certs_from_pem(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn key_from_pem(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<PrivateKeyDer<'static>, TlsError> {
    // Accepts PKCS#8, PKCS#1 ("RSA PRIVATE KEY") and SEC1 ("EC PRIVATE KEY"): the three
    // forms openssl, cfssl and rcgen write.
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: format!("no usable private key ({e})"),
    })
}

pub(crate) fn roots(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs_from_pem(what, path, pem)? {
        store.add(cert).map_err(|e| TlsError::Invalid {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

// --- server --------------------------------------------------------------------------------

/// Where a server's PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate, followed by any intermediates.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// With a CA, clients must present a certificate that chains to it (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Reads and checks every file: a certificate that does not match its key, or a CA
    /// file without a usable certificate, is an error here rather than at the first
    /// handshake.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = certs_from_pem(
            "server certificate",
            &self.cert_file,
            &read("server certificate", &self.cert_file)?,
        )?;
        if let Some(leaf) = chain.first() {
            warn_if_not_valid_now(&self.cert_file, leaf.as_ref());
        }
        let key = key_from_pem(
            "server key",
            &self.key_file,
            &read("server key", &self.key_file)?,
        )?;
        let provider = provider();
        let verifier = match &self.client_ca_file {
            None => WebPkiClientVerifier::no_client_auth(),
            Some(ca) => {
                let store = roots("client CA", ca, &read("client CA", ca)?)?;
                WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()
                    .map_err(|e| TlsError::Invalid {
                        what: "client CA",
                        path: ca.clone(),
                        reason: e.to_string(),
                    })?
            }
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                TlsError::Config(format!(
                    "server certificate {} with key {}: {e}",
                    self.cert_file.display(),
                    self.key_file.display()
                ))
            })?;
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }
}

/// A server's TLS settings, shared by every shard and replaceable while serving.
pub struct ServerTls {
    current: RwLock<Arc<rustls::ServerConfig>>,
    mutual: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// `mutual` says whether `config` requires client certificates; it is reported in
    /// logs only, rustls enforces it.
    pub fn new(config: Arc<rustls::ServerConfig>, mutual: bool) -> ServerTls {
        ServerTls {
            current: RwLock::new(config),
            mutual,
        }
    }

    pub fn from_files(files: &ServerTlsFiles) -> Result<ServerTls, TlsError> {
        Ok(ServerTls::new(
            files.load()?,
            files.client_ca_file.is_some(),
        ))
    }

    /// The settings new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        // A poisoned lock only means a writer panicked between two complete values.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Swaps in new settings for connections accepted from now on.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        match self.current.write() {
            Ok(mut g) => *g = config,
            Err(p) => *p.into_inner() = config,
        }
    }

    pub fn is_mutual(&self) -> bool {
        self.mutual
    }
}

/// What a TLS handshake established about the peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// Common Name of the client certificate's subject; `None` without mutual TLS (or for
    /// a certificate without a CN). rustls verified the chain before this is set.
    pub client_subject: Option<String>,
    /// e.g. `TLSv1_3`.
    pub protocol_version: String,
    /// e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
}

impl TlsInfo {
    pub(crate) fn from_server(conn: &rustls::ServerConnection) -> TlsInfo {
        let client_subject = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| common_name(leaf.as_ref()));
        TlsInfo {
            client_subject,
            protocol_version: conn
                .protocol_version()
                .map_or_else(String::new, |v| format!("{v:?}")),
            cipher_suite: conn
                .negotiated_cipher_suite()
                .map_or_else(String::new, |s| format!("{:?}", s.suite())),
        }
    }
}

/// Warns when this node's own certificate (`path`, DER `leaf`) has expired or is not valid
/// yet: the other side then refuses every handshake with an alert ("CertificateExpired")
/// that reads as if the fault were its own. Loaded anyway: the file may be replaced while
/// serving, and a clock may be the one wrong.
fn warn_if_not_valid_now(path: &Path, leaf: &[u8]) {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
        return;
    };
    let v = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > v.not_after {
        log::warn!(
            "the certificate {} expired at {}: peers and clients will refuse it (their TLS \
             alert says CertificateExpired)",
            path.display(),
            v.not_after
        );
    } else if now < v.not_before {
        log::warn!(
            "the certificate {} is not valid before {}: peers and clients will refuse it \
             until then (is this machine's clock right?)",
            path.display(),
            v.not_before
        );
    }
}

/// The first Common Name of a DER certificate's subject, if it parses and has one.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

// --- client --------------------------------------------------------------------------------

/// A client's TLS options as a command line or config file names them. TLS is on when
/// `ca_file` is set; `cert_file` and `key_file` (both or neither) add a client certificate
/// for mutual TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTlsOptions {
    /// PEM CA(s) the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Name to verify the server's certificate against (and send as SNI); default: the IP
    /// address or host the client connects to.
    pub server_name: Option<String>,
}

impl ClientTlsOptions {
    /// `Ok(None)` when no CA is given (plaintext); an error for a certificate without a key
    /// (or the reverse), client options without a CA, or unreadable files.
    pub fn load(&self) -> Result<Option<ClientTls>, TlsError> {
        let Some(ca) = &self.ca_file else {
            if self.cert_file.is_some() || self.key_file.is_some() || self.server_name.is_some() {
                return Err(TlsError::Config(
                    "TLS client options need a CA file (the CA that signed the server's certificate)"
                        .into(),
                ));
            }
            return Ok(None);
        };
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => {
                return Err(TlsError::Config(
                    "a client certificate needs its key, and a key its certificate".into(),
                ))
            }
        };
        let mut tls = ClientTls::from_files(ca, identity)?;
        if let Some(name) = &self.server_name {
            tls = tls.with_server_name(name)?;
        }
        Ok(Some(tls))
    }
}

/// Client TLS settings: cheap to clone, shared by every connection made with them.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field(
                "client_auth",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// From PEM files: the CA, and optionally a client certificate and its key.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let store = roots("CA", ca, &read("CA", ca)?)?;
        let identity = match identity {
            None => None,
            Some((cert, key)) => Some((
                certs_from_pem(
                    "client certificate",
                    cert,
                    &read("client certificate", cert)?,
                )?,
                key_from_pem("client key", key, &read("client key", key)?)?,
                cert,
            )),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(store);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((chain, key, path)) => {
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Invalid {
                        what: "client certificate",
                        path: path.to_owned(),
                        reason: e.to_string(),
                    })?
            }
        };
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(ClientTls::from_rustls(Arc::new(config)))
    }

    /// From a ready rustls configuration. It should offer ALPN `h2` (gRPC servers such as
    /// grpc-go refuse connections that do not) and must use the `ring` provider.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls {
            config,
            server_name: None,
        }
    }

    /// Verifies the server's certificate against `name` instead of the address dialled.
    pub fn with_server_name(mut self, name: &str) -> Result<ClientTls, TlsError> {
        let sn = ServerName::try_from(name.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        self.server_name = Some(sn);
        Ok(self)
    }

    pub(crate) fn server_name_for(&self, addr: SocketAddr) -> ServerName<'static> {
        match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::IpAddress(addr.ip().into()),
        }
    }

    pub(crate) fn config(&self) -> Arc<rustls::ClientConfig> {
        self.config.clone()
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.config.clone())
    }
}
