//! In-process keystore benchmarks on the default backend: Encrypt and Decrypt of 1 KiB,
//! GenerateDataKey (AES_256) and P-256 Sign, through the full operation path (resolve, state
//! check, crypto, audit) with a null audit sink so the figure is the keystore's own cost.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kagi::audit::NullSink;
use kagi::crypto::{BackendKind, SigningAlgorithm};
use kagi::keystore::clock::SystemClock;
use kagi::keystore::operations::{DataKeySize, EncryptionAlgorithm, MessageType};
use kagi::keystore::{
    CreateKeyRequest, EncryptionContext, KeySpec, Keystore, OpContext, Partition, RootKeySource,
};

fn keystore_benches(c: &mut Criterion) {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = BackendKind::AwsLc.backend();
    Keystore::init(backend, dir.path(), &RootKeySource::File).expect("init");
    let keystore = Keystore::open(
        backend,
        dir.path(),
        &RootKeySource::File,
        Arc::new(SystemClock),
        Arc::new(NullSink),
        Partition::default(),
    )
    .expect("open");
    let ctx =
        OpContext { principal: "bench".into(), source: "bench".into(), request_id: "b".into() };
    let symmetric = runtime
        .block_on(keystore.create_key(&ctx, CreateKeyRequest::default()))
        .expect("create")
        .record
        .id;
    let signing = runtime
        .block_on(keystore.create_key(
            &ctx,
            CreateKeyRequest { spec: KeySpec::EccNistP256, ..CreateKeyRequest::default() },
        ))
        .expect("create")
        .record
        .id;
    let mut context = EncryptionContext::new();
    context.insert("tenant".into(), "acme".into());
    let plaintext = vec![0x42u8; 1024];
    let blob = runtime
        .block_on(keystore.encrypt(
            &ctx,
            &symmetric,
            &plaintext,
            &context,
            EncryptionAlgorithm::SymmetricDefault,
        ))
        .expect("encrypt")
        .ciphertext_blob;

    let mut group = c.benchmark_group("keystore");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encrypt_1k", |b| {
        b.iter(|| {
            runtime
                .block_on(keystore.encrypt(
                    &ctx,
                    &symmetric,
                    &plaintext,
                    &context,
                    EncryptionAlgorithm::SymmetricDefault,
                ))
                .expect("encrypt")
        })
    });
    group.bench_function("decrypt_1k", |b| {
        b.iter(|| {
            runtime.block_on(keystore.decrypt(&ctx, &blob, &context, None, None)).expect("decrypt")
        })
    });
    group.bench_function("generate_data_key", |b| {
        b.iter(|| {
            runtime
                .block_on(keystore.generate_data_key(
                    &ctx,
                    &symmetric,
                    DataKeySize::Aes256,
                    &context,
                    true,
                ))
                .expect("data key")
        })
    });
    group.bench_function("sign_p256", |b| {
        b.iter(|| {
            runtime
                .block_on(keystore.sign(
                    &ctx,
                    &signing,
                    b"message",
                    MessageType::Raw,
                    SigningAlgorithm::EcdsaSha256,
                ))
                .expect("sign")
        })
    });
    group.finish();
}

criterion_group!(benches, keystore_benches);
criterion_main!(benches);
