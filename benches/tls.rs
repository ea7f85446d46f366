//! The cost of a handshake signature with the key in the keystore (`KeystoreSigningKey`: cache
//! lookup, state and usage checks, sign) against rustls's own aws-lc-rs key from a PKCS#8 in
//! memory, for ECDSA P-256 and RSA-2048 PSS. The difference is what keeping the key in the
//! keystore costs per full handshake.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use kagi::audit::NullSink;
use kagi::crypto::BackendKind;
use kagi::keystore::clock::SystemClock;
use kagi::keystore::{
    CreateKeyRequest, KeySpec, KeyUsage, Keystore, OpContext, Partition, RootKeySource,
};
use kagi::tls::{HandshakeCounter, KeystoreSigningKey};
use rustls::SignatureScheme;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::SigningKey;

fn tls_benches(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = BackendKind::AwsLc.backend();
    Keystore::init(backend, dir.path(), &RootKeySource::File).expect("init");
    let keystore = Arc::new(
        Keystore::open(
            backend,
            dir.path(),
            &RootKeySource::File,
            Arc::new(SystemClock),
            Arc::new(NullSink),
            Partition::default(),
        )
        .expect("open"),
    );
    let ctx =
        OpContext { principal: "bench".into(), source: "bench".into(), request_id: "b".into() };
    // A TLS 1.3 CertificateVerify input: 64 spaces, the context string, a zero, the hash.
    let mut message = vec![b' '; 64];
    message.extend_from_slice(b"TLS 1.3, server CertificateVerify\x00");
    message.extend_from_slice(&[0x5a; 32]);
    let mut group = c.benchmark_group("handshake_signature");
    for (name, spec, scheme, rcgen_alg) in [
        (
            "p256",
            KeySpec::EccNistP256,
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        ("rsa2048_pss", KeySpec::Rsa2048, SignatureScheme::RSA_PSS_SHA256, &rcgen::PKCS_RSA_SHA256),
    ] {
        let request = CreateKeyRequest {
            spec,
            usage: Some(KeyUsage::SignVerify),
            ..CreateKeyRequest::default()
        };
        let key_id =
            runtime.block_on(keystore.create_key(&ctx, request)).expect("create").record.id;
        let info = runtime.block_on(keystore.signing_key_info(&key_id)).expect("info");
        let in_keystore = KeystoreSigningKey::new(
            Arc::clone(&keystore),
            &info,
            Arc::new(HandshakeCounter::default()),
        );
        let signer = in_keystore.choose_scheme(&[scheme]).expect("scheme");
        group.bench_function(format!("{name}/keystore"), |b| {
            b.iter(|| signer.sign(&message).expect("sign"));
        });
        let pkcs8 = match spec {
            KeySpec::Rsa2048 => {
                rcgen::KeyPair::generate_rsa_for(rcgen_alg, rcgen::RsaKeySize::_2048)
            }
            _ => rcgen::KeyPair::generate_for(rcgen_alg),
        }
        .expect("key")
        .serialize_der();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
        let in_memory = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der).expect("key");
        let signer = in_memory.choose_scheme(&[scheme]).expect("scheme");
        group.bench_function(format!("{name}/rustls_aws_lc_rs"), |b| {
            b.iter(|| signer.sign(&message).expect("sign"));
        });
    }
    group.finish();
}

criterion_group!(benches, tls_benches);
criterion_main!(benches);
