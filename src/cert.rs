//! `proglog cert`: a certificate authority, server and client certificates as PEM files, so
//! that a secure node needs neither cfssl nor openssl.
//!
//! File names follow the book's cfssl output: `ca.pem` / `ca-key.pem`, `server.pem` /
//! `server-key.pem`, `<cn>-client.pem` / `<cn>-client-key.pem`. Keys are ECDSA P-256 and
//! written with mode 0600. Existing files are never overwritten unless `--force` is given,
//! because replacing a CA key silently invalidates every certificate it signed.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Create a certificate authority: ca.pem and ca-key.pem
    Ca {
        #[command(flatten)]
        common: Common,
        /// Common Name of the CA [default: "proglog CA " and 8 random hex digits, so that a
        /// certificate from another CA is refused as from an unknown issuer, not as a bad
        /// signature of this one]
        #[arg(long)]
        cn: Option<String>,
    },
    /// Create a server certificate for HOSTS (DNS names or IP addresses), signed by the CA
    Server {
        #[command(flatten)]
        common: Common,
        /// Names and addresses clients dial, e.g. localhost 127.0.0.1 log.example.com
        #[arg(required = true, value_name = "HOST")]
        hosts: Vec<String>,
        /// Output file stem: <NAME>.pem and <NAME>-key.pem
        #[arg(long, default_value = "server")]
        name: String,
    },
    /// Create a peer certificate for node-to-node TLS (--peer-tls-*): usable as server and
    /// client, for HOSTS (the names and addresses other nodes join this one by)
    Peer {
        #[command(flatten)]
        common: Common,
        /// Names and addresses peers dial, e.g. node-1 10.0.0.1
        #[arg(required = true, value_name = "HOST")]
        hosts: Vec<String>,
        /// Output file stem: <NAME>.pem and <NAME>-key.pem [default: <first HOST>-peer]
        #[arg(long)]
        name: Option<String>,
    },
    /// Create a client certificate whose Common Name is the ACL subject, signed by the CA
    Client {
        #[command(flatten)]
        common: Common,
        /// The subject, e.g. root or nobody
        #[arg(value_name = "CN")]
        cn: String,
        /// Output file stem [default: <CN>-client]
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Directory holding ca.pem and ca-key.pem, and where new files go
    #[arg(long, default_value = ".", value_name = "DIR")]
    dir: PathBuf,
    /// Days the certificate is valid for, up to 36500; 0 makes one already expired (to test
    /// expiry) [default: 3650 for a CA, 825 otherwise]
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=36500))]
    days: Option<u32>,
    /// Replace files that already exist
    #[arg(long)]
    force: bool,
}

pub fn run(cmd: CertCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertCommand::Ca { common, cn } => {
            let cn = cn.unwrap_or_else(default_ca_name);
            let key = KeyPair::generate().context("generating the CA key")?;
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(&cn);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, common.days.unwrap_or(3650));
            let cert = params.self_signed(&key).context("signing the CA")?;
            write_pair(&common, "ca", &cert.pem(), &key.serialize_pem())
        }
        CertCommand::Server {
            common,
            hosts,
            name,
        } => {
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(&hosts[0]);
            params.subject_alt_names = hosts
                .iter()
                .map(|h| san(h))
                .collect::<anyhow::Result<_>>()?;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            sign_leaf(&common, params, &name)
        }
        CertCommand::Peer {
            common,
            hosts,
            name,
        } => {
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(&hosts[0]);
            params.subject_alt_names = hosts
                .iter()
                .map(|h| san(h))
                .collect::<anyhow::Result<_>>()?;
            // Every node dials its peers and is dialled by them with the same certificate.
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let name = name.unwrap_or_else(|| format!("{}-peer", hosts[0]));
            sign_leaf(&common, params, &name)
        }
        CertCommand::Client { common, cn, name } => {
            if cn.trim().is_empty() {
                bail!("the client's Common Name (CN, its ACL subject) is empty");
            }
            let mut params = CertificateParams::default();
            params.distinguished_name = dn(&cn);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let name = name.unwrap_or_else(|| format!("{cn}-client"));
            sign_leaf(&common, params, &name)
        }
    }
}

/// "proglog CA 1a2b3c4d": a name of its own for each CA made without `--cn`. Two CAs of one
/// name look like one issuer to a verifier, which then reports a certificate of the other as
/// a bad signature rather than an unknown issuer.
fn default_ca_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    // A randomly keyed hasher: its output is random.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("proglog CA {:08x}", h.finish() as u32)
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn san(host: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if !is_dns_name(host) {
        bail!(
            "{host:?} is neither an IP address nor a DNS name (letters, digits and hyphens in \
             dot-separated labels, optionally starting with \"*.\")"
        );
    }
    let name = host
        .to_owned()
        .try_into()
        .map_err(|e| anyhow::anyhow!("{host:?} is neither an IP address nor a DNS name: {e}"))?;
    Ok(SanType::DnsName(name))
}

/// A host name a certificate can name (RFC 1123 labels, a leading `*.` wildcard allowed):
/// what a client would compare its server name with.
fn is_dns_name(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && host.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn validity(params: &mut CertificateParams, days: u32) {
    if days == 0 {
        log::warn!("--days 0: the certificate has already expired when it is written");
    }
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for clocks that run behind the signer's.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

fn sign_leaf(
    common: &Common,
    mut params: CertificateParams,
    name: &str,
) -> anyhow::Result<ExitCode> {
    let ca_path = common.dir.join("ca.pem");
    let ca_key_path = common.dir.join("ca-key.pem");
    let ca_pem = std::fs::read_to_string(&ca_path).with_context(|| {
        format!(
            "reading {} (run `proglog cert ca` first)",
            ca_path.display()
        )
    })?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path)
        .with_context(|| format!("reading {}", ca_key_path.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .with_context(|| format!("parsing the CA key {}", ca_key_path.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)
        .with_context(|| format!("parsing the CA certificate {}", ca_path.display()))?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, common.days.unwrap_or(825));
    let key = KeyPair::generate().context("generating a key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the certificate")?;
    write_pair(common, name, &cert.pem(), &key.serialize_pem())
}

fn write_pair(common: &Common, stem: &str, cert: &str, key: &str) -> anyhow::Result<ExitCode> {
    if stem.is_empty() || stem.contains('/') {
        bail!("invalid output name {stem:?}");
    }
    std::fs::create_dir_all(&common.dir)
        .with_context(|| format!("creating {}", common.dir.display()))?;
    let cert_path = common.dir.join(format!("{stem}.pem"));
    let key_path = common.dir.join(format!("{stem}-key.pem"));
    if !common.force {
        for p in [&cert_path, &key_path] {
            if p.exists() {
                bail!("{} exists; pass --force to replace it", p.display());
            }
        }
    }
    // The key first: a certificate without its key is useless, the reverse is harmless.
    write_file(&key_path, key, 0o600)?;
    write_file(&cert_path, cert, 0o644)?;
    crate::out::outln!("{}\n{}", cert_path.display(), key_path.display())?;
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("pem.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    // Renamed into place so that a server watching the file never reads half of it.
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}
