//! The certificate store: `DATA_DIR/certs/NAME.pem` (the chain, leaf first) and
//! `DATA_DIR/certs/NAME.json` (what kagi knows of it: its keystore key, its names, its issuer,
//! its validity). No private key is ever written here; a certificate names its keystore key.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use super::{TlsError, check_name};

/// What a certificate is.
#[derive(Clone, Copy, Debug, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CertKind {
    /// An internal CA: it signs other certificates and serves no handshake.
    Ca,
    /// Issued by kagi (self-signed or by an internal CA).
    Issued,
    /// Imported with `kagi certs import` (its key imported into the keystore).
    Imported,
}

/// A certificate's metadata (`NAME.json`).
#[derive(Clone, Debug, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct CertMeta {
    /// The certificate's name in the store.
    pub name: String,
    /// What it is.
    pub kind: CertKind,
    /// The keystore key holding its private key.
    pub key_id: String,
    /// The alias kagi made for that key (renewal moves it to the new key).
    #[serde(default)]
    pub key_alias: Option<String>,
    /// The internal CA that signed it, by name (none: self-signed or imported).
    #[serde(default)]
    pub ca: Option<String>,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names.
    pub ip_addresses: Vec<String>,
    /// Valid from, epoch seconds.
    pub not_before: i64,
    /// Valid until, epoch seconds.
    pub not_after: i64,
}

/// A stored certificate: its metadata and its chain.
#[derive(Clone, Debug)]
pub struct StoredCert {
    /// The metadata.
    pub meta: CertMeta,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
}

/// The store in `DATA_DIR/certs/`.
#[derive(Clone, Debug)]
pub struct CertStore {
    dir: PathBuf,
}

impl CertStore {
    /// The store of the keystore in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self { dir: data_dir.join("certs") }
    }

    /// Whether a certificate of this name exists.
    pub fn exists(&self, name: &str) -> bool {
        self.dir.join(format!("{name}.json")).exists()
    }

    /// Writes a certificate (replacing one of the same name): the chain first, then the
    /// metadata, each through a temporary file and a rename.
    ///
    /// # Errors
    /// An invalid name; a file that cannot be written.
    pub fn save(&self, cert: &StoredCert) -> Result<(), TlsError> {
        check_name(&cert.meta.name)?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|source| TlsError::Io { path: self.dir.clone(), source })?;
        let pem = cert.chain.iter().map(|der| pem_encode("CERTIFICATE", der)).collect::<String>();
        let json = serde_json::to_vec_pretty(&cert.meta)
            .map_err(|e| TlsError::invalid(&cert.meta.name, e.to_string()))?;
        for (extension, bytes) in [("pem", pem.as_bytes()), ("json", json.as_slice())] {
            let path = self.dir.join(format!("{}.{extension}", cert.meta.name));
            crate::server::write_atomically(&path, bytes)
                .map_err(|source| TlsError::Io { path, source })?;
        }
        Ok(())
    }

    /// Reads a certificate.
    ///
    /// # Errors
    /// [`TlsError::NotFound`]; unreadable or malformed files.
    pub fn load(&self, name: &str) -> Result<StoredCert, TlsError> {
        check_name(name)?;
        let meta_path = self.dir.join(format!("{name}.json"));
        let text = match std::fs::read(&meta_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(TlsError::NotFound(name.to_owned()));
            }
            Err(source) => return Err(TlsError::Io { path: meta_path, source }),
        };
        let meta: CertMeta = serde_json::from_slice(&text)
            .map_err(|e| TlsError::invalid(name, format!("{}: {e}", meta_path.display())))?;
        let pem_path = self.dir.join(format!("{name}.pem"));
        let pem =
            std::fs::read(&pem_path).map_err(|source| TlsError::Io { path: pem_path, source })?;
        let chain = parse_chain(name, &pem)?;
        Ok(StoredCert { meta, chain })
    }

    /// Every certificate, by name.
    ///
    /// # Errors
    /// As [`CertStore::load`].
    pub fn list(&self) -> Result<Vec<StoredCert>, TlsError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(TlsError::Io { path: self.dir.clone(), source }),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                name.strip_suffix(".json").map(str::to_owned)
            })
            .filter(|name| check_name(name).is_ok())
            .collect();
        names.sort();
        names.iter().map(|name| self.load(name)).collect()
    }
}

/// Parses a PEM chain (certificates only; anything else in the file is ignored).
///
/// # Errors
/// Malformed PEM, or no certificate.
pub(super) fn parse_chain(
    name: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::invalid(name, format!("malformed PEM chain: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::invalid(name, "the chain holds no certificate"));
    }
    Ok(chain)
}

/// PEM text of one DER object.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let encoded = BASE64.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// What a certificate says of itself: DNS names, IP addresses, issuer, validity.
pub(super) struct Described {
    pub(super) dns_names: Vec<String>,
    pub(super) ip_addresses: Vec<String>,
    pub(super) issuer: String,
    pub(super) not_before: i64,
    pub(super) not_after: i64,
}

/// Reads the names, issuer and validity of a DER certificate.
///
/// # Errors
/// A certificate that does not parse.
pub(super) fn describe(name: &str, der: &[u8]) -> Result<Described, TlsError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::invalid(name, format!("malformed certificate: {e}")))?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general_name in &san.value.general_names {
            match general_name {
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        ip_addresses.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(Described {
        dns_names,
        ip_addresses,
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}
