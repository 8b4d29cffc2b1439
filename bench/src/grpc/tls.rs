//! The client connection settings, and the seam where TLS plugs in.
//!
//! TLS client support in `net` (a `tls` field on `net::client::ClientConfig`, loaded from
//! CA/cert/key files) is being added separately. Until it is part of `net`, the TLS flags
//! are accepted (so scripts can be written against the final interface) and refused here
//! with a clear error, instead of silently running in plaintext.

use net::client::ClientConfig;

use super::opts::TlsArgs;

/// Client settings for every connection of the run. Message limits are raised to 64 MiB so
/// that the bench never is what refuses a large batch: the server's own limit should be
/// the one measured.
pub fn client_config(tls: &TlsArgs) -> Result<ClientConfig, String> {
    let config = ClientConfig {
        max_recv_message_bytes: 64 << 20,
        max_send_message_bytes: 64 << 20,
        ..ClientConfig::default()
    };
    if tls.any() {
        if tls.tls_ca.is_none() {
            return Err("--tls-cert/--tls-key/--tls-server-name need --tls-ca (the CA that signed \
                        the server's certificate)"
                .into());
        }
        return Err("TLS support not built yet: this build of proglog-bench has no TLS client \
                    (the net crate's TLS client is not in this build); run without --tls-* \
                    options against a plaintext server"
            .into());
    }
    Ok(config)
}
