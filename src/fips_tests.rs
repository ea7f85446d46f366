//! docs/FIPS.md, checked in a build with the `fips` feature: the module is in FIPS mode, the
//! crypto layer refuses what the module does not approve, and TLS, configuration and the
//! envelope feature follow. The keystore's operations have their own list in
//! `keystore/tests/fips.rs`.

use std::path::Path;
use std::sync::Arc;

use crate::config::Config;
use crate::crypto::{
    AesKey, BackendKind, Error, KeyPairSpec, NONCE_LEN, OaepHash, SecretBytes, SignInput,
    SigningAlgorithm,
};

fn aws_lc() -> &'static dyn crate::crypto::CryptoBackend {
    BackendKind::AwsLc.backend()
}

fn not_approved<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::NotApproved(_))), "{result:?}");
}

const MINIMAL: &str = "[keystore]\ndata_dir = \"data\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n";

fn parse(text: &str) -> Result<Config, crate::config::ConfigError> {
    Config::parse(text, "kagi.toml", Path::new("/etc/kagi"))
}

#[test]
fn the_module_is_in_fips_mode() {
    const { assert!(crate::crypto::FIPS) };
    assert_eq!(crate::crypto::check_fips_mode(), Ok(()));
}

#[test]
fn the_rustcrypto_backend_is_refused() {
    not_approved(BackendKind::RustCrypto.check_allowed());
    assert!(BackendKind::AwsLc.check_allowed().is_ok());
    let refused = MINIMAL.replace("[keystore]", "[keystore]\nbackend = \"rustcrypto\"");
    assert!(parse(&refused).unwrap_err().to_string().contains("FIPS"));
    assert!(parse(&MINIMAL.replace("[keystore]", "[keystore]\nbackend = \"aws-lc\"")).is_ok());
    let error = crate::cli::run(["kagi", "--backend", "rustcrypto", "tour"]).unwrap_err();
    assert_eq!(error.exit_code(), crate::error::exit_code::USAGE);
}

#[test]
fn aes_gcm_encrypts_only_under_a_nonce_the_module_draws() {
    let key = AesKey::from_slice(&[7u8; 32]).unwrap();
    not_approved(aws_lc().seal(&key, &[0u8; NONCE_LEN], b"aad", b"plaintext"));
    let (nonce, sealed) = aws_lc().seal_fresh(&key, b"aad", b"plaintext").unwrap();
    let (other, _) = aws_lc().seal_fresh(&key, b"aad", b"plaintext").unwrap();
    assert_ne!(nonce, other);
    // Decrypting under a given nonce is approved.
    let opened = aws_lc().open(&key, &nonce, b"aad", &sealed).unwrap();
    assert_eq!(opened.expose_secret(), b"plaintext");
}

#[test]
fn hkdf_needs_a_salt_and_an_info() {
    let mut out = [0u8; 32];
    not_approved(aws_lc().hkdf_sha512(b"", b"ikm", b"info", &mut out));
    not_approved(aws_lc().hkdf_sha512(b"salt", b"ikm", b"", &mut out));
    aws_lc().hkdf_sha512(b"salt", b"ikm", b"info", &mut out).unwrap();
    assert_ne!(out, [0u8; 32]);
}

#[test]
fn secp256k1_digests_and_rsa_oaep_are_refused_by_the_backend() {
    not_approved(aws_lc().generate_key_pair(KeyPairSpec::EccSecgP256k1));
    let p256 = aws_lc().generate_key_pair(KeyPairSpec::EccNistP256).unwrap();
    not_approved(aws_lc().load_private_key(KeyPairSpec::EccSecgP256k1, p256.expose_secret()));
    let key = aws_lc().load_private_key(KeyPairSpec::EccNistP256, p256.expose_secret()).unwrap();
    let public = aws_lc().load_public_key(KeyPairSpec::EccNistP256, &key.public_key_der()).unwrap();
    not_approved(aws_lc().load_public_key(KeyPairSpec::EccSecgP256k1, &key.public_key_der()));
    let algorithm = SigningAlgorithm::EcdsaSha256;
    not_approved(key.sign(algorithm, SignInput::Digest(&[1u8; 32])));
    let signature = key.sign(algorithm, SignInput::Message(b"m")).unwrap();
    public.verify(algorithm, SignInput::Message(b"m"), &signature).unwrap();
    not_approved(public.verify(algorithm, SignInput::Digest(&[1u8; 32]), &signature));

    let rsa = aws_lc().generate_key_pair(KeyPairSpec::Rsa2048).unwrap();
    let rsa = aws_lc().load_private_key(KeyPairSpec::Rsa2048, rsa.expose_secret()).unwrap();
    let rsa_public = aws_lc().load_public_key(KeyPairSpec::Rsa2048, &rsa.public_key_der()).unwrap();
    for hash in [OaepHash::Sha1, OaepHash::Sha256] {
        not_approved(rsa_public.encrypt_oaep(hash, b"secret"));
        not_approved(rsa.decrypt_oaep(hash, &[0u8; 256]));
    }
}

#[test]
fn tls_configurations_are_fips() {
    let sessions = crate::tls::SessionState::new().unwrap();
    for profile in [crate::tls::TlsProfile::Intermediate, crate::tls::TlsProfile::Modern] {
        let config = crate::tls::server_config(
            Arc::new(crate::tls::SniResolver::new()),
            None,
            profile,
            &sessions,
        )
        .unwrap();
        assert!(config.fips(), "{profile:?}");
    }
    assert!(crate::tls::crypto_provider().fips());
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert.pem()).unwrap();
    for version in [crate::api::client::HttpVersion::Http1, crate::api::client::HttpVersion::Http2]
    {
        assert!(crate::api::client::tls_config(&ca_path, version).unwrap().fips());
    }
}

#[test]
fn shared_session_tickets_seal_and_open() {
    let ticketer = crate::tls::SharedTicketer::new(aws_lc(), SecretBytes::from_slice(&[3u8; 32]));
    let ticket = ticketer.seal(b"session state").expect("seal");
    assert_eq!(ticketer.open(&ticket).expect("open"), b"session state");
}

#[test]
fn envelope_encryption_is_refused() {
    assert!(crate::envelope::FIPS_REFUSAL.is_some());
    let route = format!(
        "{MINIMAL}\n[[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:9000\"]\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"app\"\n[routes.envelope]\nkey = \"alias/k\"\n"
    );
    assert!(parse(&route).unwrap_err().to_string().contains("FIPS"));
    let without = format!(
        "{MINIMAL}\n[[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:9000\"]\n\n\
         [[routes]]\nname = \"r\"\nupstream = \"app\"\n"
    );
    assert!(parse(&without).is_ok());
}
