//! The client connection settings, including TLS and mutual TLS (net's rustls client).

use net::client::ClientConfig;
use net::tls::ClientTlsOptions;

use super::opts::TlsArgs;

/// Client settings for every connection of the run. Message limits are raised to 64 MiB so
/// that the bench never is what refuses a large batch: the server's own limit should be
/// the one measured. Every certificate file is read and checked here, before any load
/// starts, so a bad path fails the run at once with the file's name.
pub fn client_config(tls: &TlsArgs) -> Result<ClientConfig, String> {
    let options = ClientTlsOptions {
        ca_file: tls.tls_ca.clone(),
        cert_file: tls.tls_cert.clone(),
        key_file: tls.tls_key.clone(),
        server_name: tls.tls_server_name.clone(),
    };
    let tls = options.load().map_err(|e| format!("TLS options: {e}"))?;
    Ok(ClientConfig {
        max_recv_message_bytes: 64 << 20,
        max_send_message_bytes: 64 << 20,
        tls,
        ..ClientConfig::default()
    })
}
