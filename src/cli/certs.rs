//! `kagi certs …`: TLS certificates whose keys live in the keystore: issue (self-signed or by
//! an internal CA), create a CA, import a chain and its key, renew, list.
//!
//! Without a server they work on the data directory directly. While `kagi serve` holds it, every
//! key operation (CreateKey, CreateAlias, UpdateAlias, GetPublicKey, Sign, GetParametersForImport,
//! ImportKeyMaterial) goes through the server's KMS API with the operator's credentials, so the
//! server authorizes and audits it as that principal; the certificate files in `DATA_DIR/certs`
//! are plain files and are written here either way, each atomically. The server serves new or
//! renewed certificates once it reloads them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{Args as ClapArgs, Subcommand};
use serde_json::{Value, json};

use super::remote::{self, ServerInfo};
use super::{Output, Printer, invalid, keystore_error};
use crate::crypto::CryptoBackend;
use crate::error::{Error, exit_code};
use crate::keystore::{KeySpec, Keystore, OpContext};
use crate::tls::{
    CertIssuer, CertKind, CertMeta, CertStore, DEFAULT_CA_VALIDITY_DAYS, DEFAULT_VALIDITY_DAYS,
    IssueRequest, KeyChoice, TlsError,
};

/// `kagi certs …`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Issues a certificate whose key is a new (or a named) keystore key, self-signed or
    /// signed by an internal CA.
    Issue(IssueArgs),
    /// Internal certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Imports a PEM chain and its PKCS#8 private key; the key goes into the keystore (as an
    /// EXTERNAL key), and the key file may be deleted afterwards.
    Import {
        /// The certificate's name in the store.
        #[arg(long)]
        name: String,
        /// The PEM chain, leaf first.
        #[arg(long)]
        chain: PathBuf,
        /// The PEM private key (PKCS#8, "PRIVATE KEY").
        #[arg(long)]
        key: PathBuf,
    },
    /// Renews a certificate: a new key, a new certificate for the same names and issuer, and
    /// the certificate's key alias moved to the new key.
    Renew {
        /// The certificate's name.
        name: String,
        /// Validity in days (default: as long as before).
        #[arg(long)]
        days: Option<u32>,
    },
    /// Lists certificates: name, names covered, issuer, expiry, key.
    List,
}

/// `kagi certs ca …`.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Creates an internal CA whose key is a new keystore key.
    Create {
        /// The CA's name in the store.
        #[arg(long)]
        name: String,
        /// ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521, RSA_2048, RSA_3072 or RSA_4096.
        #[arg(long, default_value = "ECC_NIST_P256")]
        key_spec: String,
        /// Validity in days.
        #[arg(long, default_value_t = DEFAULT_CA_VALIDITY_DAYS)]
        days: u32,
    },
}

/// `kagi certs issue`.
#[derive(Debug, ClapArgs)]
pub struct IssueArgs {
    /// The certificate's name in the store.
    #[arg(long)]
    pub name: String,
    /// A DNS name, `*.` wildcards allowed (repeatable).
    #[arg(long = "dns")]
    pub dns: Vec<String>,
    /// An IP address (repeatable).
    #[arg(long = "ip")]
    pub ip: Vec<IpAddr>,
    /// An existing SIGN_VERIFY key: key id, ARN or alias.
    #[arg(long, conflicts_with = "key_spec")]
    pub key: Option<String>,
    /// The spec of a new key: ECC_NIST_P256 (default), ECC_NIST_P384, RSA_2048, …
    #[arg(long)]
    pub key_spec: Option<String>,
    /// The internal CA that signs it (default: self-signed).
    #[arg(long)]
    pub ca: Option<String>,
    /// Validity in days.
    #[arg(long, default_value_t = DEFAULT_VALIDITY_DAYS)]
    pub days: u32,
}

/// Runs a `kagi certs` command on the keystore opened directly.
pub(super) async fn run(
    keystore: Keystore,
    ctx: &OpContext,
    out: &Printer,
    data_dir: &Path,
    command: CertsCommand,
) -> Result<(), Error> {
    let store = CertStore::new(data_dir);
    execute(&CertIssuer::new(&keystore, ctx, &store), &store, out, command).await
}

/// Runs a `kagi certs` command with the running server's keystore, through its API as the
/// operator's principal; the certificate files are still written in `data_dir`.
pub(super) async fn run_remote(
    info: &ServerInfo,
    out: &Printer,
    data_dir: &Path,
    backend: &'static dyn CryptoBackend,
    command: CertsCommand,
) -> Result<(), Error> {
    let store = CertStore::new(data_dir);
    let now = super::clock()?.now();
    // Listing reads the files only: no connection, no credentials.
    if let CertsCommand::List = command {
        return list(&store, now, out);
    }
    let client = remote::connect(info).await?;
    execute(&CertIssuer::remote(client, backend, now, &store), &store, out, command).await
}

/// Runs `command` with `issuer`, whose store is `store`.
async fn execute(
    issuer: &CertIssuer<'_>,
    store: &CertStore,
    out: &Printer,
    command: CertsCommand,
) -> Result<(), Error> {
    let meta = match command {
        CertsCommand::Issue(a) => {
            let key = match (a.key, a.key_spec) {
                (Some(key), _) => KeyChoice::Existing(key),
                (None, spec) => {
                    KeyChoice::New(parse_spec(spec.as_deref().unwrap_or("ECC_NIST_P256"))?)
                }
            };
            let request = IssueRequest {
                name: a.name,
                dns_names: a.dns,
                ip_addresses: a.ip,
                key,
                ca: a.ca,
                days: a.days,
            };
            issuer.issue(request).await.map_err(tls_error)?
        }
        CertsCommand::Ca(CaCommand::Create { name, key_spec, days }) => {
            issuer.create_ca(&name, parse_spec(&key_spec)?, days).await.map_err(tls_error)?
        }
        CertsCommand::Import { name, chain, key } => {
            let read = |path: &PathBuf| {
                std::fs::read(path)
                    .map_err(|e| Error::new(exit_code::INVALID, format!("{}: {e}", path.display())))
            };
            issuer.import(&name, &read(&chain)?, &read(&key)?).await.map_err(tls_error)?
        }
        CertsCommand::Renew { name, days } => issuer.renew(&name, days).await.map_err(tls_error)?,
        CertsCommand::List => return list(store, issuer.now(), out),
    };
    out.document(&row(&meta, issuer.now()));
    Ok(())
}

/// `kagi certs list`.
fn list(store: &CertStore, now: i64, out: &Printer) -> Result<(), Error> {
    let certs = store.list().map_err(tls_error)?;
    match out.output {
        Output::Json => {
            let rows: Vec<Value> = certs.iter().map(|c| row(&c.meta, now)).collect();
            out.document(&json!({ "Certificates": rows }));
        }
        Output::Table => {
            outln!(
                "{:<20}  {:<8}  {:<36}  {:<28}  {:<20}  {:>9}  KEY",
                "NAME",
                "KIND",
                "NAMES",
                "ISSUER",
                "NOT AFTER",
                "DAYS LEFT"
            );
            for cert in &certs {
                let m = &cert.meta;
                outln!(
                    "{:<20}  {:<8}  {:<36}  {:<28}  {:<20}  {:>9}  {}",
                    m.name,
                    kind_name(m.kind),
                    names(m).join(","),
                    m.ca.clone().unwrap_or_else(|| m.issuer.clone()),
                    date(m.not_after),
                    (m.not_after - now).div_euclid(86_400),
                    m.key_alias.clone().unwrap_or_else(|| m.key_id.clone()),
                );
            }
        }
    }
    Ok(())
}

fn row(meta: &CertMeta, now: i64) -> Value {
    json!({
        "Name": meta.name,
        "Kind": kind_name(meta.kind),
        "Names": names(meta),
        "Issuer": meta.issuer,
        "IssuingCa": meta.ca,
        "NotBefore": date(meta.not_before),
        "NotAfter": date(meta.not_after),
        "DaysLeft": (meta.not_after - now).div_euclid(86_400),
        "KeyId": meta.key_id,
        "KeyAlias": meta.key_alias,
    })
}

fn names(meta: &CertMeta) -> Vec<String> {
    meta.dns_names.iter().chain(&meta.ip_addresses).cloned().collect()
}

fn kind_name(kind: CertKind) -> &'static str {
    match kind {
        CertKind::Ca => "ca",
        CertKind::Issued => "issued",
        CertKind::Imported => "imported",
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn date(epoch: i64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(epoch)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| epoch.to_string())
}

fn parse_spec(name: &str) -> Result<KeySpec, Error> {
    KeySpec::from_kms_name(name).ok_or_else(|| invalid(format!("unknown key spec {name:?}")))
}

/// Maps a certificate error to its exit code.
fn tls_error(error: TlsError) -> Error {
    match error {
        TlsError::Keystore(error) => keystore_error(error),
        TlsError::NotFound(_) => Error::new(exit_code::NOT_FOUND, error.to_string()),
        TlsError::Io { .. } => Error::new(exit_code::STORAGE, error.to_string()),
        TlsError::Issue(_) => Error::new(exit_code::FAILURE, error.to_string()),
        TlsError::AlreadyExists(_)
        | TlsError::InvalidName(_)
        | TlsError::KeyMismatch(_)
        | TlsError::Invalid { .. } => Error::new(exit_code::INVALID, error.to_string()),
    }
}
