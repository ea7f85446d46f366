//! The envelope: request and response bodies as AWS Encryption SDK messages (message format
//! version 2), encrypted and decrypted as streams, and JSON documents with some fields
//! encrypted.
//!
//! # What it owns
//!
//! - [`format`](mod@format): the bytes. Header, frames and footer of the message format version 2 for the
//!   two committing suites kagi writes and reads, [`Suite::Aes256GcmHkdfSha512CommitKey`]
//!   (0x0478) and [`Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384`] (0x0578); the key
//!   derivation and key commitment. The official SDK can read what kagi writes and the reverse.
//! - [`stream`]: sans-IO [`Encryptor`] and [`Decryptor`] that take input in chunks of any size
//!   and emit output as soon as a frame is complete, holding about one frame in memory, and
//!   the one-shot [`encrypt`] / [`decrypt`] on top of them.
//! - [`json`]: encrypting the values at some JSON pointers of a document, each into its own
//!   message (base64 in a JSON string), and the reverse.
//! - [`keys`]: the narrow [`KeyService`] through which the envelope (and the proxy) get data
//!   keys: generate one under a KMS key, decrypt one. Implemented over the embedded keystore
//!   (authorizing the principal under the key policies, audited) and over the KMS HTTP API.
//! - [`cache`]: [`CachingKeys`], a [`KeyService`] in front of another that reuses data keys
//!   within limits of age, messages and bytes, makes one call for concurrent identical misses,
//!   and drops the keys of a revoked key ([`CacheInvalidator`], a keystore observer).
//!
//! # What it does not do
//!
//! No sockets or files: callers feed bytes in and write bytes out (the keystore-backed and
//! HTTP-backed [`KeyService`]s only delegate to the keystore and the API client). Data keys are
//! cached only when the caller puts a [`CachingKeys`] in front of its key service; the cache
//! uses tokio's synchronization and clock but spawns nothing and runs no timers.
//!
//! # Errors
//!
//! One [`Error`] enum, grouped by who is at fault: the message (malformed, tampered with,
//! truncated, for another key or context), the caller (an invalid context or frame length),
//! the key service (its error keeps the KMS error kind), or a bug. Callers that answer
//! untrusted clients should fold all the message faults into one answer
//! ([`Error::is_message_fault`]), so that the answer is no oracle.

pub mod cache;
pub mod format;
pub mod json;
pub mod keys;
pub mod stream;

pub use cache::{CacheInvalidator, CacheLimits, CachingKeys, DataKeyUsage, EncryptRequest};
pub use format::{EncryptedDataKey, Header, Suite};
pub use json::{decrypt_fields, encrypt_fields};
pub use keys::{DataKey, KeyService, KeyServiceError, KeystoreKeys, RemoteKeys};
pub use stream::{
    DataKeyRequest, DecryptOptions, Decryptor, EncryptOptions, Encryptor, PreparedEncryption,
    decrypt, encrypt,
};

pub use crate::keystore::EncryptionContext;

/// Why a FIPS build offers no envelope encryption (routes and `kagi envelope`), or `None` in a
/// build without the `fips` feature. The message format fixes its AES-GCM IVs (zero for the
/// header, the frame number for each frame), and the FIPS module approves AES-GCM encryption only
/// under an IV it draws; suite 0x0578 also signs and verifies a precomputed SHA-384 digest,
/// which it does not approve either (docs/FIPS.md).
pub const FIPS_REFUSAL: Option<&str> = if crate::crypto::FIPS {
    Some(
        "envelope encryption is not approved in FIPS mode: the AWS Encryption SDK format fixes \
         its AES-GCM IVs and signs a precomputed digest",
    )
} else {
    None
};

/// What can go wrong encrypting or decrypting a message.
///
/// Messages never carry key material, plaintext or context values.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The message (untrusted input).
    /// The bytes are not a well-formed message (a length out of bounds, a bad field value).
    #[error("the message is malformed: {0}")]
    Malformed(&'static str),
    /// A well-formed message kagi does not read: message format version 1, a non-committing
    /// or unknown algorithm suite, non-framed content.
    #[error("unsupported message: {0}")]
    Unsupported(String),
    /// No encrypted data key of the message comes from the `aws-kms` provider.
    #[error("the message has no data key from the aws-kms key provider")]
    WrongProvider,
    /// The message's `aws-kms` data keys are all under keys other than the expected one.
    #[error("the message has no data key under the expected key")]
    WrongKey,
    /// The message's encryption context is not the expected one.
    #[error("the encryption context does not match the expected one")]
    ContextMismatch,
    /// The data key does not derive the message's commitment key: the message was made to
    /// decrypt differently under different keys, or the data key is wrong.
    #[error("the data key does not match the message's key commitment")]
    CommitmentMismatch,
    /// The header authentication tag does not verify.
    #[error("the message header does not authenticate")]
    HeaderTampered,
    /// A frame does not authenticate (its sequence number given).
    #[error("frame {0} does not authenticate")]
    FrameTampered(u32),
    /// The signature in the footer does not verify.
    #[error("the message signature does not verify")]
    BadSignature,
    /// The input ended before the final frame (or the footer of a signed message).
    #[error("the message ends before its final frame")]
    Truncated,
    /// Bytes follow the end of the message.
    #[error("bytes follow the end of the message")]
    TrailingData,

    // The caller.
    /// An encryption context kagi cannot write: a reserved `aws-crypto-` key, or too large.
    #[error("invalid encryption context: {0}")]
    InvalidContext(&'static str),
    /// A frame length out of range (1 to [`format::MAX_FRAME_LENGTH`]).
    #[error("the frame length must be 1 to {max} bytes, not {0}", max = format::MAX_FRAME_LENGTH)]
    InvalidFrameLength(u32),
    /// A data key that is not 32 bytes, or a key ARN that cannot be written in a header.
    #[error("invalid data key: {0}")]
    InvalidDataKey(&'static str),
    /// A plaintext too long for one message (2^32 − 1 frames).
    #[error("the plaintext is too long for one message")]
    TooLong,
    /// A JSON pointer that is not an RFC 6901 pointer.
    #[error("{0:?} is not a JSON pointer")]
    InvalidPointer(String),
    /// A field to decrypt that does not hold a base64 string, or decrypts to something that is
    /// not JSON.
    #[error("the field at {0:?} is not an encrypted JSON value")]
    NotAnEncryptedField(String),

    // The key service.
    /// The key service refused or failed; the KMS error kind is kept.
    #[error(transparent)]
    KeyService(#[from] KeyServiceError),

    // A bug.
    /// A failure that is nobody's input: a library call that cannot fail did, or the
    /// [`Decryptor`] was driven out of order.
    #[error("internal error: {0} (this is a bug)")]
    Internal(&'static str),
}

impl Error {
    /// Whether the message is at fault (malformed, tampered with, truncated, unsupported, for
    /// another key or context). A server answering an untrusted client should give all of
    /// these one answer.
    pub fn is_message_fault(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_)
                | Self::Unsupported(_)
                | Self::WrongProvider
                | Self::WrongKey
                | Self::ContextMismatch
                | Self::CommitmentMismatch
                | Self::HeaderTampered
                | Self::FrameTampered(_)
                | Self::BadSignature
                | Self::Truncated
                | Self::TrailingData
                | Self::NotAnEncryptedField(_)
        )
    }
}

#[cfg(test)]
mod tests;
