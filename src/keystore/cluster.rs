//! Several nodes on one store: each follows the store's change feed, so what it cached of a
//! key or an alias another node changed is dropped within one poll interval; background work
//! that must run once across the nodes takes a lease in the store.
//!
//! While the store is unreachable a node keeps its caches (keys it already loaded keep
//! serving) and every change fails (DependencyTimeoutException); when the store returns the
//! node reads the feed from where it stopped, so it misses nothing the feed still keeps
//! ([`super::store::CHANGES_KEPT`]); a node further behind drops every cache.

use std::time::Duration;

use super::{Error, Keystore};

impl Keystore {
    /// Reads the change feed every `interval`, forever, from `cursor` (what
    /// [`Keystore::apply_changes`] answered at start-up, so that every change after it is
    /// seen; `None`: from wherever the feed stands at the first read), dropping cached keys and
    /// aliases that changed (on any node) and telling the observer. Failures are logged once
    /// per outage.
    pub async fn follow_changes(&self, interval: Duration, cursor: Option<i64>) {
        let mut cursor = cursor;
        let mut failing = false;
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            // A root key rotation started on another node: seal with its new key from now on,
            // before that node re-seals and commits.
            if let Err(error) = self.adopt_next_root().await {
                tracing::debug!(target: "kagi::store", %error, "cannot read the store's root key state");
            }
            match self.apply_changes(cursor).await {
                Ok(next) => {
                    if failing {
                        tracing::info!(target: "kagi::store", "the store answers again; following its changes");
                        failing = false;
                    }
                    cursor = Some(next);
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(
                            target: "kagi::store",
                            %error,
                            "cannot read the store's changes: serving keys already loaded, refusing changes"
                        );
                        failing = true;
                    }
                }
            }
        }
    }

    /// Applies what changed after `cursor` (`None`: nothing yet, only where the feed stands);
    /// answers the cursor to pass next time.
    ///
    /// # Errors
    /// When the store cannot be read; nothing is dropped then.
    pub async fn apply_changes(&self, cursor: Option<i64>) -> Result<i64, Error> {
        let changes = self.store.changes(cursor).await?;
        if changes.all {
            self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
            self.invalidate_aliases();
            if let Some(observer) = self.observer() {
                observer.changed_elsewhere(None);
            }
            return Ok(changes.cursor);
        }
        for key_id in &changes.keys {
            self.invalidate(key_id);
            if let Some(observer) = self.observer() {
                observer.changed_elsewhere(Some(&self.key_arn(key_id)));
            }
        }
        if changes.aliases {
            self.invalidate_aliases();
            if let Some(observer) = self.observer() {
                observer.changed_elsewhere(None);
            }
        }
        Ok(changes.cursor)
    }

    /// Takes or renews the lease `name` for this process for `ttl`: true when this process
    /// holds it and may do the work it guards.
    ///
    /// # Errors
    /// When the store cannot be reached (then no one should assume the lease).
    pub async fn try_lease(&self, name: &str, ttl: Duration) -> Result<bool, Error> {
        let seconds = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(1);
        Ok(self.store.try_lease(name, &self.node_id, seconds).await?)
    }

    /// Gives up the lease `name` if this process holds it (at a clean shutdown).
    ///
    /// # Errors
    /// When the store cannot be reached (the lease then runs out by itself).
    pub async fn release_lease(&self, name: &str) -> Result<(), Error> {
        Ok(self.store.release_lease(name, &self.node_id).await?)
    }

    /// A secret every node holding the root key derives alike for `label` (TLS session-ticket
    /// keys), never the root key itself.
    ///
    /// # Errors
    /// Only on crypto failure.
    pub fn derive_secret(&self, label: &[u8]) -> Result<crate::crypto::SecretBytes, Error> {
        self.root().current.derive_secret(self.backend, label)
    }

    /// This process's name as a lease holder.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}
