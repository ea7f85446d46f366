//! Unit tests of the keystore: every operation family against a real SQLite store in a temporary
//! directory, a manual clock, and a recording audit sink.
//!
//! Each feature has one `check_*` helper so the tests stay short. Errors are asserted by
//! [`ErrorKind`], never by message. Tests that pin down a known bug assert the current behaviour
//! and say so with a `FIXME:` comment.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::clock::ManualClock;
use super::key::{AliasRecord, ImportTokenRecord, KeyRecord, RotationType, VersionRecord};
use super::operations::{MAX_PLAINTEXT, MessageType};
use super::rotation::{IncludeKeyMaterial, MAX_ON_DEMAND_ROTATIONS};
use super::store::{AliasWrite, KeyUpdate, SqliteStore, Store, StoreFuture};
use super::*;
use crate::audit::{AuditError, AuditEvent, AuditFuture, AuditSink, Outcome};
use crate::crypto::{
    AesKey, BackendKind, KeyPairSpec, MacAlgorithm, OaepHash, SignInput, SigningAlgorithm,
};

// === harness ===

const T0: UnixSeconds = 1_800_000_000;
const HOUR: i64 = 3_600;

fn backend() -> &'static dyn CryptoBackend {
    BackendKind::AwsLc.backend()
}

fn ctx() -> OpContext {
    OpContext { principal: "test".into(), source: "unit".into(), request_id: "r".into() }
}

/// An audit sink that keeps every event, and fails every write while `fail` is set.
#[derive(Debug, Default)]
struct RecordingSink {
    events: Mutex<Vec<AuditEvent>>,
    fail: AtomicBool,
}

impl RecordingSink {
    fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().expect("sink lock").clone()
    }
}

impl AuditSink for RecordingSink {
    fn record(&self, event: &AuditEvent) -> AuditFuture<'_> {
        let result = if self.fail.load(Ordering::SeqCst) {
            Err(AuditError("the audit disk is full".into()))
        } else {
            self.events.lock().expect("sink lock").push(event.clone());
            Ok(())
        };
        Box::pin(std::future::ready(result))
    }
}

struct Harness {
    ks: Arc<Keystore>,
    clock: Arc<ManualClock>,
    audit: Arc<RecordingSink>,
    dir: tempfile::TempDir,
}

/// Runs `work` to completion on a runtime of its own (a harness is made outside async code).
fn on_own_runtime<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work)
    })
    .join()
    .expect("store thread")
}

/// Whether this run keeps keystores in PostgreSQL (see [`test_store`]).
fn on_postgres() -> bool {
    std::env::var("KAGI_TEST_STORE").as_deref() == Ok("postgres")
}

/// With `KAGI_TEST_STORE=postgres` (`.ci/run` runs this suite so a second time), the keystores
/// of this suite keep their records in PostgreSQL, a new database per data directory (its URL
/// kept in the directory, so a reopened keystore finds its records), instead of SQLite.
fn test_store(dir: &Path) -> Option<Arc<dyn Store>> {
    if !on_postgres() {
        return None;
    }
    let url_file = dir.join("test-postgres-url");
    let url = match std::fs::read_to_string(&url_file) {
        Ok(url) => url,
        Err(_) => {
            let url = on_own_runtime(store::tests::postgres_database())
                .expect("KAGI_TEST_STORE=postgres needs KAGI_TEST_POSTGRES");
            std::fs::write(&url_file, &url).expect("keep the test database's URL");
            url
        }
    };
    // Connections made on that runtime close with it; the pool then opens new ones.
    let options = store::tests::options(&url);
    let opened = on_own_runtime(async move { store::PostgresStore::open(&options).await });
    Some(Arc::new(opened.expect("open the test database")))
}

fn open_at(
    dir: &Path,
    clock: &Arc<ManualClock>,
    audit: &Arc<RecordingSink>,
) -> Result<Keystore, Error> {
    if let Some(store) = test_store(dir) {
        let root = RootKey::load(backend(), dir, &RootKeySource::File)?;
        return Ok(Keystore::with_store(
            backend(),
            store,
            root,
            Arc::clone(clock) as Arc<dyn Clock>,
            Arc::clone(audit) as Arc<dyn AuditSink>,
            Partition::default(),
        ));
    }
    Keystore::open(
        backend(),
        dir,
        &RootKeySource::File,
        Arc::clone(clock) as Arc<dyn Clock>,
        Arc::clone(audit) as Arc<dyn AuditSink>,
        Partition::default(),
    )
}

fn harness() -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    Keystore::init(backend(), dir.path(), &RootKeySource::File).expect("init");
    let clock = Arc::new(ManualClock::new(T0));
    let audit = Arc::new(RecordingSink::default());
    let ks = open_at(dir.path(), &clock, &audit).expect("open");
    Harness { ks: Arc::new(ks), clock, audit, dir }
}

impl Harness {
    async fn create(&self, spec: KeySpec, usage: KeyUsage) -> KeyMetadata {
        self.ks
            .create_key(
                &ctx(),
                CreateKeyRequest { spec, usage: Some(usage), ..CreateKeyRequest::default() },
            )
            .await
            .expect("create_key")
    }

    async fn symmetric(&self) -> String {
        self.create(KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt).await.record.id
    }

    async fn external(&self) -> String {
        self.ks
            .create_key(
                &ctx(),
                CreateKeyRequest { origin: Origin::External, ..CreateKeyRequest::default() },
            )
            .await
            .expect("create external key")
            .record
            .id
    }

    async fn external_key(&self, spec: KeySpec, usage: KeyUsage) -> String {
        let request = CreateKeyRequest {
            spec,
            usage: Some(usage),
            origin: Origin::External,
            ..CreateKeyRequest::default()
        };
        self.ks.create_key(&ctx(), request).await.expect("create external key").record.id
    }

    async fn state(&self, key_id: &str) -> KeyState {
        self.ks.store().key(key_id).await.expect("store").expect("record").state
    }

    async fn encrypt(
        &self,
        key_ref: &str,
        plaintext: &[u8],
        context: &EncryptionContext,
    ) -> Vec<u8> {
        self.ks
            .encrypt(&ctx(), key_ref, plaintext, context, EncryptionAlgorithm::SymmetricDefault)
            .await
            .expect("encrypt")
            .ciphertext_blob
    }

    async fn decrypt(&self, blob: &[u8], context: &EncryptionContext) -> Result<Vec<u8>, Error> {
        self.ks
            .decrypt(&ctx(), blob, context, None, None)
            .await
            .map(|out| out.plaintext.expose_secret().to_vec())
    }

    async fn rotations(&self, key_id: &str) -> Vec<RotationEntry> {
        self.ks
            .list_key_rotations(
                &ctx(),
                key_id,
                IncludeKeyMaterial::AllKeyMaterial,
                Some(1000),
                None,
            )
            .await
            .expect("list_key_rotations")
            .items
    }
}

#[track_caller]
fn assert_err<T>(result: Result<T, Error>, expected: ErrorKind) {
    match result {
        Ok(_) => panic!("expected {expected:?}, got Ok"),
        Err(error) => assert_eq!(error.kind(), expected, "{error}"),
    }
}

fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn no_context() -> EncryptionContext {
    EncryptionContext::new()
}

/// The key material version a blob names (bytes 17..21, big-endian).
fn blob_version(blob: &[u8]) -> u32 {
    u32::from_be_bytes(blob[17..21].try_into().expect("blob header"))
}

fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    backend().fill_random(&mut out).expect("random");
    out
}

fn digest(algorithm: SigningAlgorithm, message: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    match algorithm.digest_len() {
        32 => sha2::Sha256::digest(message).to_vec(),
        48 => sha2::Sha384::digest(message).to_vec(),
        _ => sha2::Sha512::digest(message).to_vec(),
    }
}

// === check helpers, one per feature ===

/// CreateKey of `spec`/`usage`, then DescribeKey by id, key ARN, alias name and alias ARN.
async fn check_create_and_describe(h: &Harness, spec: KeySpec, usage: KeyUsage) -> KeyMetadata {
    let meta = h.create(spec, usage).await;
    let id = meta.record.id.clone();
    assert_eq!(meta.record.spec, spec);
    assert_eq!(meta.record.usage, usage);
    assert_eq!(meta.record.origin, Origin::AwsKms);
    assert_eq!(meta.record.state, KeyState::Enabled);
    assert_eq!(meta.record.current_version, 1);
    assert_eq!(meta.record.created, T0);
    assert_eq!(meta.arn, h.ks.key_arn(&id));
    assert_eq!(meta.account, "111122223333");
    assert!(meta.current_material_id.is_some());
    assert!(uuid::Uuid::try_parse(&id).is_ok());

    let alias = format!("alias/k-{}", &id[..8]);
    h.ks.create_alias(&ctx(), &alias, &id).await.expect("alias");
    let alias_arn = format!("arn:aws:kms:us-east-1:111122223333:{alias}");
    for key_ref in [id.as_str(), meta.arn.as_str(), alias.as_str(), alias_arn.as_str()] {
        let described = h.ks.describe_key(&ctx(), key_ref).await.expect(key_ref);
        assert_eq!(described.record, meta.record, "{key_ref}");
        assert_eq!(described.arn, meta.arn);
        assert_eq!(described.current_material_id, meta.current_material_id);
    }
    meta
}

/// Symmetric round trip under `context`, with the context's pairs in any order; every deviation
/// of the context is InvalidCiphertext.
async fn check_symmetric_round_trip(
    h: &Harness,
    key_ref: &str,
    plaintext: &[u8],
    pairs: &[(&str, &str)],
) -> Vec<u8> {
    let ctx_fwd = context(pairs);
    let blob = h.encrypt(key_ref, plaintext, &ctx_fwd).await;
    assert_eq!(h.decrypt(&blob, &ctx_fwd).await.expect("decrypt"), plaintext);
    let reversed: Vec<(&str, &str)> = pairs.iter().rev().copied().collect();
    assert_eq!(
        h.decrypt(&blob, &context(&reversed)).await.expect("decrypt, pairs reversed"),
        plaintext
    );
    // With the key named in every form it decrypts too.
    let out =
        h.ks.decrypt(&ctx(), &blob, &ctx_fwd, Some(key_ref), None)
            .await
            .expect("decrypt with KeyId");
    assert_eq!(out.plaintext.expose_secret(), plaintext);
    assert_eq!(out.algorithm, EncryptionAlgorithm::SymmetricDefault);

    if pairs.is_empty() {
        assert_err(h.decrypt(&blob, &context(&[("a", "b")])).await, ErrorKind::InvalidCiphertext);
    } else {
        // Missing context.
        assert_err(h.decrypt(&blob, &no_context()).await, ErrorKind::InvalidCiphertext);
        // Extra pair.
        let mut extra = ctx_fwd.clone();
        extra.insert("extra".into(), "pair".into());
        assert_err(h.decrypt(&blob, &extra).await, ErrorKind::InvalidCiphertext);
        // A changed value, a value with different case, a missing pair.
        let (k, v) = pairs[0];
        let mut changed = ctx_fwd.clone();
        changed.insert(k.to_owned(), format!("{v}x"));
        assert_err(h.decrypt(&blob, &changed).await, ErrorKind::InvalidCiphertext);
        let mut upper = ctx_fwd.clone();
        upper.insert(k.to_owned(), v.to_uppercase());
        if v.to_uppercase() != v {
            assert_err(h.decrypt(&blob, &upper).await, ErrorKind::InvalidCiphertext);
        }
        let mut fewer = ctx_fwd.clone();
        fewer.remove(k);
        assert_err(h.decrypt(&blob, &fewer).await, ErrorKind::InvalidCiphertext);
    }
    blob
}

/// Every single-byte change and every truncation of `blob` is InvalidCiphertext.
async fn check_blob_tamper(h: &Harness, blob: &[u8], context: &EncryptionContext) {
    for index in 0..blob.len() {
        for mask in [0x01u8, 0x80] {
            let mut bad = blob.to_vec();
            bad[index] ^= mask;
            assert_err(h.decrypt(&bad, context).await, ErrorKind::InvalidCiphertext);
        }
    }
    for len in 1..blob.len() {
        assert_err(h.decrypt(&blob[..len], context).await, ErrorKind::InvalidCiphertext);
    }
    let mut longer = blob.to_vec();
    longer.push(0);
    assert_err(h.decrypt(&longer, context).await, ErrorKind::InvalidCiphertext);
    // The empty blob is a parameter out of range.
    assert_err(h.decrypt(&[], context).await, ErrorKind::Validation);
}

/// RSAES-OAEP round trip with `hash`, and the bounds of the plaintext length.
async fn check_rsa_round_trip(h: &Harness, key_id: &str, algorithm: EncryptionAlgorithm) {
    let hash = match algorithm {
        EncryptionAlgorithm::RsaesOaepSha1 => OaepHash::Sha1,
        _ => OaepHash::Sha256,
    };
    let max = KeyPairSpec::Rsa2048.max_oaep_plaintext(hash).expect("rsa");
    for len in [1, max] {
        let plaintext = random_bytes(len);
        let out =
            h.ks.encrypt(&ctx(), key_id, &plaintext, &no_context(), algorithm)
                .await
                .expect("rsa encrypt");
        assert_eq!(out.algorithm, algorithm);
        assert_eq!(out.ciphertext_blob.len(), 256);
        let decrypted = h
            .ks
            .decrypt(&ctx(), &out.ciphertext_blob, &no_context(), Some(key_id), Some(algorithm))
            .await
            .expect("rsa decrypt");
        assert_eq!(decrypted.plaintext.expose_secret(), plaintext.as_slice());
        // KeyId is required for asymmetric ciphertexts.
        assert_err(
            h.ks.decrypt(&ctx(), &out.ciphertext_blob, &no_context(), None, Some(algorithm)).await,
            ErrorKind::Validation,
        );
        // The other OAEP hash does not decrypt it.
        let other = if algorithm == EncryptionAlgorithm::RsaesOaepSha1 {
            EncryptionAlgorithm::RsaesOaepSha256
        } else {
            EncryptionAlgorithm::RsaesOaepSha1
        };
        assert_err(
            h.ks.decrypt(&ctx(), &out.ciphertext_blob, &no_context(), Some(key_id), Some(other))
                .await,
            ErrorKind::InvalidCiphertext,
        );
    }
    assert_err(
        h.ks.encrypt(&ctx(), key_id, &random_bytes(max + 1), &no_context(), algorithm).await,
        ErrorKind::Validation,
    );
}

/// Sign and Verify with every algorithm of the key, RAW and DIGEST, and the failures.
async fn check_sign_verify(h: &Harness, key_id: &str, pair: KeyPairSpec) {
    let message = b"the message to sign";
    let public = h.ks.get_public_key(&ctx(), key_id).await.expect("public key");
    assert_eq!(public.usage, KeyUsage::SignVerify);
    let verifier = backend().load_public_key(pair, &public.public_key).expect("load public key");
    for &algorithm in pair.signing_algorithms() {
        let hashed = digest(algorithm, message);
        let (raw_sig, arn) =
            h.ks.sign(&ctx(), key_id, message, MessageType::Raw, algorithm)
                .await
                .expect("sign raw");
        assert_eq!(arn, h.ks.key_arn(key_id));
        let (digest_sig, _) =
            h.ks.sign(&ctx(), key_id, &hashed, MessageType::Digest, algorithm)
                .await
                .expect("sign digest");
        for sig in [&raw_sig, &digest_sig] {
            // A RAW signature is a signature of the digest and vice versa: DIGEST is never
            // hashed again.
            h.ks.verify(&ctx(), key_id, message, MessageType::Raw, algorithm, sig)
                .await
                .expect("verify raw");
            h.ks.verify(&ctx(), key_id, &hashed, MessageType::Digest, algorithm, sig)
                .await
                .expect("verify digest");
            // And the public key from GetPublicKey verifies it outside the keystore.
            verifier
                .verify(algorithm, SignInput::Message(message), sig)
                .expect("verify with the public key");
        }
        // A digest of the wrong length.
        assert_err(
            h.ks.sign(&ctx(), key_id, &hashed[1..], MessageType::Digest, algorithm).await,
            ErrorKind::Validation,
        );
        assert_err(
            h.ks.verify(&ctx(), key_id, &hashed[1..], MessageType::Digest, algorithm, &raw_sig)
                .await,
            ErrorKind::Validation,
        );
        // A tampered signature, a signature of another message.
        let mut tampered = raw_sig.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        assert_err(
            h.ks.verify(&ctx(), key_id, message, MessageType::Raw, algorithm, &tampered).await,
            ErrorKind::InvalidSignature,
        );
        let mut middle = raw_sig.clone();
        middle[raw_sig.len() / 2] ^= 0x40;
        assert_err(
            h.ks.verify(&ctx(), key_id, message, MessageType::Raw, algorithm, &middle).await,
            ErrorKind::InvalidSignature,
        );
        assert_err(
            h.ks.verify(&ctx(), key_id, b"another message", MessageType::Raw, algorithm, &raw_sig)
                .await,
            ErrorKind::InvalidSignature,
        );
        assert_err(
            h.ks.verify(&ctx(), key_id, message, MessageType::Raw, algorithm, &[]).await,
            ErrorKind::Validation,
        );
    }
    // Algorithms that are not the key's.
    for algorithm in SigningAlgorithm::ALL {
        if algorithm.fits(pair) {
            continue;
        }
        assert_err(
            h.ks.sign(&ctx(), key_id, message, MessageType::Raw, algorithm).await,
            ErrorKind::InvalidKeyUsage,
        );
    }
    // Message bounds.
    let algorithm = pair.signing_algorithms()[0];
    assert_err(
        h.ks.sign(&ctx(), key_id, &[], MessageType::Raw, algorithm).await,
        ErrorKind::Validation,
    );
    assert_err(
        h.ks.sign(&ctx(), key_id, &[7; 4097], MessageType::Raw, algorithm).await,
        ErrorKind::Validation,
    );
    h.ks.sign(&ctx(), key_id, &[7; 4096], MessageType::Raw, algorithm)
        .await
        .expect("4096-byte message");
}

/// GenerateMac / VerifyMac with the key's one algorithm, and the failures.
async fn check_mac(h: &Harness, key_id: &str, spec: KeySpec) {
    let algorithm = spec.mac_algorithm().expect("hmac spec");
    let message = b"mac me";
    let (mac, arn) =
        h.ks.generate_mac(&ctx(), key_id, message, algorithm).await.expect("generate_mac");
    assert_eq!(arn, h.ks.key_arn(key_id));
    assert_eq!(mac.len(), algorithm.tag_len());
    let (again, _) =
        h.ks.generate_mac(&ctx(), key_id, message, algorithm).await.expect("generate_mac");
    assert_eq!(mac, again, "HMAC is deterministic");
    h.ks.verify_mac(&ctx(), key_id, message, algorithm, &mac).await.expect("verify_mac");
    for index in [0, mac.len() / 2, mac.len() - 1] {
        let mut tampered = mac.clone();
        tampered[index] ^= 0x01;
        assert_err(
            h.ks.verify_mac(&ctx(), key_id, message, algorithm, &tampered).await,
            ErrorKind::InvalidMac,
        );
    }
    assert_err(
        h.ks.verify_mac(&ctx(), key_id, message, algorithm, &mac[..mac.len() - 1]).await,
        ErrorKind::InvalidMac,
    );
    assert_err(
        h.ks.verify_mac(&ctx(), key_id, b"mac me!", algorithm, &mac).await,
        ErrorKind::InvalidMac,
    );
    for other in MacAlgorithm::ALL {
        if other == algorithm {
            continue;
        }
        assert_err(
            h.ks.generate_mac(&ctx(), key_id, message, other).await,
            ErrorKind::InvalidKeyUsage,
        );
        assert_err(
            h.ks.verify_mac(&ctx(), key_id, message, other, &mac).await,
            ErrorKind::InvalidKeyUsage,
        );
    }
    assert_err(h.ks.generate_mac(&ctx(), key_id, &[], algorithm).await, ErrorKind::Validation);
}

/// Every cryptographic operation on the keys of `keys` fails with `expected`.
async fn check_crypto_refused(h: &Harness, keys: &CryptoKeys, blob: &[u8], expected: ErrorKind) {
    let c = no_context();
    let ks = &h.ks;
    assert_err(
        ks.encrypt(&ctx(), &keys.sym, b"x", &c, EncryptionAlgorithm::SymmetricDefault).await,
        expected,
    );
    assert_err(ks.decrypt(&ctx(), blob, &c, None, None).await, expected);
    assert_err(ks.decrypt(&ctx(), blob, &c, Some(&keys.sym), None).await, expected);
    assert_err(
        ks.re_encrypt(
            &ctx(),
            blob,
            &c,
            None,
            None,
            &keys.sym,
            &c,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await,
        expected,
    );
    assert_err(
        ks.generate_data_key(&ctx(), &keys.sym, DataKeySize::Aes256, &c, true).await,
        expected,
    );
    assert_err(
        ks.generate_data_key(&ctx(), &keys.sym, DataKeySize::Aes256, &c, false).await,
        expected,
    );
    assert_err(
        ks.generate_data_key_pair(&ctx(), &keys.sym, KeyPairSpec::EccNistP256, &c, true).await,
        expected,
    );
    assert_err(
        ks.sign(&ctx(), &keys.sign, b"m", MessageType::Raw, SigningAlgorithm::EcdsaSha256).await,
        expected,
    );
    assert_err(
        ks.verify(
            &ctx(),
            &keys.sign,
            b"m",
            MessageType::Raw,
            SigningAlgorithm::EcdsaSha256,
            &keys.signature,
        )
        .await,
        expected,
    );
    assert_err(ks.get_public_key(&ctx(), &keys.sign).await, expected);
    assert_err(ks.generate_mac(&ctx(), &keys.mac, b"m", MacAlgorithm::HmacSha256).await, expected);
    assert_err(
        ks.verify_mac(&ctx(), &keys.mac, b"m", MacAlgorithm::HmacSha256, &keys.tag).await,
        expected,
    );
    assert_err(ks.derive_shared_secret(&ctx(), &keys.agree, &keys.peer).await, expected);
}

/// One key of each usage, with a signature and a MAC made while they were enabled.
struct CryptoKeys {
    sym: String,
    sign: String,
    mac: String,
    agree: String,
    signature: Vec<u8>,
    tag: Vec<u8>,
    peer: Vec<u8>,
}

impl CryptoKeys {
    async fn new(h: &Harness) -> Self {
        let sym = h.symmetric().await;
        let sign = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await.record.id;
        let mac = h.create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await.record.id;
        let agree = h.create(KeySpec::EccNistP256, KeyUsage::KeyAgreement).await.record.id;
        let (signature, _) =
            h.ks.sign(&ctx(), &sign, b"m", MessageType::Raw, SigningAlgorithm::EcdsaSha256)
                .await
                .expect("sign");
        let (tag, _) =
            h.ks.generate_mac(&ctx(), &mac, b"m", MacAlgorithm::HmacSha256).await.expect("mac");
        let peer_pkcs8 = backend().generate_key_pair(KeyPairSpec::EccNistP256).expect("peer");
        let peer = backend()
            .load_private_key(KeyPairSpec::EccNistP256, peer_pkcs8.expose_secret())
            .expect("peer")
            .public_key_der();
        Self { sym, sign, mac, agree, signature, tag, peer }
    }

    fn all(&self) -> [&str; 4] {
        [&self.sym, &self.sign, &self.mac, &self.agree]
    }
}

/// Every cryptographic operation on `keys` works.
async fn check_crypto_works(h: &Harness, keys: &CryptoKeys, blob: &[u8]) {
    assert_eq!(h.decrypt(blob, &no_context()).await.expect("decrypt"), b"lifecycle");
    h.encrypt(&keys.sym, b"x", &no_context()).await;
    h.ks.verify(
        &ctx(),
        &keys.sign,
        b"m",
        MessageType::Raw,
        SigningAlgorithm::EcdsaSha256,
        &keys.signature,
    )
    .await
    .expect("verify");
    h.ks.verify_mac(&ctx(), &keys.mac, b"m", MacAlgorithm::HmacSha256, &keys.tag)
        .await
        .expect("verify_mac");
    h.ks.derive_shared_secret(&ctx(), &keys.agree, &keys.peer).await.expect("derive");
}

/// Walks ListKeys with Limit 1 through every page.
async fn walk_keys(h: &Harness) -> Vec<String> {
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page = h.ks.list_keys(&ctx(), Some(1), marker.as_deref()).await.expect("list_keys");
        assert!(page.items.len() <= 1);
        seen.extend(page.items.into_iter().map(|(id, arn)| {
            assert_eq!(arn, h.ks.key_arn(&id));
            id
        }));
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => break,
        }
    }
    seen
}

/// Walks ListAliases with Limit 1 through every page.
async fn walk_aliases(h: &Harness, key_ref: Option<&str>) -> Vec<AliasEntry> {
    let mut seen = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let page =
            h.ks.list_aliases(&ctx(), key_ref, Some(1), marker.as_deref())
                .await
                .expect("list_aliases");
        assert!(page.items.len() <= 1);
        seen.extend(page.items);
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => break,
        }
    }
    seen
}

/// GetParametersForImport (RSA_2048, OAEP SHA-256), wraps `material`, imports it.
async fn check_import(
    h: &Harness,
    key_id: &str,
    material: &[u8],
    import_type: ImportType,
    valid_to: Option<UnixSeconds>,
) -> Result<(String, String), Error> {
    let params = import_parameters(h, key_id).await;
    let wrapped = wrap(&params.public_key, material);
    h.ks.import_key_material(
        &ctx(),
        key_id,
        ImportRequest {
            import_token: &params.import_token,
            encrypted_key_material: &wrapped,
            valid_to,
            import_type,
        },
    )
    .await
}

async fn import_parameters(h: &Harness, key_id: &str) -> ImportParameters {
    let params =
        h.ks.get_parameters_for_import(
            &ctx(),
            key_id,
            WrappingAlgorithm::RsaesOaepSha256,
            KeyPairSpec::Rsa2048,
        )
        .await
        .expect("get_parameters_for_import");
    assert_eq!(params.valid_to, h.ks.now() + 24 * HOUR);
    assert_eq!(params.key_arn, h.ks.key_arn(key_id));
    params
}

fn wrap(public_key: &[u8], material: &[u8]) -> Vec<u8> {
    wrap_as(WrappingAlgorithm::RsaesOaepSha256, KeyPairSpec::Rsa2048, public_key, material)
}

/// Wraps `material` as a caller of AWS KMS does: OAEP of the material, or OAEP of a fresh
/// AES-256 key followed by AES-KWP of the material under it.
fn wrap_as(
    algorithm: WrappingAlgorithm,
    wrapping_spec: KeyPairSpec,
    public_key: &[u8],
    material: &[u8],
) -> Vec<u8> {
    let public = backend().load_public_key(wrapping_spec, public_key).expect("wrapping key");
    if !algorithm.is_rsa_aes() {
        return public.encrypt_oaep(algorithm.hash(), material).expect("wrap");
    }
    let aes_key = random_bytes(32);
    let mut wrapped = public.encrypt_oaep(algorithm.hash(), &aes_key).expect("wrap the AES key");
    let kek = AesKey::from_slice(&aes_key).expect("32 bytes");
    wrapped.extend(backend().wrap_key(&kek, material).expect("AES-KWP"));
    wrapped
}

/// For [`check_import_as`]: leaves the wrapped material as it is.
fn intact(_: &mut Vec<u8>) {}

/// GetParametersForImport with `algorithm` and `wrapping_spec`, then imports `material`
/// (EXISTING_KEY_MATERIAL, no expiry) wrapped with them; `tamper` may damage the wrapped bytes.
async fn check_import_as(
    h: &Harness,
    key_id: &str,
    material: &[u8],
    (algorithm, wrapping_spec): (WrappingAlgorithm, KeyPairSpec),
    tamper: fn(&mut Vec<u8>),
) -> Result<(String, String), Error> {
    let params = h.ks.get_parameters_for_import(&ctx(), key_id, algorithm, wrapping_spec).await?;
    let mut wrapped = wrap_as(algorithm, wrapping_spec, &params.public_key, material);
    tamper(&mut wrapped);
    h.ks.import_key_material(
        &ctx(),
        key_id,
        ImportRequest {
            import_token: &params.import_token,
            encrypted_key_material: &wrapped,
            valid_to: None,
            import_type: ImportType::ExistingKeyMaterial,
        },
    )
    .await
}

/// The versions in the store are 1..=n, contiguous, with exactly one current, the key's
/// `current_version`, which is the newest.
async fn check_versions_consistent(h: &Harness, key_id: &str, n: u32) {
    let record = h.ks.store().key(key_id).await.expect("store").expect("key");
    let versions = h.ks.store().versions(key_id).await.expect("versions");
    let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=n).collect::<Vec<_>>());
    let current: Vec<u32> =
        versions.iter().filter(|v| v.state == VersionState::Current).map(|v| v.version).collect();
    assert_eq!(current, vec![n]);
    assert_eq!(record.current_version, n);
    let ids: std::collections::BTreeSet<&str> =
        versions.iter().map(|v| v.material_id.as_str()).collect();
    assert_eq!(ids.len(), versions.len(), "material ids are unique");
}

// === 1. creation and key references ===

#[tokio::test]
async fn every_spec_and_usage_creates_and_describes() {
    let h = harness();
    for spec in KeySpec::ALL {
        let slow = matches!(spec, KeySpec::Rsa3072 | KeySpec::Rsa4096);
        for (i, &usage) in spec.usages().iter().enumerate() {
            if slow && i > 0 {
                continue;
            }
            check_create_and_describe(&h, spec, usage).await;
        }
        for usage in KeyUsage::ALL {
            if spec.usages().contains(&usage) {
                continue;
            }
            assert_err(
                h.ks.create_key(
                    &ctx(),
                    CreateKeyRequest { spec, usage: Some(usage), ..CreateKeyRequest::default() },
                )
                .await,
                ErrorKind::Validation,
            );
        }
    }
    // The default request: SYMMETRIC_DEFAULT, ENCRYPT_DECRYPT, and the default policy.
    let meta = h.ks.create_key(&ctx(), CreateKeyRequest::default()).await.expect("default key");
    assert_eq!(meta.record.spec, KeySpec::SymmetricDefault);
    assert_eq!(meta.record.usage, KeyUsage::EncryptDecrypt);
    let policy = h.ks.key_policy(&meta.record.id).await.expect("policy");
    assert!(policy.contains("arn:aws:iam::111122223333:root"), "{policy}");
    // Description bounds.
    let long = CreateKeyRequest {
        description: "d".repeat(MAX_DESCRIPTION + 1),
        ..CreateKeyRequest::default()
    };
    assert_err(h.ks.create_key(&ctx(), long).await, ErrorKind::Validation);
    h.ks.update_key_description(&ctx(), &meta.record.id, &"é".repeat(MAX_DESCRIPTION))
        .await
        .expect("8192 characters");
    assert_eq!(
        h.ks.describe_key(&ctx(), &meta.record.id).await.expect("describe").record.description,
        "é".repeat(MAX_DESCRIPTION)
    );
}

#[tokio::test]
async fn unknown_and_malformed_key_references() {
    let h = harness();
    let id = h.symmetric().await;
    let unknown = "1234abcd-12ab-34cd-56ef-1234567890ab";
    for key_ref in [
        unknown.to_owned(),
        h.ks.key_arn(unknown),
        "not-a-uuid".to_owned(),
        "alias/nothing-here".to_owned(),
        "arn:aws:kms:us-east-1:111122223333:alias/nothing-here".to_owned(),
        // A well-formed ARN of another account or region names no key here.
        format!("arn:aws:kms:eu-west-1:111122223333:key/{id}"),
        format!("arn:aws:kms:us-east-1:999999999999:key/{id}"),
    ] {
        assert_err(h.ks.describe_key(&ctx(), &key_ref).await, ErrorKind::NotFound);
    }
    for key_ref in [
        "arn:aws:kms:us-east-1".to_owned(),
        "arn:aws:s3:::bucket".to_owned(),
        "arn:".to_owned(),
        format!("arn:aws:kms:us-east-1:111122223333:widget/{id}"),
    ] {
        assert_err(h.ks.describe_key(&ctx(), &key_ref).await, ErrorKind::InvalidArn);
    }
    assert_err(h.ks.describe_key(&ctx(), "").await, ErrorKind::Validation);
    assert_err(h.ks.describe_key(&ctx(), &"a".repeat(2049)).await, ErrorKind::Validation);
    // Management operations take a key id or key ARN only.
    h.ks.create_alias(&ctx(), "alias/mgmt", &id).await.expect("alias");
    assert_err(h.ks.disable_key(&ctx(), "alias/mgmt").await, ErrorKind::Validation);
    assert_err(
        h.ks.disable_key(&ctx(), "arn:aws:kms:us-east-1:111122223333:alias/mgmt").await,
        ErrorKind::InvalidArn,
    );
    h.ks.disable_key(&ctx(), &h.ks.key_arn(&id)).await.expect("by key ARN");
    assert_eq!(h.state(&id).await, KeyState::Disabled);
}

// === 2. symmetric encryption ===

#[tokio::test]
async fn symmetric_round_trips_and_context_binding() {
    let h = harness();
    let id = h.symmetric().await;
    let arn = h.ks.key_arn(&id);
    h.ks.create_alias(&ctx(), "alias/sym", &id).await.expect("alias");
    for key_ref in [id.as_str(), arn.as_str(), "alias/sym"] {
        check_symmetric_round_trip(&h, key_ref, b"hello", &[]).await;
        check_symmetric_round_trip(&h, key_ref, b"hello", &[("b", "2"), ("a", "1")]).await;
    }
    check_symmetric_round_trip(&h, &id, b"\0", &[("Department", "Engineering")]).await;
    check_symmetric_round_trip(&h, &id, b"x", &[("ключ", "значение"), ("", "")]).await;
    // Length-prefixed encoding: {"ab":"c"} is not {"a":"bc"}.
    let blob = h.encrypt(&id, b"x", &context(&[("ab", "c")])).await;
    assert_err(h.decrypt(&blob, &context(&[("a", "bc")])).await, ErrorKind::InvalidCiphertext);
    // The output names the key and material.
    let out = h
        .ks
        .encrypt(&ctx(), "alias/sym", b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault)
        .await
        .expect("encrypt");
    assert_eq!(out.key_arn, arn);
    let meta = h.ks.describe_key(&ctx(), &id).await.expect("describe");
    assert_eq!(out.key_material_id, meta.current_material_id);
    assert_eq!(out.ciphertext_blob[0], ciphertext::BLOB_VERSION);
    assert_eq!(&out.ciphertext_blob[1..17], uuid::Uuid::parse_str(&id).expect("uuid").as_bytes());
    assert_eq!(blob_version(&out.ciphertext_blob), 1);
    // Two encryptions of the same plaintext differ (random nonce).
    let again = h.encrypt(&id, b"x", &no_context()).await;
    assert_ne!(out.ciphertext_blob, again);
}

#[tokio::test]
async fn both_blob_versions_decrypt_in_every_build() {
    // Version 2 leaves the nonce out of the associated data (a FIPS build writes it; this
    // build writes version 1). Each version decrypts, resists tampering, and is not the other.
    let mut h = harness();
    let id = h.symmetric().await;
    let with_context = context(&[("purpose", "versions")]);
    Arc::get_mut(&mut h.ks).expect("sole owner").blob_format = ciphertext::BLOB_VERSION_2;
    let v2 = h.encrypt(&id, b"two", &with_context).await;
    assert_eq!(v2[0], ciphertext::BLOB_VERSION_2);
    assert_eq!(h.decrypt(&v2, &with_context).await.expect("decrypt v2"), b"two");
    check_blob_tamper(&h, &v2, &with_context).await;
    let mut relabelled = v2.clone();
    relabelled[0] = ciphertext::BLOB_VERSION_1;
    assert_err(h.decrypt(&relabelled, &with_context).await, ErrorKind::InvalidCiphertext);
    if !crate::crypto::FIPS {
        Arc::get_mut(&mut h.ks).expect("sole owner").blob_format = ciphertext::BLOB_VERSION_1;
        let v1 = h.encrypt(&id, b"one", &with_context).await;
        assert_eq!(v1[0], ciphertext::BLOB_VERSION_1);
        assert_eq!(h.decrypt(&v1, &with_context).await.expect("decrypt v1"), b"one");
        let mut relabelled = v1.clone();
        relabelled[0] = ciphertext::BLOB_VERSION_2;
        assert_err(h.decrypt(&relabelled, &with_context).await, ErrorKind::InvalidCiphertext);
    }
}

#[tokio::test]
async fn every_tampered_or_truncated_blob_is_invalid_ciphertext() {
    let h = harness();
    let id = h.symmetric().await;
    let with_context = context(&[("purpose", "tamper")]);
    let blob = h.encrypt(&id, b"k", &with_context).await;
    assert_eq!(blob.len(), ciphertext::HEADER_LEN + 1 + 16);
    check_blob_tamper(&h, &blob, &with_context).await;
    let blob = h.encrypt(&id, b"k", &no_context()).await;
    check_blob_tamper(&h, &blob, &no_context()).await;
    // The original still decrypts.
    assert_eq!(h.decrypt(&blob, &no_context()).await.expect("decrypt"), b"k");
}

#[tokio::test]
async fn decrypt_with_another_key_and_plaintext_bounds() {
    let h = harness();
    let a = h.symmetric().await;
    let b = h.symmetric().await;
    h.ks.create_alias(&ctx(), "alias/b", &b).await.expect("alias");
    let blob = h.encrypt(&a, b"secret", &no_context()).await;
    for key_ref in [b.clone(), h.ks.key_arn(&b), "alias/b".to_owned()] {
        assert_err(
            h.ks.decrypt(&ctx(), &blob, &no_context(), Some(&key_ref), None).await,
            ErrorKind::IncorrectKey,
        );
    }
    // An unknown KeyId is NotFound.
    assert_err(
        h.ks.decrypt(&ctx(), &blob, &no_context(), Some("alias/none"), None).await,
        ErrorKind::NotFound,
    );
    for bad_len in [0, MAX_PLAINTEXT + 1] {
        assert_err(
            h.ks.encrypt(
                &ctx(),
                &a,
                &vec![1; bad_len],
                &no_context(),
                EncryptionAlgorithm::SymmetricDefault,
            )
            .await,
            ErrorKind::Validation,
        );
    }
    let big = random_bytes(MAX_PLAINTEXT);
    let blob = h.encrypt(&a, &big, &no_context()).await;
    assert_eq!(h.decrypt(&blob, &no_context()).await.expect("4096"), big);
    // OAEP with a symmetric key is the wrong algorithm.
    assert_err(
        h.ks.encrypt(&ctx(), &a, b"x", &no_context(), EncryptionAlgorithm::RsaesOaepSha256).await,
        ErrorKind::InvalidKeyUsage,
    );
    assert_err(
        h.ks.decrypt(
            &ctx(),
            &blob,
            &no_context(),
            Some(&a),
            Some(EncryptionAlgorithm::RsaesOaepSha256),
        )
        .await,
        ErrorKind::InvalidKeyUsage,
    );
    // A blob over 6144 bytes.
    assert_err(h.decrypt(&vec![1; 6145], &no_context()).await, ErrorKind::Validation);
}

// === 3. RSA encryption ===

#[tokio::test]
async fn rsa_encrypt_decrypt() {
    let h = harness();
    let rsa = h.create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await.record.id;
    check_rsa_round_trip(&h, &rsa, EncryptionAlgorithm::RsaesOaepSha1).await;
    check_rsa_round_trip(&h, &rsa, EncryptionAlgorithm::RsaesOaepSha256).await;
    // No encryption context with asymmetric keys.
    let c = context(&[("a", "b")]);
    assert_err(
        h.ks.encrypt(&ctx(), &rsa, b"x", &c, EncryptionAlgorithm::RsaesOaepSha256).await,
        ErrorKind::Validation,
    );
    let blob =
        h.ks.encrypt(&ctx(), &rsa, b"x", &no_context(), EncryptionAlgorithm::RsaesOaepSha256)
            .await
            .expect("encrypt")
            .ciphertext_blob;
    assert_err(
        h.ks.decrypt(&ctx(), &blob, &c, Some(&rsa), Some(EncryptionAlgorithm::RsaesOaepSha256))
            .await,
        ErrorKind::Validation,
    );
    // SYMMETRIC_DEFAULT on an RSA key.
    assert_err(
        h.ks.encrypt(&ctx(), &rsa, b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault)
            .await,
        ErrorKind::InvalidKeyUsage,
    );
    // Data keys need a symmetric key.
    assert_err(
        h.ks.generate_data_key(&ctx(), &rsa, DataKeySize::Aes256, &no_context(), true).await,
        ErrorKind::InvalidKeyUsage,
    );
    // Encrypt with a SIGN_VERIFY key.
    let signer = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await.record.id;
    for algorithm in [EncryptionAlgorithm::SymmetricDefault, EncryptionAlgorithm::RsaesOaepSha256] {
        assert_err(
            h.ks.encrypt(&ctx(), &signer, b"x", &no_context(), algorithm).await,
            ErrorKind::InvalidKeyUsage,
        );
    }
    // The public key from GetPublicKey encrypts what the key decrypts.
    let public = h.ks.get_public_key(&ctx(), &rsa).await.expect("public key");
    assert_eq!(public.spec, KeySpec::Rsa2048);
    assert_eq!(public.usage, KeyUsage::EncryptDecrypt);
    let outside = backend()
        .load_public_key(KeyPairSpec::Rsa2048, &public.public_key)
        .expect("load")
        .encrypt_oaep(OaepHash::Sha1, b"from outside")
        .expect("encrypt");
    let out =
        h.ks.decrypt(
            &ctx(),
            &outside,
            &no_context(),
            Some(&rsa),
            Some(EncryptionAlgorithm::RsaesOaepSha1),
        )
        .await
        .expect("decrypt");
    assert_eq!(out.plaintext.expose_secret(), b"from outside");
}

#[tokio::test]
async fn rsa_ciphertext_decrypted_without_algorithm() {
    let h = harness();
    let rsa = h.create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await.record.id;
    // An RSA ciphertext is 256 random-looking bytes. Decrypt with the RSA KeyId and no
    // algorithm (SYMMETRIC_DEFAULT) parses it as a kagi blob.
    // Whatever the bytes, SYMMETRIC_DEFAULT is not an algorithm of an RSA key, as in AWS.
    let mut looks_like_a_blob = vec![0x5a; 256];
    looks_like_a_blob[0] = ciphertext::BLOB_VERSION;
    assert_err(
        h.ks.decrypt(&ctx(), &looks_like_a_blob, &no_context(), Some(&rsa), None).await,
        ErrorKind::InvalidKeyUsage,
    );
    let other = vec![0x5a; 256];
    assert_err(
        h.ks.decrypt(&ctx(), &other, &no_context(), Some(&rsa), None).await,
        ErrorKind::InvalidKeyUsage,
    );
}

// === 4. ReEncrypt ===

#[tokio::test]
async fn re_encrypt_to_another_key_and_after_rotation() {
    let h = harness();
    let a = h.symmetric().await;
    let b = h.symmetric().await;
    let src_ctx = context(&[("from", "a")]);
    let dst_ctx = context(&[("to", "b")]);
    let plaintext = b"carry me over";
    let blob = h.encrypt(&a, plaintext, &src_ctx).await;

    let out =
        h.ks.re_encrypt(
            &ctx(),
            &blob,
            &src_ctx,
            None,
            None,
            &b,
            &dst_ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await
        .expect("re_encrypt");
    // The output type has no plaintext field; its Debug shows no plaintext either.
    assert!(!format!("{out:?}").contains("carry me over"));
    assert_eq!(out.source_key_arn, h.ks.key_arn(&a));
    assert_eq!(out.key_arn, h.ks.key_arn(&b));
    assert_eq!(&out.ciphertext_blob[1..17], uuid::Uuid::parse_str(&b).expect("uuid").as_bytes());
    assert_eq!(h.decrypt(&out.ciphertext_blob, &dst_ctx).await.expect("decrypt"), plaintext);
    assert_err(h.decrypt(&out.ciphertext_blob, &src_ctx).await, ErrorKind::InvalidCiphertext);
    // A wrong source context or source key fails.
    assert_err(
        h.ks.re_encrypt(
            &ctx(),
            &blob,
            &dst_ctx,
            None,
            None,
            &b,
            &dst_ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await,
        ErrorKind::InvalidCiphertext,
    );
    assert_err(
        h.ks.re_encrypt(
            &ctx(),
            &blob,
            &src_ctx,
            Some(&b),
            None,
            &b,
            &dst_ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await,
        ErrorKind::IncorrectKey,
    );

    // To the same key after a rotation: the new blob uses the newest version.
    h.ks.rotate_key_on_demand(&ctx(), &a).await.expect("rotate");
    assert_eq!(blob_version(&blob), 1);
    let out =
        h.ks.re_encrypt(
            &ctx(),
            &blob,
            &src_ctx,
            Some(&a),
            None,
            &a,
            &src_ctx,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await
        .expect("re_encrypt to the same key");
    assert_eq!(blob_version(&out.ciphertext_blob), 2);
    assert_ne!(out.source_material_id, out.destination_material_id);
    assert_eq!(h.decrypt(&out.ciphertext_blob, &src_ctx).await.expect("decrypt"), plaintext);
    assert_eq!(h.decrypt(&blob, &src_ctx).await.expect("old blob"), plaintext);
}

// === 5. data keys and random ===

#[tokio::test]
async fn data_keys_data_key_pairs_and_random() {
    let h = harness();
    let id = h.symmetric().await;
    let c = context(&[("bucket", "b1")]);
    for (size, len) in [
        (DataKeySize::Aes256, 32),
        (DataKeySize::Aes128, 16),
        (DataKeySize::Bytes(1), 1),
        (DataKeySize::Bytes(1024), 1024),
    ] {
        let key =
            h.ks.generate_data_key(&ctx(), &id, size, &c, true).await.expect("generate_data_key");
        let plaintext = key.plaintext.expect("plaintext");
        assert_eq!(plaintext.len(), len);
        assert_eq!(key.key_arn, h.ks.key_arn(&id));
        assert_eq!(
            h.decrypt(&key.ciphertext_blob, &c).await.expect("decrypt"),
            plaintext.expose_secret()
        );
        assert_err(
            h.decrypt(&key.ciphertext_blob, &no_context()).await,
            ErrorKind::InvalidCiphertext,
        );
        let without =
            h.ks.generate_data_key(&ctx(), &id, size, &c, false).await.expect("without plaintext");
        assert!(without.plaintext.is_none());
        assert_eq!(h.decrypt(&without.ciphertext_blob, &c).await.expect("decrypt").len(), len);
    }
    for n in [0, 1025, u32::MAX] {
        assert_err(
            h.ks.generate_data_key(&ctx(), &id, DataKeySize::Bytes(n), &c, true).await,
            ErrorKind::Validation,
        );
    }

    // A data key pair: the pkcs8's public key is the one returned, and the encrypted private
    // key decrypts to the same pkcs8.
    let pair =
        h.ks.generate_data_key_pair(&ctx(), &id, KeyPairSpec::EccNistP256, &c, true)
            .await
            .expect("generate_data_key_pair");
    assert_eq!(pair.spec, KeyPairSpec::EccNistP256);
    let pkcs8 = pair.private_key_plaintext.expect("private key");
    let loaded = backend()
        .load_private_key(KeyPairSpec::EccNistP256, pkcs8.expose_secret())
        .expect("pkcs8 loads");
    assert_eq!(loaded.public_key_der(), pair.public_key);
    backend().load_public_key(KeyPairSpec::EccNistP256, &pair.public_key).expect("spki loads");
    assert_eq!(
        h.decrypt(&pair.private_key_ciphertext_blob, &c).await.expect("decrypt"),
        pkcs8.expose_secret()
    );
    let without =
        h.ks.generate_data_key_pair(&ctx(), &id, KeyPairSpec::EccNistP256, &c, false)
            .await
            .expect("without plaintext");
    assert!(without.private_key_plaintext.is_none());
    let decrypted = h.decrypt(&without.private_key_ciphertext_blob, &c).await.expect("decrypt");
    let loaded =
        backend().load_private_key(KeyPairSpec::EccNistP256, &decrypted).expect("pkcs8 loads");
    assert_eq!(loaded.public_key_der(), without.public_key);

    for n in [1, 32, 1024] {
        let bytes = h.ks.generate_random(&ctx(), n).await.expect("random");
        assert_eq!(bytes.len(), n as usize);
    }
    let a = h.ks.generate_random(&ctx(), 32).await.expect("random");
    let b = h.ks.generate_random(&ctx(), 32).await.expect("random");
    assert_ne!(a.expose_secret(), b.expose_secret());
    for n in [0, 1025] {
        assert_err(h.ks.generate_random(&ctx(), n).await, ErrorKind::Validation);
    }
}

// === 6. signatures ===

#[tokio::test]
async fn sign_and_verify() {
    let h = harness();
    let p256 = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await.record.id;
    let k1 = h.create(KeySpec::EccSecgP256k1, KeyUsage::SignVerify).await.record.id;
    let rsa = h.create(KeySpec::Rsa2048, KeyUsage::SignVerify).await.record.id;
    check_sign_verify(&h, &p256, KeyPairSpec::EccNistP256).await;
    check_sign_verify(&h, &k1, KeyPairSpec::EccSecgP256k1).await;
    check_sign_verify(&h, &rsa, KeyPairSpec::Rsa2048).await;
    // A signature of one key does not verify under another.
    let (sig, _) =
        h.ks.sign(&ctx(), &p256, b"m", MessageType::Raw, SigningAlgorithm::EcdsaSha256)
            .await
            .expect("sign");
    assert_err(
        h.ks.verify(&ctx(), &k1, b"m", MessageType::Raw, SigningAlgorithm::EcdsaSha256, &sig).await,
        ErrorKind::InvalidSignature,
    );
    // Keys that do not sign.
    let sym = h.symmetric().await;
    let mac = h.create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await.record.id;
    for key in [&sym, &mac] {
        assert_err(
            h.ks.sign(&ctx(), key, b"m", MessageType::Raw, SigningAlgorithm::EcdsaSha256).await,
            ErrorKind::InvalidKeyUsage,
        );
        assert_err(h.ks.get_public_key(&ctx(), key).await, ErrorKind::UnsupportedOperation);
    }
    let rsa_enc = h.create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await.record.id;
    assert_err(
        h.ks.sign(&ctx(), &rsa_enc, b"m", MessageType::Raw, SigningAlgorithm::RsassaPssSha256)
            .await,
        ErrorKind::InvalidKeyUsage,
    );
    // GetPublicKey by alias.
    h.ks.create_alias(&ctx(), "alias/signer", &p256).await.expect("alias");
    let public = h.ks.get_public_key(&ctx(), "alias/signer").await.expect("by alias");
    assert_eq!(public.key_arn, h.ks.key_arn(&p256));
    assert_eq!(public.spec, KeySpec::EccNistP256);
}

// === 7. MACs ===

#[tokio::test]
async fn generate_and_verify_mac() {
    let h = harness();
    let mut keys = Vec::new();
    for spec in [KeySpec::Hmac224, KeySpec::Hmac256, KeySpec::Hmac384, KeySpec::Hmac512] {
        let id = h.create(spec, KeyUsage::GenerateVerifyMac).await.record.id;
        check_mac(&h, &id, spec).await;
        keys.push(id);
    }
    // Two HMAC_256 keys give different MACs.
    let (m1, _) =
        h.ks.generate_mac(&ctx(), &keys[1], b"m", MacAlgorithm::HmacSha256).await.expect("mac");
    let other = h.create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await.record.id;
    let (m2, _) =
        h.ks.generate_mac(&ctx(), &other, b"m", MacAlgorithm::HmacSha256).await.expect("mac");
    assert_ne!(m1, m2);
    assert_err(
        h.ks.verify_mac(&ctx(), &other, b"m", MacAlgorithm::HmacSha256, &m1).await,
        ErrorKind::InvalidMac,
    );
    // A key that does not MAC.
    let sym = h.symmetric().await;
    assert_err(
        h.ks.generate_mac(&ctx(), &sym, b"m", MacAlgorithm::HmacSha256).await,
        ErrorKind::InvalidKeyUsage,
    );
    // HMAC keys do not encrypt.
    assert_err(
        h.ks.encrypt(&ctx(), &other, b"m", &no_context(), EncryptionAlgorithm::SymmetricDefault)
            .await,
        ErrorKind::InvalidKeyUsage,
    );
}

// === 8. key agreement ===

#[tokio::test]
async fn derive_shared_secret() {
    let h = harness();
    let a = h.create(KeySpec::EccNistP256, KeyUsage::KeyAgreement).await.record.id;
    let b = h.create(KeySpec::EccNistP256, KeyUsage::KeyAgreement).await.record.id;
    let pub_a = h.ks.get_public_key(&ctx(), &a).await.expect("pub a").public_key;
    let pub_b = h.ks.get_public_key(&ctx(), &b).await.expect("pub b").public_key;
    let (ab, arn, material_id) =
        h.ks.derive_shared_secret(&ctx(), &a, &pub_b).await.expect("derive a·B");
    let (ba, _, _) = h.ks.derive_shared_secret(&ctx(), &b, &pub_a).await.expect("derive b·A");
    assert_eq!(ab.expose_secret(), ba.expose_secret());
    assert_eq!(ab.len(), 32);
    assert_eq!(arn, h.ks.key_arn(&a));
    assert_eq!(
        Some(material_id),
        h.ks.describe_key(&ctx(), &a).await.expect("describe").current_material_id
    );
    // A SIGN_VERIFY key does not agree.
    let signer = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await.record.id;
    assert_err(
        h.ks.derive_shared_secret(&ctx(), &signer, &pub_b).await,
        ErrorKind::InvalidKeyUsage,
    );
    // Malformed peer keys, and a key on another curve.
    let mut truncated = pub_b.clone();
    truncated.truncate(pub_b.len() - 5);
    let p384 = backend().generate_key_pair(KeyPairSpec::EccNistP384).expect("p384");
    let p384_pub = backend()
        .load_private_key(KeyPairSpec::EccNistP384, p384.expose_secret())
        .expect("load")
        .public_key_der();
    for peer in [Vec::new(), vec![0x30, 0x03, 0x01, 0x02, 0x03], truncated, p384_pub] {
        assert_err(h.ks.derive_shared_secret(&ctx(), &a, &peer).await, ErrorKind::Validation);
    }
}

// === 9. lifecycle ===

#[tokio::test]
async fn disable_and_enable() {
    let h = harness();
    let keys = CryptoKeys::new(&h).await;
    let blob = h.encrypt(&keys.sym, b"lifecycle", &no_context()).await;
    check_crypto_works(&h, &keys, &blob).await;
    for key in keys.all() {
        h.ks.disable_key(&ctx(), key).await.expect("disable");
        // Disabling twice is fine.
        h.ks.disable_key(&ctx(), key).await.expect("disable again");
        assert_eq!(h.state(key).await, KeyState::Disabled);
    }
    check_crypto_refused(&h, &keys, &blob, ErrorKind::Disabled).await;
    // Management still works on a disabled key.
    h.ks.describe_key(&ctx(), &keys.sym).await.expect("describe");
    h.ks.update_key_description(&ctx(), &keys.sym, "still here").await.expect("describe");
    for key in keys.all() {
        h.ks.enable_key(&ctx(), key).await.expect("enable");
    }
    check_crypto_works(&h, &keys, &blob).await;
}

#[tokio::test]
async fn check_usable_follows_the_state() {
    let h = harness();
    let id = h.symmetric().await;
    h.ks.check_usable(&id).await.expect("an enabled key is usable");
    h.ks.disable_key(&ctx(), &id).await.expect("disable");
    assert_err(h.ks.check_usable(&id).await, ErrorKind::Disabled);
    h.ks.schedule_key_deletion(&ctx(), &id, Some(7)).await.expect("schedule");
    assert_err(h.ks.check_usable(&id).await, ErrorKind::InvalidState);
    let external = h.external().await;
    assert_err(h.ks.check_usable(&external).await, ErrorKind::InvalidState);
    assert_err(h.ks.check_usable("alias/none").await, ErrorKind::NotFound);
}

#[tokio::test]
async fn deletion_window_cancel_and_sweep() {
    let h = harness();
    let keys = CryptoKeys::new(&h).await;
    let blob = h.encrypt(&keys.sym, b"lifecycle", &no_context()).await;
    for days in [0, 6, 31, 365] {
        assert_err(
            h.ks.schedule_key_deletion(&ctx(), &keys.sym, Some(days)).await,
            ErrorKind::Validation,
        );
    }
    assert_eq!(h.state(&keys.sym).await, KeyState::Enabled);
    // Cancel on a key that is not pending deletion.
    assert_err(h.ks.cancel_key_deletion(&ctx(), &keys.sym).await, ErrorKind::InvalidState);

    for key in keys.all() {
        let schedule = h.ks.schedule_key_deletion(&ctx(), key, None).await.expect("schedule");
        assert_eq!(schedule.pending_window_days, 30);
        assert_eq!(schedule.deletion_date, T0 + 30 * DAY);
        assert_eq!(schedule.key_arn, h.ks.key_arn(key));
    }
    check_crypto_refused(&h, &keys, &blob, ErrorKind::InvalidState).await;
    let meta = h.ks.describe_key(&ctx(), &keys.sym).await.expect("describe");
    assert_eq!(meta.record.state, KeyState::PendingDeletion);
    assert_eq!(meta.record.deletion_date, Some(T0 + 30 * DAY));
    assert_eq!(meta.record.pending_window_days, Some(30));
    assert_err(h.ks.enable_key(&ctx(), &keys.sym).await, ErrorKind::InvalidState);
    assert_err(h.ks.disable_key(&ctx(), &keys.sym).await, ErrorKind::InvalidState);
    assert_err(
        h.ks.schedule_key_deletion(&ctx(), &keys.sym, Some(7)).await,
        ErrorKind::InvalidState,
    );
    assert_err(
        h.ks.tag_resource(&ctx(), &keys.sym, &context(&[("t", "v")])).await,
        ErrorKind::InvalidState,
    );
    assert_err(h.ks.update_key_description(&ctx(), &keys.sym, "x").await, ErrorKind::InvalidState);
    assert_err(h.ks.create_alias(&ctx(), "alias/doomed", &keys.sym).await, ErrorKind::InvalidState);
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &keys.sym).await, ErrorKind::InvalidState);
    h.ks.list_resource_tags(&ctx(), &keys.sym, None, None).await.expect("tags readable");

    // Cancel returns the key to Disabled.
    for key in keys.all() {
        let arn = h.ks.cancel_key_deletion(&ctx(), key).await.expect("cancel");
        assert_eq!(arn, h.ks.key_arn(key));
        let meta = h.ks.describe_key(&ctx(), key).await.expect("describe");
        assert_eq!(meta.record.state, KeyState::Disabled);
        assert_eq!(meta.record.deletion_date, None);
        assert_eq!(meta.record.pending_window_days, None);
        h.ks.enable_key(&ctx(), key).await.expect("enable");
    }
    check_crypto_works(&h, &keys, &blob).await;

    // Delete for real: 7 days, an alias, one second short of the window, then the window.
    let other = h.symmetric().await;
    h.ks.create_alias(&ctx(), "alias/doomed", &keys.sym).await.expect("alias");
    h.ks.create_alias(&ctx(), "alias/kept", &other).await.expect("alias");
    h.ks.schedule_key_deletion(&ctx(), &keys.sym, Some(7)).await.expect("schedule");
    h.clock.advance(7 * DAY - 1);
    let report = h.ks.sweep(&ctx()).await.expect("sweep");
    assert!(report.deleted.is_empty(), "{report:?}");
    assert_eq!(h.state(&keys.sym).await, KeyState::PendingDeletion);
    h.clock.advance(1);
    let report = h.ks.sweep(&ctx()).await.expect("sweep");
    assert_eq!(report.deleted, vec![h.ks.key_arn(&keys.sym)]);
    assert_eq!(h.ks.sweep(&ctx()).await.expect("sweep again"), SweepReport::default());

    // Deleted: NotFound everywhere.
    // Decrypt of an old blob of the deleted key answers NotFoundException, as AWS does for a
    // deleted key (KMS-PROTOCOL.md §2.4: unknown key → NotFound, and lifecycle.rs answers
    // NotFound for deleted keys everywhere). A blob naming a key id that never existed is
    // InvalidCiphertextException instead (see every_tampered_or_truncated_blob_...).
    assert_err(h.ks.describe_key(&ctx(), &keys.sym).await, ErrorKind::NotFound);
    assert_err(
        h.ks.encrypt(&ctx(), &keys.sym, b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault)
            .await,
        ErrorKind::NotFound,
    );
    assert_err(h.decrypt(&blob, &no_context()).await, ErrorKind::NotFound);
    assert_err(
        h.ks.decrypt(&ctx(), &blob, &no_context(), Some(&keys.sym), None).await,
        ErrorKind::NotFound,
    );
    assert_err(h.ks.enable_key(&ctx(), &keys.sym).await, ErrorKind::NotFound);
    assert_err(h.ks.cancel_key_deletion(&ctx(), &keys.sym).await, ErrorKind::NotFound);
    assert_err(h.ks.schedule_key_deletion(&ctx(), &keys.sym, None).await, ErrorKind::NotFound);
    assert_err(h.ks.list_resource_tags(&ctx(), &keys.sym, None, None).await, ErrorKind::NotFound);
    // Its aliases are gone; the other key's alias stays.
    assert_err(h.ks.describe_key(&ctx(), "alias/doomed").await, ErrorKind::NotFound);
    let aliases = walk_aliases(&h, None).await;
    let names: Vec<&str> = aliases.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["alias/kept"]);
    // The name is free again.
    h.ks.create_alias(&ctx(), "alias/doomed", &other).await.expect("reuse the name");
    // ListKeys no longer lists it.
    let listed = walk_keys(&h).await;
    assert!(!listed.contains(&keys.sym));
    assert_eq!(listed.len(), 4);
    // The store keeps the record, with every version's material destroyed.
    let record = h.ks.store().key(&keys.sym).await.expect("store").expect("record kept");
    assert_eq!(record.state, KeyState::Deleted);
    let versions = h.ks.store().versions(&keys.sym).await.expect("versions");
    assert!(!versions.is_empty());
    assert!(versions.iter().all(|v| !v.has_material()));
    // The audit trail has the background deletion.
    let events = h.audit.events();
    assert!(events.iter().any(|e| e.operation == "DeleteKey"
        && e.key_arn.as_deref() == Some(h.ks.key_arn(&keys.sym).as_str())
        && e.outcome == Outcome::Success));
}

// === 10. rotation ===

#[tokio::test]
async fn automatic_rotation() {
    let h = harness();
    let id = h.symmetric().await;
    for days in [0, 89, 2561] {
        assert_err(h.ks.enable_key_rotation(&ctx(), &id, Some(days)).await, ErrorKind::Validation);
    }
    let status = h.ks.key_rotation_status(&ctx(), &id).await.expect("status");
    assert!(!status.enabled);
    assert_eq!(status.period_days, None);
    h.ks.enable_key_rotation(&ctx(), &id, None).await.expect("enable");
    let status = h.ks.key_rotation_status(&ctx(), &id).await.expect("status");
    assert!(status.enabled);
    assert_eq!(status.period_days, Some(365));
    assert_eq!(status.next_rotation, Some(T0 + 365 * DAY));
    h.ks.enable_key_rotation(&ctx(), &id, Some(90)).await.expect("90");
    h.ks.enable_key_rotation(&ctx(), &id, Some(2560)).await.expect("2560");
    h.ks.enable_key_rotation(&ctx(), &id, None).await.expect("back to 365");

    let blob1 = h.encrypt(&id, b"v1", &no_context()).await;
    h.clock.advance(365 * DAY - 1);
    assert!(h.ks.sweep(&ctx()).await.expect("sweep").rotated.is_empty());
    h.clock.advance(1);
    let report = h.ks.sweep(&ctx()).await.expect("sweep");
    assert_eq!(report.rotated, vec![h.ks.key_arn(&id)]);
    check_versions_consistent(&h, &id, 2).await;
    let rotations = h.rotations(&id).await;
    assert_eq!(rotations[1].version.rotation_type, Some(RotationType::Automatic));
    assert_eq!(rotations[1].version.rotation_date, Some(T0 + 365 * DAY));
    let status = h.ks.key_rotation_status(&ctx(), &id).await.expect("status");
    assert_eq!(status.next_rotation, Some(T0 + 2 * 365 * DAY));
    let blob2 = h.encrypt(&id, b"v2", &no_context()).await;
    assert_eq!(blob_version(&blob2), 2);
    assert_eq!(h.decrypt(&blob1, &no_context()).await.expect("old"), b"v1");
    assert_eq!(h.decrypt(&blob2, &no_context()).await.expect("new"), b"v2");
    // Nothing more is due.
    assert!(h.ks.sweep(&ctx()).await.expect("sweep").rotated.is_empty());

    // On-demand rotation is refused within 20 minutes of an automatic one.
    h.clock.advance(365 * DAY - 10 * 60);
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &id).await, ErrorKind::Conflict);

    // Disabling rotation.
    h.ks.disable_key_rotation(&ctx(), &id).await.expect("disable");
    assert!(!h.ks.key_rotation_status(&ctx(), &id).await.expect("status").enabled);
    h.clock.advance(DAY);
    assert!(h.ks.sweep(&ctx()).await.expect("sweep").rotated.is_empty());
    h.ks.rotate_key_on_demand(&ctx(), &id).await.expect("now allowed");

    // Keys that cannot rotate.
    let rsa = h.create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await.record.id;
    let mac = h.create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await.record.id;
    let external = h.external().await;
    for key in [&rsa, &mac, &external] {
        assert_err(
            h.ks.enable_key_rotation(&ctx(), key, None).await,
            ErrorKind::UnsupportedOperation,
        );
    }
    for key in [&rsa, &mac] {
        assert_err(h.ks.rotate_key_on_demand(&ctx(), key).await, ErrorKind::UnsupportedOperation);
        assert_err(h.ks.key_rotation_status(&ctx(), key).await, ErrorKind::UnsupportedOperation);
        assert_err(
            h.ks.list_key_rotations(&ctx(), key, IncludeKeyMaterial::default(), None, None).await,
            ErrorKind::UnsupportedOperation,
        );
    }
    // A disabled key does not take rotation settings (DisabledException).
    h.ks.disable_key(&ctx(), &id).await.expect("disable");
    assert_err(h.ks.enable_key_rotation(&ctx(), &id, None).await, ErrorKind::Disabled);
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &id).await, ErrorKind::Disabled);
}

#[tokio::test]
async fn on_demand_rotation_limit_and_versions() {
    let h = harness();
    let id = h.symmetric().await;
    let mut blobs = vec![h.encrypt(&id, b"v1", &no_context()).await];
    for n in 1..=MAX_ON_DEMAND_ROTATIONS {
        let arn = h.ks.rotate_key_on_demand(&ctx(), &id).await.expect("rotate");
        assert_eq!(arn, h.ks.key_arn(&id));
        let version = n + 1;
        let blob = h.encrypt(&id, format!("v{version}").as_bytes(), &no_context()).await;
        assert_eq!(blob_version(&blob), version);
        blobs.push(blob);
        for (i, old) in blobs.iter().enumerate() {
            assert_eq!(
                h.decrypt(old, &no_context()).await.expect("old blob"),
                format!("v{}", i + 1).as_bytes()
            );
        }
    }
    assert_eq!(MAX_ON_DEMAND_ROTATIONS, 25);
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &id).await, ErrorKind::LimitExceeded);
    check_versions_consistent(&h, &id, 26).await;
    // The failed rotation changed nothing.
    let meta = h.ks.describe_key(&ctx(), &id).await.expect("describe");
    assert_eq!(meta.record.on_demand_rotations, 25);
    assert_eq!(meta.record.current_version, 26);

    let rotations = h.rotations(&id).await;
    assert_eq!(rotations.len(), 26);
    assert_eq!(rotations.iter().filter(|r| r.version.state == VersionState::Current).count(), 1);
    assert_eq!(rotations[25].version.state, VersionState::Current);
    assert_eq!(rotations[0].version.rotation_type, None);
    assert!(rotations[1..].iter().all(|r| r.version.rotation_type == Some(RotationType::OnDemand)));
    assert!(rotations.iter().all(|r| !r.imported && r.key_arn == meta.arn));
    assert_eq!(meta.current_material_id.as_ref(), Some(&rotations[25].version.material_id));
    // Paginated.
    let all = IncludeKeyMaterial::AllKeyMaterial;
    let mut marker: Option<String> = None;
    let mut walked = Vec::new();
    loop {
        let page =
            h.ks.list_key_rotations(&ctx(), &id, all, Some(10), marker.as_deref())
                .await
                .expect("page");
        walked.extend(page.items.into_iter().map(|r| r.version.version));
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => break,
        }
    }
    assert_eq!(walked, (1..=26).collect::<Vec<_>>());
    // By default (ROTATIONS_ONLY) the first material is not a rotation.
    let page =
        h.ks.list_key_rotations(&ctx(), &id, IncludeKeyMaterial::default(), None, None)
            .await
            .expect("rotations only");
    let versions: Vec<u32> = page.items.iter().map(|r| r.version.version).collect();
    assert_eq!(versions, (2..=26).collect::<Vec<_>>());
    // Automatic rotation is not capped by the on-demand limit.
    h.ks.enable_key_rotation(&ctx(), &id, Some(90)).await.expect("enable");
    h.clock.advance(90 * DAY);
    assert_eq!(h.ks.sweep(&ctx()).await.expect("sweep").rotated.len(), 1);
    check_versions_consistent(&h, &id, 27).await;
}

// === 11. aliases ===

#[tokio::test]
async fn alias_rules_and_lifecycle() {
    let h = harness();
    let a = h.symmetric().await;
    let b = h.symmetric().await;
    let signer = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await.record.id;
    for bad in [
        "alias/",
        "noprefix",
        "alias",
        "Alias/upper-prefix",
        "alias/aws/reserved",
        "alias/aws/",
        "alias/with space",
        "alias/dot.not.allowed",
        "alias/ünïcode",
        "alias/star*",
    ] {
        assert_err(h.ks.create_alias(&ctx(), bad, &a).await, ErrorKind::InvalidAliasName);
    }
    let long_ok = format!("alias/{}", "x".repeat(250));
    assert_eq!(long_ok.len(), 256);
    h.ks.create_alias(&ctx(), &long_ok, &a).await.expect("256 characters");
    let too_long = format!("alias/{}", "x".repeat(251));
    assert_err(h.ks.create_alias(&ctx(), &too_long, &a).await, ErrorKind::InvalidAliasName);
    h.ks.create_alias(&ctx(), "alias/Mixed_case-1:2/sub", &a)
        .await
        .expect("all allowed characters");
    // "alias/awsome" is not reserved: only the alias/aws/ prefix is.
    h.ks.create_alias(&ctx(), "alias/awsome", &a).await.expect("not reserved");

    h.ks.create_alias(&ctx(), "alias/app", &a).await.expect("create");
    assert_err(h.ks.create_alias(&ctx(), "alias/app", &b).await, ErrorKind::AlreadyExists);
    assert_err(
        h.ks.create_alias(&ctx(), "alias/x", "1234abcd-12ab-34cd-56ef-1234567890ab").await,
        ErrorKind::NotFound,
    );
    // Aliases cannot target aliases.
    assert_err(h.ks.create_alias(&ctx(), "alias/y", "alias/app").await, ErrorKind::Validation);

    // UpdateAlias re-points it; the blob names the key, not the alias.
    let blob = h.encrypt("alias/app", b"via alias", &no_context()).await;
    h.ks.update_alias(&ctx(), "alias/app", &b).await.expect("update");
    assert_eq!(h.ks.describe_key(&ctx(), "alias/app").await.expect("describe").record.id, b);
    assert_eq!(h.decrypt(&blob, &no_context()).await.expect("decrypt"), b"via alias");
    assert_err(
        h.ks.decrypt(&ctx(), &blob, &no_context(), Some("alias/app"), None).await,
        ErrorKind::IncorrectKey,
    );
    // To a key of another type or usage.
    assert_err(h.ks.update_alias(&ctx(), "alias/app", &signer).await, ErrorKind::Validation);
    assert_err(h.ks.update_alias(&ctx(), "alias/none", &a).await, ErrorKind::NotFound);
    // To a key pending deletion: refused; from one: allowed.
    h.ks.schedule_key_deletion(&ctx(), &a, None).await.expect("schedule");
    assert_err(h.ks.update_alias(&ctx(), "alias/app", &a).await, ErrorKind::InvalidState);
    h.ks.create_alias(&ctx(), "alias/from-pending", &b).await.expect("create");
    h.ks.cancel_key_deletion(&ctx(), &a).await.expect("cancel");
    h.ks.update_alias(&ctx(), "alias/from-pending", &a).await.expect("update");
    h.ks.schedule_key_deletion(&ctx(), &a, None).await.expect("schedule");
    h.ks.update_alias(&ctx(), "alias/from-pending", &b).await.expect("source pending is fine");

    // DeleteAlias works in any state of the key, then the alias is gone.
    h.ks.delete_alias(&ctx(), "alias/awsome").await.expect("delete (key pending deletion)");
    h.ks.delete_alias(&ctx(), "alias/app").await.expect("delete");
    assert_err(h.ks.describe_key(&ctx(), "alias/app").await, ErrorKind::NotFound);
    assert_err(
        h.ks.encrypt(
            &ctx(),
            "alias/app",
            b"x",
            &no_context(),
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await,
        ErrorKind::NotFound,
    );
    assert_err(h.ks.delete_alias(&ctx(), "alias/app").await, ErrorKind::NotFound);
    assert_err(h.ks.delete_alias(&ctx(), "alias/aws/x").await, ErrorKind::InvalidAliasName);
    h.ks.cancel_key_deletion(&ctx(), &a).await.expect("cancel");

    // ListAliases, all and by key.
    let all = walk_aliases(&h, None).await;
    let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "sorted by name");
    assert_eq!(all.len(), 3);
    let of_a = walk_aliases(&h, Some(&a)).await;
    assert!(of_a.iter().all(|e| e.target_key_id == a));
    assert_eq!(of_a.len(), 2);
    let of_b = walk_aliases(&h, Some(&h.ks.key_arn(&b))).await;
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].name, "alias/from-pending");
    assert_eq!(of_b[0].arn, "arn:aws:kms:us-east-1:111122223333:alias/from-pending");
    assert!(walk_aliases(&h, Some(&signer)).await.is_empty());
    assert_err(
        h.ks.list_aliases(&ctx(), Some("1234abcd-12ab-34cd-56ef-1234567890ab"), None, None).await,
        ErrorKind::NotFound,
    );

    // 50 aliases per key.
    let c = h.symmetric().await;
    for i in 0..MAX_ALIASES_PER_KEY {
        h.ks.create_alias(&ctx(), &format!("alias/many-{i:02}"), &c).await.expect("alias");
    }
    assert_err(h.ks.create_alias(&ctx(), "alias/one-too-many", &c).await, ErrorKind::LimitExceeded);
}

#[tokio::test]
async fn pagination_walks_every_item() {
    let h = harness();
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = h.symmetric().await;
        h.ks.create_alias(&ctx(), &format!("alias/p{i}"), &id).await.expect("alias");
        ids.push(id);
    }
    ids.sort();
    assert_eq!(walk_keys(&h).await, ids);
    let names: Vec<String> = walk_aliases(&h, None).await.into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["alias/p0", "alias/p1", "alias/p2", "alias/p3", "alias/p4"]);
    // One page holds everything with the default limit.
    let page = h.ks.list_keys(&ctx(), None, None).await.expect("list");
    assert_eq!(page.items.len(), 5);
    assert!(page.next_marker.is_none());
    // Limits out of range.
    for limit in [0, 1001] {
        assert_err(h.ks.list_keys(&ctx(), Some(limit), None).await, ErrorKind::Validation);
    }
    assert_err(h.ks.list_aliases(&ctx(), None, Some(101), None).await, ErrorKind::Validation);
    // Bogus markers.
    for marker in ["!!!", "a", "not base64 at all", "//8"] {
        assert_err(h.ks.list_keys(&ctx(), Some(1), Some(marker)).await, ErrorKind::InvalidMarker);
        assert_err(
            h.ks.list_aliases(&ctx(), None, Some(1), Some(marker)).await,
            ErrorKind::InvalidMarker,
        );
    }
    // FIXME: a marker kagi never issued but that happens to be base64url of UTF-8 is accepted
    // as a position ("zzz" skips everything) instead of InvalidMarkerException, contrary to the
    // doc comments of list_keys/paginate ("a marker kagi did not issue"). Harmless (it is only
    // a position), but markers should be authenticated (e.g. HMAC under a key derived from the
    // root key) or the doc comment relaxed. mod.rs decode_marker.
    let forged = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("zzz")
    };
    let page = h.ks.list_keys(&ctx(), Some(1), Some(&forged)).await.expect("accepted");
    assert!(page.items.is_empty());
    // A marker of one list works as a position in another (no binding to the list).
    let alias_marker =
        h.ks.list_aliases(&ctx(), None, Some(1), None)
            .await
            .expect("aliases")
            .next_marker
            .expect("more aliases");
    h.ks.list_keys(&ctx(), Some(1), Some(&alias_marker)).await.expect("accepted");
}

// === 12. tags ===

#[tokio::test]
async fn tags() {
    let h = harness();
    let tags = context(&[("team", "crypto"), ("env", "test")]);
    let id = h
        .ks
        .create_key(&ctx(), CreateKeyRequest { tags: tags.clone(), ..CreateKeyRequest::default() })
        .await
        .expect("create with tags")
        .record
        .id;
    let listed = h.ks.list_resource_tags(&ctx(), &id, None, None).await.expect("list");
    assert_eq!(
        listed.items,
        vec![("env".to_owned(), "test".to_owned()), ("team".to_owned(), "crypto".to_owned())]
    );
    // Tag replaces values and adds keys.
    h.ks.tag_resource(&ctx(), &id, &context(&[("team", "kms"), ("owner", "me"), ("empty", "")]))
        .await
        .expect("tag");
    let record = h.ks.describe_key(&ctx(), &id).await.expect("describe").record;
    assert_eq!(
        record.tags,
        context(&[("env", "test"), ("team", "kms"), ("owner", "me"), ("empty", "")])
    );
    h.ks.untag_resource(&ctx(), &id, &["env".to_owned(), "absent".to_owned()])
        .await
        .expect("untag");
    let listed = h.ks.list_resource_tags(&ctx(), &id, Some(1), None).await.expect("page");
    assert_eq!(listed.items, vec![("empty".to_owned(), String::new())]);
    assert!(listed.next_marker.is_some());

    // Bounds: 128-character key ok, 129 not; values up to 256; aws: reserved; 50 tags.
    h.ks.tag_resource(&ctx(), &id, &context(&[(&"k".repeat(128), &"v".repeat(256))]))
        .await
        .expect("bounds");
    for (k, v) in [
        ("k".repeat(129), String::new()),
        (String::new(), "v".to_owned()),
        ("ok".to_owned(), "v".repeat(257)),
        ("aws:created-by".to_owned(), "me".to_owned()),
    ] {
        let bad = BTreeMap::from([(k, v)]);
        assert_err(h.ks.tag_resource(&ctx(), &id, &bad).await, ErrorKind::Tag);
        let create = CreateKeyRequest { tags: bad, ..CreateKeyRequest::default() };
        assert_err(h.ks.create_key(&ctx(), create).await, ErrorKind::Tag);
    }
    // The failed tags changed nothing.
    assert_eq!(h.ks.describe_key(&ctx(), &id).await.expect("describe").record.tags.len(), 4);
    let many: BTreeMap<String, String> =
        (0..47).map(|i| (format!("t{i}"), String::new())).collect();
    assert_err(h.ks.tag_resource(&ctx(), &id, &many).await, ErrorKind::Tag);
    let fits: BTreeMap<String, String> =
        (0..46).map(|i| (format!("t{i}"), String::new())).collect();
    h.ks.tag_resource(&ctx(), &id, &fits).await.expect("exactly 50");
    assert_eq!(
        h.ks.list_resource_tags(&ctx(), &id, Some(50), None).await.expect("list").items.len(),
        50
    );
}

// === 13. import ===

#[tokio::test]
async fn import_key_material() {
    let h = harness();
    let id = h.external().await;
    let other = h.external().await;
    let meta = h.ks.describe_key(&ctx(), &id).await.expect("describe");
    assert_eq!(meta.record.state, KeyState::PendingImport);
    assert_eq!(meta.record.origin, Origin::External);
    assert_eq!(meta.record.current_version, 0);
    assert_eq!(meta.current_material_id, None);
    assert_err(
        h.ks.encrypt(&ctx(), &id, b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault).await,
        ErrorKind::InvalidState,
    );
    assert_err(h.ks.enable_key(&ctx(), &id).await, ErrorKind::InvalidState);
    // RotateKeyOnDemand on a key pending import: KMSInvalidStateException, as AWS (§2.4 [5]).
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &id).await, ErrorKind::InvalidState);

    // Parameters only for EXTERNAL keys and RSA wrapping keys.
    let native = h.symmetric().await;
    assert_err(
        h.ks.get_parameters_for_import(
            &ctx(),
            &native,
            WrappingAlgorithm::RsaesOaepSha256,
            KeyPairSpec::Rsa2048,
        )
        .await,
        ErrorKind::UnsupportedOperation,
    );
    assert_err(
        h.ks.get_parameters_for_import(
            &ctx(),
            &id,
            WrappingAlgorithm::RsaesOaepSha256,
            KeyPairSpec::EccNistP256,
        )
        .await,
        ErrorKind::Validation,
    );
    assert_err(
        h.ks.delete_imported_key_material(&ctx(), &native).await,
        ErrorKind::UnsupportedOperation,
    );

    let material = random_bytes(32);
    let params = import_parameters(&h, &id).await;
    let wrapped = wrap(&params.public_key, &material);
    let import = |token: Vec<u8>, wrapped: Vec<u8>, valid_to: Option<UnixSeconds>| {
        let ks = Arc::clone(&h.ks);
        let id = id.clone();
        async move {
            ks.import_key_material(
                &ctx(),
                &id,
                ImportRequest {
                    import_token: &token,
                    encrypted_key_material: &wrapped,
                    valid_to,
                    import_type: ImportType::ExistingKeyMaterial,
                },
            )
            .await
        }
    };
    // A token of another key; a random token.
    let other_params = import_parameters(&h, &other).await;
    assert_err(
        import(other_params.import_token.clone(), wrap(&other_params.public_key, &material), None)
            .await,
        ErrorKind::InvalidImportToken,
    );
    assert_err(
        import(random_bytes(32), wrapped.clone(), None).await,
        ErrorKind::InvalidImportToken,
    );
    assert_err(import(Vec::new(), wrapped.clone(), None).await, ErrorKind::InvalidImportToken);
    // ValidTo in the past, now, or more than 365 days away.
    for valid_to in [T0 - 1, T0, T0 + 366 * DAY] {
        assert_err(
            import(params.import_token.clone(), wrapped.clone(), Some(valid_to)).await,
            ErrorKind::Validation,
        );
    }
    // Material of the wrong size, or wrapped with another key.
    assert_err(
        import(params.import_token.clone(), wrap(&params.public_key, &material[..16]), None).await,
        ErrorKind::IncorrectKeyMaterial,
    );
    assert_err(
        import(params.import_token.clone(), wrap(&other_params.public_key, &material), None).await,
        ErrorKind::IncorrectKeyMaterial,
    );
    assert_eq!(h.state(&id).await, KeyState::PendingImport);
    // The token expires after 24 hours.
    h.clock.advance(25 * HOUR);
    assert_err(
        import(params.import_token.clone(), wrapped.clone(), None).await,
        ErrorKind::ExpiredImportToken,
    );

    // Import with ValidTo = now + 1 day.
    let now = h.ks.now();
    let (arn, material_id) =
        check_import(&h, &id, &material, ImportType::ExistingKeyMaterial, Some(now + DAY))
            .await
            .expect("import");
    assert_eq!(arn, h.ks.key_arn(&id));
    let meta = h.ks.describe_key(&ctx(), &id).await.expect("describe");
    assert_eq!(meta.record.state, KeyState::Enabled);
    assert_eq!(meta.valid_to, Some(now + DAY));
    assert_eq!(meta.current_material_id.as_deref(), Some(material_id.as_str()));
    let blob1 = h.encrypt(&id, b"imported", &no_context()).await;
    assert_eq!(h.decrypt(&blob1, &no_context()).await.expect("decrypt"), b"imported");
    // Another EXTERNAL key can import the same bytes.
    check_import(&h, &other, &material, ImportType::ExistingKeyMaterial, None)
        .await
        .expect("same bytes into another key");

    // Expiry takes effect at ValidTo even before the sweeper runs.
    h.clock.advance(DAY - 1);
    assert_eq!(h.decrypt(&blob1, &no_context()).await.expect("decrypt"), b"imported");
    h.clock.advance(1);
    assert_err(h.decrypt(&blob1, &no_context()).await, ErrorKind::InvalidState);
    assert_err(
        h.ks.encrypt(&ctx(), &id, b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault).await,
        ErrorKind::InvalidState,
    );

    // Expiry: a day later the sweeper destroys the material.
    h.clock.advance(DAY);
    let report = h.ks.sweep(&ctx()).await.expect("sweep");
    assert_eq!(report.expired, vec![h.ks.key_arn(&id)]);
    assert_eq!(h.state(&id).await, KeyState::PendingImport);
    assert_err(h.decrypt(&blob1, &no_context()).await, ErrorKind::InvalidState);
    assert!(h.ks.store().versions(&id).await.expect("versions").iter().all(|v| !v.has_material()));
    assert!(h.ks.sweep(&ctx()).await.expect("sweep").expired.is_empty());

    // Different material: refused. The same material with a new token: back to Enabled, and the
    // old ciphertexts decrypt again.
    assert_err(
        check_import(&h, &id, &random_bytes(32), ImportType::ExistingKeyMaterial, None).await,
        ErrorKind::IncorrectKeyMaterial,
    );
    let (_, again_id) = check_import(&h, &id, &material, ImportType::ExistingKeyMaterial, None)
        .await
        .expect("re-import");
    assert_eq!(again_id, material_id, "the same material keeps its id");
    assert_eq!(h.state(&id).await, KeyState::Enabled);
    assert_eq!(h.decrypt(&blob1, &no_context()).await.expect("decrypt again"), b"imported");
    assert_eq!(h.ks.describe_key(&ctx(), &id).await.expect("describe").valid_to, None);

    // DeleteImportedKeyMaterial: PendingImport until re-imported.
    h.ks.delete_imported_key_material(&ctx(), &id).await.expect("delete material");
    assert_eq!(h.state(&id).await, KeyState::PendingImport);
    assert_err(h.decrypt(&blob1, &no_context()).await, ErrorKind::InvalidState);
    check_import(&h, &id, &material, ImportType::ExistingKeyMaterial, None)
        .await
        .expect("re-import");
    assert_eq!(h.decrypt(&blob1, &no_context()).await.expect("decrypt"), b"imported");

    // NEW_KEY_MATERIAL, then RotateKeyOnDemand makes it current.
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &id).await, ErrorKind::UnsupportedOperation);
    let new_material = random_bytes(32);
    let (_, new_id) = check_import(&h, &id, &new_material, ImportType::NewKeyMaterial, None)
        .await
        .expect("stage new material");
    assert_ne!(new_id, material_id);
    assert_err(
        check_import(&h, &id, &random_bytes(32), ImportType::NewKeyMaterial, None).await,
        ErrorKind::Conflict,
    );
    // Staged material does not encrypt yet.
    assert_eq!(blob_version(&h.encrypt(&id, b"x", &no_context()).await), 1);
    let staged = h.rotations(&id).await;
    assert_eq!(staged.len(), 2);
    assert_eq!(staged[1].version.state, VersionState::PendingRotation);
    assert!(staged.iter().all(|r| r.imported));
    let rotations_only = |h: &Harness, id: &str| {
        let (ks, id) = (Arc::clone(&h.ks), id.to_owned());
        async move {
            let page = ks
                .list_key_rotations(&ctx(), &id, IncludeKeyMaterial::default(), None, None)
                .await
                .expect("rotations only");
            page.items.iter().map(|r| r.version.version).collect::<Vec<_>>()
        }
    };
    // Neither the first material nor staged material is a rotation.
    assert_eq!(rotations_only(&h, &id).await, Vec::<u32>::new());
    h.ks.rotate_key_on_demand(&ctx(), &id).await.expect("rotate to new material");
    assert_eq!(rotations_only(&h, &id).await, vec![2]);
    check_versions_consistent(&h, &id, 2).await;
    let blob2 = h.encrypt(&id, b"after rotation", &no_context()).await;
    assert_eq!(blob_version(&blob2), 2);
    assert_eq!(h.decrypt(&blob1, &no_context()).await.expect("old"), b"imported");
    assert_eq!(h.decrypt(&blob2, &no_context()).await.expect("new"), b"after rotation");
    assert_eq!(
        h.ks.describe_key(&ctx(), &id).await.expect("describe").current_material_id,
        Some(new_id)
    );
    // Nothing left to rotate to.
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &id).await, ErrorKind::UnsupportedOperation);
    // Asymmetric or HMAC keys cannot stage new material; pending deletion refuses imports.
    h.ks.schedule_key_deletion(&ctx(), &id, None).await.expect("schedule");
    assert_err(
        h.ks.get_parameters_for_import(
            &ctx(),
            &id,
            WrappingAlgorithm::RsaesOaepSha1,
            KeyPairSpec::Rsa2048,
        )
        .await,
        ErrorKind::InvalidState,
    );
}

#[tokio::test]
async fn delete_imported_material_with_staged_rotation() {
    let h = harness();
    let id = h.external().await;
    let material = random_bytes(32);
    check_import(&h, &id, &material, ImportType::ExistingKeyMaterial, None).await.expect("import");
    let staged = random_bytes(32);
    check_import(&h, &id, &staged, ImportType::NewKeyMaterial, None).await.expect("stage");
    h.ks.delete_imported_key_material(&ctx(), &id).await.expect("delete material");
    assert_eq!(h.state(&id).await, KeyState::PendingImport);
    let versions = h.ks.store().versions(&id).await.expect("versions");
    assert_eq!(versions.len(), 2);
    assert!(!versions[0].has_material(), "the current material is destroyed");
    // The staged (PENDING_ROTATION) material is destroyed too, as the doc comment says.
    assert_eq!(versions[1].state, VersionState::PendingRotation);
    assert!(!versions[1].has_material());
    // After re-importing the current material, nothing is staged to rotate to.
    check_import(&h, &id, &material, ImportType::ExistingKeyMaterial, None)
        .await
        .expect("re-import");
    assert_err(h.ks.rotate_key_on_demand(&ctx(), &id).await, ErrorKind::UnsupportedOperation);
}

#[tokio::test]
async fn import_hmac_material_checks_size() {
    let h = harness();
    let id =
        h.ks.create_key(
            &ctx(),
            CreateKeyRequest {
                spec: KeySpec::Hmac256,
                origin: Origin::External,
                ..CreateKeyRequest::default()
            },
        )
        .await
        .expect("create")
        .record
        .id;
    assert_err(
        check_import(&h, &id, &random_bytes(31), ImportType::ExistingKeyMaterial, None).await,
        ErrorKind::IncorrectKeyMaterial,
    );
    let material = random_bytes(32);
    check_import(&h, &id, &material, ImportType::ExistingKeyMaterial, None).await.expect("import");
    // The MAC is HMAC-SHA256 under exactly the imported bytes.
    let (mac, _) =
        h.ks.generate_mac(&ctx(), &id, b"m", MacAlgorithm::HmacSha256).await.expect("mac");
    assert_eq!(mac, backend().hmac(MacAlgorithm::HmacSha256, &material, b"m").expect("hmac"));
    assert_err(
        check_import(&h, &id, &random_bytes(32), ImportType::NewKeyMaterial, None).await,
        ErrorKind::UnsupportedOperation,
    );
}

#[tokio::test]
async fn import_rsa_and_ecc_private_keys_with_rsa_aes_key_wrap() {
    use WrappingAlgorithm::{RsaAesKeyWrapSha1, RsaAesKeyWrapSha256};
    let h = harness();
    let cases = [
        (
            KeyPairSpec::Rsa2048,
            RsaAesKeyWrapSha256,
            KeyPairSpec::Rsa3072,
            SigningAlgorithm::RsassaPssSha256,
        ),
        (
            KeyPairSpec::Rsa2048,
            RsaAesKeyWrapSha1,
            KeyPairSpec::Rsa2048,
            SigningAlgorithm::RsassaPkcs1V15Sha384,
        ),
        (
            KeyPairSpec::EccNistP256,
            RsaAesKeyWrapSha256,
            KeyPairSpec::Rsa2048,
            SigningAlgorithm::EcdsaSha256,
        ),
        (
            KeyPairSpec::EccNistP521,
            RsaAesKeyWrapSha1,
            KeyPairSpec::Rsa2048,
            SigningAlgorithm::EcdsaSha512,
        ),
        (
            KeyPairSpec::EccSecgP256k1,
            RsaAesKeyWrapSha256,
            KeyPairSpec::Rsa2048,
            SigningAlgorithm::EcdsaSha256,
        ),
    ];
    for (pair, algorithm, wrapping_spec, signing) in cases {
        let spec = KeySpec::from_kms_name(pair.kms_name()).expect("a key spec");
        let id = h.external_key(spec, KeyUsage::SignVerify).await;
        let pkcs8 = backend().generate_key_pair(pair).expect("generate");
        let original_public =
            backend().load_private_key(pair, pkcs8.expose_secret()).expect("load").public_key_der();
        check_import_as(&h, &id, pkcs8.expose_secret(), (algorithm, wrapping_spec), intact)
            .await
            .unwrap_or_else(|e| panic!("import {pair} wrapped with {}: {e}", algorithm.kms_name()));
        assert_eq!(h.state(&id).await, KeyState::Enabled);
        let info = h.ks.get_public_key(&ctx(), &id).await.expect("get_public_key");
        assert_eq!(info.public_key, original_public, "{pair}");
        // kagi signs with the imported key; the original's public half verifies it on both
        // backends, outside the keystore.
        let (signature, _) =
            h.ks.sign(&ctx(), &id, b"imported", MessageType::Raw, signing).await.expect("sign");
        for kind in BackendKind::ALL {
            let public = kind.backend().load_public_key(pair, &original_public).expect("public");
            public
                .verify(signing, SignInput::Message(b"imported"), &signature)
                .unwrap_or_else(|e| panic!("[{kind}] {pair} signature by the imported key: {e:?}"));
        }
        // Asymmetric material never changes after the first import.
        let other = backend().generate_key_pair(pair).expect("generate");
        assert_err(
            check_import_as(&h, &id, other.expose_secret(), (algorithm, wrapping_spec), intact)
                .await,
            ErrorKind::IncorrectKeyMaterial,
        );
        check_import_as(&h, &id, pkcs8.expose_secret(), (algorithm, wrapping_spec), intact)
            .await
            .expect("re-import the same material");
    }
}

#[tokio::test]
async fn wrapping_algorithms_follow_aws_rules_and_refuse_bad_material() {
    use WrappingAlgorithm::{RsaAesKeyWrapSha256, RsaesOaepSha1, RsaesOaepSha256};
    let h = harness();
    // RSA private keys need an RSA_AES algorithm; RSAES_OAEP with RSA_2048 cannot carry P-521.
    let rsa = h.external_key(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await;
    let p521 = h.external_key(KeySpec::EccNistP521, KeyUsage::SignVerify).await;
    for (id, algorithm) in [(&rsa, RsaesOaepSha256), (&rsa, RsaesOaepSha1), (&p521, RsaesOaepSha1)]
    {
        assert_err(
            h.ks.get_parameters_for_import(&ctx(), id, algorithm, KeyPairSpec::Rsa2048).await,
            ErrorKind::Validation,
        );
    }
    for name in ["RSAES_PKCS1_V1_5", "SM2PKE", "rsa_aes_key_wrap_sha_256"] {
        assert_eq!(WrappingAlgorithm::from_kms_name(name), None, "{name}");
    }
    // A longer wrapping key carries P-521 with RSAES-OAEP.
    let p521_material = backend().generate_key_pair(KeyPairSpec::EccNistP521).expect("p521");
    check_import_as(
        &h,
        &p521,
        p521_material.expose_secret(),
        (RsaesOaepSha256, KeyPairSpec::Rsa3072),
        intact,
    )
    .await
    .expect("P-521 with RSAES_OAEP_SHA_256 and RSA_3072");

    // A KEY_AGREEMENT key imported with RSAES-OAEP agrees as the original does.
    let agreeing = h.external_key(KeySpec::EccNistP256, KeyUsage::KeyAgreement).await;
    let material = backend().generate_key_pair(KeyPairSpec::EccNistP256).expect("p256");
    let with = (RsaesOaepSha256, KeyPairSpec::Rsa2048);
    check_import_as(&h, &agreeing, material.expose_secret(), with, intact).await.expect("import");
    let peer = backend().generate_key_pair(KeyPairSpec::EccNistP256).expect("peer");
    let peer =
        backend().load_private_key(KeyPairSpec::EccNistP256, peer.expose_secret()).expect("peer");
    let (ours, _, _) =
        h.ks.derive_shared_secret(&ctx(), &agreeing, &peer.public_key_der()).await.expect("derive");
    let public = h.ks.get_public_key(&ctx(), &agreeing).await.expect("public key").public_key;
    assert_eq!(ours.expose_secret(), peer.agree(&public).expect("agree").expose_secret());

    // Material of another spec, damaged wrapping, or an ephemeral key that is not AES-256.
    let p384 = h.external_key(KeySpec::EccNistP384, KeyUsage::SignVerify).await;
    let hybrid = (RsaAesKeyWrapSha256, KeyPairSpec::Rsa2048);
    for material in
        [material.expose_secret(), p521_material.expose_secret(), b"not a key".as_slice()]
    {
        assert_err(
            check_import_as(&h, &p384, material, hybrid, intact).await,
            ErrorKind::IncorrectKeyMaterial,
        );
    }
    let p384_material = backend().generate_key_pair(KeyPairSpec::EccNistP384).expect("p384");
    let tampers: [fn(&mut Vec<u8>); 4] = [
        |w| *w.last_mut().expect("bytes") ^= 1,
        |w| w[0] ^= 1,
        |w| w.truncate(256 + 8),
        |w| w.truncate(256),
    ];
    for tamper in tampers {
        assert_err(
            check_import_as(&h, &p384, p384_material.expose_secret(), hybrid, tamper).await,
            ErrorKind::IncorrectKeyMaterial,
        );
    }
    let params =
        h.ks.get_parameters_for_import(&ctx(), &p384, hybrid.0, hybrid.1).await.expect("params");
    let public = backend().load_public_key(KeyPairSpec::Rsa2048, &params.public_key).expect("key");
    let aes_128 = random_bytes(16);
    let mut wrapped = public.encrypt_oaep(OaepHash::Sha256, &aes_128).expect("oaep");
    wrapped.extend(random_bytes(40));
    let request = ImportRequest {
        import_token: &params.import_token,
        encrypted_key_material: &wrapped,
        valid_to: None,
        import_type: ImportType::ExistingKeyMaterial,
    };
    assert_err(
        h.ks.import_key_material(&ctx(), &p384, request).await,
        ErrorKind::IncorrectKeyMaterial,
    );
    assert_eq!(h.state(&p384).await, KeyState::PendingImport);
    check_import_as(&h, &p384, p384_material.expose_secret(), hybrid, intact)
        .await
        .expect("import");
}

#[tokio::test]
async fn import_hmac_and_symmetric_material_with_rsa_aes_key_wrap() {
    let h = harness();
    let hybrid = (WrappingAlgorithm::RsaAesKeyWrapSha256, KeyPairSpec::Rsa2048);
    // AWS's bounds: HMAC_224 28–64, HMAC_256 32–64, HMAC_384 48–128, HMAC_512 64–128 bytes.
    for (spec, algorithm, min, max) in [
        (KeySpec::Hmac224, MacAlgorithm::HmacSha224, 28, 64),
        (KeySpec::Hmac256, MacAlgorithm::HmacSha256, 32, 64),
        (KeySpec::Hmac384, MacAlgorithm::HmacSha384, 48, 128),
        (KeySpec::Hmac512, MacAlgorithm::HmacSha512, 64, 128),
    ] {
        let id = h.external_key(spec, KeyUsage::GenerateVerifyMac).await;
        for len in [min - 1, max + 1] {
            assert_err(
                check_import_as(&h, &id, &random_bytes(len), hybrid, intact).await,
                ErrorKind::IncorrectKeyMaterial,
            );
        }
        let material = random_bytes(max);
        check_import_as(&h, &id, &material, hybrid, intact).await.expect("import");
        let (mac, _) = h.ks.generate_mac(&ctx(), &id, b"message", algorithm).await.expect("mac");
        let local = backend().hmac(algorithm, &material, b"message").expect("hmac");
        assert_eq!(mac, local, "{spec}: kagi's MAC is the HMAC under the imported bytes");
        h.ks.verify_mac(&ctx(), &id, b"message", algorithm, &local).await.expect("verify_mac");
    }
    // A symmetric key imported this way decrypts what a key of the same bytes encrypted.
    let id = h.external().await;
    let material = random_bytes(32);
    check_import_as(&h, &id, &material, hybrid, intact).await.expect("import");
    let blob = h.encrypt(&id, b"hybrid", &no_context()).await;
    assert_eq!(h.decrypt(&blob, &no_context()).await.expect("decrypt"), b"hybrid");
    assert_err(
        check_import_as(&h, &id, &random_bytes(16), hybrid, intact).await,
        ErrorKind::IncorrectKeyMaterial,
    );
}

// === 14. persistence ===

#[tokio::test]
async fn reopen_keeps_keys_and_refuses_wrong_root_or_newer_schema() {
    let h = harness();
    let sym = h.symmetric().await;
    let signer = h.create(KeySpec::EccNistP256, KeyUsage::SignVerify).await.record.id;
    let mac = h.create(KeySpec::Hmac256, KeyUsage::GenerateVerifyMac).await.record.id;
    h.ks.create_alias(&ctx(), "alias/persist", &sym).await.expect("alias");
    h.ks.rotate_key_on_demand(&ctx(), &sym).await.expect("rotate");
    h.ks.tag_resource(&ctx(), &sym, &context(&[("k", "v")])).await.expect("tag");
    let c = context(&[("p", "1")]);
    let blob = h.encrypt(&sym, b"survives", &c).await;
    let (sig, _) =
        h.ks.sign(&ctx(), &signer, b"m", MessageType::Raw, SigningAlgorithm::EcdsaSha256)
            .await
            .expect("sign");
    let (tag, _) =
        h.ks.generate_mac(&ctx(), &mac, b"m", MacAlgorithm::HmacSha256).await.expect("mac");
    let mut before = Vec::new();
    for id in [&sym, &signer, &mac] {
        before.push(h.ks.describe_key(&ctx(), id).await.expect("describe"));
    }
    let Harness { ks, clock, audit, dir } = h;
    drop(ks);

    let reopened = open_at(dir.path(), &clock, &audit).expect("reopen");
    for (id, old) in [&sym, &signer, &mac].into_iter().zip(&before) {
        let new = reopened.describe_key(&ctx(), id).await.expect("describe");
        assert_eq!(new.record, old.record);
        assert_eq!(new.arn, old.arn);
        assert_eq!(new.current_material_id, old.current_material_id);
        assert_eq!(new.valid_to, old.valid_to);
    }
    let out = reopened
        .decrypt(&ctx(), &blob, &c, Some("alias/persist"), None)
        .await
        .expect("decrypt after reopen");
    assert_eq!(out.plaintext.expose_secret(), b"survives");
    reopened
        .verify(&ctx(), &signer, b"m", MessageType::Raw, SigningAlgorithm::EcdsaSha256, &sig)
        .await
        .expect("verify after reopen");
    reopened
        .verify_mac(&ctx(), &mac, b"m", MacAlgorithm::HmacSha256, &tag)
        .await
        .expect("verify_mac after reopen");
    drop(reopened);

    // init refuses a directory that holds a keystore.
    assert!(Keystore::init(backend(), dir.path(), &RootKeySource::File).is_err());

    // A wrong root key: open fails, and nothing is replaced.
    let root_path = dir.path().join("root.key");
    let good_root = std::fs::read(&root_path).expect("root key");
    std::fs::write(&root_path, [7u8; 32]).expect("overwrite root key");
    assert!(open_at(dir.path(), &clock, &audit).is_err());
    std::fs::write(&root_path, [7u8; 31]).expect("short root key");
    assert!(open_at(dir.path(), &clock, &audit).is_err());
    std::fs::write(&root_path, &good_root).expect("restore root key");
    let restored = open_at(dir.path(), &clock, &audit).expect("the right key opens it");
    restored.describe_key(&ctx(), &sym).await.expect("still there");
    drop(restored);

    // A database from a newer kagi (PostgreSQL's check: store::tests).
    if !on_postgres() {
        let db = rusqlite::Connection::open(dir.path().join("keystore.db")).expect("sqlite");
        db.execute("UPDATE meta SET value = 99 WHERE name = 'schema_version'", [])
            .expect("update schema version");
        assert!(open_at(dir.path(), &clock, &audit).is_err());
    }

    // A directory that holds no keystore.
    let empty = tempfile::tempdir().expect("tempdir");
    assert!(open_at(empty.path(), &clock, &audit).is_err());
    assert!(!empty.path().join("keystore.db").exists(), "no silent new keystore");
}

// === 15. concurrency ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_make_contiguous_versions() {
    let h = harness();
    let id = h.symmetric().await;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let ks = Arc::clone(&h.ks);
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                ks.rotate_key_on_demand(&ctx(), &id).await.expect("rotate");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    check_versions_consistent(&h, &id, 21).await;
    let meta = h.ks.describe_key(&ctx(), &id).await.expect("describe");
    assert_eq!(meta.record.on_demand_rotations, 20);
    assert_eq!(blob_version(&h.encrypt(&id, b"x", &no_context()).await), 21);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotation_and_deletion() {
    let h = harness();
    for _ in 0..5 {
        let id = h.symmetric().await;
        let rotate = {
            let ks = Arc::clone(&h.ks);
            let id = id.clone();
            tokio::spawn(async move {
                let mut done = 0u32;
                for _ in 0..3 {
                    match ks.rotate_key_on_demand(&ctx(), &id).await {
                        Ok(_) => done += 1,
                        Err(error) => assert_eq!(error.kind(), ErrorKind::InvalidState, "{error}"),
                    }
                }
                done
            })
        };
        let schedule = {
            let ks = Arc::clone(&h.ks);
            let id = id.clone();
            tokio::spawn(async move { ks.schedule_key_deletion(&ctx(), &id, Some(7)).await })
        };
        let rotated = rotate.await.expect("task");
        schedule.await.expect("task").expect("schedule");
        assert_eq!(h.state(&id).await, KeyState::PendingDeletion);
        check_versions_consistent(&h, &id, 1 + rotated).await;
        let record = h.ks.store().key(&id).await.expect("store").expect("key");
        assert_eq!(record.on_demand_rotations, rotated);
        assert_eq!(record.deletion_date, Some(T0 + 7 * DAY));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_encrypts_and_rotations() {
    let h = harness();
    let id = h.symmetric().await;
    let mut encrypts = Vec::new();
    for i in 0..200u32 {
        let ks = Arc::clone(&h.ks);
        let id = id.clone();
        encrypts.push(tokio::spawn(async move {
            let plaintext = i.to_be_bytes();
            let c = context(&[("i", &i.to_string())]);
            let out = ks
                .encrypt(&ctx(), &id, &plaintext, &c, EncryptionAlgorithm::SymmetricDefault)
                .await
                .expect("encrypt");
            (i, out.ciphertext_blob)
        }));
    }
    let rotations = {
        let ks = Arc::clone(&h.ks);
        let id = id.clone();
        tokio::spawn(async move {
            for _ in 0..5 {
                ks.rotate_key_on_demand(&ctx(), &id).await.expect("rotate");
            }
        })
    };
    let mut blobs = Vec::new();
    for task in encrypts {
        blobs.push(task.await.expect("task"));
    }
    rotations.await.expect("task");
    check_versions_consistent(&h, &id, 6).await;
    for (i, blob) in &blobs {
        let c = context(&[("i", &i.to_string())]);
        assert_eq!(
            h.decrypt(blob, &c).await.expect("decrypt"),
            i.to_be_bytes(),
            "blob {i} (version {})",
            blob_version(blob)
        );
        assert!((1..=6).contains(&blob_version(blob)));
    }
    // Not asserted here: that the next Encrypt uses version 6. An Encrypt that loaded the key
    // while the last rotation committed may have cached the older version (the stale-cache
    // bug shown deterministically by `stale_cache_after_concurrent_disable`).
}

// === 16. secrets and audit ===

#[tokio::test]
async fn debug_output_hides_plaintext() {
    let h = harness();
    let id = h.symmetric().await;
    let plaintext = b"TOPSECRET-plaintext-0123";
    let blob = h.encrypt(&id, plaintext, &no_context()).await;
    let out = h.ks.decrypt(&ctx(), &blob, &no_context(), None, None).await.expect("decrypt");
    let data_key =
        h.ks.generate_data_key(&ctx(), &id, DataKeySize::Aes256, &no_context(), true)
            .await
            .expect("data key");
    let pair =
        h.ks.generate_data_key_pair(&ctx(), &id, KeyPairSpec::EccNistP256, &no_context(), true)
            .await
            .expect("data key pair");
    let random = h.ks.generate_random(&ctx(), 16).await.expect("random");
    let cases: [(String, &[u8]); 4] = [
        (format!("{out:?} {out:#?}"), out.plaintext.expose_secret()),
        (
            format!("{data_key:?} {data_key:#?}"),
            data_key.plaintext.as_ref().expect("plaintext").expose_secret(),
        ),
        (
            format!("{pair:?}"),
            pair.private_key_plaintext.as_ref().expect("private").expose_secret(),
        ),
        (format!("{random:?}"), random.expose_secret()),
    ];
    for (shown, secret) in &cases {
        check_no_secret_in(shown, secret);
    }
    assert!(!cases[0].0.contains("TOPSECRET"));
    // The keystore's own Debug shows no key material either (the cache holds unsealed keys).
    let shown = format!("{:?}", h.ks);
    check_no_secret_in(&shown, data_key.plaintext.as_ref().expect("plaintext").expose_secret());
}

fn check_no_secret_in(shown: &str, secret: &[u8]) {
    let hex_lower = hex::encode(secret);
    for window in hex_lower.as_bytes().chunks(16).filter(|w| w.len() == 16) {
        let window = std::str::from_utf8(window).expect("hex");
        assert!(!shown.contains(window), "hex of the secret in {shown}");
        assert!(!shown.contains(&window.to_uppercase()), "HEX of the secret in {shown}");
    }
    let list = format!("{:?}", &secret[..secret.len().min(6)]);
    let list = list.trim_end_matches(']');
    assert!(!shown.contains(list), "bytes of the secret in {shown}");
}

#[tokio::test]
async fn audit_events_name_keys_not_secrets() {
    let h = harness();
    let id = h.symmetric().await;
    let c = context(&[("tenant", "very-sensitive-value")]);
    let blob = h.encrypt(&id, b"audited plaintext", &c).await;
    h.decrypt(&blob, &c).await.expect("decrypt");
    assert_err(h.decrypt(&blob, &no_context()).await, ErrorKind::InvalidCiphertext);
    let events = h.audit.events();
    let encrypt = events.iter().find(|e| e.operation == "Encrypt").expect("Encrypt event");
    assert_eq!(encrypt.key_arn.as_deref(), Some(h.ks.key_arn(&id).as_str()));
    assert_eq!(encrypt.encryption_context.keys().collect::<Vec<_>>(), ["tenant"]);
    assert_eq!(encrypt.outcome, Outcome::Success);
    assert!(encrypt.key_material_id.is_some());
    assert_eq!(encrypt.principal, "test");
    assert_eq!(encrypt.request_id, "r");
    assert_eq!(encrypt.time, T0);
    let failed = events
        .iter()
        .find(|e| e.operation == "Decrypt" && e.outcome == Outcome::Failure)
        .expect("failed Decrypt event");
    assert_eq!(failed.error_code, Some("InvalidCiphertextException"));
    for event in &events {
        // As the default sink writes it (keys only).
        let json = crate::audit::render_keys_only(event);
        assert!(!json.contains("very-sensitive-value"), "{json}");
        assert!(!json.contains("audited plaintext"), "{json}");
    }
    assert_eq!(
        events.iter().map(|e| e.operation.as_str()).collect::<Vec<_>>(),
        ["CreateKey", "Encrypt", "Decrypt", "Decrypt"]
    );
}

#[tokio::test]
async fn an_unauditable_operation_fails() {
    let h = harness();
    let id = h.symmetric().await;
    let blob = h.encrypt(&id, b"x", &no_context()).await;
    h.audit.fail.store(true, Ordering::SeqCst);
    assert_err(
        h.ks.encrypt(&ctx(), &id, b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault).await,
        ErrorKind::Internal,
    );
    assert_err(h.decrypt(&blob, &no_context()).await, ErrorKind::Internal);
    // A change is audited before it is committed: one that cannot be audited is not made.
    assert_err(h.ks.schedule_key_deletion(&ctx(), &id, None).await, ErrorKind::Internal);
    h.audit.fail.store(false, Ordering::SeqCst);
    assert_eq!(h.state(&id).await, KeyState::Enabled);
}

// === 17. audit before commit: an unaudited change changes nothing ===

/// Runs `change` while the audit sink fails, and requires KMSInternalException.
async fn check_unaudited<T>(h: &Harness, change: impl Future<Output = Result<T, Error>>) {
    h.audit.fail.store(true, Ordering::SeqCst);
    let result = change.await;
    h.audit.fail.store(false, Ordering::SeqCst);
    assert_err(result, ErrorKind::Internal);
}

#[tokio::test]
async fn unaudited_create_key_creates_nothing() {
    let h = harness();
    h.symmetric().await;
    check_unaudited(&h, h.ks.create_key(&ctx(), CreateKeyRequest::default())).await;
    assert_eq!(h.ks.store().keys().await.expect("keys").len(), 1);
}

#[tokio::test]
async fn unaudited_disable_key_leaves_the_key_enabled() {
    let h = harness();
    let id = h.symmetric().await;
    check_unaudited(&h, h.ks.disable_key(&ctx(), &id)).await;
    assert_eq!(h.state(&id).await, KeyState::Enabled);
    h.encrypt(&id, b"still works", &no_context()).await;
}

#[tokio::test]
async fn unaudited_schedule_key_deletion_schedules_nothing() {
    let h = harness();
    let id = h.symmetric().await;
    check_unaudited(&h, h.ks.schedule_key_deletion(&ctx(), &id, Some(7))).await;
    let record = h.ks.store().key(&id).await.expect("store").expect("key");
    assert_eq!((record.state, record.deletion_date), (KeyState::Enabled, None));
}

#[tokio::test]
async fn unaudited_rotation_adds_no_version() {
    let h = harness();
    let id = h.symmetric().await;
    let before = h.ks.store().versions(&id).await.expect("versions");
    check_unaudited(&h, h.ks.rotate_key_on_demand(&ctx(), &id)).await;
    let after = h.ks.store().versions(&id).await.expect("versions");
    assert_eq!(after.len(), before.len());
    let record = h.ks.store().key(&id).await.expect("store").expect("key");
    assert_eq!((record.current_version, record.on_demand_rotations), (1, 0));
}

#[tokio::test]
async fn unaudited_create_alias_creates_no_alias() {
    let h = harness();
    let id = h.symmetric().await;
    check_unaudited(&h, h.ks.create_alias(&ctx(), "alias/unaudited", &id)).await;
    assert!(h.ks.store().alias("alias/unaudited").await.expect("store").is_none());
    // The name is free: creating it (audited) works.
    h.ks.create_alias(&ctx(), "alias/unaudited", &id).await.expect("create alias");
}

#[tokio::test]
async fn unaudited_sweep_deletes_nothing() {
    let h = harness();
    let id = h.symmetric().await;
    h.ks.schedule_key_deletion(&ctx(), &id, Some(7)).await.expect("schedule");
    h.clock.advance(8 * DAY);
    check_unaudited(&h, h.ks.sweep(&ctx())).await;
    assert_eq!(h.state(&id).await, KeyState::PendingDeletion);
    let report = h.ks.sweep(&ctx()).await.expect("sweep");
    assert_eq!(report.deleted, [h.ks.key_arn(&id)]);
}

#[tokio::test]
async fn a_change_is_audited_before_its_commit_and_a_failed_commit_after() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let audit = Arc::new(RecordingSink::default());
    let (ks, store) = pausing_keystore_with(dir.path(), &clock, Arc::clone(&audit) as _);
    let id = ks.create_key(&ctx(), CreateKeyRequest::default()).await.expect("create").record.id;
    let created = audit.events().pop().expect("CreateKey event");
    assert_eq!((created.operation.as_str(), created.outcome), ("CreateKey", Outcome::Success));
    assert!(created.key_material_id.is_some(), "names the first version's material");
    // The store refuses the commit after the success line was written.
    store.fail_updates.store(true, Ordering::SeqCst);
    let request = OpContext { request_id: "r-disable".into(), ..ctx() };
    assert_err(ks.disable_key(&request, &id).await, ErrorKind::Internal);
    store.fail_updates.store(false, Ordering::SeqCst);
    let events = audit.events();
    let lines: Vec<_> = events[1..]
        .iter()
        .map(|e| (e.operation.as_str(), e.request_id.as_str(), e.outcome, e.error_code))
        .collect();
    assert_eq!(
        lines,
        [
            ("DisableKey", "r-disable", Outcome::Success, None),
            ("DisableKey", "r-disable", Outcome::Failure, Some("KMSInternalException")),
        ]
    );
    assert_eq!(ks.store().key(&id).await.expect("store").expect("key").state, KeyState::Enabled);
    // A rotation's line names the new material.
    ks.rotate_key_on_demand(&ctx(), &id).await.expect("rotate");
    let rotated = audit.events().pop().expect("event");
    let versions = ks.store().versions(&id).await.expect("versions");
    assert_eq!(rotated.key_material_id.as_deref(), Some(versions[1].material_id.as_str()));
}

/// The (paused) time since `start` is `timeout`, to the timer's 1 ms resolution.
fn check_waited(start: tokio::time::Instant, timeout: std::time::Duration) {
    let waited = start.elapsed();
    assert!(
        waited >= timeout && waited <= timeout + std::time::Duration::from_millis(2),
        "{waited:?}"
    );
}

/// Never completes a record.
#[derive(Debug)]
struct StuckSink;

impl AuditSink for StuckSink {
    fn record(&self, _: &AuditEvent) -> AuditFuture<'_> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test]
async fn a_stuck_sink_fails_the_operation_within_its_timeout() {
    if on_postgres() {
        // Paused time also runs out the database's deadline: this checks the audit's alone.
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    Keystore::init(backend(), dir.path(), &RootKeySource::File).expect("init");
    let clock = Arc::new(ManualClock::new(T0));
    let recording = Arc::new(RecordingSink::default());
    let ks = open_at(dir.path(), &clock, &recording).expect("open");
    let id = ks.create_key(&ctx(), CreateKeyRequest::default()).await.expect("create").record.id;
    drop(ks);
    let stuck = Keystore::open(
        backend(),
        dir.path(),
        &RootKeySource::File,
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::new(StuckSink),
        Partition::default(),
    )
    .expect("open");
    // Time stands still unless the runtime is idle, and then jumps to the next timer: the test
    // waits no real time.
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    assert_err(stuck.disable_key(&ctx(), &id).await, ErrorKind::Internal);
    check_waited(start, crate::audit::DEFAULT_TIMEOUT);
    let start = tokio::time::Instant::now();
    let encrypt = stuck
        .encrypt(&ctx(), &id, b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault)
        .await;
    assert_err(encrypt, ErrorKind::Internal);
    check_waited(start, crate::audit::DEFAULT_TIMEOUT);
    assert_eq!(stuck.store().key(&id).await.expect("store").expect("key").state, KeyState::Enabled);
}

#[tokio::test]
async fn a_stuck_trail_fails_within_its_timeout_and_its_late_line_is_corrected() {
    use crate::audit::{AuditConfig, FileSink, verify};
    let dir = tempfile::tempdir().expect("tempdir");
    Keystore::init(backend(), dir.path(), &RootKeySource::File).expect("init");
    let config =
        AuditConfig { timeout: std::time::Duration::from_secs(2), ..AuditConfig::default() };
    let sink = Arc::new(FileSink::open(dir.path(), &config, backend()).expect("trail"));
    let clock = Arc::new(ManualClock::new(T0));
    let ks = Keystore::open(
        backend(),
        dir.path(),
        &RootKeySource::File,
        Arc::clone(&clock) as Arc<dyn Clock>,
        Arc::clone(&sink) as Arc<dyn AuditSink>,
        Partition::default(),
    )
    .expect("open");
    let id = ks.create_key(&ctx(), CreateKeyRequest::default()).await.expect("create").record.id;
    // The disk hangs: the writer is held before its next batch.
    let (release, gate) = std::sync::mpsc::channel();
    *sink.hooks().gate.lock().expect("gate") = Some(gate);
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let request = OpContext { request_id: "r-stuck".into(), ..ctx() };
    assert_err(ks.disable_key(&request, &id).await, ErrorKind::Internal);
    check_waited(start, config.timeout);
    tokio::time::resume();
    assert_eq!(ks.store().key(&id).await.expect("store").expect("key").state, KeyState::Enabled);
    // The disk recovers: the late success line is followed by its correction.
    release.send(()).expect("release");
    ks.enable_key(&ctx(), &id).await.expect("audited again");
    let trail = dir.path().join("audit");
    verify::verify(&trail).expect("the trail verifies");
    let stuck: Vec<_> = verify::read_records(&trail)
        .expect("records")
        .into_iter()
        .filter(|r| r.request_id == "r-stuck")
        .map(|r| (r.operation, r.outcome, r.error_code))
        .collect();
    assert_eq!(
        stuck,
        [
            ("DisableKey".to_owned(), Outcome::Success, None),
            ("DisableKey".to_owned(), Outcome::Failure, Some("KMSInternalException".to_owned())),
        ]
    );
}

#[tokio::test]
async fn a_failing_trail_fails_the_change_and_the_next_one_succeeds() {
    use crate::audit::{AuditConfig, FileSink, verify};
    let dir = tempfile::tempdir().expect("tempdir");
    Keystore::init(backend(), dir.path(), &RootKeySource::File).expect("init");
    let sink =
        Arc::new(FileSink::open(dir.path(), &AuditConfig::default(), backend()).expect("trail"));
    let ks = Keystore::open(
        backend(),
        dir.path(),
        &RootKeySource::File,
        Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>,
        Arc::clone(&sink) as Arc<dyn AuditSink>,
        Partition::default(),
    )
    .expect("open");
    let id = ks.create_key(&ctx(), CreateKeyRequest::default()).await.expect("create").record.id;
    sink.hooks().fail_sync.store(true, Ordering::SeqCst);
    assert_err(ks.schedule_key_deletion(&ctx(), &id, Some(7)).await, ErrorKind::Internal);
    sink.hooks().fail_sync.store(false, Ordering::SeqCst);
    assert_eq!(ks.store().key(&id).await.expect("store").expect("key").state, KeyState::Enabled);
    ks.schedule_key_deletion(&ctx(), &id, Some(7)).await.expect("audited this time");
    let trail = dir.path().join("audit");
    verify::verify(&trail).expect("the trail verifies");
    let operations: Vec<_> = verify::read_records(&trail)
        .expect("records")
        .into_iter()
        .map(|r| (r.operation, r.outcome))
        .collect();
    // The failed batch left nothing; its correction line (queued, not awaited) may precede
    // the successful attempt.
    assert_eq!(operations.first(), Some(&("CreateKey".to_owned(), Outcome::Success)));
    assert_eq!(operations.last(), Some(&("ScheduleKeyDeletion".to_owned(), Outcome::Success)));
    assert!(operations.len() <= 3, "{operations:?}");
}

// === bugs shown with a store that pauses at chosen points ===

/// Holds a store call until the test releases it.
#[derive(Debug)]
struct Gate {
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

fn gate() -> (Gate, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let (reached_tx, reached_rx) = oneshot::channel();
    let (release_tx, release_rx) = oneshot::channel();
    (Gate { reached: reached_tx, release: release_rx }, reached_rx, release_tx)
}

/// A SQLite store whose next `versions` or `keys` call, when armed, pauses after reading.
#[derive(Debug)]
struct PausingStore {
    inner: SqliteStore,
    versions_gate: Mutex<Option<Gate>>,
    keys_gate: Mutex<Option<Gate>>,
    /// Every `update_key` fails while set.
    fail_updates: AtomicBool,
}

fn paused<'a, T: Send + 'a>(gate: Option<Gate>, future: StoreFuture<'a, T>) -> StoreFuture<'a, T> {
    Box::pin(async move {
        let result = future.await;
        if let Some(gate) = gate {
            let _ = gate.reached.send(());
            let _ = gate.release.await;
        }
        result
    })
}

impl Store for PausingStore {
    fn insert_key(&self, key: KeyRecord, versions: Vec<VersionRecord>) -> StoreFuture<'_, ()> {
        self.inner.insert_key(key, versions)
    }
    fn key(&self, key_id: &str) -> StoreFuture<'_, Option<KeyRecord>> {
        self.inner.key(key_id)
    }
    fn keys(&self) -> StoreFuture<'_, Vec<KeyRecord>> {
        let gate = self.keys_gate.lock().expect("gate").take();
        paused(gate, self.inner.keys())
    }
    fn versions(&self, key_id: &str) -> StoreFuture<'_, Vec<VersionRecord>> {
        let gate = self.versions_gate.lock().expect("gate").take();
        paused(gate, self.inner.versions(key_id))
    }
    fn update_key(&self, update: KeyUpdate) -> StoreFuture<'_, ()> {
        if self.fail_updates.load(Ordering::SeqCst) {
            return Box::pin(std::future::ready(Err(store::StoreError::Database(
                "the disk is full".into(),
            ))));
        }
        self.inner.update_key(update)
    }
    fn alias(&self, name: &str) -> StoreFuture<'_, Option<AliasRecord>> {
        self.inner.alias(name)
    }
    fn aliases(&self) -> StoreFuture<'_, Vec<AliasRecord>> {
        self.inner.aliases()
    }
    fn put_alias(&self, alias: AliasRecord, write: AliasWrite) -> StoreFuture<'_, ()> {
        self.inner.put_alias(alias, write)
    }
    fn delete_alias(&self, name: &str) -> StoreFuture<'_, ()> {
        self.inner.delete_alias(name)
    }
    fn insert_import_token(&self, token: ImportTokenRecord) -> StoreFuture<'_, ()> {
        self.inner.insert_import_token(token)
    }
    fn import_token(&self, token_id: &str) -> StoreFuture<'_, Option<ImportTokenRecord>> {
        self.inner.import_token(token_id)
    }
    fn snapshot(&self) -> StoreFuture<'_, store::StoreSnapshot> {
        self.inner.snapshot()
    }
    fn restore(&self, snapshot: store::StoreSnapshot) -> StoreFuture<'_, ()> {
        self.inner.restore(snapshot)
    }
    fn changes(&self, cursor: Option<i64>) -> StoreFuture<'_, store::Changes> {
        self.inner.changes(cursor)
    }
    fn try_lease(&self, name: &str, holder: &str, ttl_seconds: i64) -> StoreFuture<'_, bool> {
        self.inner.try_lease(name, holder, ttl_seconds)
    }
    fn release_lease(&self, name: &str, holder: &str) -> StoreFuture<'_, ()> {
        self.inner.release_lease(name, holder)
    }
    fn meta(&self, name: &str) -> StoreFuture<'_, Option<Vec<u8>>> {
        self.inner.meta(name)
    }
    fn init_meta(&self, name: &str, value: Vec<u8>) -> StoreFuture<'_, Vec<u8>> {
        self.inner.init_meta(name, value)
    }

    fn set_meta(&self, name: &str, value: Option<Vec<u8>>) -> StoreFuture<'_, ()> {
        self.inner.set_meta(name, value)
    }
}

fn pausing_keystore(dir: &Path, clock: &Arc<ManualClock>) -> (Arc<Keystore>, Arc<PausingStore>) {
    pausing_keystore_with(dir, clock, Arc::new(RecordingSink::default()))
}

fn pausing_keystore_with(
    dir: &Path,
    clock: &Arc<ManualClock>,
    audit: Arc<dyn AuditSink>,
) -> (Arc<Keystore>, Arc<PausingStore>) {
    let root = RootKey::create(backend(), dir, &RootKeySource::File).expect("root");
    let store = Arc::new(PausingStore {
        inner: SqliteStore::open(&dir.join("keystore.db")).expect("store"),
        versions_gate: Mutex::new(None),
        keys_gate: Mutex::new(None),
        fail_updates: AtomicBool::new(false),
    });
    let ks = Keystore::with_store(
        backend(),
        Arc::clone(&store) as Arc<dyn Store>,
        root,
        Arc::clone(clock) as Arc<dyn Clock>,
        audit,
        Partition::default(),
    );
    (Arc::new(ks), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_cache_after_concurrent_disable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let (ks, store) = pausing_keystore(dir.path(), &clock);
    let id = ks.create_key(&ctx(), CreateKeyRequest::default()).await.expect("create").record.id;
    // An Encrypt loads the key (cache miss) and is paused after reading it from the store.
    let (g, reached, release) = gate();
    *store.versions_gate.lock().expect("gate") = Some(g);
    let encrypt = {
        let ks = Arc::clone(&ks);
        let id = id.clone();
        tokio::spawn(async move {
            ks.encrypt(&ctx(), &id, b"x", &no_context(), EncryptionAlgorithm::SymmetricDefault)
                .await
        })
    };
    reached.await.expect("encrypt reached the store");
    // Meanwhile the key is disabled (and the cache invalidated).
    ks.disable_key(&ctx(), &id).await.expect("disable");
    release.send(()).expect("release");
    // The paused Encrypt may succeed: it started before DisableKey returned.
    encrypt.await.expect("task").expect("encrypt that raced the disable");
    assert_eq!(ks.store().key(&id).await.expect("store").expect("key").state, KeyState::Disabled);
    // The load that raced the disable must not fill the cache with the stale record: an
    // Encrypt that starts after DisableKey returned is refused.
    let result =
        ks.encrypt(&ctx(), &id, b"y", &no_context(), EncryptionAlgorithm::SymmetricDefault).await;
    assert_err(result, ErrorKind::Disabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_racing_cancel_key_deletion() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(T0));
    let (ks, store) = pausing_keystore(dir.path(), &clock);
    let id = ks.create_key(&ctx(), CreateKeyRequest::default()).await.expect("create").record.id;
    let blob = ks
        .encrypt(&ctx(), &id, b"keep me", &no_context(), EncryptionAlgorithm::SymmetricDefault)
        .await
        .expect("encrypt")
        .ciphertext_blob;
    ks.schedule_key_deletion(&ctx(), &id, Some(7)).await.expect("schedule");
    clock.advance(7 * DAY);
    // The sweeper lists the keys and is paused right after.
    let (g, reached, release) = gate();
    *store.keys_gate.lock().expect("gate") = Some(g);
    let sweep = {
        let ks = Arc::clone(&ks);
        tokio::spawn(async move { ks.sweep(&ctx()).await })
    };
    reached.await.expect("sweep listed the keys");
    // The operator cancels the deletion in time: the call succeeds.
    ks.cancel_key_deletion(&ctx(), &id).await.expect("cancel");
    release.send(()).expect("release");
    let report = sweep.await.expect("task").expect("sweep");
    // The cancellation wins: the sweeper re-checks the fresh record and does nothing.
    assert!(report.deleted.is_empty(), "{report:?}");
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(ks.store().key(&id).await.expect("store").expect("key").state, KeyState::Disabled);
    ks.enable_key(&ctx(), &id).await.expect("enable");
    let plaintext = ks.decrypt(&ctx(), &blob, &no_context(), None, None).await.expect("decrypt");
    assert_eq!(plaintext.plaintext.expose_secret(), b"keep me");
}

/// An observer that keeps what it is told.
#[derive(Debug, Default)]
struct RecordingObserver {
    seals: Mutex<Vec<(String, u32, usize)>>,
    events: Mutex<Vec<String>>,
    audit_failures: Mutex<Vec<String>>,
}

impl observe::KeyObserver for RecordingObserver {
    fn sealed(&self, key_id: &str, version: u32, plaintext_bytes: usize) {
        self.seals.lock().expect("lock").push((key_id.to_owned(), version, plaintext_bytes));
    }

    fn recorded(&self, event: &AuditEvent) {
        self.events.lock().expect("lock").push(event.operation.clone());
    }

    fn audit_failed(&self, operation: &str) {
        self.audit_failures.lock().expect("lock").push(operation.to_owned());
    }
}

#[tokio::test]
async fn the_observer_hears_every_seal_by_version_and_every_audited_event() {
    let h = harness();
    let observer = Arc::new(RecordingObserver::default());
    assert!(h.ks.set_observer(Arc::clone(&observer) as Arc<dyn observe::KeyObserver>));
    assert!(!h.ks.set_observer(Arc::new(RecordingObserver::default())), "one observer");
    let id = h.symmetric().await;
    let sym = EncryptionAlgorithm::SymmetricDefault;
    h.ks.encrypt(&ctx(), &id, b"12345", &no_context(), sym).await.expect("encrypt");
    h.ks.rotate_key_on_demand(&ctx(), &id).await.expect("rotate");
    h.ks.encrypt(&ctx(), &id, b"123", &no_context(), sym).await.expect("encrypt");
    h.ks.generate_data_key(&ctx(), &id, DataKeySize::Aes256, &no_context(), true)
        .await
        .expect("data key");
    let seals = observer.seals.lock().expect("lock").clone();
    assert_eq!(seals, [(id.clone(), 1, 5), (id.clone(), 2, 3), (id.clone(), 2, 32)]);
    let events = observer.events.lock().expect("lock").clone();
    assert_eq!(events, ["CreateKey", "Encrypt", "RotateKeyOnDemand", "Encrypt", "GenerateDataKey"]);
    h.audit.fail.store(true, Ordering::SeqCst);
    let failed = h.ks.encrypt(&ctx(), &id, b"x", &no_context(), sym).await;
    assert_eq!(failed.map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::Internal));
    assert_eq!(*observer.audit_failures.lock().expect("lock"), ["Encrypt"]);
}

#[tokio::test]
async fn a_refusal_for_the_key_state_names_the_key_in_its_audit_line() {
    let h = harness();
    let id = h.symmetric().await;
    h.ks.schedule_key_deletion(&ctx(), &id, Some(7)).await.expect("schedule");
    let sym = EncryptionAlgorithm::SymmetricDefault;
    let refused = h.ks.encrypt(&ctx(), &id, b"x", &no_context(), sym).await;
    assert_eq!(refused.map(|_| ()).map_err(|e| e.kind()), Err(ErrorKind::InvalidState));
    let last = h.audit.events().pop().expect("a line");
    assert_eq!(last.operation, "Encrypt");
    assert_eq!(last.outcome, Outcome::Failure);
    assert_eq!(last.key_arn, Some(h.ks.key_arn(&id)));
    // Unknown keys are not named (there is no key to name).
    let missing = h.ks.encrypt(&ctx(), "alias/none", b"x", &no_context(), sym).await;
    assert!(missing.is_err());
    assert_eq!(h.audit.events().pop().expect("a line").key_arn, None);
}

#[tokio::test]
async fn the_inventory_lists_keys_with_versions_and_aliases_without_auditing() {
    let h = harness();
    let id = h.symmetric().await;
    let other = h.external().await;
    h.ks.create_alias(&ctx(), "alias/b", &id).await.expect("alias");
    h.ks.create_alias(&ctx(), "alias/a", &id).await.expect("alias");
    h.ks.rotate_key_on_demand(&ctx(), &id).await.expect("rotate");
    let lines = h.audit.events().len();
    let inventory = h.ks.inventory().await.expect("inventory");
    assert_eq!(h.audit.events().len(), lines, "the inventory is not audited");
    assert_eq!(inventory.len(), 2);
    let key = inventory.iter().find(|k| k.record.id == id).expect("key");
    assert_eq!(key.aliases, ["alias/a", "alias/b"]);
    assert_eq!(key.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(key.material_expiry(), None);
    let pending = inventory.iter().find(|k| k.record.id == other).expect("external");
    assert_eq!(pending.record.state, KeyState::PendingImport);
    assert!(pending.versions.is_empty());
}

#[cfg(feature = "fips")]
mod fips;
mod grants;

mod root_rotation;
