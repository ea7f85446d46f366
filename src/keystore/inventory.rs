//! The inventory: every key's record with its versions' metadata and its aliases, read straight
//! from the store for metrics and `kagi report`.
//!
//! It carries no material (sealed or not) and is not audited: it is the operator's own process
//! reading metadata, like `kagi audit show` reads the trail, and a scrape every 15 s must not
//! fill the trail. Operations a client calls (DescribeKey, ListKeys) stay audited.

use super::key::{KeyRecord, UnixSeconds, VersionState};
use super::{Error, Keystore};

/// One key as the inventory sees it.
#[derive(Clone, Debug)]
pub struct InventoryKey {
    /// The persisted record (state, spec, rotation schedule, deletion date, …).
    pub record: KeyRecord,
    /// The key ARN.
    pub arn: String,
    /// Its aliases (`alias/…`), sorted.
    pub aliases: Vec<String>,
    /// Its versions, oldest first.
    pub versions: Vec<InventoryVersion>,
}

/// One key version's metadata.
#[derive(Clone, Debug)]
pub struct InventoryVersion {
    /// 1, 2, 3, …
    pub version: u32,
    /// The material id.
    pub material_id: String,
    /// Where it stands.
    pub state: VersionState,
    /// When it was created or imported.
    pub created: UnixSeconds,
    /// For imported material: when it expires.
    pub valid_to: Option<UnixSeconds>,
    /// Whether the material is still present (not expired or deleted).
    pub has_material: bool,
}

impl InventoryKey {
    /// When the current version's imported material expires, if it does.
    pub fn material_expiry(&self) -> Option<UnixSeconds> {
        self.versions
            .iter()
            .find(|version| version.version == self.record.current_version && version.has_material)
            .and_then(|version| version.valid_to)
    }
}

impl Keystore {
    /// Whether the store answers a read (a point lookup, cheap enough for a readiness probe).
    pub async fn is_open(&self) -> bool {
        self.store.key("00000000-0000-0000-0000-000000000000").await.is_ok()
    }

    /// Every key the store holds (deleted ones included, with their state), oldest id first.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn inventory(&self) -> Result<Vec<InventoryKey>, Error> {
        let records = self.store.keys().await?;
        let aliases = self.store.aliases().await?;
        let mut keys = Vec::with_capacity(records.len());
        for record in records {
            let versions = self
                .store
                .versions(&record.id)
                .await?
                .into_iter()
                .map(|version| InventoryVersion {
                    version: version.version,
                    has_material: version.has_material(),
                    material_id: version.material_id,
                    state: version.state,
                    created: version.created,
                    valid_to: version.valid_to,
                })
                .collect();
            let mut names: Vec<String> = aliases
                .iter()
                .filter(|alias| alias.key_id == record.id)
                .map(|alias| alias.name.clone())
                .collect();
            names.sort();
            keys.push(InventoryKey {
                arn: self.key_arn(&record.id),
                record,
                aliases: names,
                versions,
            });
        }
        Ok(keys)
    }
}
