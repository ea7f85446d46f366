//! Tests of the data-key cache against a counting fake key service. Time is paused: ages are
//! reached with `tokio::time::advance`, never by sleeping; concurrency is ordered with a
//! semaphore the test opens, never by timing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use prometheus::Registry;
use tokio::sync::Semaphore;

use super::*;
use crate::audit::AuditEvent;

const ACCOUNT: &str = "arn:aws:kms:us-east-1:111122223333";
const ALICE: &str = "alice";

fn arn(id: &str) -> String {
    format!("{ACCOUNT}:key/{id}")
}

/// A key service that counts its calls, makes a new data key per GenerateDataKey (its bytes
/// and blob numbered by the call), and, when gated, holds each call until the test adds a
/// permit. `alias/…` names resolve to key `k1`.
#[derive(Debug, Default)]
struct CountingKeys {
    generated: AtomicUsize,
    decrypted: AtomicUsize,
    resolved: AtomicUsize,
    fail: AtomicBool,
    gate: Option<Semaphore>,
}

impl CountingKeys {
    fn gated() -> Self {
        Self { gate: Some(Semaphore::new(0)), ..Self::default() }
    }

    fn generated(&self) -> usize {
        self.generated.load(Ordering::SeqCst)
    }

    fn decrypted(&self) -> usize {
        self.decrypted.load(Ordering::SeqCst)
    }

    async fn pass_gate(&self) -> Result<(), KeyServiceError> {
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(KeyServiceError::Kms {
                kind: ErrorKind::Disabled,
                message: "disabled".to_owned(),
            });
        }
        Ok(())
    }

    fn resolve(key: &str) -> String {
        if key.starts_with("alias/") {
            arn("k1")
        } else if is_key_arn(key) {
            key.to_owned()
        } else {
            arn(key)
        }
    }
}

impl KeyService for CountingKeys {
    fn generate_data_key<'a>(
        &'a self,
        _principal: &'a str,
        key: &'a str,
        _context: &'a EncryptionContext,
    ) -> KeyFuture<'a, DataKey> {
        Box::pin(async move {
            let n = self.generated.fetch_add(1, Ordering::SeqCst) + 1;
            self.pass_gate().await?;
            Ok(DataKey {
                plaintext: AesKey::from_slice(&[n as u8; 32]).expect("32 bytes"),
                ciphertext_blob: format!("blob-{n}").into_bytes(),
                key_arn: Self::resolve(key),
            })
        })
    }

    fn decrypt_data_key<'a>(
        &'a self,
        _principal: &'a str,
        blob: &'a [u8],
        _context: &'a EncryptionContext,
        _key: &'a str,
    ) -> KeyFuture<'a, AesKey> {
        Box::pin(async move {
            self.decrypted.fetch_add(1, Ordering::SeqCst);
            self.pass_gate().await?;
            Ok(AesKey::from_slice(&[blob.len() as u8; 32]).expect("32 bytes"))
        })
    }

    fn key_arn<'a>(&'a self, _principal: &'a str, key: &'a str) -> KeyFuture<'a, String> {
        Box::pin(async move {
            self.resolved.fetch_add(1, Ordering::SeqCst);
            Ok(Self::resolve(key))
        })
    }
}

/// A cache over a fresh fake, with its metrics in a registry of their own.
struct Harness {
    keys: Arc<CountingKeys>,
    cache: Arc<CachingKeys>,
    registry: Registry,
}

impl Harness {
    fn new(limits: CacheLimits) -> Self {
        Self::over(CountingKeys::default(), limits)
    }

    fn over(keys: CountingKeys, limits: CacheLimits) -> Self {
        let keys = Arc::new(keys);
        let registry = Registry::new();
        let metrics = EnvelopeMetrics::register(&registry);
        let inner = Arc::clone(&keys) as Arc<dyn KeyService>;
        let cache = Arc::new(CachingKeys::new(inner, limits, Some(metrics)));
        Self { keys, cache, registry }
    }

    /// The data key's blob for `key` and `context`, and its usage handle.
    async fn encrypt(&self, key: &str, context: &EncryptionContext) -> (String, DataKeyUsage) {
        self.encrypt_as(ALICE, key, context).await
    }

    async fn encrypt_as(
        &self,
        principal: &str,
        key: &str,
        context: &EncryptionContext,
    ) -> (String, DataKeyUsage) {
        let (data_key, usage) = self
            .cache
            .generate_data_key_with_usage(principal, key, context)
            .await
            .expect("data key");
        (String::from_utf8(data_key.ciphertext_blob).expect("utf-8"), usage)
    }

    async fn decrypt(&self, blob: &[u8], key: &str) -> AesKey {
        self.cache.decrypt_data_key(ALICE, blob, &context(&[]), key).await.expect("data key")
    }

    /// The value of the series `series` (name and labels as rendered).
    fn metric(&self, series: &str) -> u64 {
        let mut out = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &self.registry.gather(),
            &mut out,
        )
        .expect("encode");
        let text = String::from_utf8(out).expect("utf-8");
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    fn evictions(&self, reason: &str) -> u64 {
        self.metric(&format!("kagi_envelope_data_key_cache_evictions_total{{reason=\"{reason}\"}}"))
    }

    fn lookups(&self, direction: &str, result: &str) -> u64 {
        self.metric(&format!(
            "kagi_envelope_data_key_cache_total{{direction=\"{direction}\",result=\"{result}\"}}"
        ))
    }
}

fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn event(operation: &str, key_arn: Option<&str>, outcome: Outcome) -> AuditEvent {
    AuditEvent {
        time: 0,
        request_id: "r".to_owned(),
        principal: "admin".to_owned(),
        source: "api".to_owned(),
        operation: operation.to_owned(),
        key_arn: key_arn.map(str::to_owned),
        key_material_id: None,
        encryption_context: BTreeMap::new(),
        outcome,
        error_code: None,
        notes: Vec::new(),
    }
}

/// The task's output. A task that never ends fails the test instead of hanging it: with time
/// paused, the timeout fires as soon as nothing else can run.
async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(3600), task)
        .await
        .expect("the task ended")
        .expect("the task did not panic")
}

/// Yields until `done` holds; the tasks it waits for need no time to pass.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the condition never held");
}

#[tokio::test(start_paused = true)]
async fn data_keys_are_reused_within_limits() {
    let h = Harness::new(CacheLimits::default());
    let ctx = context(&[("bucket", "b1")]);
    let (first, usage) = h.encrypt("k1", &ctx).await;
    assert!(usage.is_cached());
    for _ in 0..5 {
        assert_eq!(h.encrypt("k1", &ctx).await.0, first);
    }
    assert_eq!(h.keys.generated(), 1);
    assert_eq!((h.lookups("encrypt", "hit"), h.lookups("encrypt", "miss")), (5, 1));
    assert_eq!(h.metric("kagi_envelope_data_key_cache_entries"), 1);
    // The copy handed out is the cached key.
    let (data_key, _) = h.cache.generate_data_key_with_usage(ALICE, "k1", &ctx).await.unwrap();
    assert_eq!(data_key.plaintext.expose_secret(), &[1u8; 32]);
    assert_eq!(data_key.key_arn, arn("k1"));
}

#[tokio::test(start_paused = true)]
async fn principal_key_and_context_each_make_an_entry() {
    let h = Harness::new(CacheLimits::default());
    let ctx = context(&[("bucket", "b1")]);
    h.encrypt("k1", &ctx).await;
    h.encrypt_as("bob", "k1", &ctx).await;
    h.encrypt("k2", &ctx).await;
    h.encrypt("k1", &context(&[("bucket", "b2")])).await;
    h.encrypt("k1", &context(&[])).await;
    assert_eq!(h.keys.generated(), 5);
    assert_eq!(h.cache.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn context_order_does_not_matter() {
    let h = Harness::new(CacheLimits::default());
    let forward = context(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let mut backward = EncryptionContext::new();
    for (k, v) in [("c", "3"), ("b", "2"), ("a", "1")] {
        backward.insert(k.to_owned(), v.to_owned());
    }
    let (first, _) = h.encrypt("k1", &forward).await;
    assert_eq!(h.encrypt("k1", &backward).await.0, first);
    assert_eq!(h.keys.generated(), 1);
    // Length prefixes keep field boundaries: ("ab", "c") is not ("a", "bc").
    h.encrypt("k1", &context(&[("ab", "c")])).await;
    h.encrypt("k1", &context(&[("a", "bc")])).await;
    assert_eq!(h.keys.generated(), 3);
}

#[tokio::test(start_paused = true)]
async fn entries_expire_at_max_age() {
    let h = Harness::new(CacheLimits::default());
    let ctx = context(&[]);
    let (first, _) = h.encrypt("k1", &ctx).await;
    tokio::time::advance(DEFAULT_MAX_AGE - Duration::from_millis(1)).await;
    assert_eq!(h.encrypt("k1", &ctx).await.0, first);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_ne!(h.encrypt("k1", &ctx).await.0, first);
    assert_eq!(h.keys.generated(), 2);
    assert_eq!(h.evictions("age"), 1);
}

#[tokio::test(start_paused = true)]
async fn entries_retire_after_max_messages() {
    let h = Harness::new(CacheLimits { max_messages: 3, ..CacheLimits::default() });
    let ctx = context(&[]);
    let mut blobs = Vec::new();
    for _ in 0..7 {
        blobs.push(h.encrypt("k1", &ctx).await.0);
    }
    assert_eq!(blobs, ["blob-1", "blob-1", "blob-1", "blob-2", "blob-2", "blob-2", "blob-3"]);
    assert_eq!(h.evictions("messages"), 2);
}

#[tokio::test(start_paused = true)]
async fn entries_retire_after_max_bytes() {
    let h = Harness::new(CacheLimits { max_bytes: 100, ..CacheLimits::default() });
    let ctx = context(&[]);
    let (first, usage) = h.encrypt("k1", &ctx).await;
    usage.record_bytes(60);
    let (second, usage) = h.encrypt("k1", &ctx).await;
    assert_eq!(second, first, "60 of 100 bytes used");
    usage.record_bytes(40);
    let (third, usage) = h.encrypt("k1", &ctx).await;
    assert_ne!(third, first, "100 of 100 bytes used");
    assert_eq!(h.evictions("bytes"), 1);
    // The new entry counts from zero.
    usage.record_bytes(99);
    assert_eq!(h.encrypt("k1", &ctx).await.0, third);
    // A default handle records nothing and says so.
    let none = DataKeyUsage::default();
    none.record_bytes(1 << 40);
    assert!(!none.is_cached());
}

#[tokio::test(start_paused = true)]
async fn the_least_recently_used_entry_goes_when_full() {
    let h = Harness::new(CacheLimits { max_entries: 2, ..CacheLimits::default() });
    let (a, b, c) = (context(&[("o", "a")]), context(&[("o", "b")]), context(&[("o", "c")]));
    let (blob_a, _) = h.encrypt("k1", &a).await;
    let (blob_b, _) = h.encrypt("k1", &b).await;
    assert_eq!(h.encrypt("k1", &a).await.0, blob_a, "a is now the most recent");
    h.encrypt("k1", &c).await;
    assert_eq!(h.cache.len(), 2);
    assert_eq!(h.evictions("capacity"), 1);
    assert_eq!(h.encrypt("k1", &a).await.0, blob_a, "a stayed");
    assert_ne!(h.encrypt("k1", &b).await.0, blob_b, "b went");
    // A full cache drops expired entries before it evicts live ones.
    tokio::time::advance(DEFAULT_MAX_AGE).await;
    h.encrypt("k1", &context(&[("o", "d")])).await;
    assert_eq!(h.evictions("capacity"), 2, "one more for b's return only");
    assert_eq!(h.cache.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_make_one_call() {
    const N: u64 = 8;
    let h = Harness::over(CountingKeys::gated(), CacheLimits::default());
    let ctx = context(&[("bucket", "b1")]);
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (cache, ctx) = (Arc::clone(&h.cache), ctx.clone());
            tokio::spawn(async move {
                let (data_key, _) =
                    cache.generate_data_key_with_usage(ALICE, "k1", &ctx).await.expect("key");
                data_key.ciphertext_blob
            })
        })
        .collect();
    // Every task has missed and waits on the one call, which waits on the gate.
    until(|| h.lookups("encrypt", "miss") == N).await;
    assert_eq!(h.keys.generated(), 1);
    h.keys.gate.as_ref().expect("gated").add_permits(1);
    for task in tasks {
        assert_eq!(finished(task).await, b"blob-1");
    }
    assert_eq!(h.keys.generated(), 1);
    // All N messages count against the entry.
    let entries = h.cache.shared.lock();
    let slot = entries.entries.values().next().expect("cached");
    assert_eq!(slot.entry.usage.messages.load(Ordering::SeqCst), N);
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_past_max_messages_make_just_enough_calls() {
    let h = Harness::over(
        CountingKeys::gated(),
        CacheLimits { max_messages: 2, ..CacheLimits::default() },
    );
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let cache = Arc::clone(&h.cache);
            tokio::spawn(async move {
                let (data_key, _) = cache
                    .generate_data_key_with_usage(ALICE, "k1", &context(&[]))
                    .await
                    .expect("key");
                data_key.ciphertext_blob
            })
        })
        .collect();
    until(|| h.lookups("encrypt", "miss") == 5).await;
    h.keys.gate.as_ref().expect("gated").add_permits(10);
    let mut blobs = Vec::new();
    for task in tasks {
        blobs.push(String::from_utf8(finished(task).await).expect("utf-8"));
    }
    blobs.sort();
    assert_eq!(blobs, ["blob-1", "blob-1", "blob-2", "blob-2", "blob-3"]);
    assert_eq!(h.keys.generated(), 3);
}

#[tokio::test(start_paused = true)]
async fn errors_are_shared_but_not_cached() {
    let h = Harness::over(CountingKeys::gated(), CacheLimits::default());
    h.keys.fail.store(true, Ordering::SeqCst);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let cache = Arc::clone(&h.cache);
            tokio::spawn(async move {
                cache.generate_data_key_with_usage(ALICE, "k1", &context(&[])).await.map(|_| ())
            })
        })
        .collect();
    until(|| h.lookups("encrypt", "miss") == 4).await;
    h.keys.gate.as_ref().expect("gated").add_permits(1);
    for task in tasks {
        let error = finished(task).await.expect_err("the call failed");
        assert_eq!(error.kind(), ErrorKind::Disabled);
    }
    assert_eq!(h.keys.generated(), 1, "one call for the four");
    assert!(h.cache.is_empty());
    // The next request asks again, and its success is cached.
    h.keys.fail.store(false, Ordering::SeqCst);
    h.keys.gate.as_ref().expect("gated").add_permits(1);
    h.encrypt("k1", &context(&[])).await;
    h.encrypt("k1", &context(&[])).await;
    assert_eq!(h.keys.generated(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_caller_hands_the_call_to_a_waiter() {
    let h = Harness::over(CountingKeys::gated(), CacheLimits::default());
    let first = {
        let cache = Arc::clone(&h.cache);
        tokio::spawn(async move {
            cache.generate_data_key_with_usage(ALICE, "k1", &context(&[])).await.map(|_| ())
        })
    };
    until(|| h.keys.generated() == 1).await;
    let second = {
        let cache = Arc::clone(&h.cache);
        tokio::spawn(async move {
            cache.generate_data_key_with_usage(ALICE, "k1", &context(&[])).await.map(|_| ())
        })
    };
    until(|| h.lookups("encrypt", "miss") == 2).await;
    first.abort();
    assert!(first.await.expect_err("aborted").is_cancelled());
    // The waiter makes the call itself.
    until(|| h.keys.generated() == 2).await;
    h.keys.gate.as_ref().expect("gated").add_permits(1);
    finished(second).await.expect("data key");
    assert_eq!(h.cache.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn decrypted_data_keys_are_cached() {
    let h = Harness::new(CacheLimits::default());
    let key = arn("k1");
    let first = h.decrypt(b"blob-a", &key).await;
    let again = h.decrypt(b"blob-a", &key).await;
    assert_eq!(first.expose_secret(), again.expose_secret());
    assert_eq!(h.keys.decrypted(), 1);
    h.decrypt(b"blob-bb", &key).await;
    assert_eq!(h.keys.decrypted(), 2);
    assert_eq!((h.lookups("decrypt", "hit"), h.lookups("decrypt", "miss")), (1, 2));
    // A key ARN needs no resolution; an alias is resolved once, for invalidation.
    assert_eq!(h.keys.resolved.load(Ordering::SeqCst), 0);
    h.decrypt(b"blob-a", "alias/data").await;
    h.decrypt(b"blob-a", "alias/data").await;
    assert_eq!((h.keys.decrypted(), h.keys.resolved.load(Ordering::SeqCst)), (3, 1));
    h.cache.invalidate_key("k1");
    assert!(h.cache.is_empty());
    // Decrypt entries expire too.
    tokio::time::advance(DEFAULT_REVOCATION_SETTLE).await;
    h.decrypt(b"blob-a", &key).await;
    tokio::time::advance(DEFAULT_MAX_AGE).await;
    h.decrypt(b"blob-a", &key).await;
    assert_eq!(h.keys.decrypted(), 5);
    assert_eq!(h.evictions("age"), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_decrypt_misses_make_one_call() {
    let h = Harness::over(CountingKeys::gated(), CacheLimits::default());
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let cache = Arc::clone(&h.cache);
            tokio::spawn(async move {
                let key = arn("k1");
                cache.decrypt_data_key(ALICE, b"blob", &context(&[]), &key).await.map(|_| ())
            })
        })
        .collect();
    until(|| h.lookups("decrypt", "miss") == 6).await;
    h.keys.gate.as_ref().expect("gated").add_permits(1);
    for task in tasks {
        finished(task).await.expect("data key");
    }
    assert_eq!(h.keys.decrypted(), 1);
}

#[tokio::test(start_paused = true)]
async fn invalidating_a_key_drops_its_entries_only() {
    let h = Harness::new(CacheLimits::default());
    let ctx = context(&[]);
    let (k1, _) = h.encrypt("k1", &ctx).await;
    let (via_alias, _) = h.encrypt("alias/data", &ctx).await;
    let (k2, _) = h.encrypt("k2", &ctx).await;
    h.decrypt(b"blob-a", &arn("k1")).await;
    assert_eq!(h.cache.len(), 4);
    h.cache.invalidate_key(&arn("k1"));
    assert_eq!(h.cache.len(), 1, "the alias's entry is under k1 too");
    assert_eq!(h.evictions("revoked"), 3);
    assert_eq!(h.encrypt("k2", &ctx).await.0, k2);
    // By key id as well as ARN.
    h.cache.invalidate_key("k2");
    assert!(h.cache.is_empty());
    tokio::time::advance(DEFAULT_REVOCATION_SETTLE).await;
    assert_ne!(h.encrypt("k1", &ctx).await.0, k1);
    assert_ne!(h.encrypt("alias/data", &ctx).await.0, via_alias);
}

#[tokio::test(start_paused = true)]
async fn answers_are_not_cached_while_a_revocation_settles() {
    let h = Harness::new(CacheLimits::default());
    let ctx = context(&[]);
    h.cache.invalidate_key(&arn("k1"));
    // The keystore may not have committed the change yet: use the answer, do not keep it.
    h.encrypt("k1", &ctx).await;
    h.encrypt("k1", &ctx).await;
    assert_eq!(h.keys.generated(), 2);
    // Other keys cache as usual.
    h.encrypt("k2", &ctx).await;
    h.encrypt("k2", &ctx).await;
    assert_eq!(h.keys.generated(), 3);
    tokio::time::advance(DEFAULT_REVOCATION_SETTLE).await;
    h.encrypt("k1", &ctx).await;
    h.encrypt("k1", &ctx).await;
    assert_eq!(h.keys.generated(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_call_under_way_at_revocation_is_not_cached() {
    let h = Harness::over(CountingKeys::gated(), CacheLimits::default());
    let task = {
        let cache = Arc::clone(&h.cache);
        tokio::spawn(async move {
            cache.generate_data_key_with_usage(ALICE, "k1", &context(&[])).await.map(|_| ())
        })
    };
    until(|| h.keys.generated() == 1).await;
    h.cache.invalidate_all();
    // A request after the revocation does not join the call made before it.
    let after = {
        let cache = Arc::clone(&h.cache);
        tokio::spawn(async move {
            cache.generate_data_key_with_usage(ALICE, "k1", &context(&[])).await.map(|_| ())
        })
    };
    until(|| h.keys.generated() == 2).await;
    h.keys.gate.as_ref().expect("gated").add_permits(2);
    finished(task).await.expect("its caller still gets the key");
    finished(after).await.expect("a key made after the revocation");
    assert!(h.cache.is_empty(), "neither is cached while the revocation settles");
}

#[tokio::test(start_paused = true)]
async fn the_observer_invalidates_on_revoking_events() {
    let h = Harness::new(CacheLimits::default());
    let observer = h.cache.invalidator();
    let ctx = context(&[]);
    let fill = || async {
        h.encrypt("k1", &ctx).await;
        h.encrypt("k2", &ctx).await;
        h.decrypt(b"blob", &arn("k1")).await;
    };
    let (k1, k2) = (arn("k1"), arn("k2"));
    for operation in [
        "DeleteImportedKeyMaterial",
        "DeleteKey",
        "DisableKey",
        "KeyMaterialExpired",
        "PutKeyPolicy",
        "RetireGrant",
        "RevokeGrant",
        "RotateKey",
        "RotateKeyOnDemand",
        "ScheduleKeyDeletion",
    ] {
        tokio::time::advance(DEFAULT_REVOCATION_SETTLE).await;
        fill().await;
        assert_eq!(h.cache.len(), 3, "{operation}");
        // Failures and other operations change nothing.
        observer.recorded(&event(operation, Some(&k1), Outcome::Failure));
        observer.recorded(&event("Encrypt", Some(&k1), Outcome::Success));
        observer.recorded(&event("EnableKey", Some(&k1), Outcome::Success));
        observer.recorded(&event("CreateGrant", Some(&k1), Outcome::Success));
        assert_eq!(h.cache.len(), 3, "{operation}");
        observer.recorded(&event(operation, Some(&k1), Outcome::Success));
        assert_eq!(h.cache.len(), 1, "{operation} leaves k2's entry");
        observer.recorded(&event(operation, Some(&k2), Outcome::Success));
        assert!(h.cache.is_empty(), "{operation}");
    }
    for operation in ["CreateAlias", "DeleteAlias", "UpdateAlias"] {
        tokio::time::advance(DEFAULT_REVOCATION_SETTLE).await;
        fill().await;
        observer.recorded(&event(operation, Some(&k2), Outcome::Success));
        assert!(h.cache.is_empty(), "{operation} drops everything");
    }
    // A revoking event that names no key drops everything.
    tokio::time::advance(DEFAULT_REVOCATION_SETTLE).await;
    fill().await;
    observer.recorded(&event("RetireGrant", None, Outcome::Success));
    assert!(h.cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn signed_message_contexts_are_not_cached() {
    let h = Harness::new(CacheLimits::default());
    let ctx = context(&[(PUBLIC_KEY_CONTEXT_KEY, "A1B2")]);
    let (_, usage) = h.encrypt("k1", &ctx).await;
    h.encrypt("k1", &ctx).await;
    assert_eq!(h.keys.generated(), 2);
    assert!(!usage.is_cached());
    assert!(h.cache.is_empty());
}

#[tokio::test(start_paused = true)]
async fn messages_of_a_cached_data_key_share_its_header() {
    use crate::envelope::{DecryptOptions, Decryptor, Header};
    let h = Harness::new(CacheLimits::default());
    let ctx = context(&[("tenant", "a")]);
    let request = EncryptRequest::new(ALICE, "k1", ctx.clone());
    let mut headers = Vec::new();
    for body in [&b"first"[..], b"second"] {
        let (encryptor, usage) =
            h.cache.start_encryption(&request, EncryptOptions::default()).await.expect("start");
        assert!(usage.is_cached());
        let mut message = Vec::new();
        encryptor.finish_with(body, &mut message).expect("seal");
        // The fake's first data key is 32 bytes of 1.
        let mut decryptor =
            Decryptor::new(DecryptOptions { key_arn: arn("k1"), context: ctx.clone() });
        let mut opened = Vec::new();
        decryptor.update(&message, &mut opened).expect("header");
        let key = AesKey::from_slice(&[1; 32]).expect("32 bytes");
        decryptor.supply_data_key(&key, &mut opened).expect("frames");
        headers.push(decryptor.header().cloned().expect("read"));
        decryptor.finish().expect("complete");
        assert_eq!(opened, body);
    }
    assert_eq!(h.keys.generated(), 1);
    let blank = |h: &Header| Header { message_id: [0; 32], commit_key: [0; 32], ..h.clone() };
    assert_ne!(headers[0].message_id, headers[1].message_id);
    assert_eq!(blank(&headers[0]), blank(&headers[1]));
    // Other options: a header of their own, the same data key.
    let options = EncryptOptions { frame_length: 16, ..EncryptOptions::default() };
    let (encryptor, _) = h.cache.start_encryption(&request, options).await.expect("start");
    let mut message = Vec::new();
    encryptor.finish_with(b"third", &mut message).expect("seal");
    let parsed = crate::envelope::format::parse_header(&message).expect("parses").expect("whole");
    assert_eq!(parsed.header.frame_length, 16);
    assert_eq!(parsed.header.data_keys, headers[0].data_keys);
    assert_eq!(h.keys.generated(), 1);
    // A signing suite: each message its own data key (its context holds its signing key).
    let signing = EncryptOptions {
        suite: crate::envelope::Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
        ..EncryptOptions::default()
    };
    for _ in 0..2 {
        let (_, usage) = h.cache.start_encryption(&request, signing).await.expect("start");
        assert!(!usage.is_cached());
    }
    assert_eq!(h.keys.generated(), 3);
    // A context that cannot be written is refused before any key is asked for.
    let reserved = EncryptRequest::new(ALICE, "k1", context(&[("aws-crypto-x", "y")]));
    let refused = h.cache.start_encryption(&reserved, EncryptOptions::default()).await;
    assert!(matches!(refused, Err(Error::InvalidContext(_))));
    assert_eq!(h.keys.generated(), 3);
    let huge = EncryptRequest::new(ALICE, "k1", context(&[("k", &"v".repeat(70_000))]));
    let refused = h.cache.start_encryption(&huge, EncryptOptions::default()).await;
    assert!(matches!(refused, Err(Error::InvalidContext(_))));
    let bad_frames = EncryptOptions { frame_length: 0, ..EncryptOptions::default() };
    let refused = h.cache.start_encryption(&request, bad_frames).await;
    assert!(matches!(refused, Err(Error::InvalidFrameLength(0))));
    assert_eq!(h.keys.generated(), 3);
}

#[tokio::test(start_paused = true)]
async fn zero_limits_disable_caching() {
    for limits in [
        CacheLimits { max_entries: 0, ..CacheLimits::default() },
        CacheLimits { max_age: Duration::ZERO, ..CacheLimits::default() },
    ] {
        let h = Harness::new(limits);
        h.encrypt("k1", &context(&[])).await;
        h.encrypt("k1", &context(&[])).await;
        assert_eq!(h.keys.generated(), 2, "{limits:?}");
    }
    // Message and byte limits of zero count as one.
    let h = Harness::new(CacheLimits { max_messages: 0, max_bytes: 0, ..CacheLimits::default() });
    assert_eq!((h.cache.limits().max_messages, h.cache.limits().max_bytes), (1, 1));
    h.encrypt("k1", &context(&[])).await;
    h.encrypt("k1", &context(&[])).await;
    assert_eq!(h.keys.generated(), 2);
}

#[tokio::test(start_paused = true)]
async fn purge_expired_lets_go_of_old_keys() {
    let h = Harness::new(CacheLimits::default());
    h.encrypt("k1", &context(&[])).await;
    tokio::time::advance(DEFAULT_MAX_AGE / 2).await;
    h.encrypt("k2", &context(&[])).await;
    tokio::time::advance(DEFAULT_MAX_AGE / 2).await;
    h.cache.purge_expired();
    assert_eq!(h.cache.len(), 1);
    assert_eq!(h.metric("kagi_envelope_data_key_cache_entries"), 1);
}

#[tokio::test(start_paused = true)]
async fn debug_prints_no_key_material() {
    let h = Harness::new(CacheLimits::default());
    h.encrypt("k1", &context(&[("secret-name", "secret-value")])).await;
    h.decrypt(b"blob-a", &arn("k1")).await;
    let printed = format!("{:?} {:?}", h.cache, h.cache.shared);
    // Generated key bytes are all 1; decrypted ones all 6 (the blob's length).
    assert!(!printed.contains("1, 1, 1") && !printed.contains("6, 6, 6"), "{printed}");
    assert!(!printed.contains("secret-value") && !printed.contains("blob-"), "{printed}");
    assert!(printed.contains("CachingKeys") && printed.contains(&arn("k1")), "{printed}");
}

// === over the keystore ===

/// Records the operations of the keystore's successful audit events.
#[derive(Debug, Default)]
struct Operations(Mutex<Vec<String>>);

impl KeyObserver for Operations {
    fn recorded(&self, event: &AuditEvent) {
        if event.outcome == Outcome::Success {
            self.0.lock().expect("not poisoned").push(event.operation.clone());
        }
    }
}

impl Operations {
    fn count(&self, operation: &str) -> usize {
        self.0.lock().expect("not poisoned").iter().filter(|o| *o == operation).count()
    }
}

/// The keystore's own audit events reach the invalidator: a disabled key's cached data key is
/// not used again. Real time (the keystore's store does blocking work), no ages involved.
#[tokio::test]
async fn disabling_a_key_in_the_keystore_stops_its_cached_data_keys() {
    use crate::envelope::{DecryptOptions, EncryptOptions, KeystoreKeys, decrypt, encrypt};
    use crate::keystore::clock::{Clock, ManualClock};
    use crate::keystore::observe::Observers;
    use crate::keystore::{CreateKeyRequest, Keystore, OpContext, Partition, RootKeySource};

    let dir = tempfile::tempdir().expect("tempdir");
    let backend = crate::crypto::BackendKind::AwsLc.backend();
    Keystore::init(backend, dir.path(), &RootKeySource::File).expect("init");
    let keystore = Arc::new(
        Keystore::open(
            backend,
            dir.path(),
            &RootKeySource::File,
            Arc::new(ManualClock::new(1_800_000_000)) as Arc<dyn Clock>,
            Arc::new(crate::audit::NullSink),
            Partition::default(),
        )
        .expect("open"),
    );
    let admin =
        OpContext { principal: "admin".into(), source: "unit".into(), request_id: "r".into() };
    let key = keystore.create_key(&admin, CreateKeyRequest::default()).await.expect("create key");
    let inner = Arc::new(KeystoreKeys::without_key_policies(Arc::clone(&keystore), "proxy"));
    let cache = CachingKeys::new(inner, CacheLimits::default(), None);
    let operations = Arc::new(Operations::default());
    let observers: Vec<Arc<dyn KeyObserver>> =
        vec![Arc::new(cache.invalidator()), Arc::clone(&operations) as Arc<dyn KeyObserver>];
    assert!(keystore.set_observer(Arc::new(Observers(observers))));

    let ctx = context(&[("bucket", "b1")]);
    let options = EncryptOptions::default();
    let mut messages = Vec::new();
    for body in [&b"first"[..], b"second", b"third"] {
        let message = encrypt(&cache, "proxy", &key.record.id, ctx.clone(), options, body)
            .await
            .expect("encrypts");
        messages.push(message);
    }
    assert_eq!(operations.count("GenerateDataKey"), 1, "one data key for three messages");
    let expected = DecryptOptions { key_arn: key.arn.clone(), context: ctx.clone() };
    for message in &messages {
        decrypt(&cache, "proxy", expected.clone(), message).await.expect("decrypts");
    }
    assert_eq!(operations.count("Decrypt"), 1, "one decryption of the shared data key");

    keystore.disable_key(&admin, &key.record.id).await.expect("disable");
    assert!(cache.is_empty(), "the DisableKey event dropped the key's entries");
    let refused = encrypt(&cache, "proxy", &key.record.id, ctx.clone(), options, b"fourth").await;
    assert!(matches!(refused, Err(Error::KeyService(e)) if e.kind() == ErrorKind::Disabled));
    let refused = decrypt(&cache, "proxy", expected, &messages[0]).await;
    assert!(matches!(refused, Err(Error::KeyService(e)) if e.kind() == ErrorKind::Disabled));
}
