//! Keystore errors: one kind per AWS KMS exception, so the API maps them one to one.

use std::fmt;

/// What went wrong, named after the AWS KMS exception it becomes.
///
/// Grouped by who is at fault: the caller (bad input, wrong key state), then the server.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum ErrorKind {
    // The caller.
    /// `AccessDeniedException`: no policy or grant allows the call, or one denies it.
    AccessDenied,
    /// `AlreadyExistsException`: an alias name in use.
    AlreadyExists,
    /// `ConflictException`: a concurrent change won, or a rotation is due.
    Conflict,
    /// `DisabledException`: the key is disabled.
    Disabled,
    /// `ExpiredImportTokenException`.
    ExpiredImportToken,
    /// `IncorrectKeyException`: the KeyId given is not the ciphertext's key.
    IncorrectKey,
    /// `IncorrectKeyMaterialException`: re-import of different material.
    IncorrectKeyMaterial,
    /// `InvalidAliasNameException`.
    InvalidAliasName,
    /// `InvalidArnException`.
    InvalidArn,
    /// `InvalidCiphertextException`: anything that does not authenticate. Uniform on purpose.
    InvalidCiphertext,
    /// `InvalidGrantIdException`: a grant id that names no grant of the key.
    InvalidGrantId,
    /// `InvalidGrantTokenException`: a grant token kagi did not issue, or whose grant is gone.
    InvalidGrantToken,
    /// `InvalidImportTokenException`.
    InvalidImportToken,
    /// `InvalidKeyUsageException`: wrong usage or algorithm for this key.
    InvalidKeyUsage,
    /// `InvalidMarkerException`: a pagination marker kagi did not issue.
    InvalidMarker,
    /// `KMSInvalidMacException`: a MAC did not verify.
    InvalidMac,
    /// `KMSInvalidSignatureException`: a signature did not verify.
    InvalidSignature,
    /// `KMSInvalidStateException`: the operation is not allowed in the key's state.
    InvalidState,
    /// `LimitExceededException`: a quota (aliases per key, on-demand rotations).
    LimitExceeded,
    /// `NotFoundException`: no such key or alias (deleted keys included).
    NotFound,
    /// `TagException`: a tag key or value out of bounds.
    Tag,
    /// `UnsupportedOperationException`: e.g. rotating an asymmetric key.
    UnsupportedOperation,
    /// `ThrottlingException`: the caller's request quota is used up.
    Throttling,
    /// `ValidationException`: a parameter out of range.
    Validation,
    // The server.
    /// `DependencyTimeoutException`: the store did not answer in time.
    DependencyTimeout,
    /// `KMSInternalException`: a failure that is not the caller's (storage, a bug).
    Internal,
}

impl ErrorKind {
    /// Every kind, in declaration order (a new kind belongs here too, for
    /// [`ErrorKind::from_aws_name`]).
    pub const ALL: [Self; 26] = [
        Self::AccessDenied,
        Self::AlreadyExists,
        Self::Conflict,
        Self::Disabled,
        Self::ExpiredImportToken,
        Self::IncorrectKey,
        Self::IncorrectKeyMaterial,
        Self::InvalidAliasName,
        Self::InvalidArn,
        Self::InvalidCiphertext,
        Self::InvalidGrantId,
        Self::InvalidGrantToken,
        Self::InvalidImportToken,
        Self::InvalidKeyUsage,
        Self::InvalidMarker,
        Self::InvalidMac,
        Self::InvalidSignature,
        Self::InvalidState,
        Self::LimitExceeded,
        Self::NotFound,
        Self::Tag,
        Self::UnsupportedOperation,
        Self::Throttling,
        Self::Validation,
        Self::DependencyTimeout,
        Self::Internal,
    ];

    /// The AWS KMS exception name (`__type` on the wire).
    pub fn aws_name(self) -> &'static str {
        match self {
            Self::AccessDenied => "AccessDeniedException",
            Self::AlreadyExists => "AlreadyExistsException",
            Self::Conflict => "ConflictException",
            Self::Disabled => "DisabledException",
            Self::ExpiredImportToken => "ExpiredImportTokenException",
            Self::IncorrectKey => "IncorrectKeyException",
            Self::IncorrectKeyMaterial => "IncorrectKeyMaterialException",
            Self::InvalidAliasName => "InvalidAliasNameException",
            Self::InvalidArn => "InvalidArnException",
            Self::InvalidCiphertext => "InvalidCiphertextException",
            Self::InvalidGrantId => "InvalidGrantIdException",
            Self::InvalidGrantToken => "InvalidGrantTokenException",
            Self::InvalidImportToken => "InvalidImportTokenException",
            Self::InvalidKeyUsage => "InvalidKeyUsageException",
            Self::InvalidMarker => "InvalidMarkerException",
            Self::InvalidMac => "KMSInvalidMacException",
            Self::InvalidSignature => "KMSInvalidSignatureException",
            Self::InvalidState => "KMSInvalidStateException",
            Self::LimitExceeded => "LimitExceededException",
            Self::NotFound => "NotFoundException",
            Self::Tag => "TagException",
            Self::UnsupportedOperation => "UnsupportedOperationException",
            Self::Throttling => "ThrottlingException",
            Self::Validation => "ValidationException",
            Self::DependencyTimeout => "DependencyTimeoutException",
            Self::Internal => "KMSInternalException",
        }
    }

    /// The kind an AWS KMS exception name (`__type` on the wire) stands for: the inverse of
    /// [`ErrorKind::aws_name`], for callers of a remote keystore. `None` for a name kagi does
    /// not answer with.
    pub fn from_aws_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.aws_name() == name)
    }

    /// The HTTP status AWS answers this error with (../shared/reference/kms-errors.md).
    pub fn http_status(self) -> u16 {
        match self {
            Self::NotFound => 404,
            Self::AlreadyExists | Self::Conflict | Self::Disabled | Self::InvalidState => 409,
            Self::Internal => 500,
            Self::DependencyTimeout => 503,
            _ => 400,
        }
    }

    /// Whether the server, not the caller, is at fault.
    pub fn is_server_fault(self) -> bool {
        matches!(self, Self::DependencyTimeout | Self::Internal)
    }
}

/// A keystore error: a kind and a message. Messages name keys by ARN and never carry key
/// material, plaintext or context values.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    /// The key the operation was refused on, when the refusal is about that key's state: the
    /// audit line names it, so attempts to use a key pending deletion show in the trail.
    key_arn: Option<String>,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), key_arn: None }
    }

    /// The error, naming the key it concerns.
    pub(crate) fn for_key(mut self, key_arn: &str) -> Self {
        self.key_arn = Some(key_arn.to_owned());
        self
    }

    /// The key the error concerns, for a refusal because of that key's state.
    pub fn key_arn(&self) -> Option<&str> {
        self.key_arn.as_deref()
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn not_found(what: impl fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, format!("{what} does not exist"))
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub(crate) fn invalid_ciphertext() -> Self {
        Self::new(ErrorKind::InvalidCiphertext, "the ciphertext is invalid or does not match")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.aws_name(), self.message)
    }
}

impl std::error::Error for Error {}

impl From<super::store::StoreError> for Error {
    fn from(error: super::store::StoreError) -> Self {
        use super::store::StoreError;
        match error {
            StoreError::Conflict => {
                Self::new(ErrorKind::Conflict, "a concurrent change to the key won; retry")
            }
            StoreError::AlreadyExists(what) => {
                Self::new(ErrorKind::AlreadyExists, format!("{what} already exists"))
            }
            StoreError::NotFound(what) => Self::not_found(what),
            StoreError::Unavailable(why) => Self::new(
                ErrorKind::DependencyTimeout,
                format!("the key store is unavailable: {why}"),
            ),
            other => Self::internal(format!("storage failed: {other}")),
        }
    }
}

impl From<crate::crypto::Error> for Error {
    fn from(error: crate::crypto::Error) -> Self {
        use crate::crypto::Error as E;
        match error {
            E::DecryptFailed => Self::invalid_ciphertext(),
            E::BadSignature => Self::new(ErrorKind::InvalidSignature, "the signature is not valid"),
            E::InvalidInput(why) => Self::validation(why),
            E::WrongAlgorithm(alg) => {
                Self::new(ErrorKind::InvalidKeyUsage, format!("{alg} is not valid for this key"))
            }
            E::InvalidKey(why) => Self::validation(why),
            E::NotApproved(_) => Self::new(ErrorKind::UnsupportedOperation, error.to_string()),
            E::Random | E::Internal(_) => Self::internal(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_names_map_back_to_their_kinds() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_aws_name(kind.aws_name()), Some(kind));
        }
        assert_eq!(ErrorKind::from_aws_name("NoSuchException"), None);
        assert_eq!(ErrorKind::from_aws_name("notfoundexception"), None);
    }
}
