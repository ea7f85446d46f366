//! The state × operation matrix of AWS KMS (KMS-PROTOCOL.md §2.4), in one place.
//!
//! Every operation names its [`OperationClass`]; [`check`] says whether a key in its state may
//! undergo it, with the exact AWS error when not. State changes themselves are made by the
//! keystore's operations and the sweeper, each through the store's compare-and-swap.

use super::error::{Error, ErrorKind};
use super::key::{KeyRecord, KeyState};

/// How an operation relates to key state.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum OperationClass {
    /// Encrypt, Decrypt, GenerateDataKey*, Sign, Verify, GenerateMac, VerifyMac,
    /// DeriveSharedSecret, GetPublicKey, ReEncrypt: need an enabled key.
    Cryptographic,
    /// DescribeKey, ListResourceTags, GetKeyRotationStatus, ListKeyRotations, DeleteAlias:
    /// allowed in every state.
    Read,
    /// EnableKey, DisableKey: refused pending deletion or pending import.
    EnableDisable,
    /// TagResource, UntagResource, UpdateKeyDescription, CreateAlias, UpdateAlias (target),
    /// EnableKeyRotation, DisableKeyRotation, RotateKeyOnDemand: refused pending deletion.
    Manage,
    /// ScheduleKeyDeletion: refused when already pending deletion.
    ScheduleDeletion,
    /// CancelKeyDeletion: only pending deletion.
    CancelDeletion,
    /// GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial: refused pending
    /// deletion.
    Import,
}

/// Whether `key`, in its state, may undergo an operation of `class`.
///
/// # Errors
/// The AWS error for the combination; deleted keys are `NotFoundException` everywhere.
pub fn check(class: OperationClass, key: &KeyRecord, arn: &str) -> Result<(), Error> {
    check_state(class, key, arn).map_err(|error| error.for_key(arn))
}

fn check_state(class: OperationClass, key: &KeyRecord, arn: &str) -> Result<(), Error> {
    use KeyState as S;
    use OperationClass as C;
    let disabled = || Error::new(ErrorKind::Disabled, format!("{arn} is disabled."));
    let pending_deletion =
        || Error::new(ErrorKind::InvalidState, format!("{arn} is pending deletion."));
    let pending_import =
        || Error::new(ErrorKind::InvalidState, format!("{arn} is pending import."));
    match (class, key.state) {
        (_, S::Deleted) => Err(Error::not_found(format!("Key '{arn}'"))),
        (C::Read, _) => Ok(()),
        (C::Cryptographic, S::Enabled) => Ok(()),
        (C::Cryptographic, S::Disabled) => Err(disabled()),
        (C::Cryptographic, S::PendingDeletion) => Err(pending_deletion()),
        (C::Cryptographic, S::PendingImport) => Err(pending_import()),
        (C::EnableDisable, S::Enabled | S::Disabled) => Ok(()),
        (C::EnableDisable, S::PendingDeletion) => Err(pending_deletion()),
        (C::EnableDisable, S::PendingImport) => Err(pending_import()),
        (C::Manage | C::Import, S::PendingDeletion) => Err(pending_deletion()),
        (C::Manage | C::Import, _) => Ok(()),
        (C::ScheduleDeletion, S::PendingDeletion) => Err(pending_deletion()),
        (C::ScheduleDeletion, _) => Ok(()),
        (C::CancelDeletion, S::PendingDeletion) => Ok(()),
        (C::CancelDeletion, _) => Err(Error::new(
            ErrorKind::InvalidState,
            format!("{arn} is not pending deletion (its state is {}).", key.state),
        )),
    }
}

/// The state CancelKeyDeletion returns a key to.
pub const AFTER_CANCEL: KeyState = KeyState::Disabled;
