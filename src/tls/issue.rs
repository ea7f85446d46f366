//! Certificate issuance, renewal and import, and loading certificates for serving.
//!
//! Every key is a keystore key: a new certificate gets a new SIGN_VERIFY key (aliased
//! `alias/kagi/certs/NAME`, or `alias/kagi/ca/NAME` for a CA) or a named one; an imported
//! private key becomes an EXTERNAL key through the keystore's own import path (wrapped for
//! import in memory, like any BYOK caller); signatures go through the keystore's audited Sign.
//! The keystore is reached through the [`CertKeys`] trait (`keys.rs`): the one opened in this
//! process, or a running server's through its KMS API ([`CertIssuer::remote`]), so `kagi certs`
//! works whether or not `kagi serve` holds the data directory. The certificate files are written
//! here either way (each atomically); a running server serves new or renewed ones once it
//! reloads its certificates, which it does not do by itself yet (restart it).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

mod keys;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use self::keys::{CertKeys, EmbeddedKeys, RemoteKeys};
use super::resolver::{CertEntry, SniResolver};
use super::signer::{HandshakeCounter, IssuingKey, KeystoreSigningKey};
use super::store::{CertKind, CertMeta, CertStore, StoredCert, describe, parse_chain, pem_encode};
use super::{API_CERTIFICATE, API_KEY_ALIAS, DEFAULT_VALIDITY_DAYS, TlsError, check_name};
use crate::api::client::Client;
use crate::crypto::{AesKey, CryptoBackend, KeyPairSpec, OaepHash, SecretBytes};
use crate::keystore::{
    CreateKeyRequest, ImportRequest, ImportType, KeySpec, KeyState, KeyUsage, Keystore, OpContext,
    Origin, WrappingAlgorithm,
};

const DAY: i64 = 86_400;
/// Certificates start this long before their issuance, for clients whose clocks lag.
const BACKDATE: i64 = 300;

/// Which key a new certificate gets.
#[derive(Clone, Debug)]
pub enum KeyChoice {
    /// An existing keystore key (key id, ARN or alias).
    Existing(String),
    /// A new keystore key of this spec.
    New(KeySpec),
}

/// What `kagi certs issue` asks for.
#[derive(Clone, Debug)]
pub struct IssueRequest {
    /// The certificate's name in the store.
    pub name: String,
    /// DNS names (`*.` wildcards allowed).
    pub dns_names: Vec<String>,
    /// IP addresses.
    pub ip_addresses: Vec<IpAddr>,
    /// Its key.
    pub key: KeyChoice,
    /// The internal CA that signs it (none: self-signed).
    pub ca: Option<String>,
    /// Validity in days.
    pub days: u32,
}

/// Issues, renews and imports certificates into a store, with keys in a keystore.
#[derive(Debug)]
pub struct CertIssuer<'a> {
    keys: Box<dyn CertKeys + 'a>,
    /// Random serial numbers, and the client side of key import (parsing and wrapping).
    backend: &'static dyn CryptoBackend,
    /// When the certificates start (epoch seconds).
    now: i64,
    store: &'a CertStore,
}

impl<'a> CertIssuer<'a> {
    /// Issues with the keystore opened in this process, every key operation audited as `ctx`.
    pub fn new(keystore: &'a Keystore, ctx: &'a OpContext, store: &'a CertStore) -> Self {
        Self {
            keys: Box::new(EmbeddedKeys { keystore, ctx }),
            backend: keystore.backend(),
            now: keystore.now(),
            store,
        }
    }

    /// Issues with the keystore of the running server `client` is connected to: every key
    /// operation goes through its KMS API, authorized and audited as the client's principal.
    /// `backend` draws serial numbers and wraps imported keys here; certificates start at `now`.
    pub fn remote(
        client: Client,
        backend: &'static dyn CryptoBackend,
        now: i64,
        store: &'a CertStore,
    ) -> Self {
        Self { keys: Box::new(RemoteKeys::new(client)), backend, now, store }
    }

    /// The time certificates are issued at (epoch seconds).
    pub fn now(&self) -> i64 {
        self.now
    }

    /// `kagi certs ca create`: a self-signed CA certificate with a new key.
    ///
    /// # Errors
    /// An existing name; keystore and issuance failures.
    pub async fn create_ca(
        &self,
        name: &str,
        spec: KeySpec,
        days: u32,
    ) -> Result<CertMeta, TlsError> {
        self.check_new(name)?;
        let alias = format!("alias/kagi/ca/{name}");
        let key_id = self.new_key(name, spec, Some(&alias)).await?;
        let params = ca_params(name, self.validity(days)?)?;
        self.finish(name, CertKind::Ca, key_id, Some(alias), None, params).await
    }

    /// `kagi certs issue`.
    ///
    /// # Errors
    /// An existing name, no names, an unknown CA; keystore and issuance failures.
    pub async fn issue(&self, request: IssueRequest) -> Result<CertMeta, TlsError> {
        let name = request.name.as_str();
        self.check_new(name)?;
        if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
            return Err(TlsError::invalid(name, "give at least one --dns name or --ip address"));
        }
        if let Some(ca) = &request.ca {
            let ca_cert = self.store.load(ca)?;
            if ca_cert.meta.kind != CertKind::Ca {
                return Err(TlsError::invalid(name, format!("{ca:?} is not a CA")));
            }
        }
        let params = leaf_params(
            name,
            &request.dns_names,
            &request.ip_addresses,
            self.validity(request.days)?,
        )?;
        let (key_id, alias) = match &request.key {
            KeyChoice::Existing(key) => (self.keys.signing_key(key).await?.key_id, None),
            KeyChoice::New(spec) => {
                let alias = format!("alias/kagi/certs/{name}");
                (self.new_key(name, *spec, Some(&alias)).await?, Some(alias))
            }
        };
        self.finish(name, CertKind::Issued, key_id, alias, request.ca.clone(), params).await
    }

    /// `kagi certs renew`: a new key of the same spec, a new certificate for the same names
    /// and issuer (and as many days as before), and the certificate's alias moved to the new
    /// key, the manual rotation AWS describes. The old key stays (disable or delete it).
    ///
    /// # Errors
    /// An imported certificate (import its successor instead); keystore and issuance failures.
    pub async fn renew(&self, name: &str, days: Option<u32>) -> Result<CertMeta, TlsError> {
        let old = self.store.load(name)?.meta;
        if old.kind == CertKind::Imported {
            return Err(TlsError::invalid(
                name,
                "an imported certificate is renewed by importing its successor",
            ));
        }
        let spec = key_spec(self.keys.signing_key(&old.key_id).await?.spec);
        let days = days.unwrap_or_else(|| {
            u32::try_from((old.not_after - old.not_before - BACKDATE) / DAY)
                .unwrap_or(DEFAULT_VALIDITY_DAYS)
        });
        let validity = self.validity(days)?;
        let params = match old.kind {
            CertKind::Ca => ca_params(name, validity)?,
            _ => {
                let ips: Vec<IpAddr> =
                    old.ip_addresses.iter().filter_map(|ip| ip.parse().ok()).collect();
                leaf_params(name, &old.dns_names, &ips, validity)?
            }
        };
        let key_id = self.new_key(name, spec, None).await?;
        let alias = old.key_alias.clone().unwrap_or_else(|| match old.kind {
            CertKind::Ca => format!("alias/kagi/ca/{name}"),
            _ => format!("alias/kagi/certs/{name}"),
        });
        let meta = self
            .finish(name, old.kind, key_id.clone(), Some(alias.clone()), old.ca.clone(), params)
            .await?;
        // The certificate names its new key already; the alias follows.
        if old.key_alias.is_some() {
            self.keys.update_alias(&alias, &key_id).await?;
        } else {
            self.keys.create_alias(&alias, &key_id).await?;
        }
        Ok(meta)
    }

    /// `kagi certs import`: keeps the chain, imports the private key (PKCS#8 PEM) into a new
    /// EXTERNAL keystore key. The key must be the chain's leaf's; the key file may then be
    /// deleted.
    ///
    /// # Errors
    /// Malformed files, a key that is not PKCS#8 or not the leaf's, an unsupported key type;
    /// keystore failures.
    pub async fn import(
        &self,
        name: &str,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertMeta, TlsError> {
        self.check_new(name)?;
        let chain = parse_chain(name, chain_pem)?;
        let described = describe(name, &chain[0])?;
        let leaf_spki = leaf_public_key(name, &chain[0])?;
        let pkcs8 = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(PrivateKeyDer::Pkcs8(key)) => SecretBytes::from(key.secret_pkcs8_der().to_vec()),
            Ok(_) => {
                return Err(TlsError::invalid(
                    name,
                    "the private key is not PKCS#8 (\"PRIVATE KEY\"): convert it with \
                     `openssl pkcs8 -topk8 -nocrypt`",
                ));
            }
            Err(e) => return Err(TlsError::invalid(name, format!("malformed private key: {e}"))),
        };
        let backend = self.backend;
        let spec = [
            KeyPairSpec::EccNistP256,
            KeyPairSpec::EccNistP384,
            KeyPairSpec::EccNistP521,
            KeyPairSpec::Rsa2048,
            KeyPairSpec::Rsa3072,
            KeyPairSpec::Rsa4096,
        ]
        .into_iter()
        .find(|spec| {
            backend
                .load_private_key(*spec, pkcs8.expose_secret())
                .is_ok_and(|key| key.public_key_der() == leaf_spki)
        })
        .ok_or_else(|| {
            TlsError::invalid(
                name,
                "the private key is not the certificate's, or not a P-256, P-384, P-521 or \
                 RSA 2048/3072/4096 key",
            )
        })?;
        let request = CreateKeyRequest {
            spec: key_spec(spec),
            usage: Some(KeyUsage::SignVerify),
            origin: Origin::External,
            description: format!("TLS certificate {name} (imported)"),
            tags: certificate_tag(name),
            policy: None,
        };
        let key_id = self.keys.create_key(request).await?;
        // The keystore's BYOK path, as any caller uses it: RSA-OAEP of a fresh AES key, then
        // AES-KWP of the PKCS#8 under it.
        let algorithm = WrappingAlgorithm::RsaAesKeyWrapSha256;
        let parameters =
            self.keys.import_parameters(&key_id, algorithm, KeyPairSpec::Rsa3072).await?;
        let mut aes_key = SecretBytes::zeroed(32);
        backend.fill_random(aes_key.expose_secret_mut()).map_err(crate::keystore::Error::from)?;
        let wrapping_key = backend
            .load_public_key(KeyPairSpec::Rsa3072, &parameters.public_key)
            .map_err(crate::keystore::Error::from)?;
        let mut wrapped = wrapping_key
            .encrypt_oaep(OaepHash::Sha256, aes_key.expose_secret())
            .map_err(crate::keystore::Error::from)?;
        let kek =
            AesKey::from_slice(aes_key.expose_secret()).map_err(crate::keystore::Error::from)?;
        wrapped.extend(
            backend.wrap_key(&kek, pkcs8.expose_secret()).map_err(crate::keystore::Error::from)?,
        );
        let import = ImportRequest {
            import_token: &parameters.import_token,
            encrypted_key_material: &wrapped,
            valid_to: None,
            import_type: ImportType::ExistingKeyMaterial,
        };
        self.keys.import_key_material(&key_id, import).await?;
        let alias = format!("alias/kagi/certs/{name}");
        self.keys.create_alias(&alias, &key_id).await?;
        let meta = CertMeta {
            name: name.to_owned(),
            kind: CertKind::Imported,
            key_id,
            key_alias: Some(alias),
            ca: None,
            issuer: described.issuer,
            dns_names: described.dns_names,
            ip_addresses: described.ip_addresses,
            not_before: described.not_before,
            not_after: described.not_after,
        };
        self.store.save(&StoredCert { meta: meta.clone(), chain })?;
        Ok(meta)
    }

    fn check_new(&self, name: &str) -> Result<(), TlsError> {
        check_name(name)?;
        if self.store.exists(name) {
            return Err(TlsError::AlreadyExists(name.to_owned()));
        }
        Ok(())
    }

    fn validity(&self, days: u32) -> Result<(i64, i64), TlsError> {
        if !(1..=36_500).contains(&days) {
            return Err(TlsError::Issue(format!("validity of {days} days: use 1 to 36500")));
        }
        Ok((self.now - BACKDATE, self.now + i64::from(days) * DAY))
    }

    async fn new_key(
        &self,
        name: &str,
        spec: KeySpec,
        alias: Option<&str>,
    ) -> Result<String, TlsError> {
        let request = CreateKeyRequest {
            spec,
            usage: Some(KeyUsage::SignVerify),
            origin: Origin::AwsKms,
            description: format!("TLS certificate {name}"),
            tags: certificate_tag(name),
            policy: None,
        };
        let key_id = self.keys.create_key(request).await?;
        if let Some(alias) = alias {
            self.keys.create_alias(alias, &key_id).await?;
        }
        Ok(key_id)
    }

    /// Signs `params` for `key_id` (self-signed, or by the CA `ca`) and saves the certificate.
    async fn finish(
        &self,
        name: &str,
        kind: CertKind,
        key_id: String,
        key_alias: Option<String>,
        ca: Option<String>,
        mut params: rcgen::CertificateParams,
    ) -> Result<CertMeta, TlsError> {
        let mut serial = [0u8; 16];
        self.backend.fill_random(&mut serial).map_err(crate::keystore::Error::from)?;
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let subject = self.issuing_key(&key_id).await?;
        // RFC 5280 requires the authority key identifier in every certificate but a
        // self-signed CA's; strict validators (sslyze's, `cryptography`'s) refuse a self-signed
        // leaf without it. A self-signed certificate's names its own key.
        params.use_authority_key_identifier_extension = true;
        let full_chain = match &ca {
            Some(ca) => {
                let ca_cert = self.store.load(ca)?;
                let ca_key = self.issuing_key(&ca_cert.meta.key_id).await?;
                let certificate = self
                    .sign_certificate(&ca_key, |signer| {
                        let issuer = rcgen::Issuer::from_ca_cert_der(&ca_cert.chain[0], signer)?;
                        params.signed_by(&subject, &issuer)
                    })
                    .await?;
                std::iter::once(certificate).chain(ca_cert.chain).collect()
            }
            None => {
                vec![self.sign_certificate(&subject, |signer| params.self_signed(signer)).await?]
            }
        };
        let described = describe(name, &full_chain[0])?;
        let meta = CertMeta {
            name: name.to_owned(),
            kind,
            key_id,
            key_alias,
            ca,
            issuer: described.issuer,
            dns_names: described.dns_names,
            ip_addresses: described.ip_addresses,
            not_before: described.not_before,
            not_after: described.not_after,
        };
        self.store.save(&StoredCert { meta: meta.clone(), chain: full_chain })?;
        Ok(meta)
    }

    async fn issuing_key(&self, key_ref: &str) -> Result<IssuingKey, TlsError> {
        let key = self.keys.signing_key(key_ref).await?;
        IssuingKey::new(&key.key_id, key.spec, &key.public_key)
            .ok_or_else(|| TlsError::Issue(format!("{} cannot sign certificates", key.key_arn)))
    }

    /// A certificate `signer` signs: `build` runs twice (see [`IssuingKey`]), the keystore
    /// signing what the first run asked for before the second.
    async fn sign_certificate(
        &self,
        signer: &IssuingKey,
        build: impl Fn(&IssuingKey) -> Result<rcgen::Certificate, rcgen::Error>,
    ) -> Result<CertificateDer<'static>, TlsError> {
        let issue_error = |e: rcgen::Error| TlsError::Issue(e.to_string());
        let to_be_signed = signer.to_be_signed(&build).map_err(issue_error)?;
        let digest = signer.digest(&to_be_signed);
        let signature =
            self.keys.sign_digest(signer.key_id(), &digest, signer.signing_algorithm()).await?;
        let certificate =
            build(&signer.with_signature(to_be_signed, signature)).map_err(issue_error)?;
        Ok(certificate.der().clone())
    }
}

/// Loads a stored certificate for serving, refusing one whose public key is not its keystore
/// key's. A key that is disabled or pending deletion still loads, with a warning: its
/// handshakes fail (and log) until it is enabled again.
///
/// # Errors
/// A missing or malformed certificate; an unknown key; [`TlsError::KeyMismatch`].
pub async fn load_entry(
    keystore: &Arc<Keystore>,
    stored: StoredCert,
) -> Result<CertEntry, TlsError> {
    let name = stored.meta.name.clone();
    let info = keystore.signing_key_info(&stored.meta.key_id).await?;
    let counter = Arc::new(HandshakeCounter::default());
    let signing_key = KeystoreSigningKey::new(Arc::clone(keystore), &info, Arc::clone(&counter));
    let certified = CertifiedKey::new(stored.chain, Arc::new(signing_key));
    if certified.keys_match().is_err() {
        return Err(TlsError::KeyMismatch(name));
    }
    if info.state != KeyState::Enabled {
        tracing::warn!(
            target: "kagi::tls",
            certificate = %name,
            key = %info.key_arn,
            state = %info.state,
            "the certificate's key is not enabled: its handshakes will fail"
        );
    }
    Ok(CertEntry { name, key_id: info.key_id, certified: Arc::new(certified), counter })
}

/// The API listener's certificates: every issued or imported certificate of the store, chosen
/// by SNI, with `default_name` (or `kagi-api`) for clients without SNI. On first start, with
/// no certificate named, kagi issues `kagi-api`: self-signed for `tls_names`, with a new P-256
/// key aliased `alias/kagi/api-tls`, and keeps it on later starts.
///
/// Returns the resolver and the PEM certificate clients trust for the default certificate (the
/// last of its chain).
///
/// # Errors
/// The default certificate missing (when named), or unusable; issuance failures.
pub async fn api_resolver(
    keystore: &Arc<Keystore>,
    data_dir: &Path,
    default_name: Option<&str>,
    tls_names: &[String],
) -> Result<(SniResolver, String), TlsError> {
    let store = CertStore::new(data_dir);
    let default_name = default_name.unwrap_or(API_CERTIFICATE);
    if default_name == API_CERTIFICATE && !store.exists(API_CERTIFICATE) {
        let ctx = OpContext {
            principal: "kagi".into(),
            source: "server".into(),
            request_id: keystore.new_uuid()?,
        };
        let issuer = CertIssuer::new(keystore, &ctx, &store);
        issuer.check_new(API_CERTIFICATE)?;
        // Nodes sharing a store share the API key: a node joining a cluster certifies the
        // key another node made (each node keeps its own self-signed certificate for it).
        let existing = match keystore.describe_key(&ctx, API_KEY_ALIAS).await {
            Ok(metadata) if metadata.record.state == KeyState::Enabled => Some(metadata.record.id),
            _ => None,
        };
        let key_id = match existing {
            Some(key_id) => key_id,
            None => {
                issuer.new_key(API_CERTIFICATE, KeySpec::EccNistP256, Some(API_KEY_ALIAS)).await?
            }
        };
        let (dns_names, ip_addresses): (Vec<String>, Vec<String>) =
            tls_names.iter().cloned().partition(|name| name.parse::<IpAddr>().is_err());
        let ips: Vec<IpAddr> = ip_addresses.iter().filter_map(|ip| ip.parse().ok()).collect();
        let mut params = leaf_params(
            API_CERTIFICATE,
            &dns_names,
            &ips,
            issuer.validity(DEFAULT_VALIDITY_DAYS)?,
        )?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, "kagi KMS API");
        issuer
            .finish(
                API_CERTIFICATE,
                CertKind::Issued,
                key_id,
                Some(API_KEY_ALIAS.into()),
                None,
                params,
            )
            .await?;
        tracing::info!(target: "kagi::tls", certificate = API_CERTIFICATE, "issued the API certificate");
    }
    let stored = store.load(default_name)?;
    let trusted = stored.chain.last().map(|der| pem_encode("CERTIFICATE", der));
    let names = stored.meta.dns_names.clone();
    let default = Arc::new(load_entry(keystore, stored).await?);
    let mut resolver = SniResolver::new();
    resolver.add(&default, &names);
    resolver.set_default(default);
    for stored in store.list()? {
        if stored.meta.kind == CertKind::Ca || stored.meta.name == default_name {
            continue;
        }
        let names = stored.meta.dns_names.clone();
        let name = stored.meta.name.clone();
        match load_entry(keystore, stored).await {
            Ok(entry) => resolver.add(&Arc::new(entry), &names),
            Err(error) => {
                tracing::error!(target: "kagi::tls", certificate = %name, %error, "certificate not served");
            }
        }
    }
    Ok((resolver, trusted.unwrap_or_default()))
}

fn leaf_params(
    name: &str,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
    (not_before, not_after): (i64, i64),
) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::default();
    for dns in dns_names {
        let dns = rcgen::string::Ia5String::try_from(dns.as_str())
            .map_err(|e| TlsError::invalid(name, format!("{dns:?}: {e}")))?;
        params.subject_alt_names.push(rcgen::SanType::DnsName(dns));
    }
    params.subject_alt_names.extend(ip_addresses.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    let common_name = dns_names.first().cloned().unwrap_or_else(|| name.to_owned());
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    set_validity(name, &mut params, not_before, not_after)?;
    Ok(params)
}

fn ca_params(
    name: &str,
    (not_before, not_after): (i64, i64),
) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("kagi CA {name}"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(name, &mut params, not_before, not_after)?;
    Ok(params)
}

fn set_validity(
    name: &str,
    params: &mut rcgen::CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), TlsError> {
    let time = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .map_err(|e| TlsError::invalid(name, format!("validity: {e}")))
    };
    params.not_before = time(not_before)?;
    params.not_after = time(not_after)?;
    Ok(())
}

/// The DER SubjectPublicKeyInfo of a DER certificate.
fn leaf_public_key(name: &str, der: &CertificateDer<'_>) -> Result<Vec<u8>, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::invalid(name, format!("malformed certificate: {e}")))?;
    Ok(cert.public_key().raw.to_vec())
}

fn key_spec(spec: KeyPairSpec) -> KeySpec {
    KeySpec::from_kms_name(spec.kms_name()).unwrap_or(KeySpec::EccNistP256)
}

fn certificate_tag(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("kagi:certificate".to_owned(), name.to_owned())])
}
