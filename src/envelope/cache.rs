//! A data-key cache in front of any [`KeyService`]: [`CachingKeys`] reuses a data key for
//! several messages (GenerateDataKey) and remembers decrypted data keys (Decrypt), so a burst
//! of requests costs one key service call, not one each.
//!
//! The model is the Encryption SDK's caching CMM (`framework/caching-cmm.md`) and S3 Bucket
//! Keys: a data key made under a KMS key is used for a bounded time, number of messages and
//! number of bytes, then a fresh one is made.
//!
//! # Entries
//!
//! - **Encrypt** (`generate_data_key`): one entry per principal, key (as given: id, ARN or
//!   alias) and encryption context. The context is keyed by its canonical encoding (sorted,
//!   length-prefixed), so the same pairs share an entry however the caller built the map. A
//!   hit returns the cached [`DataKey`] (the same blob, so every message names the same
//!   encrypted data key) and counts one message against it. Contexts holding the signing
//!   suite's `aws-crypto-public-key` are never cached: that key is new for every message, so
//!   the entry would never be hit.
//! - **Decrypt** (`decrypt_data_key`): one entry per principal, key, blob and context, so the
//!   GETs of many objects written under one cached data key cost one Decrypt.
//!
//! Entries are told apart by a SHA-384 of these fields (each length-prefixed), as the caching
//! CMM does; the cache keeps no context values and no blobs of its keys.
//!
//! Principals never share an entry: the key service authorizes each principal under the key
//! policies, and a hit must not let one principal use what another was allowed.
//!
//! # Limits (see [`CacheLimits`])
//!
//! An encrypt entry is dropped once the next message would pass one of its limits:
//! [`max_age`](CacheLimits::max_age) since it was made, [`max_messages`](CacheLimits::max_messages)
//! messages, or [`max_bytes`](CacheLimits::max_bytes) plaintext bytes. Bytes are known only as a
//! message is written: [`CachingKeys::generate_data_key_with_usage`] returns a
//! [`DataKeyUsage`] on which the caller records them ([`DataKeyUsage::record_bytes`]: once
//! with the Content-Length, or chunk by chunk). Messages already under way when an entry
//! reaches a limit finish with its key; the overshoot is bounded by the messages in flight.
//! A decrypt entry lives [`max_age`](CacheLimits::max_age). At most
//! [`max_entries`](CacheLimits::max_entries) entries are held; past that the least recently
//! used goes.
//!
//! Why reusing a data key is sound: kagi writes only the committing suites, which derive each
//! message's AES-256-GCM key with HKDF-SHA512 from the data key and the message's fresh random
//! 32-byte message id. No two messages share a GCM key (and so no nonce budget), whatever the
//! number of messages per data key; the 2^32 random-nonce bound of NIST SP 800-38D applies to
//! each derived key, i.e. to frames of one message. The limits bound something else: how much
//! one data key protects (what a leaked plaintext data key exposes) and for how long a key
//! decision made once is trusted.
//!
//! # Single flight
//!
//! Concurrent misses for one entry make one key service call; the others await its answer
//! (`tokio::sync::OnceCell`). An error is handed to everyone waiting for that call but is not
//! cached: the next request asks again. If the caller making the call goes away, one of the
//! waiters makes it instead.
//!
//! # Revocation
//!
//! Whatever takes a key out of use for a principal must stop cached data keys being used:
//! disabling the key, scheduling its deletion, its deletion, a new key policy, deleting its
//! imported material (or its expiry), revoking or retiring a grant, rotating it; and, for
//! entries made under an alias, moving or deleting the alias.
//!
//! - [`CachingKeys::invalidate_key`] drops the entries of one key (by id or ARN; entries
//!   remember the ARN the key service answered, also when the caller named an alias);
//!   [`CachingKeys::invalidate_all`] drops every entry.
//! - [`CacheInvalidator`], from [`CachingKeys::invalidator`], is a [`KeyObserver`]: added to
//!   the keystore's observers it calls them for each successful audit event of those
//!   operations, that is before the change commits. Alias operations drop everything (an
//!   entry does not know which alias its key name went through).
//! - A change's audit line is written just before the change commits, so a request arriving
//!   between the two still sees the old state. For [`revocation_settle`] after an
//!   invalidation, answers about that key are therefore handed out but not cached.
//!
//! The bound: on this node a revocation stops cached use at once (as the audit line is
//! durable); a data key fetched from a store the change has not reached yet can be cached
//! only if the commit takes longer than [`revocation_settle`], and then for at most
//! [`max_age`]. Changes the observer cannot see (made on another node sharing the store, or
//! on AWS KMS behind [`super::RemoteKeys`]) take effect within [`max_age`]. Changes to a
//! principal's account-level permissions come from the configuration, not the keystore: the
//! server should call [`CachingKeys::invalidate_all`] when a reload changes them.
//!
//! [`revocation_settle`]: CacheLimits::revocation_settle
//! [`max_age`]: CacheLimits::max_age
//!
//! # Security
//!
//! Cached data keys are [`AesKey`]s (zeroized on drop, `Debug` prints nothing of them);
//! nothing in this module prints a key, a blob or a context value. An entry's key is zeroized
//! when it is evicted and the last message using it has started.
//!
//! # What it does not do
//!
//! No timers: expired entries go when looked up, when the cache is full, or when the owner
//! calls [`CachingKeys::purge_expired`] (the server should, every [`max_age`] or so, so an idle
//! cache does not hold keys longer than it must). No sharing between nodes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use aws_lc_rs::digest;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::format::{HeaderTemplate, PUBLIC_KEY_CONTEXT_KEY};
use super::keys::{DataKey, KeyFuture, KeyService, KeyServiceError, is_key_arn};
use super::stream::{EncryptOptions, Encryptor, PreparedEncryption};
use super::{EncryptionContext, Error};
use crate::audit::{AuditEvent, Outcome};
use crate::crypto::AesKey;
use crate::keystore::ErrorKind;
use crate::keystore::ciphertext::encode_context;
use crate::keystore::observe::KeyObserver;
use crate::metrics::envelope::{CacheLookup, Direction, EnvelopeMetrics, EvictionReason};
use crate::metrics::keys::key_id_of_arn;

/// How long a data key is used by default: 60 s. Short enough to be the revocation bound for
/// changes the cache cannot observe, long enough that a steady stream of requests per key and
/// context costs one GenerateDataKey a minute. (The caching CMM requires the caller to choose;
/// Huawei OBS's bucket keys live about 3 minutes.)
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

/// How many messages one data key encrypts by default: 10 000. Far below any cryptographic
/// bound (each message derives its own key); it bounds what one data key protects.
pub const DEFAULT_MAX_MESSAGES: u64 = 10_000;

/// How many plaintext bytes one data key protects by default: 1 GiB. It bounds what one data
/// key protects; a body that large amortizes its own key service call anyway.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// How many data keys the cache holds by default: 1024 (well under 1 MiB).
pub const DEFAULT_MAX_ENTRIES: usize = 1024;

/// How long after an invalidation key service answers about that key are not cached, by
/// default: 5 s (a change commits just after its audit line; see the module docs).
pub const DEFAULT_REVOCATION_SETTLE: Duration = Duration::from_secs(5);

/// The cache's limits. [`Default`] gives the `DEFAULT_*` constants.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct CacheLimits {
    /// How long an entry is used after the key service answered. Also the revocation bound for
    /// changes the cache is not told about. Zero disables caching (single flight remains).
    pub max_age: Duration,
    /// How many messages one cached data key encrypts (at least 1).
    pub max_messages: u64,
    /// How many plaintext bytes one cached data key protects, as recorded through
    /// [`DataKeyUsage::record_bytes`] (at least 1).
    pub max_bytes: u64,
    /// How many entries (both directions) the cache holds. Zero disables caching.
    pub max_entries: usize,
    /// How long after an invalidation answers about the key are not cached.
    pub revocation_settle: Duration,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_age: DEFAULT_MAX_AGE,
            max_messages: DEFAULT_MAX_MESSAGES,
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            revocation_settle: DEFAULT_REVOCATION_SETTLE,
        }
    }
}

/// A [`KeyService`] that caches data keys of the one it wraps. See the module docs.
pub struct CachingKeys {
    inner: Arc<dyn KeyService>,
    shared: Arc<Shared>,
}

/// The handle of one message's use of a cached data key, to record the plaintext bytes it
/// protects. A default handle (or one for a data key that was not cached) records nothing.
#[derive(Clone, Debug, Default)]
pub struct DataKeyUsage {
    usage: Option<Arc<Usage>>,
}

/// A GenerateDataKey request made again and again (a proxy route whose encryption context
/// does not depend on the request), with the name of its cache entry computed once. Use it
/// with [`CachingKeys::start_encryption`].
#[derive(Clone)]
pub struct EncryptRequest {
    principal: String,
    key: String,
    context: EncryptionContext,
    /// The encrypt entry's name; `None` for a context that is never cached (one holding a
    /// signing key's public key).
    id: Option<CacheId>,
}

impl EncryptRequest {
    /// A request of `principal` for data keys under `key` bound to `context`.
    pub fn new(principal: &str, key: &str, context: EncryptionContext) -> Self {
        let id = encrypt_cache_id(principal, key, &context);
        Self { principal: principal.to_owned(), key: key.to_owned(), context, id }
    }

    /// The encryption context.
    pub fn context(&self) -> &EncryptionContext {
        &self.context
    }
}

impl fmt::Debug for EncryptRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Context values may be tenant names: not printed.
        f.debug_struct("EncryptRequest")
            .field("principal", &self.principal)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Drops cache entries when told, and when the keystore records a change that revokes a key
/// (as a [`KeyObserver`]). Holds the cache's state, not the key service, so no reference cycle
/// arises when the keystore holds it.
#[derive(Clone, Debug)]
pub struct CacheInvalidator {
    shared: Arc<Shared>,
}

// === impl CachingKeys ===

impl CachingKeys {
    /// A cache with `limits` in front of `inner`, counting into `metrics` if given.
    /// `max_messages` and `max_bytes` below 1 count as 1.
    pub fn new(
        inner: Arc<dyn KeyService>,
        limits: CacheLimits,
        metrics: Option<EnvelopeMetrics>,
    ) -> Self {
        let limits = CacheLimits {
            max_messages: limits.max_messages.max(1),
            max_bytes: limits.max_bytes.max(1),
            ..limits
        };
        let shared = Shared { limits, metrics, state: Mutex::new(State::default()) };
        Self { inner, shared: Arc::new(shared) }
    }

    /// The limits in force.
    pub fn limits(&self) -> CacheLimits {
        self.shared.limits
    }

    /// How many data keys are cached.
    pub fn len(&self) -> usize {
        self.shared.lock().entries.len()
    }

    /// Whether no data key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// GenerateDataKey through the cache, with the handle on which to record the bytes the
    /// message protects. A cached data key counts this message at once.
    ///
    /// # Errors
    /// The inner key service's error (shared with concurrent identical requests, not cached).
    pub async fn generate_data_key_with_usage(
        &self,
        principal: &str,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<(DataKey, DataKeyUsage), KeyServiceError> {
        let Some(id) = encrypt_cache_id(principal, key, context) else {
            let data_key = self.inner.generate_data_key(principal, key, context).await?;
            return Ok((data_key, DataKeyUsage::default()));
        };
        self.generate_cached(id, principal, key, context).await
    }

    /// Starts encrypting a message for `request` (prepared once) with `options`: the data key
    /// comes from the cache (or the key service), and the message's header is encoded once
    /// per cached data key ([`PreparedEncryption::template`]) rather than once per message. A
    /// signing suite's message has a header and a data key of its own (its context holds its
    /// signing key): those go to the key service every time.
    ///
    /// # Errors
    /// [`Error::KeyService`] when the data key is refused (shared with concurrent identical
    /// requests, not cached); those of [`PreparedEncryption::new`] for a context it refuses.
    pub async fn start_encryption(
        &self,
        request: &EncryptRequest,
        options: EncryptOptions,
    ) -> Result<(Encryptor, DataKeyUsage), Error> {
        let EncryptRequest { principal, key, context, id } = request;
        self.start_with(*id, principal, key, context, options).await
    }

    /// [`CachingKeys::start_encryption`] for a request made once.
    ///
    /// # Errors
    /// As [`CachingKeys::start_encryption`].
    pub async fn start_encryption_with(
        &self,
        principal: &str,
        key: &str,
        context: &EncryptionContext,
        options: EncryptOptions,
    ) -> Result<(Encryptor, DataKeyUsage), Error> {
        self.start_with(encrypt_cache_id(principal, key, context), principal, key, context, options)
            .await
    }

    async fn start_with(
        &self,
        id: Option<CacheId>,
        principal: &str,
        key: &str,
        context: &EncryptionContext,
        options: EncryptOptions,
    ) -> Result<(Encryptor, DataKeyUsage), Error> {
        let (Some(id), false) = (id, options.suite.is_signing()) else {
            let prepared = PreparedEncryption::new(context.clone(), options)?;
            let (data_key, usage) =
                self.generate_data_key_with_usage(principal, key, prepared.kms_context()).await?;
            return Ok((prepared.start(data_key)?, usage));
        };
        // What cannot be written is refused before a data key is made for it.
        super::stream::check_request(context, options)?;
        let entry = self.encrypt_entry(id, principal, key, context).await?;
        let template = match entry.template.get() {
            Some(template)
                if template.suite() == options.suite
                    && template.frame_length() == options.frame_length =>
            {
                Arc::clone(template)
            }
            _ => {
                let key_arn = entry.key_arn.as_deref().unwrap_or_default();
                let template = PreparedEncryption::new(context.clone(), options)?
                    .template(&entry.ciphertext_blob, key_arn)?;
                let template = Arc::new(template);
                // The first options the entry serves keep their template (the routes of one
                // principal, key and context normally agree on them).
                let _ = entry.template.set(Arc::clone(&template));
                template
            }
        };
        let encryptor = Encryptor::with_template(template, &entry.plaintext)?;
        Ok((encryptor, DataKeyUsage { usage: Some(Arc::clone(&entry.usage)) }))
    }

    /// GenerateDataKey through the encrypt entry `id`, the name of `principal`, `key` and
    /// `context`.
    async fn generate_cached(
        &self,
        id: CacheId,
        principal: &str,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<(DataKey, DataKeyUsage), KeyServiceError> {
        let entry = self.encrypt_entry(id, principal, key, context).await?;
        let data_key = DataKey {
            plaintext: entry.copy_key()?,
            ciphertext_blob: entry.ciphertext_blob.clone(),
            key_arn: entry.key_arn.clone().unwrap_or_default(),
        };
        Ok((data_key, DataKeyUsage { usage: Some(Arc::clone(&entry.usage)) }))
    }

    /// The encrypt entry `id` (the name of `principal`, `key` and `context`), one message
    /// reserved in it; from the key service when missing or spent.
    async fn encrypt_entry(
        &self,
        id: CacheId,
        principal: &str,
        key: &str,
        context: &EncryptionContext,
    ) -> Result<Arc<Entry>, KeyServiceError> {
        self.cached(id, Direction::Encrypt, || async {
            let data_key = self.inner.generate_data_key(principal, key, context).await?;
            let DataKey { plaintext, ciphertext_blob, key_arn } = data_key;
            Ok(Entry::new(plaintext, ciphertext_blob, Some(key_arn)))
        })
        .await
    }

    /// Drops the entries of the key `key` (a key id or key ARN) and, for
    /// [`CacheLimits::revocation_settle`], caches no answer about it. Calls under way, for any
    /// key (which key an alias names is known only once they answer), are not cached either,
    /// and later requests do not wait for them.
    pub fn invalidate_key(&self, key: &str) {
        self.shared.invalidate(Some(key));
    }

    /// Drops every entry and, for [`CacheLimits::revocation_settle`], caches nothing.
    pub fn invalidate_all(&self) {
        self.shared.invalidate(None);
    }

    /// Drops the entries past [`CacheLimits::max_age`]. Lookups and insertions do this as they
    /// go; call it periodically so an idle cache lets go of its keys.
    pub fn purge_expired(&self) {
        let mut state = self.shared.lock();
        self.shared.purge_expired(&mut state, Instant::now());
    }

    /// The invalidator to add to the keystore's observers.
    pub fn invalidator(&self) -> CacheInvalidator {
        CacheInvalidator { shared: Arc::clone(&self.shared) }
    }

    /// The entry `id`: cached, or made by `fetch` once for all concurrent callers.
    async fn cached<F, Fut>(
        &self,
        id: CacheId,
        direction: Direction,
        fetch: F,
    ) -> Result<Arc<Entry>, KeyServiceError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Entry, KeyServiceError>>,
    {
        loop {
            let flight = {
                let mut state = self.shared.lock();
                if let Some(entry) = self.shared.hit(&mut state, &id, direction) {
                    self.shared.count(direction, CacheLookup::Hit);
                    return Ok(entry);
                }
                Arc::clone(state.flights.entry(id).or_insert_with(|| Arc::new(Flight::new())))
            };
            self.shared.count(direction, CacheLookup::Miss);
            let result =
                flight.answer.get_or_init(|| async { fetch().await.map(Arc::new) }).await.clone();
            self.shared.land(id, &flight, &result);
            let entry = result?;
            // Concurrent callers of one flight each take a message; past the limit the others
            // go round again (and find the entry spent, so a new flight starts). Each round
            // gives at least one caller its message.
            if direction == Direction::Decrypt || entry.usage.reserve(&self.shared.limits) {
                return Ok(entry);
            }
        }
    }
}

impl fmt::Debug for CachingKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachingKeys")
            .field("inner", &self.inner)
            .field("limits", &self.shared.limits)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl KeyService for CachingKeys {
    fn generate_data_key<'a>(
        &'a self,
        principal: &'a str,
        key: &'a str,
        context: &'a EncryptionContext,
    ) -> KeyFuture<'a, DataKey> {
        // Without the usage handle the message's bytes are not recorded: only age and message
        // count limit the entry. Callers that know the bytes use the inherent method.
        Box::pin(async move {
            let (data_key, _usage) =
                self.generate_data_key_with_usage(principal, key, context).await?;
            Ok(data_key)
        })
    }

    fn decrypt_data_key<'a>(
        &'a self,
        principal: &'a str,
        blob: &'a [u8],
        context: &'a EncryptionContext,
        key: &'a str,
    ) -> KeyFuture<'a, AesKey> {
        Box::pin(async move {
            let id = cache_id(Direction::Decrypt, principal, key, context, blob);
            let entry = self
                .cached(id, Direction::Decrypt, || async {
                    let plaintext =
                        self.inner.decrypt_data_key(principal, blob, context, key).await?;
                    // The entry must know its key's ARN to be invalidated with the key. An
                    // answer whose key cannot be resolved is used but not cached.
                    let key_arn = if is_key_arn(key) {
                        Some(key.to_owned())
                    } else {
                        self.inner.key_arn(principal, key).await.ok()
                    };
                    Ok(Entry::new(plaintext, Vec::new(), key_arn))
                })
                .await?;
            entry.copy_key()
        })
    }

    fn key_arn<'a>(&'a self, principal: &'a str, key: &'a str) -> KeyFuture<'a, String> {
        self.inner.key_arn(principal, key)
    }
}

// === impl DataKeyUsage ===

impl DataKeyUsage {
    /// Records `plaintext_bytes` more encrypted under the data key. Once its entry reaches
    /// [`CacheLimits::max_bytes`] the next message gets a new data key.
    pub fn record_bytes(&self, plaintext_bytes: u64) {
        if let Some(usage) = &self.usage {
            usage.bytes.fetch_add(plaintext_bytes, Ordering::Relaxed);
        }
    }

    /// Whether the data key came through the cache (and recording bytes counts).
    pub fn is_cached(&self) -> bool {
        self.usage.is_some()
    }
}

// === impl CacheInvalidator ===

impl CacheInvalidator {
    /// As [`CachingKeys::invalidate_key`].
    pub fn invalidate_key(&self, key: &str) {
        self.shared.invalidate(Some(key));
    }

    /// As [`CachingKeys::invalidate_all`].
    pub fn invalidate_all(&self) {
        self.shared.invalidate(None);
    }
}

impl KeyObserver for CacheInvalidator {
    fn recorded(&self, event: &AuditEvent) {
        if event.outcome != Outcome::Success {
            return;
        }
        match revocation(&event.operation) {
            None => {}
            Some(Revokes::Key) => self.shared.invalidate(event.key_arn.as_deref()),
            Some(Revokes::All) => self.shared.invalidate(None),
        }
    }

    fn changed_elsewhere(&self, key_arn: Option<&str>) {
        // Any change another node made: it may have disabled, deleted or re-pointed.
        self.shared.invalidate(key_arn);
    }
}

/// What a successful operation takes out of use.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
enum Revokes {
    /// Every entry: the operation changes what a name means.
    All,
    /// The entries of the event's key (every entry when the event names none).
    Key,
}

/// What `operation` revokes, if anything. Operations that only add rights (EnableKey,
/// CreateGrant, CancelKeyDeletion) revoke nothing. Tags are not listed: kagi's policies have
/// no tag conditions.
fn revocation(operation: &str) -> Option<Revokes> {
    match operation {
        "DeleteImportedKeyMaterial"
        | "DeleteKey"
        | "DisableKey"
        | "KeyMaterialExpired"
        | "PutKeyPolicy"
        | "RetireGrant"
        | "RevokeGrant"
        | "RotateKey"
        | "RotateKeyOnDemand"
        | "ScheduleKeyDeletion" => Some(Revokes::Key),
        "CreateAlias" | "DeleteAlias" | "UpdateAlias" => Some(Revokes::All),
        _ => None,
    }
}

// === the shared state ===

/// An entry's name: SHA-384 over its fields.
type CacheId = [u8; 48];

/// The encrypt entry of `principal`'s data keys under `key` for `context`; `None` for a
/// context that is never cached (one holding a signing key's public key: each message's own).
fn encrypt_cache_id(principal: &str, key: &str, context: &EncryptionContext) -> Option<CacheId> {
    (!context.contains_key(PUBLIC_KEY_CONTEXT_KEY))
        .then(|| cache_id(Direction::Encrypt, principal, key, context, &[]))
}

/// The SHA-384 of the direction and each field, length-prefixed.
fn cache_id(
    direction: Direction,
    principal: &str,
    key: &str,
    context: &EncryptionContext,
    blob: &[u8],
) -> CacheId {
    let mut hash = digest::Context::new(&digest::SHA384);
    hash.update(&[match direction {
        Direction::Decrypt => 2,
        Direction::Encrypt => 1,
    }]);
    let context = encode_context(context);
    for field in [principal.as_bytes(), key.as_bytes(), &context, blob] {
        hash.update(&(field.len() as u64).to_be_bytes());
        hash.update(field);
    }
    let mut id = [0u8; 48];
    id.copy_from_slice(hash.finish().as_ref());
    id
}

/// A cached data key.
struct Entry {
    plaintext: AesKey,
    /// The encrypted data key (encrypt entries; empty for decrypt entries).
    ciphertext_blob: Vec<u8>,
    /// The ARN of the key it is under; `None` (not cached) if it could not be resolved.
    key_arn: Option<String>,
    /// When the key service answered.
    created: Instant,
    usage: Arc<Usage>,
    /// The header of the messages it encrypts, encoded by the first.
    template: OnceLock<Arc<HeaderTemplate>>,
}

impl Entry {
    fn new(plaintext: AesKey, ciphertext_blob: Vec<u8>, key_arn: Option<String>) -> Self {
        Self {
            plaintext,
            ciphertext_blob,
            key_arn,
            created: Instant::now(),
            usage: Arc::new(Usage::default()),
            template: OnceLock::new(),
        }
    }

    /// A copy of the data key for one caller (the entry keeps its own).
    fn copy_key(&self) -> Result<AesKey, KeyServiceError> {
        AesKey::from_slice(self.plaintext.expose_secret()).map_err(|_| KeyServiceError::Kms {
            kind: ErrorKind::Internal,
            message: "a cached data key is not 32 bytes (this is a bug)".to_owned(),
        })
    }

    /// Whether the entry belongs to `key` (an id or an ARN).
    fn is_under(&self, key: &str) -> bool {
        self.key_arn.as_deref().is_some_and(|arn| names_key(arn, key))
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key_arn", &self.key_arn)
            .field("created", &self.created)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

/// What an encrypt entry has been used for.
#[derive(Debug, Default)]
struct Usage {
    messages: AtomicU64,
    bytes: AtomicU64,
}

impl Usage {
    /// Why the entry cannot encrypt one more message, if it cannot.
    fn spent(&self, limits: &CacheLimits) -> Option<EvictionReason> {
        if self.messages.load(Ordering::Relaxed) >= limits.max_messages {
            Some(EvictionReason::Messages)
        } else if self.bytes.load(Ordering::Relaxed) >= limits.max_bytes {
            Some(EvictionReason::Bytes)
        } else {
            None
        }
    }

    /// Takes one message, unless that would pass a limit.
    fn reserve(&self, limits: &CacheLimits) -> bool {
        self.bytes.load(Ordering::Relaxed) < limits.max_bytes
            && self
                .messages
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |messages| {
                    (messages < limits.max_messages).then_some(messages + 1)
                })
                .is_ok()
    }
}

/// One call to the inner key service, awaited by every caller that missed meanwhile.
#[derive(Debug)]
struct Flight {
    started: Instant,
    answer: OnceCell<Result<Arc<Entry>, KeyServiceError>>,
}

impl Flight {
    fn new() -> Self {
        Self { started: Instant::now(), answer: OnceCell::new() }
    }
}

/// A cached entry and when it was last used.
#[derive(Debug)]
struct Slot {
    entry: Arc<Entry>,
    /// The cache's use counter when last used (least recently used goes first).
    last_used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<CacheId, Slot>,
    flights: HashMap<CacheId, Arc<Flight>>,
    /// Counts uses, to order entries by recency.
    uses: u64,
    /// Keys (as given to `invalidate`) recently invalidated, and when.
    revoked_keys: Vec<(String, Instant)>,
    /// When everything was last invalidated.
    revoked_all: Option<Instant>,
}

/// What [`CachingKeys`] and its [`CacheInvalidator`]s share.
#[derive(Debug)]
struct Shared {
    limits: CacheLimits,
    metrics: Option<EnvelopeMetrics>,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent if a holder panicked: every change is a single map call.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, direction: Direction, result: CacheLookup) {
        if let Some(metrics) = &self.metrics {
            metrics.cache_lookup(direction, result);
        }
    }

    fn evicted(&self, state: &State, reason: EvictionReason, n: usize) {
        if let Some(metrics) = &self.metrics {
            metrics.cache_evictions(reason, n as u64);
            metrics.cache_entries(state.entries.len());
        }
    }

    /// The entry `id` if it can serve one more use (an encrypt entry takes its message); a
    /// spent entry is dropped.
    fn hit(&self, state: &mut State, id: &CacheId, direction: Direction) -> Option<Arc<Entry>> {
        let slot = state.entries.get(id)?;
        let usage = &slot.entry.usage;
        let reason = if slot.entry.created.elapsed() >= self.limits.max_age {
            Some(EvictionReason::Age)
        } else if direction == Direction::Encrypt && !usage.reserve(&self.limits) {
            Some(usage.spent(&self.limits).unwrap_or(EvictionReason::Messages))
        } else {
            None
        };
        if let Some(reason) = reason {
            state.entries.remove(id);
            self.evicted(state, reason, 1);
            return None;
        }
        state.uses += 1;
        let uses = state.uses;
        let slot = state.entries.get_mut(id)?;
        slot.last_used = uses;
        Some(Arc::clone(&slot.entry))
    }

    /// After `flight` for `id` answered: the first of its callers here retires it and caches
    /// a good answer, unless the key was revoked since the flight began.
    fn land(
        &self,
        id: CacheId,
        flight: &Arc<Flight>,
        answer: &Result<Arc<Entry>, KeyServiceError>,
    ) {
        let mut state = self.lock();
        if !state.flights.get(&id).is_some_and(|current| Arc::ptr_eq(current, flight)) {
            return;
        }
        state.flights.remove(&id);
        let Ok(entry) = answer else { return };
        let Some(key_arn) = entry.key_arn.as_deref() else { return };
        if self.limits.max_entries == 0 || self.limits.max_age.is_zero() {
            return;
        }
        // Settled: the flight began at least `revocation_settle` after the revocation.
        let settled = |revoked: Instant| {
            flight
                .started
                .checked_duration_since(revoked)
                .is_some_and(|since| since >= self.limits.revocation_settle)
        };
        if state.revoked_all.is_some_and(|revoked| !settled(revoked))
            || state
                .revoked_keys
                .iter()
                .any(|(key, revoked)| names_key(key_arn, key) && !settled(*revoked))
        {
            return;
        }
        if state.entries.len() >= self.limits.max_entries {
            self.purge_expired(&mut state, Instant::now());
        }
        if state.entries.len() >= self.limits.max_entries {
            // A scan, not an ordered index: it runs only on a miss with a full cache, next to
            // a key service call that costs far more than reading a thousand counters.
            let oldest = state.entries.iter().min_by_key(|(_, slot)| slot.last_used);
            if let Some(oldest) = oldest.map(|(id, _)| *id) {
                state.entries.remove(&oldest);
                self.evicted(&state, EvictionReason::Capacity, 1);
            }
        }
        state.uses += 1;
        let slot = Slot { entry: Arc::clone(entry), last_used: state.uses };
        state.entries.insert(id, slot);
        if let Some(metrics) = &self.metrics {
            metrics.cache_entries(state.entries.len());
        }
    }

    /// Drops expired entries and forgets revocations that have settled.
    fn purge_expired(&self, state: &mut State, now: Instant) {
        let before = state.entries.len();
        let max_age = self.limits.max_age;
        state.entries.retain(|_, slot| now.duration_since(slot.entry.created) < max_age);
        let settle = self.limits.revocation_settle;
        state.revoked_keys.retain(|(_, revoked)| now.duration_since(*revoked) < settle);
        if state.revoked_all.is_some_and(|revoked| now.duration_since(revoked) >= settle) {
            state.revoked_all = None;
        }
        self.evicted(state, EvictionReason::Age, before - state.entries.len());
    }

    /// Drops the entries of `key` (every entry for `None`) and every call under way (whose
    /// key is not known yet), and remembers the revocation.
    fn invalidate(&self, key: Option<&str>) {
        let now = Instant::now();
        let mut state = self.lock();
        let before = state.entries.len();
        match key {
            Some(key) => {
                state.entries.retain(|_, slot| !slot.entry.is_under(key));
                let settle = self.limits.revocation_settle;
                state.revoked_keys.retain(|(_, revoked)| now.duration_since(*revoked) < settle);
                state.revoked_keys.push((key.to_owned(), now));
            }
            None => {
                state.entries.clear();
                state.revoked_all = Some(now);
            }
        }
        state.flights.clear();
        self.evicted(&state, EvictionReason::Revoked, before - state.entries.len());
    }
}

/// Whether the key ARN `arn` is the key `key` names (its ARN or its id).
fn names_key(arn: &str, key: &str) -> bool {
    arn == key || key_id_of_arn(arn) == Some(key)
}

#[cfg(test)]
mod tests;
