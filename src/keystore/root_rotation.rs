//! Root key rotation (`kagi root-key rotate`): every version of key material is re-sealed
//! under a new root key while the keystore serves.
//!
//! The steps, each durable before the next, so that a crash anywhere resumes:
//! 1. **Stage**: the new key's files are written beside the current ones (`root.*.next`) and
//!    the new key, sealed under the current one, goes into the store (`root_next`). From here
//!    whoever holds the current root key can finish the rotation; the keystore seals with the
//!    new key and opens with either.
//! 2. **Re-seal**: each key whose versions do not all open under the new key is rewritten, by
//!    compare-and-swap on its revision like any change, with its material re-sealed. Nothing
//!    else about the key changes (not its material, ids or dates).
//! 3. **Commit**: the store's check value becomes the new key's (`root_check`), the staged
//!    files are renamed into place under a commit mark (`root.commit`), and `root_next` is
//!    removed. The old key then opens nothing.
//!
//! [`Keystore::reconcile_root`] runs when a keystore opens and tells from the store and the
//! files which step a crash interrupted: during 1–2 the rotation is resumed (by the server, or
//! the next `kagi root-key rotate`); during 3 the commit is finished.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::error::{Error, ErrorKind};
use super::root::{self, Keyring, NextRoot, RootKey};
use super::store::{KeyUpdate, StoreError};
use super::{Keystore, OpContext};

/// The store's `meta` entry holding the next root key, sealed under the current one.
const NEXT_META: &str = "root_next";
/// The store's `meta` entry holding the root key's check value.
const CHECK_META: &str = "root_check";

/// What a root key rotation did.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct RootRotation {
    /// Keys rewritten.
    pub keys: usize,
    /// Versions of key material re-sealed.
    pub versions: usize,
}

impl Keystore {
    /// Squares the root key this keystore was opened with against the store and `data_dir`,
    /// finishing what a crash interrupted (see the module's documentation). True when a
    /// rotation is under way and must be resumed ([`Keystore::finish_root_rotation`]).
    ///
    /// # Errors
    /// When the store's keys are sealed under another root key, or the store or files fail.
    pub async fn reconcile_root(&self, data_dir: &Path) -> Result<bool, Error> {
        let ring = self.root();
        let current = &ring.current;
        let recorded = self.store.init_meta(CHECK_META, RootKey::stored_check(data_dir)?).await?;
        let sealed_next = self.store.meta(NEXT_META).await?;
        let next =
            sealed_next.as_deref().and_then(|sealed| current.open_next(self.backend, sealed));
        match (current.opens_check(self.backend, &recorded), next) {
            // Staged, maybe partly re-sealed: seal with the new key, open with both. Without
            // the staged files, the rotation runs on another node: this one only follows.
            (true, Some(next)) => {
                let here = next.staged_check(self.backend, data_dir).is_ok();
                self.set_root(Arc::new(next), Some(Arc::clone(&ring.current)));
                self.root_rotation_here.store(here, Ordering::SeqCst);
                Ok(here)
            }
            // The store's check value is the new key's: the commit stopped before the files.
            (false, Some(next)) if next.opens_check(self.backend, &recorded) => {
                root::commit_staged(data_dir)?;
                self.store.set_meta(NEXT_META, None).await?;
                tracing::info!("finished the commit of an interrupted root key rotation");
                self.set_root(Arc::new(next), None);
                Ok(false)
            }
            (true, None) => {
                // A `root_next` this key does not open was sealed under the key it replaced:
                // the commit stopped before removing it.
                if sealed_next.is_some() {
                    self.store.set_meta(NEXT_META, None).await?;
                }
                Ok(false)
            }
            (false, _) => Err(Error::validation(format!(
                "the root key of {} is not the one the keys in the store are sealed under: \
                 another keystore's database, or the root key was rotated on another node (copy \
                 that node's root.key or root.salt or root.shares, root.check and root.lineage \
                 here)",
                data_dir.display()
            ))),
        }
    }

    /// Rotates the root key to `next`: stages it, re-seals every version of key material
    /// under it and commits (see the module's documentation). The keystore keeps serving
    /// throughout. When a rotation is already under way, it is finished instead and `next` is
    /// dropped.
    ///
    /// `settle` is how long other nodes on the same store may take to take up the new key
    /// (twice their poll interval; zero for a store of its own): re-sealing starts after it,
    /// so no node still seals under the old key once the re-seal has passed.
    ///
    /// # Errors
    /// A new key of another kind than the current one; a store or file failure (the rotation
    /// then resumes at the next start or call); a version that opens under neither key.
    pub async fn rotate_root(
        &self,
        ctx: &OpContext,
        data_dir: &Path,
        next: NextRoot,
        settle: Duration,
    ) -> Result<RootRotation, Error> {
        let running = self.root_rotation.try_lock().map_err(|_| {
            Error::new(ErrorKind::Conflict, "a root key rotation is already running")
        })?;
        if self.reconcile_root(data_dir).await? {
            drop(running);
            tracing::info!("a root key rotation was under way: finishing it");
            return self.finish_root_rotation(ctx, data_dir, settle).await;
        }
        let ring = self.root();
        let (next, sealed) = next.stage(self.backend, data_dir, &ring.current)?;
        self.store.set_meta(NEXT_META, Some(sealed)).await?;
        self.set_root(Arc::new(next), Some(Arc::clone(&ring.current)));
        self.root_rotation_here.store(true, Ordering::SeqCst);
        drop(running);
        self.finish_root_rotation(ctx, data_dir, settle).await
    }

    /// Re-seals what is left and commits the rotation under way, after `settle` (see
    /// [`Keystore::rotate_root`]).
    ///
    /// # Errors
    /// As [`Keystore::rotate_root`]; a validation error when no rotation is under way.
    pub async fn finish_root_rotation(
        &self,
        ctx: &OpContext,
        data_dir: &Path,
        settle: Duration,
    ) -> Result<RootRotation, Error> {
        let _running = self.root_rotation.try_lock().map_err(|_| {
            Error::new(ErrorKind::Conflict, "a root key rotation is already running")
        })?;
        if !settle.is_zero() {
            tracing::info!(
                "root key rotation: waiting {settle:?} for the other nodes to take up the new key"
            );
            tokio::time::sleep(settle).await;
        }
        let trail = self.trail(ctx, "RotateRootKey");
        let outcome = self.reseal_and_commit(data_dir).await;
        match &outcome {
            Ok(done) => tracing::info!(
                keys = done.keys,
                versions = done.versions,
                "root key rotated: every version of key material is sealed under the new key"
            ),
            Err(error) => tracing::error!(
                "root key rotation stopped: {} (it resumes at the next start or `kagi root-key \
                 rotate`)",
                error.message()
            ),
        }
        trail.finish(outcome, |_| (None, None), None).await
    }

    async fn reseal_and_commit(&self, data_dir: &Path) -> Result<RootRotation, Error> {
        let ring = self.root();
        if ring.previous.is_none() || !self.root_rotation_pending() {
            return Err(Error::validation("no root key rotation is under way here"));
        }
        let check = ring.current.staged_check(self.backend, data_dir)?;
        let done = self.reseal_all(&ring).await?;
        self.store.set_meta(CHECK_META, Some(check)).await?;
        root::commit_staged(data_dir)?;
        self.store.set_meta(NEXT_META, None).await?;
        self.set_root(Arc::clone(&ring.current), None);
        self.root_rotation_here.store(false, Ordering::SeqCst);
        Ok(done)
    }

    /// Rewrites every key with a version not sealed under `ring.current` yet.
    async fn reseal_all(&self, ring: &Keyring) -> Result<RootRotation, Error> {
        let mut done = RootRotation::default();
        for key in self.store.keys().await? {
            let versions = self.reseal_key(ring, &key.id).await?;
            if versions > 0 {
                done.keys += 1;
                done.versions += versions;
            }
        }
        Ok(done)
    }

    /// Re-seals the versions of `key_id` not sealed under `ring.current` yet; answers how
    /// many.
    async fn reseal_key(&self, ring: &Keyring, key_id: &str) -> Result<usize, Error> {
        let previous = ring
            .previous
            .as_ref()
            .ok_or_else(|| Error::internal("re-sealing without the previous root key"))?;
        for _ in 0..8 {
            let _writer = self.write_lock.lock().await;
            let Some(record) = self.store.key(key_id).await? else { return Ok(0) };
            let mut put_versions = Vec::new();
            for mut version in self.store.versions(key_id).await? {
                if !version.has_material() {
                    continue;
                }
                let aad = Self::material_aad(key_id, version.version);
                if ring.current.unseal(self.backend, &aad, &version.sealed_material).is_ok() {
                    continue;
                }
                let material = previous
                    .unseal(self.backend, &aad, &version.sealed_material)
                    .map_err(|_| {
                        Error::internal(format!(
                            "version {} of key {key_id} opens under neither the old nor the \
                             new root key",
                            version.version
                        ))
                    })?;
                version.sealed_material =
                    ring.current.seal(self.backend, &aad, material.expose_secret())?;
                put_versions.push(version);
            }
            if put_versions.is_empty() {
                return Ok(0);
            }
            let count = put_versions.len();
            let mut key = record.clone();
            key.revision += 1;
            let update = KeyUpdate {
                key,
                expected_revision: record.revision,
                put_versions,
                delete_aliases: false,
            };
            let result = self.store.update_key(update).await;
            self.invalidate(key_id);
            match result {
                Ok(()) => return Ok(count),
                Err(StoreError::Conflict) => {}
                Err(other) => return Err(other.into()),
            }
        }
        Err(Error::new(
            ErrorKind::Conflict,
            format!("key {key_id} kept changing during the re-seal; run the rotation again"),
        ))
    }

    /// Whether a rotation is under way in this process (staged, not committed): opening the
    /// keystore found one a stop interrupted, to be finished with
    /// [`Keystore::finish_root_rotation`].
    pub fn root_rotation_pending(&self) -> bool {
        self.root_rotation_here.load(Ordering::SeqCst)
    }

    /// Takes up the next root key of a rotation started elsewhere (another node, or a
    /// command while this process served), when the store has one this process's key opens.
    /// True when the keys changed: a version that did not open may open now.
    pub(crate) async fn adopt_next_root(&self) -> Result<bool, Error> {
        let ring = self.root();
        let Some(sealed) = self.store.meta(NEXT_META).await? else {
            // Committed elsewhere (this process is not rotating): the old key opens nothing.
            if ring.previous.is_some()
                && let Ok(_idle) = self.root_rotation.try_lock()
            {
                self.set_root(Arc::clone(&ring.current), None);
            }
            return Ok(false);
        };
        // Sealed under the key this process had: it is not taken up yet.
        let Some(next) = ring.current.open_next(self.backend, &sealed) else { return Ok(false) };
        tracing::info!("a root key rotation is under way elsewhere: sealing with its new key");
        self.set_root(Arc::new(next), Some(Arc::clone(&ring.current)));
        Ok(true)
    }

    fn set_root(&self, current: Arc<RootKey>, previous: Option<Arc<RootKey>>) {
        *self.root.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Arc::new(Keyring { current, previous });
    }
}
