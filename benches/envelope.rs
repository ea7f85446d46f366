//! The envelope's throughput: encrypting and decrypting a whole message (header, key
//! derivation, frames, and for 0x0578 the signing key, signature and verification) of 1 KiB and
//! 1 MiB, beside plain AES-256-GCM of the same bytes (one seal or open, the floor), so the
//! ratio shows what the message format costs.
//!
//! Run with `cargo bench --bench envelope`; `-- --warm-up-time 1 --measurement-time 3` for a
//! quick pass. The data key is fixed (no key service): this measures the format alone.

use std::hint::black_box;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kagi::crypto::AesKey;
use kagi::envelope::{
    DataKey, DecryptOptions, Decryptor, EncryptOptions, EncryptionContext, Encryptor,
    PreparedEncryption, Suite,
};

const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001";
const DATA_KEY: [u8; 32] = [0x42; 32];

fn context() -> EncryptionContext {
    [("tenant".to_owned(), "acme".to_owned())].into_iter().collect()
}

fn seal(suite: Suite, plaintext: &[u8]) -> Vec<u8> {
    let options = EncryptOptions { suite, ..EncryptOptions::default() };
    let prepared = PreparedEncryption::new(context(), options).expect("prepare");
    let data_key = DataKey {
        plaintext: AesKey::from_slice(&DATA_KEY).expect("32 bytes"),
        ciphertext_blob: vec![7; 180],
        key_arn: KEY_ARN.to_owned(),
    };
    let mut encryptor = prepared.start(data_key).expect("start");
    let mut out = Vec::with_capacity(plaintext.len() + 1024);
    encryptor.update(plaintext, &mut out).expect("update");
    encryptor.finish(&mut out).expect("finish");
    out
}

fn open(message: &[u8]) -> Vec<u8> {
    let mut decryptor =
        Decryptor::new(DecryptOptions { key_arn: KEY_ARN.to_owned(), context: context() });
    let data_key = AesKey::from_slice(&DATA_KEY).expect("32 bytes");
    let mut out = Vec::with_capacity(message.len());
    decryptor.update(message, &mut out).expect("header");
    decryptor.supply_data_key(&data_key, &mut out).expect("frames");
    decryptor.finish().expect("complete");
    out
}

fn envelope(c: &mut Criterion) {
    let aes = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &DATA_KEY).expect("key"));
    for (name, len) in [("envelope_1KiB", 1024), ("envelope_1MiB", 1024 * 1024)] {
        let plaintext = vec![0x17u8; len];
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(u64::try_from(len).expect("a small length")));
        group.bench_function("aes_256_gcm_seal", |b| {
            b.iter(|| {
                let mut in_out = plaintext.clone();
                let nonce = Nonce::assume_unique_for_key([1; 12]);
                let tag = aes.seal_in_place_separate_tag(nonce, Aad::empty(), &mut in_out);
                black_box((in_out, tag.expect("seal")))
            });
        });
        let mut sealed = plaintext.clone();
        let nonce = Nonce::assume_unique_for_key([1; 12]);
        aes.seal_in_place_append_tag(nonce, Aad::empty(), &mut sealed).expect("seal");
        group.bench_function("aes_256_gcm_open", |b| {
            b.iter(|| {
                let mut in_out = sealed.clone();
                let nonce = Nonce::assume_unique_for_key([1; 12]);
                let opened = aes.open_in_place(nonce, Aad::empty(), &mut in_out).expect("open");
                black_box(opened.len())
            });
        });
        for (suite, label) in [
            (Suite::Aes256GcmHkdfSha512CommitKey, "0478"),
            (Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384, "0578"),
        ] {
            group.bench_function(format!("encrypt_{label}"), |b| {
                b.iter(|| black_box(seal(suite, &plaintext)));
            });
            let message = seal(suite, &plaintext);
            if suite == Suite::Aes256GcmHkdfSha512CommitKey {
                // What an envelope route does per message with a cached data key: the header
                // encoded once per data key, each message started from it and sealed at once.
                let options = EncryptOptions { suite, ..EncryptOptions::default() };
                let prepared = PreparedEncryption::new(context(), options).expect("prepare");
                let template = Arc::new(prepared.template(&[7; 180], KEY_ARN).expect("template"));
                let data_key = AesKey::from_slice(&DATA_KEY).expect("32 bytes");
                group.bench_function(format!("encrypt_{label}_cached_data_key"), |b| {
                    b.iter(|| {
                        let encryptor = Encryptor::with_template(Arc::clone(&template), &data_key)
                            .expect("start");
                        let mut out = Vec::new();
                        encryptor.finish_with(black_box(&plaintext), &mut out).expect("seal");
                        out
                    });
                });
            }
            group.bench_function(format!("decrypt_{label}"), |b| {
                b.iter(|| black_box(open(&message)));
            });
        }
        group.finish();
    }
}

/// The fixed costs of one message, piece by piece, each from aws-lc and from the RustCrypto
/// crates: the key derivation (HKDF-SHA512: extract with the message id, two expands; and
/// kagi's whole `MessageKeys::derive`, with the AES-GCM key setup), one SHA-512 block, and the
/// random message id.
fn per_message(c: &mut Criterion) {
    use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
    use aws_lc_rs::{digest, hkdf};
    use sha2::Digest as _;
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let message_id = [0x5a; 32];
    let mut group = c.benchmark_group("per_message");
    group.bench_function("hkdf_sha512_aws_lc", |b| {
        b.iter(|| {
            let prk = hkdf::Salt::new(hkdf::HKDF_SHA512, black_box(&message_id)).extract(&DATA_KEY);
            let (mut content, mut commit) = ([0u8; 32], [0u8; 32]);
            prk.expand(&[&[0x04, 0x78], b"DERIVEKEY"], Len(32))
                .unwrap()
                .fill(&mut content)
                .unwrap();
            prk.expand(&[b"COMMITKEY"], Len(32)).unwrap().fill(&mut commit).unwrap();
            black_box((content, commit))
        });
    });
    group.bench_function("hkdf_sha512_rustcrypto", |b| {
        b.iter(|| {
            let hk = ::hkdf::Hkdf::<sha2::Sha512>::new(Some(black_box(&message_id)), &DATA_KEY);
            let (mut content, mut commit) = ([0u8; 32], [0u8; 32]);
            hk.expand_multi_info(&[&[0x04, 0x78], b"DERIVEKEY"], &mut content).unwrap();
            hk.expand(b"COMMITKEY", &mut commit).unwrap();
            black_box((content, commit))
        });
    });
    let data_key = AesKey::from_slice(&DATA_KEY).expect("32 bytes");
    group.bench_function("message_keys_derive", |b| {
        b.iter(|| {
            let suite = Suite::Aes256GcmHkdfSha512CommitKey;
            black_box(kagi::envelope::format::MessageKeys::derive(suite, &data_key, &message_id))
        });
    });
    let block = [0x33u8; 128];
    group.bench_function("sha512_one_block_aws_lc", |b| {
        b.iter(|| black_box(digest::digest(&digest::SHA512, black_box(&block[..100]))));
    });
    group.bench_function("sha512_one_block_rustcrypto", |b| {
        b.iter(|| black_box(sha2::Sha512::digest(black_box(&block[..100]))));
    });
    group.bench_function("message_id_aws_lc", |b| {
        let rng = SystemRandom::new();
        b.iter(|| {
            let mut id = [0u8; 32];
            rng.fill(&mut id).unwrap();
            black_box(id)
        });
    });
    group.bench_function("message_id_aws_lc_batched_32", |b| {
        let rng = SystemRandom::new();
        let mut pool = [0u8; 32 * 32];
        let mut next = pool.len();
        b.iter(|| {
            if next == pool.len() {
                rng.fill(&mut pool).unwrap();
                next = 0;
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&pool[next..next + 32]);
            next += 32;
            black_box(id)
        });
    });
    group.bench_function("message_id_getrandom", |b| {
        b.iter(|| {
            let mut id = [0u8; 32];
            getrandom::fill(&mut id).unwrap();
            black_box(id)
        });
    });
    group.finish();
}

criterion_group!(benches, envelope, per_message);
criterion_main!(benches);
