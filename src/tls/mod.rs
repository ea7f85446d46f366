//! TLS with keys in the keystore: the rustls `ServerConfig`, the SNI resolver, the
//! keystore-backed signing keys (rustls's for handshakes, rcgen's for issuing), the certificate
//! store under `DATA_DIR/certs/` and certificate issuance with rcgen.
//!
//! No private key is held here or written anywhere: a certificate names a keystore key, and
//! every signature (handshake or certificate) is the keystore's. This module does not store
//! keys (`keystore` does) and does not accept connections (`server` does).
//!
//! A handshake is signed synchronously ([`Keystore::sign_cached`]): rustls's `Signer::sign`
//! cannot await, so the server loads the chosen certificate's key into the keystore's cache
//! once the ClientHello is in ([`SniResolver::prepare`]), before rustls asks for the signature.
//!
//! [`Keystore::sign_cached`]: crate::keystore::Keystore::sign_cached

mod issue;
mod resolver;
mod signer;
mod store;
mod tickets;

use std::path::PathBuf;
use std::sync::Arc;

pub use issue::{CertIssuer, IssueRequest, KeyChoice, api_resolver, load_entry};
pub use resolver::{CertEntry, SniResolver};
pub use signer::{HandshakeCounter, IssuingKey, KeystoreSigningKey, schemes};
pub use store::{CertKind, CertMeta, CertStore, StoredCert, pem_encode};
pub use tickets::SharedTicketer;

use crate::keystore;

/// The default validity of an issued certificate, in days (Mozilla's profiles reject
/// long-lived certificates; 90 days is what ACME CAs issue).
pub const DEFAULT_VALIDITY_DAYS: u32 = 90;
/// The default validity of an internal CA's certificate, in days.
pub const DEFAULT_CA_VALIDITY_DAYS: u32 = 3650;
/// The API listener's certificate when the configuration names none.
pub const API_CERTIFICATE: &str = "kagi-api";
/// The alias of the API certificate's key.
pub const API_KEY_ALIAS: &str = "alias/kagi/api-tls";

/// A TLS or certificate failure.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The keystore refused (unknown key, wrong usage, state…).
    #[error(transparent)]
    Keystore(#[from] keystore::Error),
    /// No certificate of this name in the store.
    #[error("no certificate named {0:?}")]
    NotFound(String),
    /// A certificate of this name exists already.
    #[error("a certificate named {0:?} exists already")]
    AlreadyExists(String),
    /// A certificate name kagi does not accept.
    #[error("invalid certificate name {0:?}: use 1 to 64 of A-Z a-z 0-9 _ -")]
    InvalidName(String),
    /// The certificate's public key is not its keystore key's.
    #[error("certificate {0:?}: its public key does not match its keystore key")]
    KeyMismatch(String),
    /// Anything else wrong with a certificate, a chain or a request.
    #[error("certificate {name:?}: {message}")]
    Invalid {
        /// The certificate.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A file of the store cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rcgen failed to build or sign a certificate.
    #[error("cannot issue the certificate: {0}")]
    Issue(String),
}

impl TlsError {
    fn invalid(name: &str, message: impl Into<String>) -> Self {
        Self::Invalid { name: name.to_owned(), message: message.into() }
    }
}

/// Which of Mozilla's server-side TLS profiles a listener follows (the
/// `tls_profile` setting). Either way the cipher suites are rustls's: AEAD with forward secrecy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsProfile {
    /// TLS 1.3 and 1.2 ("intermediate": for general-purpose servers; the default).
    #[default]
    Intermediate,
    /// TLS 1.3 only ("modern": for clients that all speak TLS 1.3).
    Modern,
}

impl TlsProfile {
    /// The profile named `name` in a configuration file (`intermediate` or `modern`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "intermediate" => Some(Self::Intermediate),
            "modern" => Some(Self::Modern),
            _ => None,
        }
    }

    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static INTERMEDIATE: [&rustls::SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static MODERN: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            Self::Intermediate => &INTERMEDIATE,
            Self::Modern => &MODERN,
        }
    }
}

/// What every TLS configuration kagi builds shares, for as long as the process runs: the
/// session ticket keys (rotated by rustls every few hours) and the session cache. A reload
/// builds new `ServerConfig`s around the same two, so clients resume sessions across it.
#[derive(Clone, Debug)]
pub struct SessionState {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    cache: Arc<dyn rustls::server::StoresServerSessions>,
}

impl SessionState {
    /// New ticket keys and an empty cache.
    ///
    /// # Errors
    /// When the ticketer cannot be created (no randomness).
    pub fn new() -> Result<Self, TlsError> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| TlsError::Issue(e.to_string()))?;
        Ok(Self { ticketer, cache: rustls::server::ServerSessionMemoryCache::new(4096) })
    }

    /// Tickets any node holding the same `ticketer` secret opens (see [`SharedTicketer`]), and
    /// an empty cache.
    pub fn shared(ticketer: SharedTicketer) -> Self {
        Self {
            ticketer: Arc::new(ticketer),
            cache: rustls::server::ServerSessionMemoryCache::new(4096),
        }
    }
}

/// The rustls provider of every TLS configuration kagi builds, server or client: aws-lc-rs (named
/// explicitly: with ring also in the graph, rustls's default provider would be ambiguous). In a
/// FIPS build, rustls's FIPS provider: its approved cipher suites and groups only (no
/// ChaCha20-Poly1305, no X25519), so that `ServerConfig::fips()` holds.
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    #[cfg(feature = "fips")]
    let provider = rustls::crypto::default_fips_provider();
    #[cfg(not(feature = "fips"))]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
}

/// The server configuration kagi's listeners use: the provider of [`crypto_provider`], the TLS versions
/// of `profile` (1.3 and 1.2, or 1.3 only) with rustls's default cipher suites and groups (which
/// meet Mozilla's profiles: AEAD suites with forward secrecy only; `tests/it/tls_scan.rs` checks
/// with sslyze), ALPN h2 then http/1.1, certificates chosen by `resolver`, sessions resumed with
/// `sessions`. With `client_ca`, clients must present a
/// certificate that chains to one of its certificates.
///
/// # Errors
/// When the CA bundle cannot be read or holds no usable certificate.
pub fn server_config(
    resolver: Arc<SniResolver>,
    client_ca: Option<&std::path::Path>,
    profile: TlsProfile,
    sessions: &SessionState,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(crypto_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(profile.versions())
        .map_err(|e| TlsError::Issue(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let io = |source| TlsError::Io { path: path.to_owned(), source };
            let certificates: Vec<_> =
                <rustls::pki_types::CertificateDer<'_> as rustls::pki_types::pem::PemObject>::pem_file_iter(path)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(io(std::io::Error::other("holds no usable CA certificate")));
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| io(std::io::Error::other(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = Arc::clone(&sessions.ticketer);
    config.session_storage = Arc::clone(&sessions.cache);
    Ok(config)
}

/// Checks a certificate name: 1 to 64 of `A-Z a-z 0-9 _ -` (it names files and an alias).
///
/// # Errors
/// [`TlsError::InvalidName`].
pub fn check_name(name: &str) -> Result<(), TlsError> {
    let ok = (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err(TlsError::InvalidName(name.to_owned())) }
}

#[cfg(test)]
mod tests;
