//! kagi's KMS ciphertext blob and the canonical encoding of an encryption context.
//!
//! # The blob, version 1
//!
//! ```text
//! offset  size  field
//!      0     1  format version, 0x01
//!      1    16  key id (the UUID's bytes)
//!     17     4  key material version, big-endian
//!     21    12  AES-GCM nonce (random)
//!     33     n  ciphertext
//!   33+n    16  tag
//! ```
//!
//! The associated data is the 33-byte header followed by the canonical encoding of the
//! encryption context, so neither the header nor the context can change without the tag failing.
//! The blob names its key and version, so Decrypt needs no KeyId and old versions keep working
//! after rotation.
//!
//! # Version 2 (FIPS builds)
//!
//! The same layout with format version 0x02, but the associated data leaves out the nonce: the
//! first 21 header bytes, then the context. A FIPS build writes it, because the FIPS module
//! approves AES-GCM encryption only under a nonce it draws itself, after the associated data is
//! fixed. GCM authenticates its nonce anyway (another nonce gives another tag). Every build reads
//! both versions; a build without the `fips` feature writes version 1.
//!
//! Each version's key is used directly with random 96-bit nonces; NIST SP 800-38D bounds that to
//! 2^32 encryptions per version, which is why symmetric keys should rotate (and why the metrics
//! count encryptions per version).
//!
//! # Encryption context
//!
//! The AWS Encryption SDK's serialization (`framework/structures.md`): empty → no bytes;
//! otherwise `u16 count`, then the pairs sorted by key bytes, each `u16 len ‖ key ‖ u16 len ‖
//! value`. Length prefixes make it unambiguous: `{"ab":"c"}` and `{"a":"bc"}` differ.

use std::collections::BTreeMap;

use crate::crypto::{NONCE_LEN, TAG_LEN};

/// Format version byte of a blob whose associated data holds the nonce.
pub const BLOB_VERSION_1: u8 = 1;
/// Format version byte of a blob whose associated data leaves the nonce out (the module drew it).
pub const BLOB_VERSION_2: u8 = 2;
/// The version this build writes: 2 in a FIPS build, 1 otherwise.
pub const BLOB_VERSION: u8 = if crate::crypto::FIPS { BLOB_VERSION_2 } else { BLOB_VERSION_1 };
/// Length of the header before the nonce: version, key id and key material version.
const PREFIX_LEN: usize = 1 + 16 + 4;
/// Length of the blob header (the associated data before the context).
pub const HEADER_LEN: usize = 1 + 16 + 4 + NONCE_LEN;

/// An encryption context: string pairs, unordered. A `BTreeMap` keeps them sorted by key bytes,
/// which is the canonical order.
pub type EncryptionContext = BTreeMap<String, String>;

/// The parsed, not yet authenticated, header of a blob.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct BlobHeader {
    /// The format version, [`BLOB_VERSION_1`] or [`BLOB_VERSION_2`].
    pub format: u8,
    /// The key's UUID bytes.
    pub key_id: [u8; 16],
    /// The key material version.
    pub version: u32,
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl BlobHeader {
    /// The header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.format;
        out[1..17].copy_from_slice(&self.key_id);
        out[17..21].copy_from_slice(&self.version.to_be_bytes());
        out[21..33].copy_from_slice(&self.nonce);
        out
    }

    /// Splits a blob into its header and `ciphertext ‖ tag`.
    ///
    /// Returns `None` for anything that is not a version-1 or version-2 blob long enough to hold
    /// a tag.
    pub fn decode(blob: &[u8]) -> Option<(Self, &[u8])> {
        if blob.len() < HEADER_LEN + TAG_LEN || ![BLOB_VERSION_1, BLOB_VERSION_2].contains(&blob[0])
        {
            return None;
        }
        let format = blob[0];
        let (header, body) = blob.split_at(HEADER_LEN);
        let key_id = header[1..17].try_into().ok()?;
        let version = u32::from_be_bytes(header[17..21].try_into().ok()?);
        let nonce = header[21..33].try_into().ok()?;
        Some((Self { format, key_id, version, nonce }, body))
    }
}

/// The associated data of a blob: its header (without the nonce in version 2), then the
/// canonical context.
pub fn associated_data(header: &BlobHeader, context: &EncryptionContext) -> Vec<u8> {
    let encoded = header.encode();
    let covered =
        if header.format == BLOB_VERSION_1 { &encoded[..] } else { &encoded[..PREFIX_LEN] };
    let mut aad = Vec::with_capacity(HEADER_LEN + 2 + context.len() * 16);
    aad.extend_from_slice(covered);
    encode_context_into(context, &mut aad);
    aad
}

/// Appends the canonical encoding of `context` to `out`.
///
/// Keys and values longer than 65535 bytes, or more than 65535 pairs, cannot be encoded; the
/// keystore refuses such contexts before they get here ([`check_context`]).
pub fn encode_context_into(context: &EncryptionContext, out: &mut Vec<u8>) {
    if context.is_empty() {
        return;
    }
    out.extend_from_slice(&(context.len() as u16).to_be_bytes());
    for (key, value) in context {
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&(value.len() as u16).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
}

/// The canonical encoding of `context`.
pub fn encode_context(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    encode_context_into(context, &mut out);
    out
}

/// Checks that a context fits the encoding: at most 65535 pairs of at most 65535 bytes each.
pub fn check_context(context: &EncryptionContext) -> bool {
    context.len() <= usize::from(u16::MAX)
        && context
            .iter()
            .all(|(k, v)| k.len() <= usize::from(u16::MAX) && v.len() <= usize::from(u16::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn context_encoding_is_unambiguous() {
        assert_ne!(
            encode_context(&context(&[("ab", "c")])),
            encode_context(&context(&[("a", "bc")]))
        );
        assert_ne!(
            encode_context(&context(&[("a", "b"), ("c", "d")])),
            encode_context(&context(&[("a", "bcd")]))
        );
    }

    #[test]
    fn context_encoding_ignores_insertion_order() {
        let mut one = EncryptionContext::new();
        one.insert("z".into(), "1".into());
        one.insert("a".into(), "2".into());
        let mut two = EncryptionContext::new();
        two.insert("a".into(), "2".into());
        two.insert("z".into(), "1".into());
        assert_eq!(encode_context(&one), encode_context(&two));
    }

    #[test]
    fn context_encoding_matches_the_encryption_sdk() {
        // framework/structures.md: count, then sorted key/value pairs with u16 lengths.
        let encoded = encode_context(&context(&[("b", "2"), ("a", "1")]));
        assert_eq!(encoded, [0, 2, 0, 1, b'a', 0, 1, b'1', 0, 1, b'b', 0, 1, b'2']);
        assert!(encode_context(&EncryptionContext::new()).is_empty());
    }

    #[test]
    fn header_round_trips() {
        for format in [BLOB_VERSION_1, BLOB_VERSION_2] {
            let header = BlobHeader { format, key_id: [7; 16], version: 258, nonce: [9; 12] };
            let mut blob = header.encode().to_vec();
            blob.extend_from_slice(&[0; TAG_LEN]);
            let (decoded, body) = BlobHeader::decode(&blob).expect("decodes");
            assert_eq!(decoded, header);
            assert_eq!(body.len(), TAG_LEN);
        }
    }

    #[test]
    fn version_2_leaves_the_nonce_out_of_the_associated_data() {
        let context = context(&[("a", "1")]);
        let header = |format, nonce| BlobHeader { format, key_id: [7; 16], version: 1, nonce };
        let v1 = associated_data(&header(BLOB_VERSION_1, [9; 12]), &context);
        assert_eq!(v1.len(), HEADER_LEN + encode_context(&context).len());
        let v2 = associated_data(&header(BLOB_VERSION_2, [9; 12]), &context);
        assert_eq!(v2, associated_data(&header(BLOB_VERSION_2, [1; 12]), &context));
        assert_eq!(v2.len(), PREFIX_LEN + encode_context(&context).len());
        assert_eq!(v2[0], BLOB_VERSION_2);
    }

    #[test]
    fn short_or_foreign_blobs_do_not_decode() {
        assert!(BlobHeader::decode(&[]).is_none());
        assert!(BlobHeader::decode(&[1; HEADER_LEN + TAG_LEN - 1]).is_none());
        let mut blob = vec![3u8; HEADER_LEN + TAG_LEN];
        assert!(BlobHeader::decode(&blob).is_none());
        blob[0] = 0;
        assert!(BlobHeader::decode(&blob).is_none());
        for version in [1, 2] {
            blob[0] = version;
            assert!(BlobHeader::decode(&blob).is_some());
        }
    }
}
