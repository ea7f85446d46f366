//! SNI: which certificate a ClientHello gets. An exact name first, then a wildcard
//! (`*.example.com` covers exactly one more label: `a.example.com`, not `example.com` nor
//! `a.b.example.com`), then the default, which also answers clients that send no SNI.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::signer::HandshakeCounter;
use crate::keystore::Keystore;

/// A certificate ready to serve: its chain and keystore-backed key.
#[derive(Debug)]
pub struct CertEntry {
    /// The certificate's name in the store.
    pub name: String,
    /// Its keystore key.
    pub key_id: String,
    /// The chain and signing key rustls serves.
    pub certified: Arc<CertifiedKey>,
    /// Its handshake signatures.
    pub counter: Arc<HandshakeCounter>,
}

/// Chooses a certificate by SNI.
#[derive(Debug, Default)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertEntry>>,
    wildcard: HashMap<String, Arc<CertEntry>>,
    default: Option<Arc<CertEntry>>,
}

impl SniResolver {
    /// A resolver with no certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `entry` for `names` (DNS names, `*.` wildcards allowed). A name already taken
    /// keeps its first certificate.
    pub fn add(&mut self, entry: &Arc<CertEntry>, names: &[String]) {
        for name in names {
            let name = normalize(name);
            let table = match name.strip_prefix("*.") {
                Some(suffix) => self.wildcard.entry(suffix.to_owned()),
                None => self.exact.entry(name),
            };
            table.or_insert_with(|| Arc::clone(entry));
        }
    }

    /// Serves `entry` to clients that send no SNI or a name no certificate covers.
    pub fn set_default(&mut self, entry: Arc<CertEntry>) {
        self.default = Some(entry);
    }

    /// The certificate for `server_name` (none: no SNI).
    pub fn lookup(&self, server_name: Option<&str>) -> Option<&Arc<CertEntry>> {
        let Some(server_name) = server_name else { return self.default.as_ref() };
        let name = normalize(server_name);
        self.exact
            .get(&name)
            .or_else(|| {
                let (_, parent) = name.split_once('.')?;
                self.wildcard.get(parent)
            })
            .or(self.default.as_ref())
    }

    /// Loads the key of the certificate `server_name` gets into the keystore's cache, so the
    /// synchronous handshake signature finds it. Errors are left to the signature (which logs
    /// and fails the handshake).
    pub async fn prepare(&self, keystore: &Keystore, server_name: Option<&str>) {
        if let Some(entry) = self.lookup(server_name) {
            let _ = keystore.signing_key_info(&entry.key_id).await;
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.lookup(client_hello.server_name()).map(|entry| Arc::clone(&entry.certified))
    }
}

/// Lowercase, without a trailing dot.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
