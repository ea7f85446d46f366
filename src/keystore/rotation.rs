//! Rotation (automatic and on demand) and the sweeper that carries out what time makes due:
//! deletions whose window ended, automatic rotations, imported material that expired.
//!
//! A rotation adds a version and makes it current; every older version is kept and still
//! decrypts. Only symmetric keys rotate, as in AWS. Imported keys rotate on demand to material
//! imported beforehand as `PENDING_ROTATION`.

use super::error::{Error, ErrorKind};
use super::key::{
    KeyRecord, KeyState, Origin, RotationSchedule, RotationType, UnixSeconds, VersionRecord,
    VersionState,
};
use super::lifecycle::OperationClass;
use super::trail::Trail;
use super::{KeySpec, Keystore, LoadedKey, OpContext};

/// Bounds and default of the automatic rotation period, in days.
pub const ROTATION_PERIOD_DAYS: (u32, u32, u32) = (90, 2560, 365);
/// Most on-demand rotations per key.
pub const MAX_ON_DEMAND_ROTATIONS: u32 = 25;

/// What GetKeyRotationStatus answers.
#[derive(Clone, Debug)]
pub struct RotationStatus {
    /// The key's ARN.
    pub key_arn: String,
    /// Whether automatic rotation is on.
    pub enabled: bool,
    /// The period, when on.
    pub period_days: Option<u32>,
    /// The next automatic rotation, when on.
    pub next_rotation: Option<UnixSeconds>,
}

/// One entry of ListKeyRotations.
#[derive(Clone, Debug)]
pub struct RotationEntry {
    /// The key's ARN.
    pub key_arn: String,
    /// The version's record.
    pub version: VersionRecord,
    /// Whether the key is imported (its versions have an import state).
    pub imported: bool,
}

/// Which versions ListKeyRotations lists (its `IncludeKeyMaterial`).
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub enum IncludeKeyMaterial {
    /// `ROTATIONS_ONLY`, AWS's default: the versions a rotation made current.
    #[default]
    RotationsOnly,
    /// `ALL_KEY_MATERIAL`: also the first material and imported material pending rotation.
    AllKeyMaterial,
}

impl IncludeKeyMaterial {
    /// The value of a KMS name.
    pub fn from_kms_name(name: &str) -> Option<Self> {
        match name {
            "ROTATIONS_ONLY" => Some(Self::RotationsOnly),
            "ALL_KEY_MATERIAL" => Some(Self::AllKeyMaterial),
            _ => None,
        }
    }

    fn includes(self, version: &VersionRecord) -> bool {
        self == Self::AllKeyMaterial
            || (version.rotation_type.is_some() && version.state != VersionState::PendingRotation)
    }
}

/// What one sweep did.
#[derive(Clone, Debug, Default, Eq, PartialEq)]
pub struct SweepReport {
    /// Keys destroyed because their deletion window ended.
    pub deleted: Vec<String>,
    /// Keys rotated because their period elapsed.
    pub rotated: Vec<String>,
    /// Keys whose imported material expired.
    pub expired: Vec<String>,
    /// Steps that failed (the sweep goes on with the other keys).
    pub failed: Vec<String>,
}

impl Keystore {
    /// EnableKeyRotation with a period of 90–2560 days (default 365).
    ///
    /// # Errors
    /// UnsupportedOperationException for keys that cannot rotate automatically; ValidationException
    /// for a period out of range; the state errors.
    pub async fn enable_key_rotation(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        period_days: Option<u32>,
    ) -> Result<(), Error> {
        let (min, max, default) = ROTATION_PERIOD_DAYS;
        let now = self.now();
        let trail = self.trail(ctx, "EnableKeyRotation");
        let outcome = async {
            let days = period_days.unwrap_or(default);
            if !(min..=max).contains(&days) {
                return Err(Error::validation(format!(
                    "RotationPeriodInDays must be between {min} and {max}"
                )));
            }
            self.update(&trail, key_ref, false, OperationClass::Manage, |key, loaded| {
                check_auto_rotatable(key, &loaded.arn)?;
                if key.state == KeyState::Disabled {
                    return Err(Error::new(
                        ErrorKind::Disabled,
                        format!("{} is disabled.", loaded.arn),
                    ));
                }
                key.rotation = Some(RotationSchedule::starting(now, days));
                Ok(Vec::new())
            })
            .await
        }
        .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// DisableKeyRotation.
    ///
    /// # Errors
    /// As EnableKeyRotation.
    pub async fn disable_key_rotation(&self, ctx: &OpContext, key_ref: &str) -> Result<(), Error> {
        let trail = self.trail(ctx, "DisableKeyRotation");
        let outcome = self
            .update(&trail, key_ref, false, OperationClass::Manage, |key, loaded| {
                check_auto_rotatable(key, &loaded.arn)?;
                if key.state == KeyState::Disabled {
                    return Err(Error::new(
                        ErrorKind::Disabled,
                        format!("{} is disabled.", loaded.arn),
                    ));
                }
                key.rotation = None;
                Ok(Vec::new())
            })
            .await;
        trail.finish_key(outcome, |arn| arn).await.map(drop)
    }

    /// GetKeyRotationStatus.
    ///
    /// # Errors
    /// NotFoundException; UnsupportedOperationException for keys that cannot rotate.
    pub async fn key_rotation_status(
        &self,
        ctx: &OpContext,
        key_ref: &str,
    ) -> Result<RotationStatus, Error> {
        let outcome = async {
            let key = self.resolve(key_ref, false).await?;
            super::lifecycle::check(OperationClass::Read, &key.record, &key.arn)?;
            if key.record.spec != KeySpec::SymmetricDefault {
                return Err(unsupported_rotation(&key.arn));
            }
            Ok(RotationStatus {
                key_arn: key.arn.clone(),
                enabled: key.record.rotation.is_some(),
                period_days: key.record.rotation.as_ref().map(|r| r.period_days),
                next_rotation: key.record.rotation.as_ref().map(|r| r.next_rotation),
            })
        }
        .await;
        self.trail(ctx, "GetKeyRotationStatus").finish_key(outcome, |s| &s.key_arn).await
    }

    /// RotateKeyOnDemand: a new current version now (for imported keys, the one imported as
    /// PENDING_ROTATION). At most 25 per key.
    ///
    /// # Errors
    /// UnsupportedOperationException for keys that cannot rotate; LimitExceededException past
    /// the cap; ConflictException when an automatic rotation is due within 20 minutes.
    pub async fn rotate_key_on_demand(
        &self,
        ctx: &OpContext,
        key_ref: &str,
    ) -> Result<String, Error> {
        let now = self.now();
        let trail = self.trail(ctx, "RotateKeyOnDemand");
        let outcome = self
            .update_with(&trail, key_ref, false, OperationClass::Manage, 1, |key, loaded| {
                if key.spec != KeySpec::SymmetricDefault {
                    return Err(unsupported_rotation(&loaded.arn));
                }
                match key.state {
                    KeyState::Enabled => {}
                    KeyState::PendingImport => {
                        return Err(Error::new(
                            ErrorKind::InvalidState,
                            format!("{} is pending import.", loaded.arn),
                        ));
                    }
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Disabled,
                            format!("{} is disabled.", loaded.arn),
                        ));
                    }
                }
                if key.on_demand_rotations >= MAX_ON_DEMAND_ROTATIONS {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!(
                            "{} reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand rotations",
                            loaded.arn
                        ),
                    ));
                }
                if key.rotation.as_ref().is_some_and(|r| r.next_rotation - now < 20 * 60) {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!("an automatic rotation of {} is due within 20 minutes", loaded.arn),
                    ));
                }
                key.on_demand_rotations += 1;
                self.rotate(key, loaded, now, RotationType::OnDemand)
            })
            .await;
        trail.finish_key(outcome, |arn| arn).await
    }

    /// ListKeyRotations: the versions `include` selects, oldest first, paginated.
    ///
    /// # Errors
    /// UnsupportedOperationException for keys that cannot rotate; InvalidMarkerException.
    pub async fn list_key_rotations(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        include: IncludeKeyMaterial,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<super::Page<RotationEntry>, Error> {
        let outcome = async {
            let key = self.resolve(key_ref, false).await?;
            super::lifecycle::check(OperationClass::Read, &key.record, &key.arn)?;
            if key.record.spec != KeySpec::SymmetricDefault {
                return Err(unsupported_rotation(&key.arn));
            }
            let entries = self
                .store()
                .versions(&key.record.id)
                .await?
                .into_iter()
                .filter(|version| include.includes(version))
                .map(|version| {
                    (
                        format!("{:010}", version.version),
                        RotationEntry {
                            key_arn: key.arn.clone(),
                            version,
                            imported: key.record.origin == Origin::External,
                        },
                    )
                })
                .collect();
            super::paginate(entries, limit, marker, 1000, 100)
        }
        .await;
        self.trail(ctx, "ListKeyRotations").finish(outcome, |_| (None, None), None).await
    }

    /// Carries out what is due at the keystore clock's now: deletions, automatic rotations,
    /// material expiry. Each is audited as a background event. Idempotent; the server runs it
    /// periodically, `kagi keys sweep` once.
    ///
    /// # Errors
    /// When the store fails; work done before the failure stays done.
    pub async fn sweep(&self, ctx: &OpContext) -> Result<SweepReport, Error> {
        let now = self.now();
        let mut report = SweepReport::default();
        for record in self.store().keys().await? {
            // Each step re-checks, on the fresh record inside the compare-and-swap, that its
            // work is still due: a deletion cancelled since the list was read is not carried
            // out. One key's failure is reported and the sweep goes on.
            if record.state == KeyState::PendingDeletion {
                let trail = self.trail(ctx, "DeleteKey");
                let outcome = self
                    .update(&trail, &record.id, false, OperationClass::Read, |key, loaded| {
                        let due = key.state == KeyState::PendingDeletion
                            && key.deletion_date.is_some_and(|d| d <= now);
                        if !due {
                            return Err(not_due());
                        }
                        key.state = KeyState::Deleted;
                        key.rotation = None;
                        Ok(destroy_all(loaded))
                    })
                    .await;
                self.sweep_step(&trail, outcome, &mut report.deleted, &mut report.failed).await?;
                continue;
            }
            let expiring = self
                .store()
                .versions(&record.id)
                .await?
                .iter()
                .any(|v| v.has_material() && v.valid_to.is_some_and(|t| t <= now));
            if expiring && record.state != KeyState::Deleted {
                let trail = self.trail(ctx, "KeyMaterialExpired");
                let outcome = self
                    .update(&trail, &record.id, false, OperationClass::Read, |key, loaded| {
                        let mut changed = Vec::new();
                        for version in loaded.versions.values() {
                            let record = &version.record;
                            if record.has_material() && record.valid_to.is_some_and(|t| t <= now) {
                                changed.push(VersionRecord {
                                    sealed_material: Vec::new(),
                                    ..record.clone()
                                });
                                if record.version == key.current_version
                                    && key.state != KeyState::PendingDeletion
                                {
                                    key.state = KeyState::PendingImport;
                                }
                            }
                        }
                        if changed.is_empty() {
                            return Err(not_due());
                        }
                        Ok(changed)
                    })
                    .await;
                self.sweep_step(&trail, outcome, &mut report.expired, &mut report.failed).await?;
            }
            if record.rotation.is_some() {
                let trail = self.trail(ctx, "RotateKey");
                let outcome = self
                    .update(&trail, &record.id, false, OperationClass::Read, |key, loaded| {
                        let enabled = key.state == KeyState::Enabled;
                        let Some(schedule) = key.rotation.as_mut().filter(|_| enabled) else {
                            return Err(not_due());
                        };
                        if schedule.next_rotation > now {
                            return Err(not_due());
                        }
                        // Catch up in one rotation, then schedule from now.
                        schedule.next_rotation = now + i64::from(schedule.period_days) * 86_400;
                        self.rotate(key, loaded, now, RotationType::Automatic)
                    })
                    .await;
                self.sweep_step(&trail, outcome, &mut report.rotated, &mut report.failed).await?;
            }
        }
        Ok(report)
    }

    /// Records one sweep step: audited and listed when done or failed, silent when not due.
    /// A done step was audited before its commit; a step whose line could not be written was
    /// not carried out and ends the sweep.
    async fn sweep_step(
        &self,
        trail: &Trail<'_>,
        outcome: Result<String, Error>,
        done: &mut Vec<String>,
        failed: &mut Vec<String>,
    ) -> Result<(), Error> {
        if outcome.as_ref().is_err_and(is_not_due) {
            return Ok(());
        }
        match trail.finish_key(outcome, |arn| arn).await {
            Err(error) if trail.audit_failed() => return Err(error),
            Ok(arn) => done.push(arn),
            Err(error) => failed.push(format!("{}: {error}", trail.operation())),
        }
        Ok(())
    }

    /// Makes a new version current: generated for AWS_KMS keys, the pending-rotation import for
    /// EXTERNAL keys. Returns the versions to write.
    fn rotate(
        &self,
        key: &mut KeyRecord,
        loaded: &LoadedKey,
        now: UnixSeconds,
        rotation_type: RotationType,
    ) -> Result<Vec<VersionRecord>, Error> {
        let mut changed = Vec::new();
        let new_version = match key.origin {
            Origin::AwsKms => {
                let next = loaded.versions.keys().next_back().copied().unwrap_or(0) + 1;
                let material = self.generate_material(key.spec)?;
                self.seal_version(&key.id, next, now, VersionState::Current, &material, None)?
            }
            Origin::External => {
                let pending = loaded
                    .versions
                    .values()
                    .find(|v| v.record.state == VersionState::PendingRotation && v.material.is_some())
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::UnsupportedOperation,
                            format!("{} has no key material imported for rotation (ImportType NEW_KEY_MATERIAL)", loaded.arn),
                        )
                    })?;
                VersionRecord { state: VersionState::Current, ..pending.record.clone() }
            }
        };
        if let Some(old) = loaded.versions.get(&key.current_version) {
            changed.push(VersionRecord { state: VersionState::NonCurrent, ..old.record.clone() });
        }
        key.current_version = new_version.version;
        changed.push(VersionRecord {
            rotation_type: Some(rotation_type),
            rotation_date: Some(now),
            ..new_version
        });
        Ok(changed)
    }
}

const NOT_DUE: &str = "no longer due";

/// The sweeper's "nothing to do after all": the fresh record no longer needs the step.
fn not_due() -> Error {
    Error::new(ErrorKind::Conflict, NOT_DUE)
}

fn is_not_due(error: &Error) -> bool {
    error.kind() == ErrorKind::Conflict && error.message() == NOT_DUE
}

fn check_auto_rotatable(key: &KeyRecord, arn: &str) -> Result<(), Error> {
    if key.spec != KeySpec::SymmetricDefault || key.origin != Origin::AwsKms {
        return Err(unsupported_rotation(arn));
    }
    Ok(())
}

fn unsupported_rotation(arn: &str) -> Error {
    Error::new(
        ErrorKind::UnsupportedOperation,
        format!("{arn}: automatic rotation applies only to symmetric keys with AWS_KMS origin"),
    )
}

/// Every version with its material destroyed.
pub(super) fn destroy_all(loaded: &LoadedKey) -> Vec<VersionRecord> {
    loaded
        .versions
        .values()
        .map(|version| VersionRecord { sealed_material: Vec::new(), ..version.record.clone() })
        .collect()
}
