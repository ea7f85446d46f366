//! The AWS Encryption SDK message format, version 2, for the committing suites 0x0478 and
//! 0x0578: header encoding and parsing, key derivation and commitment, frame associated data.
//!
//! Follows awslabs/aws-encryption-sdk-specification (`data-format/message-header.md`,
//! `message-body.md`, `message-body-aad.md`, `message-footer.md`,
//! `framework/algorithm-suites.md`, `framework/structures.md`). All integers are big-endian.
//!
//! ```text
//! header body   02 ‖ suite u16 ‖ message id [32] ‖ u16 aad len ‖ context
//!               ‖ u16 edk count ‖ (u16 len ‖ provider id ‖ u16 len ‖ provider info
//!                                  ‖ u16 len ‖ encrypted data key)*
//!               ‖ content type 02 ‖ frame length u32 ‖ commit key [32]
//! header auth   tag [16]: AES-GCM(derived key, IV 0^12, AAD header body, empty plaintext)
//! frame         seq u32 ‖ IV [12] ‖ ciphertext [frame length] ‖ tag [16]
//! final frame   FF FF FF FF ‖ seq u32 ‖ IV [12] ‖ u32 len ‖ ciphertext [len] ‖ tag [16]
//! footer        u16 len ‖ DER ECDSA P-384 signature of SHA-384(header ‖ body)   (0x0578 only)
//! ```
//!
//! Keys: HKDF-SHA512 with salt = message id and IKM = data key; the content key expands with
//! info = suite id ‖ "DERIVEKEY", the commit key with info = "COMMITKEY". A frame's IV is its
//! sequence number, left-padded with zeros to 12 bytes; its associated data is message id ‖
//! content string ‖ seq u32 ‖ content length u64.
//!
//! Parsing bounds every length: at most [`MAX_ENCRYPTED_DATA_KEYS`] data keys, a header of at
//! most [`MAX_HEADER_LEN`] bytes, frames of at most [`MAX_FRAME_LENGTH`] bytes. Nothing here
//! panics on hostile bytes.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sha2::Digest as _;
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use super::{EncryptionContext, Error};
use crate::crypto::AesKey;

/// Message format version written and read.
pub const MESSAGE_VERSION: u8 = 0x02;
/// Content type of framed content (the only one kagi reads or writes).
pub const CONTENT_TYPE_FRAMED: u8 = 0x02;
/// Content type of non-framed content (recognised, refused).
pub const CONTENT_TYPE_NON_FRAMED: u8 = 0x01;
/// Length of a message id (version 2).
pub const MESSAGE_ID_LEN: usize = 32;
/// Length of the commitment key in the header (the algorithm suite data).
pub const COMMIT_KEY_LEN: usize = 32;
/// Length of a frame IV.
pub const IV_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;
/// Length of a data key (AES-256).
pub const DATA_KEY_LEN: usize = 32;
/// The key provider id of AWS KMS data keys (kagi's, since it speaks the KMS API).
pub const PROVIDER_ID_KMS: &str = "aws-kms";
/// The encryption context key holding the signing suites' public key.
pub const PUBLIC_KEY_CONTEXT_KEY: &str = "aws-crypto-public-key";
/// The prefix of encryption context keys reserved to the SDK.
pub const RESERVED_CONTEXT_PREFIX: &str = "aws-crypto-";
/// The frame length kagi writes unless told otherwise.
pub const DEFAULT_FRAME_LENGTH: u32 = 64 * 1024;
/// The largest frame length kagi writes or reads (a frame is held in memory whole).
pub const MAX_FRAME_LENGTH: u32 = 16 * 1024 * 1024;
/// The most encrypted data keys a header may carry.
pub const MAX_ENCRYPTED_DATA_KEYS: usize = 16;
/// The largest header (body and tag) kagi reads.
pub const MAX_HEADER_LEN: usize = 512 * 1024;
/// The end marker in place of a final frame's first sequence number.
pub const FINAL_FRAME_MARKER: u32 = u32::MAX;
/// Content string of a regular frame's associated data.
pub const FRAME_CONTENT: &[u8] = b"AWSKMSEncryptionClient Frame";
/// Content string of the final frame's associated data.
pub const FINAL_FRAME_CONTENT: &[u8] = b"AWSKMSEncryptionClient Final Frame";
/// The largest signature footer kagi reads (a DER P-384 signature is at most 104 bytes).
pub const MAX_SIGNATURE_LEN: usize = 256;

/// An algorithm suite kagi reads and writes: both are AES-256-GCM with HKDF-SHA512 and key
/// commitment, message format version 2.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Suite {
    /// 0x0478 `AES_256_GCM_HKDF_SHA512_COMMIT_KEY`: no signature. The usual choice when reader
    /// and writer trust each other (both sides hold the data key anyway).
    Aes256GcmHkdfSha512CommitKey,
    /// 0x0578 `AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384`: a footer signed by an ephemeral
    /// P-384 key whose public half is in the encryption context, so a reader who can decrypt
    /// cannot forge a message. The SDK's default.
    Aes256GcmHkdfSha512CommitKeyEcdsaP384,
}

impl Suite {
    /// The suite id in the header.
    pub fn id(self) -> u16 {
        match self {
            Self::Aes256GcmHkdfSha512CommitKey => 0x0478,
            Self::Aes256GcmHkdfSha512CommitKeyEcdsaP384 => 0x0578,
        }
    }

    /// The suite with id `id`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for any other suite (the message format version 1 suites, which
    /// have no key commitment, included).
    pub fn from_id(id: u16) -> Result<Self, Error> {
        match id {
            0x0478 => Ok(Self::Aes256GcmHkdfSha512CommitKey),
            0x0578 => Ok(Self::Aes256GcmHkdfSha512CommitKeyEcdsaP384),
            other => Err(Error::Unsupported(format!(
                "algorithm suite {other:#06x}: kagi reads only the committing suites 0x0478 and \
                 0x0578"
            ))),
        }
    }

    /// Whether messages of this suite end with a signature footer.
    pub fn is_signing(self) -> bool {
        matches!(self, Self::Aes256GcmHkdfSha512CommitKeyEcdsaP384)
    }
}

/// An encrypted data key as the header carries it.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct EncryptedDataKey {
    /// The key provider (`aws-kms` for KMS keys).
    pub provider_id: String,
    /// The provider's key information (for `aws-kms`, the key ARN).
    pub provider_info: Vec<u8>,
    /// The data key, encrypted (for `aws-kms`, the KMS ciphertext blob).
    pub ciphertext: Vec<u8>,
}

/// A message header (version 2, framed).
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct Header {
    /// The algorithm suite.
    pub suite: Suite,
    /// The message id: random, and the HKDF salt.
    pub message_id: [u8; MESSAGE_ID_LEN],
    /// The encryption context (for 0x0578, with the public key under
    /// [`PUBLIC_KEY_CONTEXT_KEY`]).
    pub context: EncryptionContext,
    /// The encrypted data keys (at least one).
    pub data_keys: Vec<EncryptedDataKey>,
    /// The plaintext length of each regular frame.
    pub frame_length: u32,
    /// The key commitment (derived from the data key and message id; public).
    pub commit_key: [u8; COMMIT_KEY_LEN],
}

impl Header {
    /// The header body's bytes (what the header authentication tag covers).
    ///
    /// # Errors
    /// As [`HeaderTemplate::new`].
    pub fn encode_body(&self) -> Result<Vec<u8>, Error> {
        let template =
            HeaderTemplate::new(self.suite, &self.context, &self.data_keys, self.frame_length)?;
        let mut out = Vec::with_capacity(template.header_len());
        template.render_into(&self.message_id, &self.commit_key, &mut out);
        Ok(out)
    }
}

/// Where the message id starts in a header body: after the version and the suite.
const MESSAGE_ID_OFFSET: usize = 1 + 2;

/// A header body with its message id and commitment key left as zeros: everything that a
/// suite, an encryption context, the encrypted data keys and a frame length fix, encoded once.
/// The messages one cached data key encrypts differ only in the two blanks, so they share one
/// template ([`HeaderTemplate::render_into`] fills them in).
#[derive(Clone)]
pub struct HeaderTemplate {
    /// The header body, with zeros for the id and the commitment.
    bytes: Vec<u8>,
    suite: Suite,
    frame_length: u32,
}

impl std::fmt::Debug for HeaderTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The context's values may be tenant names: not printed.
        f.debug_struct("HeaderTemplate")
            .field("suite", &self.suite)
            .field("frame_length", &self.frame_length)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

impl HeaderTemplate {
    /// Encodes everything of a header but its message id and commitment key.
    ///
    /// # Errors
    /// [`Error::InvalidContext`] or [`Error::InvalidDataKey`] when a field does not fit its
    /// length prefix, or there are no or too many data keys; [`Error::InvalidFrameLength`].
    pub fn new(
        suite: Suite,
        context: &EncryptionContext,
        data_keys: &[EncryptedDataKey],
        frame_length: u32,
    ) -> Result<Self, Error> {
        check_frame_length(frame_length)?;
        if data_keys.is_empty() || data_keys.len() > MAX_ENCRYPTED_DATA_KEYS {
            return Err(Error::InvalidDataKey("a message carries 1 to 16 encrypted data keys"));
        }
        let context_bytes = encode_context(context)?;
        let keys_len: usize = data_keys
            .iter()
            .map(|k| 6 + k.provider_id.len() + k.provider_info.len() + k.ciphertext.len())
            .sum();
        // Version, suite, id, the context and its length, the key count, the keys, content
        // type, frame length, commitment key.
        let mut bytes = Vec::with_capacity(
            MESSAGE_ID_OFFSET
                + MESSAGE_ID_LEN
                + 2
                + context_bytes.len()
                + 2
                + keys_len
                + 1
                + 4
                + COMMIT_KEY_LEN,
        );
        bytes.push(MESSAGE_VERSION);
        bytes.extend_from_slice(&suite.id().to_be_bytes());
        bytes.extend_from_slice(&[0; MESSAGE_ID_LEN]);
        put_u16_len(
            &mut bytes,
            context_bytes.len(),
            Error::InvalidContext("longer than 65535 bytes"),
        )?;
        bytes.extend_from_slice(&context_bytes);
        bytes.extend_from_slice(&(data_keys.len() as u16).to_be_bytes());
        for key in data_keys {
            let too_long = || Error::InvalidDataKey("an encrypted data key field is too long");
            put_u16_len(&mut bytes, key.provider_id.len(), too_long())?;
            bytes.extend_from_slice(key.provider_id.as_bytes());
            put_u16_len(&mut bytes, key.provider_info.len(), too_long())?;
            bytes.extend_from_slice(&key.provider_info);
            put_u16_len(&mut bytes, key.ciphertext.len(), too_long())?;
            bytes.extend_from_slice(&key.ciphertext);
        }
        bytes.push(CONTENT_TYPE_FRAMED);
        bytes.extend_from_slice(&frame_length.to_be_bytes());
        bytes.extend_from_slice(&[0; COMMIT_KEY_LEN]);
        Ok(Self { bytes, suite, frame_length })
    }

    /// The algorithm suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The plaintext length of each regular frame.
    pub fn frame_length(&self) -> u32 {
        self.frame_length
    }

    /// The length of a header made from it, its authentication tag included.
    pub fn header_len(&self) -> usize {
        self.bytes.len() + TAG_LEN
    }

    /// Appends the header body of the message `message_id` whose data key commits to
    /// `commit_key` (the tag is the caller's to append).
    pub fn render_into(
        &self,
        message_id: &[u8; MESSAGE_ID_LEN],
        commit_key: &[u8; COMMIT_KEY_LEN],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        let body = &mut out[start..];
        let id_end = MESSAGE_ID_OFFSET + MESSAGE_ID_LEN;
        body[MESSAGE_ID_OFFSET..id_end].copy_from_slice(message_id);
        let commit_start = body.len() - COMMIT_KEY_LEN;
        body[commit_start..].copy_from_slice(commit_key);
    }
}

/// A header parsed from the start of a byte stream, not yet authenticated.
#[derive(Debug)]
pub struct ParsedHeader {
    /// The header.
    pub header: Header,
    /// Length of the header body (the header authentication tag follows it).
    pub body_len: usize,
    /// The header authentication tag.
    pub tag: [u8; TAG_LEN],
}

impl ParsedHeader {
    /// Length of the whole header: body and tag.
    pub fn total_len(&self) -> usize {
        self.body_len + TAG_LEN
    }
}

/// Parses the header at the start of `bytes`.
///
/// Returns `Ok(None)` while `bytes` is a valid but incomplete prefix of a header.
///
/// # Errors
/// [`Error::Unsupported`] for message format version 1, an unsupported suite or non-framed
/// content; [`Error::Malformed`] for anything else out of bounds.
pub fn parse_header(bytes: &[u8]) -> Result<Option<ParsedHeader>, Error> {
    match parse_header_inner(bytes) {
        Ok(parsed) => Ok(Some(parsed)),
        Err(Parse::Incomplete) if bytes.len() >= MAX_HEADER_LEN => {
            Err(Error::Malformed("the header is too long"))
        }
        Err(Parse::Incomplete) => Ok(None),
        Err(Parse::Invalid(error)) => Err(error),
    }
}

/// Why parsing stopped.
enum Parse {
    /// More bytes are needed.
    Incomplete,
    /// The bytes cannot be a header.
    Invalid(Error),
}

impl From<Error> for Parse {
    fn from(error: Error) -> Self {
        Self::Invalid(error)
    }
}

/// A cursor over a byte slice that reports running out as [`Parse::Incomplete`].
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], Parse> {
        let end = self.pos.checked_add(len).ok_or(Parse::Incomplete)?;
        if end > MAX_HEADER_LEN {
            return Err(Parse::Invalid(Error::Malformed("the header is too long")));
        }
        let slice = self.bytes.get(self.pos..end).ok_or(Parse::Incomplete)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Parse> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Parse> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Parse> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Parse> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn prefixed(&mut self) -> Result<&'a [u8], Parse> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

fn parse_header_inner(bytes: &[u8]) -> Result<ParsedHeader, Parse> {
    let mut reader = Reader { bytes, pos: 0 };
    match reader.u8()? {
        MESSAGE_VERSION => {}
        0x01 => {
            return Err(Error::Unsupported(
                "message format version 1: kagi reads only version 2 (committing suites)".into(),
            )
            .into());
        }
        _ => return Err(Error::Malformed("not an AWS Encryption SDK message").into()),
    }
    let suite = Suite::from_id(reader.u16()?)?;
    let message_id = reader.array::<MESSAGE_ID_LEN>()?;
    let context_bytes = reader.prefixed()?;
    let context = decode_context(context_bytes)?;
    let count = usize::from(reader.u16()?);
    if count == 0 {
        return Err(Error::Malformed("a message needs an encrypted data key").into());
    }
    if count > MAX_ENCRYPTED_DATA_KEYS {
        return Err(Error::Malformed("too many encrypted data keys").into());
    }
    let mut data_keys = Vec::with_capacity(count);
    for _ in 0..count {
        let provider_id = std::str::from_utf8(reader.prefixed()?)
            .map_err(|_| Error::Malformed("a key provider id is not UTF-8"))?
            .to_owned();
        let provider_info = reader.prefixed()?.to_vec();
        let ciphertext = reader.prefixed()?.to_vec();
        data_keys.push(EncryptedDataKey { provider_id, provider_info, ciphertext });
    }
    match reader.u8()? {
        CONTENT_TYPE_FRAMED => {}
        CONTENT_TYPE_NON_FRAMED => {
            return Err(Error::Unsupported(
                "non-framed content: kagi reads only framed messages".into(),
            )
            .into());
        }
        _ => return Err(Error::Malformed("unknown content type").into()),
    }
    let frame_length = reader.u32()?;
    if frame_length == 0 || frame_length > MAX_FRAME_LENGTH {
        return Err(Error::Malformed("the frame length is out of bounds").into());
    }
    let commit_key = reader.array::<COMMIT_KEY_LEN>()?;
    let body_len = reader.pos;
    let tag = reader.array::<TAG_LEN>()?;
    let header = Header { suite, message_id, context, data_keys, frame_length, commit_key };
    Ok(ParsedHeader { header, body_len, tag })
}

/// The encryption context serialization (`framework/structures.md`): empty → no bytes;
/// otherwise u16 count, then the pairs sorted by key bytes, each u16 len ‖ key ‖ u16 len ‖
/// value. A `BTreeMap` iterates in key-byte order, which is the canonical order.
///
/// # Errors
/// [`Error::InvalidContext`] when a key, a value or the count does not fit its u16.
pub fn encode_context(context: &EncryptionContext) -> Result<Vec<u8>, Error> {
    if !crate::keystore::ciphertext::check_context(context) {
        return Err(Error::InvalidContext("a key or value is longer than 65535 bytes"));
    }
    let encoded = crate::keystore::ciphertext::encode_context(context);
    if encoded.len() > usize::from(u16::MAX) {
        return Err(Error::InvalidContext("longer than 65535 bytes serialized"));
    }
    Ok(encoded)
}

/// The length of `context` serialized ([`encode_context`]), computed without serializing it.
///
/// # Errors
/// As [`encode_context`].
pub fn encoded_context_len(context: &EncryptionContext) -> Result<usize, Error> {
    if !crate::keystore::ciphertext::check_context(context) {
        return Err(Error::InvalidContext("a key or value is longer than 65535 bytes"));
    }
    let pairs: usize = context.iter().map(|(key, value)| 4 + key.len() + value.len()).sum();
    let len = if context.is_empty() { 0 } else { 2 + pairs };
    if len > usize::from(u16::MAX) {
        return Err(Error::InvalidContext("longer than 65535 bytes serialized"));
    }
    Ok(len)
}

/// Parses a serialized encryption context. Duplicate keys and bytes left over are refused;
/// the order of the pairs is not checked (the header tag covers the bytes as written).
///
/// # Errors
/// [`Error::Malformed`].
pub fn decode_context(bytes: &[u8]) -> Result<EncryptionContext, Error> {
    let mut context = EncryptionContext::new();
    if bytes.is_empty() {
        return Ok(context);
    }
    let malformed = |_| Error::Malformed("the encryption context is malformed");
    let mut reader = Reader { bytes, pos: 0 };
    let count =
        reader.u16().map_err(|_| Error::Malformed("the encryption context is malformed"))?;
    if count == 0 {
        return Err(Error::Malformed("an encryption context of no pairs must be empty"));
    }
    for _ in 0..count {
        let key = reader.prefixed().map_err(malformed)?;
        let value = reader.prefixed().map_err(malformed)?;
        let (Ok(key), Ok(value)) = (std::str::from_utf8(key), std::str::from_utf8(value)) else {
            return Err(Error::Malformed("the encryption context is not UTF-8"));
        };
        if context.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(Error::Malformed("the encryption context repeats a key"));
        }
    }
    if reader.pos != bytes.len() {
        return Err(Error::Malformed("bytes follow the encryption context"));
    }
    Ok(context)
}

fn put_u16_len(out: &mut Vec<u8>, len: usize, error: Error) -> Result<(), Error> {
    let len = u16::try_from(len).map_err(|_| error)?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Checks a frame length for writing.
///
/// # Errors
/// [`Error::InvalidFrameLength`] unless 1 to [`MAX_FRAME_LENGTH`].
pub fn check_frame_length(frame_length: u32) -> Result<(), Error> {
    if frame_length == 0 || frame_length > MAX_FRAME_LENGTH {
        return Err(Error::InvalidFrameLength(frame_length));
    }
    Ok(())
}

/// The keys of one message: the content key (AES-256-GCM) and the commitment.
pub struct MessageKeys {
    /// The content key.
    pub(crate) content: LessSafeKey,
    /// The commitment key the header carries.
    pub commit_key: [u8; COMMIT_KEY_LEN],
}

impl std::fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKeys").finish_non_exhaustive()
    }
}

impl MessageKeys {
    /// Derives the content key and commitment key of a message from its data key.
    ///
    /// HKDF-SHA512 (RFC 5869) over the RustCrypto `sha2` crate (`KeyedSha512` below) rather than
    /// aws-lc's `hkdf`: the HMAC keyed with the PRK is set up once and cloned for both expands
    /// (aws-lc sets it up again for each, and allocates and cleanses around every call), which
    /// halves the cost of a message's key derivation (`cargo bench --bench envelope --
    /// per_message`: 4.9 µs against 9.9 µs on the bench machine). Every intermediate (the
    /// PRK, each expand's output block, the padded HMAC keys) is held in a `Zeroizing` buffer,
    /// and the keyed SHA-512 states wipe themselves on drop (sha2's `zeroize` feature).
    ///
    /// # Errors
    /// [`Error::Internal`] if the library fails.
    pub fn derive(
        suite: Suite,
        data_key: &AesKey,
        message_id: &[u8; MESSAGE_ID_LEN],
    ) -> Result<Self, Error> {
        // Extract: PRK = HMAC(salt = message id, IKM = data key).
        let mut prk = Zeroizing::new(Sha512Output::default());
        KeyedSha512::new(message_id).mac_into(&[data_key.expose_secret().as_slice()], &mut prk);
        // Expand: each output fits the first block, T(1) = HMAC(PRK, info ‖ 0x01).
        let expand = KeyedSha512::new(prk.as_slice());
        let mut block = Zeroizing::new(Sha512Output::default());
        let mut content = Zeroizing::new([0u8; DATA_KEY_LEN]);
        expand.mac_into(&[&suite.id().to_be_bytes(), b"DERIVEKEY", &[1]], &mut block);
        content.copy_from_slice(&block[..DATA_KEY_LEN]);
        let mut commit_key = [0u8; COMMIT_KEY_LEN];
        expand.mac_into(&[b"COMMITKEY", &[1]], &mut block);
        commit_key.copy_from_slice(&block[..COMMIT_KEY_LEN]);
        let content = UnboundKey::new(&AES_256_GCM, content.as_slice())
            .map_err(|_| Error::Internal("AES-256-GCM key setup failed"))?;
        Ok(Self { content: LessSafeKey::new(content), commit_key })
    }

    /// Whether `commit_key` (from a header) is this data key's, compared in constant time.
    pub fn commits_to(&self, commit_key: &[u8; COMMIT_KEY_LEN]) -> bool {
        bool::from(self.commit_key.ct_eq(commit_key))
    }

    /// The header authentication tag of `header_body`.
    ///
    /// # Errors
    /// [`Error::Internal`] if the library fails.
    pub fn header_tag(&self, header_body: &[u8]) -> Result<[u8; TAG_LEN], Error> {
        let nonce = Nonce::assume_unique_for_key([0u8; IV_LEN]);
        let tag = self
            .content
            .seal_in_place_separate_tag(nonce, Aad::from(header_body), &mut [])
            .map_err(|_| Error::Internal("AES-GCM seal failed"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Whether `tag` authenticates `header_body`.
    pub fn verify_header(&self, header_body: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        let nonce = Nonce::assume_unique_for_key([0u8; IV_LEN]);
        let mut in_out = *tag;
        self.content.open_in_place(nonce, Aad::from(header_body), &mut in_out).is_ok()
    }
}

/// The output of SHA-512 (and of HMAC-SHA512).
type Sha512Output = sha2::digest::Output<sha2::Sha512>;

/// HMAC-SHA512 (RFC 2104) under a key of at most one block (128 bytes): the inner and outer
/// hashes with the padded key absorbed, cloned for each message so that a key used twice is
/// set up once. Written out rather than taken from `hmac`, whose key setup leaves the padded
/// key block on the stack unwiped; here it is a `Zeroizing` buffer.
struct KeyedSha512 {
    inner: sha2::Sha512,
    outer: sha2::Sha512,
}

impl KeyedSha512 {
    const BLOCK: usize = 128;

    /// Keyed with `key`, which must be at most 128 bytes (kagi's are 32 and 64).
    fn new(key: &[u8]) -> Self {
        // The states hold the padded key: they must wipe themselves (sha2's `zeroize`
        // feature), or this does not compile.
        const _: fn() = || {
            fn wipes_itself<T: zeroize::ZeroizeOnDrop>() {}
            wipes_itself::<sha2::Sha512>();
        };
        debug_assert!(key.len() <= Self::BLOCK, "an HMAC key longer than a block");
        let mut block = Zeroizing::new([0u8; Self::BLOCK]);
        for (pad, byte) in block.iter_mut().zip(key) {
            *pad = *byte;
        }
        block.iter_mut().for_each(|b| *b ^= 0x36);
        let mut inner = sha2::Sha512::new();
        inner.update(block.as_slice());
        block.iter_mut().for_each(|b| *b ^= 0x36 ^ 0x5c);
        let mut outer = sha2::Sha512::new();
        outer.update(block.as_slice());
        Self { inner, outer }
    }

    /// The HMAC of the concatenation of `parts`, written to `out`.
    fn mac_into(&self, parts: &[&[u8]], out: &mut Sha512Output) {
        let mut inner = self.inner.clone();
        for part in parts {
            inner.update(part);
        }
        inner.finalize_into(out);
        let mut outer = self.outer.clone();
        outer.update(out.as_slice());
        outer.finalize_into(out);
    }
}

/// The IV of frame `sequence`: the sequence number, big-endian, left-padded to 12 bytes.
pub fn frame_iv(sequence: u32) -> [u8; IV_LEN] {
    let mut iv = [0u8; IV_LEN];
    iv[IV_LEN - 4..].copy_from_slice(&sequence.to_be_bytes());
    iv
}

/// The associated data of frame `sequence` holding `content_len` plaintext bytes.
pub fn frame_aad(
    message_id: &[u8; MESSAGE_ID_LEN],
    is_final: bool,
    sequence: u32,
    content_len: u64,
) -> FrameAad {
    let content = if is_final { FINAL_FRAME_CONTENT } else { FRAME_CONTENT };
    let mut bytes = [0u8; FRAME_AAD_MAX_LEN];
    let (id, rest) = bytes.split_at_mut(MESSAGE_ID_LEN);
    id.copy_from_slice(message_id);
    let (text, rest) = rest.split_at_mut(content.len());
    text.copy_from_slice(content);
    rest[..4].copy_from_slice(&sequence.to_be_bytes());
    rest[4..12].copy_from_slice(&content_len.to_be_bytes());
    FrameAad { bytes, len: MESSAGE_ID_LEN + content.len() + 12 }
}

/// A frame's associated data, on the stack (one per frame: no allocation).
#[derive(Clone, Copy, Debug)]
pub struct FrameAad {
    bytes: [u8; FRAME_AAD_MAX_LEN],
    len: usize,
}

/// The longest frame associated data: a final frame's.
const FRAME_AAD_MAX_LEN: usize = MESSAGE_ID_LEN + FINAL_FRAME_CONTENT.len() + 4 + 8;

impl AsRef<[u8]> for FrameAad {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}
