//! Streaming, sans-IO encryption and decryption of messages.
//!
//! Both sides take input in chunks of any size and append output to a caller's `Vec<u8>` as
//! soon as it is ready; neither reads or writes anything itself. Memory stays bounded: the
//! [`Encryptor`] holds at most one frame of plaintext, the [`Decryptor`] at most one frame of
//! ciphertext plus the header (and whatever part of the latest input chunk it could not use
//! yet).
//!
//! # Encrypting
//!
//! [`PreparedEncryption::new`] checks the encryption context and, for 0x0578, makes the
//! ephemeral signing key and adds its public key to the context. Ask the [`KeyService`] for a
//! data key bound to [`PreparedEncryption::kms_context`], then [`PreparedEncryption::start`]
//! gives the [`Encryptor`]. [`Encryptor::begin`] does the three steps. A data key that
//! encrypts many messages (a cached one) encodes their common header once
//! ([`PreparedEncryption::template`]) and starts each with [`Encryptor::with_template`].
//!
//! # Decrypting
//!
//! A [`Decryptor`] is made with what the caller expects: the key ARN and the encryption
//! context. Once its input holds the whole header it checks them and asks for the data key
//! ([`Decryptor::data_key_request`]); the caller decrypts it with the [`KeyService`] and
//! hands it over with [`Decryptor::supply_data_key`] ([`Decryptor::fetch_data_key`] does
//! both). A frame's plaintext is released only after the frame's tag verifies.
//!
//! # Security
//!
//! A signed (0x0578) message's signature covers the whole message and is checked only at its
//! end: the [`Decryptor`] releases each frame once the frame authenticates under the data
//! key, before the signature is checked. Frames so released are authentic as far as anyone
//! holding the data key is concerned; what the signature adds (no reader of the message could
//! have written it) is known only when [`Decryptor::finish`] succeeds. A caller that must not
//! act on unsigned-for plaintext should hold the output until then, as the one-shot
//! [`decrypt`] does.

use aws_lc_rs::aead::{Aad, Nonce};
use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsBigEndian as _, EcPublicKeyCompressedBin};
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use aws_lc_rs::signature::{
    ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::{Zeroize as _, Zeroizing};

use std::sync::Arc;

use super::format::{
    self, EncryptedDataKey, FINAL_FRAME_MARKER, Header, HeaderTemplate, IV_LEN, MAX_SIGNATURE_LEN,
    MESSAGE_ID_LEN, MessageKeys, PROVIDER_ID_KMS, PUBLIC_KEY_CONTEXT_KEY, RESERVED_CONTEXT_PREFIX,
    Suite, TAG_LEN,
};
use super::keys::{DataKey, KeyService};
use super::{EncryptionContext, Error};
use crate::crypto::{AesKey, SecretBytes};

/// How to encrypt.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct EncryptOptions {
    /// The algorithm suite (default 0x0478).
    pub suite: Suite,
    /// The plaintext bytes per regular frame (default [`format::DEFAULT_FRAME_LENGTH`]).
    pub frame_length: u32,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        Self {
            suite: Suite::Aes256GcmHkdfSha512CommitKey,
            frame_length: format::DEFAULT_FRAME_LENGTH,
        }
    }
}

/// What a [`Decryptor`] requires of a message.
#[derive(Clone, Debug, Eq, PartialEq)]
pub struct DecryptOptions {
    /// The ARN of the key the data key must be under (the provider info of an `aws-kms`
    /// encrypted data key).
    pub key_arn: String,
    /// The encryption context the message must have, exactly; the reserved
    /// `aws-crypto-public-key` pair of signed messages is left out of the comparison.
    pub context: EncryptionContext,
}

/// Checks what a caller asks to encrypt with: a frame length in bounds, and a context without
/// reserved keys that fits a header. [`PreparedEncryption::new`] does this; callers that start
/// messages another way do it before asking for a data key.
///
/// # Errors
/// [`Error::InvalidContext`], [`Error::InvalidFrameLength`].
pub fn check_request(context: &EncryptionContext, options: EncryptOptions) -> Result<(), Error> {
    format::check_frame_length(options.frame_length)?;
    if context.keys().any(|key| key.starts_with(RESERVED_CONTEXT_PREFIX)) {
        return Err(Error::InvalidContext("keys starting with aws-crypto- are reserved"));
    }
    format::encoded_context_len(context).map(drop)
}

// === impl PreparedEncryption ===

/// An encryption waiting for its data key: the context to bind it to is known (for 0x0578 it
/// holds the signing key's public half).
pub struct PreparedEncryption {
    options: EncryptOptions,
    context: EncryptionContext,
    signer: Option<EcdsaKeyPair>,
}

impl std::fmt::Debug for PreparedEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedEncryption").field("options", &self.options).finish_non_exhaustive()
    }
}

impl PreparedEncryption {
    /// Checks `context` and `options`; for a signing suite, makes the ephemeral P-384 key and
    /// adds its compressed public point (base64) to the context, as the SDK does.
    ///
    /// # Errors
    /// [`Error::InvalidContext`] for a reserved key (`aws-crypto-…`) or a context too large
    /// for a header; [`Error::InvalidFrameLength`].
    pub fn new(mut context: EncryptionContext, options: EncryptOptions) -> Result<Self, Error> {
        check_request(&context, options)?;
        let signer = if options.suite.is_signing() {
            let signer = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_ASN1_SIGNING)
                .map_err(|_| Error::Internal("P-384 key generation failed"))?;
            let public: EcPublicKeyCompressedBin<'_> = signer
                .public_key()
                .as_be_bytes()
                .map_err(|_| Error::Internal("P-384 public key encoding failed"))?;
            context.insert(PUBLIC_KEY_CONTEXT_KEY.to_owned(), BASE64.encode(public.as_ref()));
            // The context grew: it must still fit a header, checked before a data key is made.
            format::encoded_context_len(&context)?;
            Some(signer)
        } else {
            None
        };
        Ok(Self { options, context, signer })
    }

    /// The header that every message encrypted with this context and options under the data
    /// key `ciphertext_blob` (made under `key_arn`) shares: all of it but the message id and
    /// the commitment. A data key used for many messages (a cached one) encodes it once and
    /// starts each with [`Encryptor::with_template`].
    ///
    /// # Errors
    /// [`Error::InvalidDataKey`] for a key ARN or blob too long for the header.
    pub fn template(&self, ciphertext_blob: &[u8], key_arn: &str) -> Result<HeaderTemplate, Error> {
        let data_key = EncryptedDataKey {
            provider_id: PROVIDER_ID_KMS.to_owned(),
            provider_info: key_arn.as_bytes().to_vec(),
            ciphertext: ciphertext_blob.to_vec(),
        };
        HeaderTemplate::new(
            self.options.suite,
            &self.context,
            std::slice::from_ref(&data_key),
            self.options.frame_length,
        )
    }

    /// The encryption context of the message, as the data key must be bound to it
    /// (GenerateDataKey's EncryptionContext).
    pub fn kms_context(&self) -> &EncryptionContext {
        &self.context
    }

    /// The encryptor for `data_key` (made under [`PreparedEncryption::kms_context`]), with a
    /// random message id. Nothing is emitted yet.
    ///
    /// # Errors
    /// [`Error::InvalidDataKey`] for a key ARN too long for the header; [`Error::Internal`] if
    /// the random generator fails.
    pub fn start(self, data_key: DataKey) -> Result<Encryptor, Error> {
        self.start_with_message_id(data_key, random_message_id()?)
    }

    /// [`PreparedEncryption::start`] with a given message id (known-answer tests).
    pub(crate) fn start_with_message_id(
        self,
        data_key: DataKey,
        message_id: [u8; MESSAGE_ID_LEN],
    ) -> Result<Encryptor, Error> {
        let template = Arc::new(self.template(&data_key.ciphertext_blob, &data_key.key_arn)?);
        Encryptor::from_parts(template, &data_key.plaintext, message_id, self.signer)
    }
}

/// A fresh message id: 32 random bytes from aws-lc's generator, drawn [`MessageIds::BATCH`] ids
/// at a time per thread. One draw costs about 0.5 µs whatever its size up to a few KiB (the
/// generator's per-call work: its lock-free state lookup and RDRAND, slow on AMD), so drawing
/// one id per message made it a tenth of a small message's cost (`cargo bench --bench envelope
/// -- message_id`: 0.53 µs one at a time, 0.026 µs batched). Message ids are public (each is in
/// its header) and only have to be unique and unpredictable; each pooled id is handed out once
/// and wiped from the pool as it is.
fn random_message_id() -> Result<[u8; MESSAGE_ID_LEN], Error> {
    thread_local! {
        static IDS: std::cell::RefCell<MessageIds> = const {
            std::cell::RefCell::new(MessageIds { pool: [0; MessageIds::POOL], next: MessageIds::POOL })
        };
    }
    IDS.with_borrow_mut(MessageIds::take)
}

/// A thread's pool of message ids not yet used.
struct MessageIds {
    pool: [u8; Self::POOL],
    /// The start of the next unused id; [`MessageIds::POOL`] when all are used.
    next: usize,
}

impl MessageIds {
    const BATCH: usize = 32;
    const POOL: usize = Self::BATCH * MESSAGE_ID_LEN;

    fn take(&mut self) -> Result<[u8; MESSAGE_ID_LEN], Error> {
        if self.next >= Self::POOL {
            SystemRandom::new()
                .fill(&mut self.pool)
                .map_err(|_| Error::Internal("the random generator failed"))?;
            self.next = 0;
        }
        let slot = &mut self.pool[self.next..self.next + MESSAGE_ID_LEN];
        let mut id = [0u8; MESSAGE_ID_LEN];
        id.copy_from_slice(slot);
        slot.fill(0);
        self.next += MESSAGE_ID_LEN;
        Ok(id)
    }
}

// === impl Encryptor ===

/// A regular frame's fields before its content: sequence number and IV.
const FRAME_PREFIX: usize = 4 + IV_LEN;
/// What a final frame adds to them: the end marker and the content length.
const FINAL_FRAME_EXTRA: usize = 4 + 4;

/// Encrypts one message, frame by frame.
///
/// Call [`Encryptor::update`] with each chunk of plaintext and [`Encryptor::finish`] once at
/// the end; both append the message bytes ready so far to `out`. A regular frame is emitted as
/// soon as more plaintext than one frame is buffered (a full frame could be the final one), so
/// at most one frame of plaintext is held.
///
/// Plaintext that arrives in pieces is gathered in a buffer laid out as its frame (sequence
/// number and IV, then the content) and sealed where it lies; when `out` is empty the sealed
/// frame becomes `out` itself, so a frame's bytes are copied once on their way through.
pub struct Encryptor {
    keys: MessageKeys,
    /// The header, but for the message id and the commitment.
    template: Arc<HeaderTemplate>,
    message_id: [u8; MESSAGE_ID_LEN],
    /// Whether the header went out (the first call writes it).
    header_sent: bool,
    /// The next frame as it gathers: empty, or [`FRAME_PREFIX`] bytes for the sequence number
    /// and IV, then the plaintext held (fewer than or exactly `frame_length` bytes). Its
    /// capacity grows only through [`Encryptor::reserve_frame`], which wipes the allocation it
    /// leaves, and always has room for the final frame's extra fields and the tag.
    frame: Zeroizing<Vec<u8>>,
    /// Sequence number of the next frame.
    sequence: u32,
    /// The signing key and the running hash of the message, for 0x0578.
    signer: Option<(EcdsaKeyPair, digest::Context)>,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encryptor")
            .field("suite", &self.template.suite())
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Encryptor {
    /// Prepares an encryption of a message under `key` with `context`, asks `keys` for its
    /// data key as `principal`, and starts it.
    ///
    /// # Errors
    /// Those of [`PreparedEncryption::new`] and [`PreparedEncryption::start`];
    /// [`Error::KeyService`] when the data key is refused.
    pub async fn begin(
        keys: &dyn KeyService,
        principal: &str,
        key: &str,
        context: EncryptionContext,
        options: EncryptOptions,
    ) -> Result<Self, Error> {
        let prepared = PreparedEncryption::new(context, options)?;
        let data_key = keys.generate_data_key(principal, key, prepared.kms_context()).await?;
        prepared.start(data_key)
    }

    /// Starts a message of `template` (a suite without a signature) whose data key is
    /// `data_key`, the plaintext of the template's encrypted data key, with a random message
    /// id. Nothing is emitted yet.
    ///
    /// # Errors
    /// [`Error::Internal`] for a signing suite's template (each signed message has its own
    /// signing key in its header) or if the random generator fails.
    pub fn with_template(template: Arc<HeaderTemplate>, data_key: &AesKey) -> Result<Self, Error> {
        if template.suite().is_signing() {
            return Err(Error::Internal("a signed message's header is its own: no template"));
        }
        Self::from_parts(template, data_key, random_message_id()?, None)
    }

    fn from_parts(
        template: Arc<HeaderTemplate>,
        data_key: &AesKey,
        message_id: [u8; MESSAGE_ID_LEN],
        signer: Option<EcdsaKeyPair>,
    ) -> Result<Self, Error> {
        let keys = MessageKeys::derive(template.suite(), data_key, &message_id)?;
        Ok(Self {
            keys,
            template,
            message_id,
            header_sent: false,
            // Allocated as plaintext arrives (`Encryptor::hold`), so a small body costs a small
            // buffer to allocate and wipe, not a whole frame.
            frame: Zeroizing::new(Vec::new()),
            sequence: 1,
            signer: signer.map(|key| (key, digest::Context::new(&digest::SHA384))),
        })
    }

    /// The message id.
    pub fn message_id(&self) -> &[u8; MESSAGE_ID_LEN] {
        &self.message_id
    }

    /// The header's length in the message, its tag included.
    pub fn header_len(&self) -> usize {
        self.template.header_len()
    }

    /// How many plaintext bytes are held, waiting for their frame (at most one frame).
    pub fn buffered_len(&self) -> usize {
        self.frame.len().saturating_sub(FRAME_PREFIX)
    }

    /// Encrypts `plaintext`, appending every frame that is complete (and, the first time, the
    /// header) to `out`.
    ///
    /// # Errors
    /// [`Error::TooLong`] past 2^32 − 2 frames; [`Error::Internal`] if the library fails.
    pub fn update(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        self.emit_header(out)?;
        let frame_length = self.template.frame_length() as usize;
        let mut input = plaintext;
        while !input.is_empty() {
            if self.buffered_len() == 0 {
                // Whole frames straight from the input, as long as more follows each.
                while input.len() > frame_length {
                    let (frame, rest) = input.split_at(frame_length);
                    self.seal_frame(false, frame, out)?;
                    input = rest;
                }
                self.hold(input);
                return Ok(());
            }
            let room = frame_length - self.buffered_len();
            if input.len() <= room {
                self.hold(input);
                return Ok(());
            }
            let (head, rest) = input.split_at(room);
            self.hold(head);
            input = rest;
            // A full frame with more plaintext after it: a regular frame.
            self.seal_held(false, out)?;
        }
        Ok(())
    }

    /// Ends the message: the final frame (holding the last up to `frame_length` bytes, possibly
    /// none) and, for a signing suite, the footer.
    ///
    /// # Errors
    /// As [`Encryptor::update`].
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        self.emit_header(out)?;
        if self.buffered_len() == 0 {
            self.seal_frame(true, &[], out)?;
        } else {
            self.seal_held(true, out)?;
        }
        self.sign(out)
    }

    /// [`Encryptor::update`] with the last of the plaintext, then [`Encryptor::finish`]; when
    /// nothing is held, the frames are sealed straight from `plaintext` (a body that arrives in
    /// one piece is never copied aside).
    ///
    /// # Errors
    /// As [`Encryptor::update`].
    pub fn finish_with(mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if self.buffered_len() > 0 {
            self.update(plaintext, out)?;
            return self.finish(out);
        }
        // The rest of the message at once: the header if it is still to go, and the frames.
        let frame_length = self.template.frame_length() as usize;
        let frames = plaintext.len() / frame_length + 1;
        let header = if self.header_sent { 0 } else { self.header_len() };
        out.reserve(
            header + plaintext.len() + frames * (FRAME_PREFIX + TAG_LEN) + FINAL_FRAME_EXTRA,
        );
        self.emit_header(out)?;
        let mut input = plaintext;
        while input.len() > frame_length {
            let (frame, rest) = input.split_at(frame_length);
            self.seal_frame(false, frame, out)?;
            input = rest;
        }
        self.seal_frame(true, input, out)?;
        self.sign(out)
    }

    /// For a signing suite, the footer.
    fn sign(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        if let Some((key, hash)) = self.signer.take() {
            let signature = key
                .sign_digest(&hash.finish())
                .map_err(|_| Error::Internal("ECDSA signing failed"))?;
            let signature = signature.as_ref();
            let len = u16::try_from(signature.len())
                .map_err(|_| Error::Internal("an ECDSA signature longer than 65535 bytes"))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(signature);
        }
        Ok(())
    }

    /// Appends `plaintext` (which fits in the frame) to the frame being gathered.
    fn hold(&mut self, plaintext: &[u8]) {
        if plaintext.is_empty() {
            return;
        }
        let start = if self.frame.is_empty() { FRAME_PREFIX } else { self.frame.len() };
        self.reserve_frame(start + plaintext.len());
        // The sequence number and IV are written when the frame is sealed.
        self.frame.resize(start, 0);
        self.frame.extend_from_slice(plaintext);
    }

    /// Makes room in the frame buffer for `len` bytes of prefix and plaintext, and the final
    /// frame's extra fields and tag after them. Growing moves the bytes to a larger allocation
    /// by hand and wipes the old one (`Vec`'s own growth would free it with the plaintext in
    /// it). The first frame's capacity doubles as it fills, so a small message holds a small
    /// buffer; once a message has sealed a frame, each next one is sized whole at once.
    fn reserve_frame(&mut self, len: usize) {
        let needed = len + FINAL_FRAME_EXTRA + TAG_LEN;
        if needed <= self.frame.capacity() {
            return;
        }
        let whole =
            FRAME_PREFIX + self.template.frame_length() as usize + FINAL_FRAME_EXTRA + TAG_LEN;
        let capacity =
            if self.sequence > 1 { whole } else { (self.frame.capacity() * 2).min(whole) }
                .max(needed);
        let mut grown = Zeroizing::new(Vec::with_capacity(capacity));
        grown.extend_from_slice(&self.frame);
        // The old buffer is wiped (its whole capacity) as it drops.
        self.frame = grown;
    }

    /// Seals the frame gathered in the buffer (it holds plaintext) in place, and emits it:
    /// as `out` itself when `out` is empty, appended to it otherwise.
    fn seal_held(&mut self, is_final: bool, out: &mut Vec<u8>) -> Result<(), Error> {
        let sequence = self.next_sequence()?;
        let content_len = self.buffered_len();
        let (prefix, body) = frame_prefix(is_final, sequence, content_len);
        if is_final {
            // The final frame's prefix is longer (the end marker in front, the content length
            // after the IV): move the content up to make room (once a message; the capacity
            // is there).
            let end = self.frame.len();
            self.frame.resize(end + FINAL_FRAME_EXTRA, 0);
            self.frame.copy_within(FRAME_PREFIX..end, body);
        }
        self.frame[..body].copy_from_slice(&prefix[..body]);
        let content = &mut self.frame[body..];
        let tag = seal_content(&self.keys, &self.message_id, is_final, sequence, content)?;
        // Within the capacity `reserve_frame` left.
        self.frame.extend_from_slice(tag.as_ref());
        if let Some((_, hash)) = &mut self.signer {
            hash.update(&self.frame);
        }
        // Sealed: ciphertext only, which needs no wiping.
        if out.is_empty() {
            *out = std::mem::take(&mut *self.frame);
        } else {
            out.extend_from_slice(&self.frame);
            self.frame.clear();
        }
        self.sequence = sequence.wrapping_add(1);
        Ok(())
    }

    /// The next frame's sequence number.
    ///
    /// # Errors
    /// [`Error::TooLong`] when the message has no more: the marker is not a sequence number,
    /// and a final frame's number may be at most 2^32 − 2 so that the next regular one could
    /// never be mistaken for it.
    fn next_sequence(&self) -> Result<u32, Error> {
        if self.sequence == FINAL_FRAME_MARKER {
            return Err(Error::TooLong);
        }
        Ok(self.sequence)
    }

    /// Writes the header, the first time: the template with this message's id and
    /// commitment, then its tag.
    fn emit_header(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        if self.header_sent {
            return Ok(());
        }
        let start = out.len();
        out.reserve(self.template.header_len());
        self.template.render_into(&self.message_id, &self.keys.commit_key, out);
        let tag = self.keys.header_tag(&out[start..])?;
        out.extend_from_slice(&tag);
        self.hash(&out[start..]);
        self.header_sent = true;
        Ok(())
    }

    fn hash(&mut self, bytes: &[u8]) {
        if let Some((_, hash)) = &mut self.signer {
            hash.update(bytes);
        }
    }

    fn seal_frame(
        &mut self,
        is_final: bool,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let sequence = self.next_sequence()?;
        let start = out.len();
        let (prefix, prefix_len) = frame_prefix(is_final, sequence, plaintext.len());
        out.reserve(prefix_len + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&prefix[..prefix_len]);
        let body = out.len();
        out.extend_from_slice(plaintext);
        let tag = seal_content(&self.keys, &self.message_id, is_final, sequence, &mut out[body..])?;
        out.extend_from_slice(tag.as_ref());
        if let Some((_, hash)) = &mut self.signer {
            hash.update(&out[start..]);
        }
        self.sequence = sequence.wrapping_add(1);
        Ok(())
    }
}

/// The fields of frame `sequence` before its `content_len` bytes of content, and how many of
/// the returned bytes they are: sequence number and IV, and for the final frame the end marker
/// in front and the content length after.
fn frame_prefix(
    is_final: bool,
    sequence: u32,
    content_len: usize,
) -> ([u8; FRAME_PREFIX + FINAL_FRAME_EXTRA], usize) {
    let mut prefix = [0u8; FRAME_PREFIX + FINAL_FRAME_EXTRA];
    let fields = if is_final { 4 } else { 0 };
    if is_final {
        prefix[..4].copy_from_slice(&FINAL_FRAME_MARKER.to_be_bytes());
    }
    prefix[fields..fields + 4].copy_from_slice(&sequence.to_be_bytes());
    prefix[fields + 4..fields + FRAME_PREFIX].copy_from_slice(&format::frame_iv(sequence));
    if !is_final {
        return (prefix, FRAME_PREFIX);
    }
    // At most frame_length ≤ 16 MiB.
    prefix[fields + FRAME_PREFIX..].copy_from_slice(&(content_len as u32).to_be_bytes());
    (prefix, FRAME_PREFIX + FINAL_FRAME_EXTRA)
}

/// Seals the content of frame `sequence` of the message `message_id` in place; returns its
/// tag.
fn seal_content(
    keys: &MessageKeys,
    message_id: &[u8; MESSAGE_ID_LEN],
    is_final: bool,
    sequence: u32,
    content: &mut [u8],
) -> Result<aws_lc_rs::aead::Tag, Error> {
    let aad = format::frame_aad(message_id, is_final, sequence, content.len() as u64);
    keys.content
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(format::frame_iv(sequence)),
            Aad::from(aad),
            content,
        )
        .map_err(|_| Error::Internal("AES-GCM seal failed"))
}

// === impl Decryptor ===

/// The data key a [`Decryptor`] needs: decrypt `blob` under `key_arn` with `context`.
#[derive(Clone, Copy, Debug)]
pub struct DataKeyRequest<'a> {
    /// The KMS ciphertext blob of the data key.
    pub blob: &'a [u8],
    /// The message's whole encryption context (with the public key of a signed message), which
    /// the blob is bound to.
    pub context: &'a EncryptionContext,
    /// The key the blob must be under.
    pub key_arn: &'a str,
    /// The header's length in the message, its tag included.
    pub header_len: usize,
}

/// Where a [`Decryptor`] is in the message.
enum State {
    /// Reading the header.
    Header,
    /// The header is read and checked; waiting for the data key.
    NeedDataKey {
        parsed: format::ParsedHeader,
        /// The header's bytes (body and tag), for its tag check.
        bytes: Vec<u8>,
        /// Index of the encrypted data key to decrypt.
        data_key: usize,
    },
    /// Reading frames.
    Frames { keys: MessageKeys, header: Header, next: u32 },
    /// The final frame is read; reading a signed message's footer.
    Footer { header: Header },
    /// The message ended.
    Done { header: Header },
    /// A failure happened; nothing more is accepted.
    Failed,
}

/// Decrypts one message, frame by frame.
///
/// Feed it with [`Decryptor::update`]; when [`Decryptor::data_key_request`] asks for the data
/// key, supply it; call [`Decryptor::finish`] at the end of the input. Plaintext is appended
/// to `out` one authenticated frame at a time. Any error is final: the decryptor refuses
/// everything after it.
pub struct Decryptor {
    expected: DecryptOptions,
    state: State,
    /// Input not yet used.
    buffer: Vec<u8>,
    /// For a signed message: the public key and the running hash of header and body.
    verifier: Option<(Vec<u8>, digest::Context)>,
}

impl std::fmt::Debug for Decryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Header => "header",
            State::NeedDataKey { .. } => "need data key",
            State::Frames { .. } => "frames",
            State::Footer { .. } => "footer",
            State::Done { .. } => "done",
            State::Failed => "failed",
        };
        f.debug_struct("Decryptor")
            .field("key_arn", &self.expected.key_arn)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Decryptor {
    /// A decryptor for a message under `expected.key_arn` with context `expected.context`.
    pub fn new(expected: DecryptOptions) -> Self {
        Self { expected, state: State::Header, buffer: Vec::new(), verifier: None }
    }

    /// The message's header, once it has been read and authenticated.
    pub fn header(&self) -> Option<&Header> {
        match &self.state {
            State::Frames { header, .. } | State::Footer { header } | State::Done { header } => {
                Some(header)
            }
            _ => None,
        }
    }

    /// The data key to decrypt, once the header is read and matches the expectations; `None`
    /// before that and after the key was supplied.
    pub fn data_key_request(&self) -> Option<DataKeyRequest<'_>> {
        match &self.state {
            State::NeedDataKey { parsed, data_key, .. } => Some(DataKeyRequest {
                blob: &parsed.header.data_keys.get(*data_key)?.ciphertext,
                context: &parsed.header.context,
                key_arn: &self.expected.key_arn,
                header_len: parsed.total_len(),
            }),
            _ => None,
        }
    }

    /// How many input bytes are held, not yet used (a partial frame, or input that arrived
    /// while the data key was awaited).
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    /// Whether the message ended (the final frame and any footer were read and verified).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done { .. })
    }

    /// Takes the next chunk of the message, appending any plaintext it completes to `out`.
    ///
    /// # Errors
    /// The message faults ([`Error::is_message_fault`]): malformed or unsupported header,
    /// wrong provider, key or context, tampering, trailing data.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if matches!(self.state, State::Failed) {
            return Err(Error::Internal("the decryptor already failed"));
        }
        let result = if self.buffer.is_empty() {
            // Nothing held back: use the input where it is and keep only what is left over.
            self.run(input, out).map(|used| self.buffer.extend_from_slice(&input[used..]))
        } else {
            self.buffer.extend_from_slice(input);
            self.advance(out)
        };
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// Hands over the data key [`Decryptor::data_key_request`] asked for, then decrypts what
    /// input is buffered.
    ///
    /// # Errors
    /// [`Error::CommitmentMismatch`] when the key does not derive the header's commitment,
    /// [`Error::HeaderTampered`] when the header does not authenticate; then as
    /// [`Decryptor::update`]. [`Error::Internal`] when no data key was asked for.
    pub fn supply_data_key(&mut self, data_key: &AesKey, out: &mut Vec<u8>) -> Result<(), Error> {
        let result = self.unlock(data_key).and_then(|()| self.advance(out));
        if result.is_err() {
            self.fail();
        }
        result
    }

    /// If the data key is needed, decrypts it with `keys` as `principal` and supplies it.
    ///
    /// # Errors
    /// [`Error::KeyService`], then as [`Decryptor::supply_data_key`].
    pub async fn fetch_data_key(
        &mut self,
        keys: &dyn KeyService,
        principal: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let Some(request) = self.data_key_request() else { return Ok(()) };
        let data_key = match keys
            .decrypt_data_key(principal, request.blob, request.context, request.key_arn)
            .await
        {
            Ok(data_key) => data_key,
            Err(error) => {
                self.fail();
                return Err(error.into());
            }
        };
        self.supply_data_key(&data_key, out)
    }

    /// Ends the input.
    ///
    /// # Errors
    /// [`Error::Truncated`] when the message has not ended (no final frame, or no footer of a
    /// signed message); [`Error::Internal`] if the data key was never supplied.
    pub fn finish(self) -> Result<(), Error> {
        match self.state {
            State::Done { .. } => Ok(()),
            State::NeedDataKey { .. } => Err(Error::Internal("the data key was never supplied")),
            State::Failed => Err(Error::Internal("the decryptor already failed")),
            State::Header | State::Frames { .. } | State::Footer { .. } => Err(Error::Truncated),
        }
    }

    fn fail(&mut self) {
        self.state = State::Failed;
        self.buffer.zeroize();
        self.buffer = Vec::new();
    }

    /// Uses as much of the buffer as the state allows.
    fn advance(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let mut buffer = std::mem::take(&mut self.buffer);
        let result = self.run(&buffer, out);
        if let Ok(used) = result {
            buffer.drain(..used);
            self.buffer = buffer;
        }
        result.map(drop)
    }

    /// Steps through `input` as far as the state allows; returns how many bytes it used.
    fn run(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        let mut used = 0;
        loop {
            match self.step(&input[used..], out)? {
                0 => return Ok(used),
                n => used += n,
            }
        }
    }

    /// One step: returns how many input bytes it used (0: it needs more, or the data key).
    fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, Error> {
        match &mut self.state {
            State::Header => {
                let Some(parsed) = format::parse_header(input)? else { return Ok(0) };
                let len = parsed.total_len();
                let bytes = input[..len].to_vec();
                let data_key = self.check_header(&parsed.header)?;
                if parsed.header.suite.is_signing() {
                    let encoded = parsed
                        .header
                        .context
                        .get(PUBLIC_KEY_CONTEXT_KEY)
                        .ok_or(Error::Malformed("a signed message has no public key"))?;
                    let public = BASE64
                        .decode(encoded)
                        .map_err(|_| Error::Malformed("the public key is not base64"))?;
                    let mut hash = digest::Context::new(&digest::SHA384);
                    hash.update(&bytes);
                    self.verifier = Some((public, hash));
                } else if parsed.header.context.contains_key(PUBLIC_KEY_CONTEXT_KEY) {
                    return Err(Error::Malformed("an unsigned message carries a public key"));
                }
                self.state = State::NeedDataKey { parsed, bytes, data_key };
                Ok(len)
            }
            State::NeedDataKey { .. } | State::Failed => Ok(0),
            State::Frames { keys, header, next } => {
                let Some(frame) = parse_frame(input, header.frame_length, *next)? else {
                    return Ok(0);
                };
                let frame_bytes = &input[..frame.len];
                let start = out.len();
                out.extend_from_slice(frame.ciphertext(frame_bytes));
                let aad = format::frame_aad(
                    &header.message_id,
                    frame.is_final,
                    frame.sequence,
                    frame.content_len as u64,
                );
                let opened = if frame.iv(frame_bytes) == format::frame_iv(frame.sequence) {
                    keys.content
                        .open_in_place_separate_tag(
                            Nonce::assume_unique_for_key(format::frame_iv(frame.sequence)),
                            Aad::from(aad),
                            frame.tag(frame_bytes),
                            &mut out[start..],
                        )
                        .is_ok()
                } else {
                    false
                };
                if !opened {
                    out[start..].zeroize();
                    out.truncate(start);
                    return Err(Error::FrameTampered(frame.sequence));
                }
                if let Some((_, hash)) = &mut self.verifier {
                    hash.update(frame_bytes);
                }
                if frame.is_final {
                    let header = take_header(&mut self.state)?;
                    self.state = if self.verifier.is_some() {
                        State::Footer { header }
                    } else {
                        State::Done { header }
                    };
                } else {
                    *next = next.checked_add(1).ok_or(Error::Malformed("too many frames"))?;
                }
                Ok(frame.len)
            }
            State::Footer { .. } => {
                let Some(len) = input.get(..2) else { return Ok(0) };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                if len == 0 || len > MAX_SIGNATURE_LEN {
                    return Err(Error::Malformed("the signature length is out of bounds"));
                }
                let Some(signature) = input.get(2..2 + len) else { return Ok(0) };
                let (public, hash) =
                    self.verifier.take().ok_or(Error::Internal("no verifier for the footer"))?;
                UnparsedPublicKey::new(&ECDSA_P384_SHA384_ASN1, &public)
                    .verify_digest(&hash.finish(), signature)
                    .map_err(|_| Error::BadSignature)?;
                let header = take_header(&mut self.state)?;
                self.state = State::Done { header };
                Ok(2 + len)
            }
            State::Done { .. } => {
                if input.is_empty() {
                    Ok(0)
                } else {
                    Err(Error::TrailingData)
                }
            }
        }
    }

    /// Checks a parsed header against the expectations; returns the index of the data key to
    /// decrypt.
    fn check_header(&self, header: &Header) -> Result<usize, Error> {
        let mut from_kms = header
            .data_keys
            .iter()
            .enumerate()
            .filter(|(_, key)| key.provider_id == PROVIDER_ID_KMS)
            .peekable();
        if from_kms.peek().is_none() {
            return Err(Error::WrongProvider);
        }
        let (index, _) = from_kms
            .find(|(_, key)| key.provider_info == self.expected.key_arn.as_bytes())
            .ok_or(Error::WrongKey)?;
        let mut context = header.context.clone();
        context.remove(PUBLIC_KEY_CONTEXT_KEY);
        if context != self.expected.context {
            return Err(Error::ContextMismatch);
        }
        Ok(index)
    }

    /// Checks the data key against the header's commitment and tag, and moves to the frames.
    fn unlock(&mut self, data_key: &AesKey) -> Result<(), Error> {
        let State::NeedDataKey { parsed, bytes, .. } = &self.state else {
            return Err(Error::Internal("no data key was asked for"));
        };
        let header = &parsed.header;
        let keys = MessageKeys::derive(header.suite, data_key, &header.message_id)?;
        if !keys.commits_to(&header.commit_key) {
            return Err(Error::CommitmentMismatch);
        }
        if !keys.verify_header(&bytes[..parsed.body_len], &parsed.tag) {
            return Err(Error::HeaderTampered);
        }
        let header = header.clone();
        self.state = State::Frames { keys, header, next: 1 };
        Ok(())
    }
}

/// Moves the header out of a state that has one (leaving [`State::Failed`] behind).
fn take_header(state: &mut State) -> Result<Header, Error> {
    match std::mem::replace(state, State::Failed) {
        State::Frames { header, .. } | State::Footer { header } | State::Done { header } => {
            Ok(header)
        }
        State::NeedDataKey { parsed, .. } => Ok(parsed.header),
        State::Header | State::Failed => Err(Error::Internal("no header to move on with")),
    }
}

/// Where the parts of a complete frame are in its bytes.
struct Frame {
    is_final: bool,
    sequence: u32,
    /// Offset of the IV.
    iv_at: usize,
    /// Offset of the ciphertext.
    ciphertext_at: usize,
    content_len: usize,
    /// Length of the whole frame.
    len: usize,
}

impl Frame {
    fn iv<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.iv_at..self.iv_at + IV_LEN]
    }

    fn ciphertext<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.ciphertext_at..self.ciphertext_at + self.content_len]
    }

    fn tag<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        &bytes[self.len - TAG_LEN..self.len]
    }
}

/// Finds the frame at the start of `input`, which must be frame `expected`. `Ok(None)` while
/// it is incomplete.
fn parse_frame(input: &[u8], frame_length: u32, expected: u32) -> Result<Option<Frame>, Error> {
    let u32_at = |at: usize| -> Option<u32> {
        input.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let Some(first) = u32_at(0) else { return Ok(None) };
    let out_of_order = Error::Malformed("frames are out of order");
    let frame = if first == FINAL_FRAME_MARKER {
        let Some(sequence) = u32_at(4) else { return Ok(None) };
        if sequence != expected {
            return Err(out_of_order);
        }
        let Some(content_len) = u32_at(8 + IV_LEN) else { return Ok(None) };
        if content_len > frame_length {
            return Err(Error::Malformed("the final frame is longer than the frame length"));
        }
        let content_len = content_len as usize;
        let ciphertext_at = 12 + IV_LEN;
        Frame {
            is_final: true,
            sequence,
            iv_at: 8,
            ciphertext_at,
            content_len,
            len: ciphertext_at + content_len + TAG_LEN,
        }
    } else {
        if first != expected {
            return Err(out_of_order);
        }
        let content_len = frame_length as usize;
        let ciphertext_at = 4 + IV_LEN;
        Frame {
            is_final: false,
            sequence: first,
            iv_at: 4,
            ciphertext_at,
            content_len,
            len: ciphertext_at + content_len + TAG_LEN,
        }
    };
    Ok((input.len() >= frame.len).then_some(frame))
}

// === one-shot ===

/// Encrypts `plaintext` into one message under `key` with `context`, getting the data key from
/// `keys` as `principal`.
///
/// # Errors
/// As [`Encryptor::begin`] and [`Encryptor::update`].
pub async fn encrypt(
    keys: &dyn KeyService,
    principal: &str,
    key: &str,
    context: EncryptionContext,
    options: EncryptOptions,
    plaintext: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut encryptor = Encryptor::begin(keys, principal, key, context, options).await?;
    let frames = plaintext.len() / options.frame_length as usize + 1;
    let mut out = Vec::with_capacity(plaintext.len() + frames * 36 + 512);
    encryptor.update(plaintext, &mut out)?;
    encryptor.finish(&mut out)?;
    Ok(out)
}

/// Decrypts the message `ciphertext`, which must meet `expected`, getting the data key from
/// `keys` as `principal`. The plaintext is returned only when the whole message verified (its
/// signature included).
///
/// # Errors
/// As [`Decryptor::update`], [`Decryptor::fetch_data_key`] and [`Decryptor::finish`].
pub async fn decrypt(
    keys: &dyn KeyService,
    principal: &str,
    expected: DecryptOptions,
    ciphertext: &[u8],
) -> Result<SecretBytes, Error> {
    let mut decryptor = Decryptor::new(expected);
    // Plaintext is wiped if anything fails before the end.
    let mut plaintext = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    // The header is read first; the frames are decrypted once the data key is known.
    decryptor.update(ciphertext, &mut plaintext)?;
    decryptor.fetch_data_key(keys, principal, &mut plaintext).await?;
    decryptor.finish()?;
    Ok(SecretBytes::new(std::mem::take(&mut *plaintext)))
}
