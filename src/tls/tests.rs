//! Unit tests of the SNI resolver and the keystore-backed signing key.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::sign::{CertifiedKey, SigningKey as _};

use super::*;
use crate::audit::NullSink;
use crate::keystore::clock::SystemClock;
use crate::keystore::operations::MessageType;
use crate::keystore::{
    self, CreateKeyRequest, KeySpec, KeyUsage, Keystore, OpContext, Partition, RootKeySource,
};

fn ctx() -> OpContext {
    OpContext { principal: "test".into(), source: "test".into(), request_id: "r".into() }
}

fn keystore(dir: &std::path::Path) -> Arc<Keystore> {
    let backend = crate::crypto::BackendKind::AwsLc.backend();
    Keystore::init(backend, dir, &RootKeySource::File).expect("init");
    let keystore = Keystore::open(
        backend,
        dir,
        &RootKeySource::File,
        Arc::new(SystemClock),
        Arc::new(NullSink),
        Partition::default(),
    )
    .expect("open");
    Arc::new(keystore)
}

async fn signing_key(
    keystore: &Arc<Keystore>,
    spec: KeySpec,
) -> (KeystoreSigningKey, String, Vec<u8>, Arc<HandshakeCounter>) {
    let request =
        CreateKeyRequest { spec, usage: Some(KeyUsage::SignVerify), ..CreateKeyRequest::default() };
    let key_id = keystore.create_key(&ctx(), request).await.expect("create").record.id;
    let info = keystore.signing_key_info(&key_id).await.expect("info");
    let counter = Arc::new(HandshakeCounter::default());
    let key = KeystoreSigningKey::new(Arc::clone(keystore), &info, Arc::clone(&counter));
    (key, key_id, info.public_key, counter)
}

/// The subjectPublicKey bits of a SubjectPublicKeyInfo (what webpki's verifiers take).
fn public_key_bits(spki: &[u8]) -> Vec<u8> {
    use x509_parser::prelude::FromDer as _;
    let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).expect("spki");
    info.subject_public_key.data.to_vec()
}

#[tokio::test]
async fn every_scheme_signs_what_the_keystore_and_rustls_verify() {
    let dir = tempfile::tempdir().unwrap();
    let keystore = keystore(dir.path());
    let verifiers = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
    let message = b"TLS 1.3, server CertificateVerify\x00transcript hash";
    for (spec, expected) in [
        (KeySpec::EccNistP256, 1),
        (KeySpec::EccNistP384, 1),
        (KeySpec::EccNistP521, 1),
        (KeySpec::Rsa2048, 6),
        (KeySpec::Rsa3072, 6),
    ] {
        let (key, key_id, spki, counter) = signing_key(&keystore, spec).await;
        let offered = schemes(spec.key_pair_spec().unwrap());
        assert_eq!(offered.len(), expected, "{spec}");
        assert_eq!(key.public_key().unwrap().as_ref(), spki.as_slice());
        let bits = public_key_bits(&spki);
        for &(scheme, algorithm) in offered {
            let signer = key.choose_scheme(&[SignatureScheme::ED25519, scheme]).expect("chosen");
            assert_eq!(signer.scheme(), scheme);
            let signature = signer.sign(message).expect("signs");
            keystore
                .verify(&ctx(), &key_id, message, MessageType::Raw, algorithm, &signature)
                .await
                .unwrap_or_else(|e| panic!("{spec} {scheme:?}: the keystore verifies: {e}"));
            let (_, candidates) =
                verifiers.mapping.iter().find(|(s, _)| *s == scheme).expect("rustls knows it");
            assert!(
                candidates.iter().any(|v| v.verify_signature(&bits, message, &signature).is_ok()),
                "{spec} {scheme:?}: rustls's aws-lc-rs verifier accepts it"
            );
        }
        assert_eq!(counter.signed(), expected as u64);
        // The first scheme the key has, in its order of preference.
        let all: Vec<_> = offered.iter().rev().map(|(s, _)| *s).collect();
        assert_eq!(key.choose_scheme(&all).unwrap().scheme(), offered[0].0);
        assert!(key.choose_scheme(&[SignatureScheme::ED25519]).is_none());
        assert!(format!("{key:?}").contains(&key_id));
    }
}

#[tokio::test]
async fn a_disabled_key_or_one_pending_deletion_signs_no_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let keystore = keystore(dir.path());
    let (key, key_id, _, counter) = signing_key(&keystore, KeySpec::EccNistP256).await;
    let signer = key.choose_scheme(&[SignatureScheme::ECDSA_NISTP256_SHA256]).unwrap();
    assert!(signer.sign(b"before").is_ok());
    keystore.disable_key(&ctx(), &key_id).await.unwrap();
    // Dropped from the cache by the change: refused until loaded again, and then refused for
    // its state.
    assert!(signer.sign(b"not loaded").is_err());
    let info = keystore.signing_key_info(&key_id).await.expect("a disabled key still loads");
    assert_eq!(info.state, keystore::KeyState::Disabled);
    assert!(signer.sign(b"disabled").is_err());
    keystore.enable_key(&ctx(), &key_id).await.unwrap();
    keystore.signing_key_info(&key_id).await.unwrap();
    assert!(signer.sign(b"enabled again").is_ok());
    keystore.schedule_key_deletion(&ctx(), &key_id, Some(7)).await.unwrap();
    keystore.signing_key_info(&key_id).await.unwrap();
    assert!(signer.sign(b"pending deletion").is_err());
    assert_eq!((counter.signed(), counter.refused()), (2, 3));
}

#[tokio::test]
async fn a_key_that_does_not_sign_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keystore = keystore(dir.path());
    for (spec, usage) in [
        (KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt),
        (KeySpec::Rsa2048, KeyUsage::EncryptDecrypt),
        (KeySpec::EccNistP256, KeyUsage::KeyAgreement),
    ] {
        let request = CreateKeyRequest { spec, usage: Some(usage), ..CreateKeyRequest::default() };
        let key_id = keystore.create_key(&ctx(), request).await.unwrap().record.id;
        let error = keystore.signing_key_info(&key_id).await.unwrap_err();
        assert_eq!(error.kind(), keystore::ErrorKind::InvalidKeyUsage, "{spec}");
    }
}

#[test]
fn an_issuing_key_signs_only_the_certificate_it_recorded() {
    use rcgen::{PublicKeyData as _, SigningKey as _};
    let key_pair = rcgen::KeyPair::generate().unwrap();
    let spki = key_pair.subject_public_key_info();
    let key = IssuingKey::new("k", crate::crypto::KeyPairSpec::EccNistP256, &spki).unwrap();
    let params = |name: &str| {
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[1, 2, 3]));
        params
    };
    let first = params("a.test");
    let to_be_signed = key.to_be_signed(|signer| first.self_signed(signer)).unwrap();
    let signature = key_pair.sign(&to_be_signed).unwrap();
    let signed = key.with_signature(to_be_signed.clone(), signature.clone());
    let certificate = params("a.test").self_signed(&signed).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.der()).unwrap();
    assert_eq!(parsed.tbs_certificate.as_ref(), to_be_signed.as_slice());
    assert_eq!(parsed.signature_value.data.as_ref(), signature.as_slice());
    // Other bytes get no signature.
    assert!(params("b.test").self_signed(&signed).is_err());
    // A build that fails before asking for a signature keeps its own error.
    let mut broken = params("c.test");
    broken.crl_distribution_points = vec![rcgen::CrlDistributionPoint { uris: Vec::new() }];
    let error = key.to_be_signed(|signer| broken.self_signed(signer)).unwrap_err();
    assert!(matches!(error, rcgen::Error::EmptyCrlDistributionPointUris), "{error:?}");
}

#[tokio::test]
async fn issued_certificates_carry_the_keystore_s_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let keystore = keystore(dir.path());
    let store = CertStore::new(dir.path());
    let ctx = ctx();
    let issuer = CertIssuer::new(&keystore, &ctx, &store);
    let ca = issuer.create_ca("ca", KeySpec::EccNistP384, 10).await.unwrap();
    let request = IssueRequest {
        name: "leaf".into(),
        dns_names: vec!["leaf.test".into()],
        ip_addresses: Vec::new(),
        key: KeyChoice::New(KeySpec::Rsa2048),
        ca: Some("ca".into()),
        days: 1,
    };
    let leaf = issuer.issue(request).await.unwrap();
    // Both certificates verify with the CA's keystore key.
    let ca_key = keystore.signing_key_info(&ca.key_id).await.unwrap();
    let ca_public_key =
        keystore.backend().load_public_key(ca_key.spec, &ca_key.public_key).unwrap();
    for name in ["ca", "leaf"] {
        let chain = store.load(name).unwrap().chain;
        let (_, certificate) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let tbs = crate::crypto::SignInput::Message(certificate.tbs_certificate.as_ref());
        let algorithm = crate::crypto::SigningAlgorithm::EcdsaSha384;
        ca_public_key.verify(algorithm, tbs, &certificate.signature_value.data).unwrap();
    }
    // The leaf's key is its own keystore key; the CA's certificate follows it.
    let chain = store.load("leaf").unwrap().chain;
    assert_eq!(chain.len(), 2);
    let (_, certificate) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let leaf_key = keystore.signing_key_info(&leaf.key_id).await.unwrap();
    assert_eq!(certificate.public_key().raw, leaf_key.public_key.as_slice());
}

/// An entry serving a throwaway certificate (the resolver does not look inside).
fn entry(name: &str) -> Arc<CertEntry> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![format!("{name}.test")])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).unwrap();
    Arc::new(CertEntry {
        name: name.to_owned(),
        key_id: String::new(),
        certified: Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing_key)),
        counter: Arc::default(),
    })
}

#[test]
fn sni_chooses_exact_then_wildcard_then_the_default() {
    let mut resolver = SniResolver::new();
    assert!(resolver.lookup(None).is_none() && resolver.lookup(Some("a.test")).is_none());
    let exact = entry("exact");
    let wildcard = entry("wildcard");
    let other = entry("other");
    let fallback = entry("default");
    resolver.add(&exact, &["www.example.com".into(), "API.Example.com".into()]);
    resolver.add(&wildcard, &["*.example.com".into()]);
    // A name already taken keeps its first certificate.
    resolver.add(&other, &["www.example.com".into(), "*.example.com".into(), "other.test".into()]);
    fn chosen<'r>(resolver: &'r SniResolver, name: Option<&str>) -> Option<&'r str> {
        resolver.lookup(name).map(|e| e.name.as_str())
    }
    assert_eq!(chosen(&resolver, Some("www.example.com")), Some("exact"));
    assert_eq!(chosen(&resolver, Some("api.example.com")), Some("exact"), "case-insensitive");
    assert_eq!(chosen(&resolver, Some("WWW.example.com.")), Some("exact"), "trailing dot");
    assert_eq!(chosen(&resolver, Some("x.example.com")), Some("wildcard"));
    assert_eq!(chosen(&resolver, Some("other.test")), Some("other"));
    // A wildcard covers exactly one label.
    assert_eq!(chosen(&resolver, Some("a.b.example.com")), None);
    assert_eq!(chosen(&resolver, Some("example.com")), None);
    assert_eq!(chosen(&resolver, None), None);
    resolver.set_default(Arc::clone(&fallback));
    assert_eq!(chosen(&resolver, Some("a.b.example.com")), Some("default"));
    assert_eq!(chosen(&resolver, Some("unknown.test")), Some("default"));
    assert_eq!(chosen(&resolver, None), Some("default"), "no SNI");
    assert_eq!(chosen(&resolver, Some("x.example.com")), Some("wildcard"));
}

#[test]
fn certificate_names_are_checked() {
    for good in ["kagi-api", "a", "site_1", &"x".repeat(64)] {
        assert!(check_name(good).is_ok(), "{good}");
    }
    for bad in ["", "a.b", "../x", "a b", "é", &"x".repeat(65)] {
        assert!(matches!(check_name(bad), Err(TlsError::InvalidName(_))), "{bad}");
    }
}

/// docs/FIPS.md: certificates signed by a keystore key are refused in FIPS mode (kagi signs
/// their digest, which the module does not approve), and nothing is stored.
#[cfg(feature = "fips")]
#[tokio::test]
async fn fips_refuses_issuing_a_certificate_with_a_keystore_key() {
    let dir = tempfile::tempdir().unwrap();
    let keystore = keystore(dir.path());
    let store = CertStore::new(dir.path());
    let ctx = ctx();
    let issuer = CertIssuer::new(&keystore, &ctx, &store);
    let refused = issuer.create_ca("ca", KeySpec::EccNistP256, 10).await.unwrap_err();
    assert!(
        refused.to_string().contains("FIPS") || refused.to_string().contains("approved"),
        "{refused}"
    );
    assert!(store.load("ca").is_err(), "no certificate is kept");
}
