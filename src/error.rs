//! The top-level error: what [`crate::run`] returns, and the process exit code for each kind.
//!
//! Subsystems have their own error enums; they convert into this one at the top.

use std::fmt;

/// Exit codes of the `kagi` command. Documented in README.md.
pub mod exit_code {
    /// Success.
    pub const OK: u8 = 0;
    /// Anything not covered below (an internal failure).
    pub const FAILURE: u8 = 1;
    /// The command line was wrong (clap uses 2 too).
    pub const USAGE: u8 = 2;
    /// The key, alias or other resource does not exist (NotFoundException).
    pub const NOT_FOUND: u8 = 3;
    /// The key's state forbids the operation (DisabledException, KMSInvalidStateException,
    /// ConflictException).
    pub const KEY_STATE: u8 = 4;
    /// A ciphertext, signature or MAC was rejected (InvalidCiphertextException,
    /// KMSInvalidSignatureException, KMSInvalidMacException, IncorrectKeyException), or a
    /// running server's policy refused the call (AccessDeniedException).
    pub const REJECTED: u8 = 5;
    /// An argument or input is invalid (ValidationException, InvalidKeyUsageException, …).
    pub const INVALID: u8 = 6;
    /// The data directory holds no keystore, the root key is wrong, or the database failed to
    /// open.
    pub const STORAGE: u8 = 7;
}

/// An error that ends a `kagi` command.
#[derive(Debug)]
pub struct Error {
    code: u8,
    message: String,
}

impl Error {
    /// An error with a message and the exit code the process should end with.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<crate::crypto::Error> for Error {
    fn from(error: crate::crypto::Error) -> Self {
        Self::new(exit_code::FAILURE, error.to_string())
    }
}
