//! Unit tests of the envelope: round trips across chunkings and frame lengths, every tampered
//! byte and every truncation refused, the expectations (key, provider, context) enforced, the
//! golden messages (the official Python SDK's, and kagi's own byte for byte), the keystore
//! key service's authorization, and JSON fields.
//!
//! Errors are asserted by variant, never by message.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;

use super::format::{self, MESSAGE_ID_LEN};
use super::keys::KeyFuture;
use super::*;
use crate::crypto::AesKey;
use crate::keystore::ErrorKind;

// === harness ===

const KEY_ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000001";
const OTHER_ARN: &str =
    "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-4000-8000-000000000002";
const BLOB: &[u8] = b"a fake kms ciphertext blob";
const DATA_KEY: [u8; 32] = [0x5a; 32];

const SUITES: [Suite; 2] =
    [Suite::Aes256GcmHkdfSha512CommitKey, Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384];

fn context(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn default_context() -> EncryptionContext {
    context(&[("purpose", "unit test"), ("tenant", "acme")])
}

fn data_key(bytes: &[u8; 32], blob: &[u8], key_arn: &str) -> DataKey {
    DataKey {
        plaintext: AesKey::from_slice(bytes).expect("32 bytes"),
        ciphertext_blob: blob.to_vec(),
        key_arn: key_arn.to_owned(),
    }
}

/// A key service with one fixed data key, whose "blob" must come back unchanged with the same
/// context and key.
#[derive(Debug)]
struct FixedKeys {
    data_key: [u8; 32],
    blob: Vec<u8>,
    key_arn: String,
}

impl FixedKeys {
    fn new() -> Self {
        Self { data_key: DATA_KEY, blob: BLOB.to_vec(), key_arn: KEY_ARN.to_owned() }
    }
}

impl KeyService for FixedKeys {
    fn generate_data_key<'a>(
        &'a self,
        _principal: &'a str,
        _key: &'a str,
        _context: &'a EncryptionContext,
    ) -> KeyFuture<'a, DataKey> {
        Box::pin(async move { Ok(data_key(&self.data_key, &self.blob, &self.key_arn)) })
    }

    fn decrypt_data_key<'a>(
        &'a self,
        _principal: &'a str,
        blob: &'a [u8],
        _context: &'a EncryptionContext,
        key: &'a str,
    ) -> KeyFuture<'a, AesKey> {
        Box::pin(async move {
            if blob != self.blob || key != self.key_arn {
                return Err(KeyServiceError::Kms {
                    kind: ErrorKind::InvalidCiphertext,
                    message: "not this blob".into(),
                });
            }
            Ok(AesKey::from_slice(&self.data_key).expect("32 bytes"))
        })
    }

    fn key_arn<'a>(&'a self, _principal: &'a str, key: &'a str) -> KeyFuture<'a, String> {
        Box::pin(async move { Ok(key.to_owned()) })
    }
}

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// Encrypts `plaintext` with the fixed data key, feeding it `chunk` bytes at a time, the last
/// piece through [`Encryptor::finish_with`].
fn seal(plaintext: &[u8], suite: Suite, frame_length: u32, chunk: usize) -> Vec<u8> {
    let options = EncryptOptions { suite, frame_length };
    let prepared = PreparedEncryption::new(default_context(), options).expect("prepare");
    let encryptor = prepared.start(data_key(&DATA_KEY, BLOB, KEY_ARN)).expect("start");
    seal_with(encryptor, plaintext, chunk)
}

/// Feeds `plaintext` to `encryptor` `chunk` bytes at a time, the last piece through
/// [`Encryptor::finish_with`].
fn seal_with(mut encryptor: Encryptor, plaintext: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pieces: Vec<&[u8]> = plaintext.chunks(chunk.max(1)).collect();
    let last = pieces.pop().unwrap_or_default();
    for piece in pieces {
        encryptor.update(piece, &mut out).expect("update");
    }
    encryptor.finish_with(last, &mut out).expect("finish");
    out
}

fn expected() -> DecryptOptions {
    DecryptOptions { key_arn: KEY_ARN.to_owned(), context: default_context() }
}

/// Decrypts `message` fed `chunk` bytes at a time with the fixed data key; returns the
/// plaintext released before any error, and the outcome.
fn open_with(
    message: &[u8],
    expected: DecryptOptions,
    key: &[u8; 32],
    chunk: usize,
) -> (Vec<u8>, Result<(), Error>) {
    let mut decryptor = Decryptor::new(expected);
    let mut out = Vec::new();
    let data_key = AesKey::from_slice(key).expect("32 bytes");
    let mut run = || -> Result<(), Error> {
        for piece in message.chunks(chunk.max(1)) {
            decryptor.update(piece, &mut out)?;
            if let Some(request) = decryptor.data_key_request() {
                // As KMS would: a blob that is not the one made, or under another key, fails.
                if request.blob != BLOB || request.key_arn != KEY_ARN {
                    return Err(Error::KeyService(KeyServiceError::Kms {
                        kind: ErrorKind::InvalidCiphertext,
                        message: "not this blob".into(),
                    }));
                }
                decryptor.supply_data_key(&data_key, &mut out)?;
            }
        }
        if message.is_empty() {
            decryptor.update(&[], &mut out)?;
        }
        Ok(())
    };
    let result = run();
    let result = result.and_then(|()| decryptor.finish());
    (out, result)
}

fn open(message: &[u8], chunk: usize) -> Result<Vec<u8>, Error> {
    let (out, result) = open_with(message, expected(), &DATA_KEY, chunk);
    result.map(|()| out)
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

// === round trips ===

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trips_across_chunkings(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        frame_length in 1u32..300,
        write_chunk in 1usize..700,
        read_chunk in 1usize..700,
        signed in any::<bool>(),
    ) {
        let suite = SUITES[usize::from(signed)];
        let message = seal(&body, suite, frame_length, write_chunk);
        prop_assert_eq!(open(&message, read_chunk).expect("decrypts"), body);
    }

    #[test]
    fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (out, result) = open_with(&bytes, expected(), &DATA_KEY, 7);
        prop_assert!(result.is_err());
        prop_assert!(out.is_empty());
    }
}

#[test]
fn frame_size_edges_round_trip() {
    for suite in SUITES {
        for (len, frame_length) in
            [(0, 16), (1, 16), (15, 16), (16, 16), (17, 16), (32, 16), (48, 16), (33, 16), (5, 1)]
        {
            let body = plaintext(len);
            for chunk in [1, 7, 16, 1000] {
                let message = seal(&body, suite, frame_length, chunk);
                assert_eq!(open(&message, 3).expect("decrypts"), body, "{len}/{frame_length}");
            }
        }
    }
}

#[test]
fn frames_are_laid_out_as_the_spec_says() {
    // 48 bytes in frames of 16: two regular frames, then a final frame holding a full frame.
    let message = seal(&plaintext(48), Suite::Aes256GcmHkdfSha512CommitKey, 16, 5);
    let parsed = format::parse_header(&message).expect("parses").expect("complete");
    let body = &message[parsed.total_len()..];
    let regular = 4 + 12 + 16 + 16;
    assert_eq!(body.len(), 2 * regular + (4 + 4 + 12 + 4 + 16 + 16));
    assert_eq!(&body[..4], &1u32.to_be_bytes());
    assert_eq!(&body[4..16], &format::frame_iv(1));
    assert_eq!(&body[regular..regular + 4], &2u32.to_be_bytes());
    let last = &body[2 * regular..];
    assert_eq!(&last[..4], &[0xff; 4]);
    assert_eq!(&last[4..8], &3u32.to_be_bytes());
    assert_eq!(&last[20..24], &16u32.to_be_bytes());
    // An empty body is a single empty final frame.
    let message = seal(b"", Suite::Aes256GcmHkdfSha512CommitKey, 16, 5);
    let parsed = format::parse_header(&message).expect("parses").expect("complete");
    assert_eq!(message.len() - parsed.total_len(), 4 + 4 + 12 + 4 + 16);
}

#[test]
fn plaintext_is_released_only_per_authenticated_frame() {
    let body = plaintext(40);
    let message = seal(&body, Suite::Aes256GcmHkdfSha512CommitKey, 16, 40);
    let mut decryptor = Decryptor::new(expected());
    let mut out = Vec::new();
    let data_key = AesKey::from_slice(&DATA_KEY).expect("32 bytes");
    let mut released = Vec::new();
    for byte in &message {
        decryptor.update(std::slice::from_ref(byte), &mut out).expect("update");
        if decryptor.data_key_request().is_some() {
            decryptor.supply_data_key(&data_key, &mut out).expect("key");
        }
        if released.last() != Some(&out.len()) {
            released.push(out.len());
        }
    }
    assert_eq!(released, [0, 16, 32, 40]);
    decryptor.finish().expect("complete");
}

#[test]
fn large_bodies_stream_in_bounded_memory() {
    // 8 MiB through frames of 64 KiB in 100 KiB chunks: the output buffer is drained after
    // each chunk and the decryptor never holds more than a frame and a chunk.
    let options = EncryptOptions::default();
    let prepared = PreparedEncryption::new(default_context(), options).expect("prepare");
    let mut encryptor = prepared.start(data_key(&DATA_KEY, BLOB, KEY_ARN)).expect("start");
    let mut decryptor = Decryptor::new(expected());
    let data_key = AesKey::from_slice(&DATA_KEY).expect("32 bytes");
    let chunk = vec![0x42u8; 100 * 1024];
    let (mut sealed, mut opened, mut total) = (Vec::new(), Vec::new(), 0usize);
    let mut feed = |sealed: &mut Vec<u8>, opened: &mut Vec<u8>, decryptor: &mut Decryptor| {
        decryptor.update(sealed, opened).expect("update");
        if decryptor.data_key_request().is_some() {
            decryptor.supply_data_key(&data_key, opened).expect("key");
        }
        assert!(decryptor.buffered_len() <= 200 * 1024, "{}", decryptor.buffered_len());
        sealed.clear();
        total += opened.len();
        assert!(opened.iter().all(|b| *b == 0x42));
        opened.clear();
    };
    for _ in 0..80 {
        encryptor.update(&chunk, &mut sealed).expect("update");
        assert!(encryptor.buffered_len() <= 64 * 1024);
        feed(&mut sealed, &mut opened, &mut decryptor);
    }
    encryptor.finish(&mut sealed).expect("finish");
    feed(&mut sealed, &mut opened, &mut decryptor);
    decryptor.finish().expect("complete");
    assert_eq!(total, 80 * 100 * 1024);
}

// === refusals ===

#[test]
fn every_tampered_byte_is_refused() {
    for suite in SUITES {
        let body = plaintext(40);
        let message = seal(&body, suite, 16, 100);
        for position in 0..message.len() {
            for bit in [0x01, 0x80] {
                let mut tampered = message.clone();
                tampered[position] ^= bit;
                let (out, result) = open_with(&tampered, expected(), &DATA_KEY, 1000);
                assert!(result.is_err(), "{suite:?}: byte {position} bit {bit:#x} accepted");
                // Whatever was released is authentic plaintext, never altered bytes.
                assert!(
                    body.starts_with(&out),
                    "{suite:?}: byte {position} released altered bytes"
                );
            }
        }
    }
}

#[test]
fn tampering_is_reported_where_it_is() {
    let message = seal(&plaintext(40), Suite::Aes256GcmHkdfSha512CommitKey, 16, 100);
    let header_len = format::parse_header(&message).expect("parses").expect("complete").total_len();
    let check = |position: usize, want: fn(&Error) -> bool| {
        let mut tampered = message.clone();
        tampered[position] ^= 0x01;
        let (_, result) = open_with(&tampered, expected(), &DATA_KEY, 1000);
        let error = result.expect_err("refused");
        assert!(want(&error), "byte {position}: {error:?}");
    };
    // The header tag, the commitment, a frame's ciphertext, the final frame's tag.
    check(header_len - 1, |e| matches!(e, Error::HeaderTampered));
    check(header_len - 17, |e| matches!(e, Error::CommitmentMismatch));
    check(header_len + 20, |e| matches!(e, Error::FrameTampered(1)));
    check(message.len() - 1, |e| matches!(e, Error::FrameTampered(3)));
    // The message id changes the derived keys, hence the commitment.
    check(5, |e| matches!(e, Error::CommitmentMismatch));
    // A signed message's signature.
    let signed = seal(&plaintext(40), Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384, 16, 100);
    let mut tampered = signed;
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let (out, result) = open_with(&tampered, expected(), &DATA_KEY, 1000);
    assert!(matches!(result, Err(Error::BadSignature)), "{result:?}");
    // Streaming released the authenticated frames before the footer was checked.
    assert_eq!(out, plaintext(40));
}

#[test]
fn every_truncation_is_refused() {
    for suite in SUITES {
        let message = seal(&plaintext(40), suite, 16, 100);
        for len in 0..message.len() {
            let (_, result) = open_with(&message[..len], expected(), &DATA_KEY, 1000);
            let error = result.expect_err("a truncated message is refused");
            assert!(matches!(error, Error::Truncated), "{suite:?} at {len}: {error:?}");
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    for suite in SUITES {
        let mut message = seal(&plaintext(20), suite, 16, 100);
        message.push(0);
        let (_, result) = open_with(&message, expected(), &DATA_KEY, 1000);
        assert!(matches!(result, Err(Error::TrailingData)), "{suite:?}: {result:?}");
    }
}

#[test]
fn expectations_are_enforced() {
    for suite in SUITES {
        let message = seal(&plaintext(20), suite, 16, 100);
        let check = |expected: DecryptOptions, key: &[u8; 32], want: fn(&Error) -> bool| {
            let (out, result) = open_with(&message, expected, key, 1000);
            let error = result.expect_err("refused");
            assert!(want(&error), "{suite:?}: {error:?}");
            assert!(out.is_empty());
        };
        let other_context = |pairs: &[(&str, &str)]| DecryptOptions {
            key_arn: KEY_ARN.to_owned(),
            context: context(pairs),
        };
        check(other_context(&[("purpose", "unit test")]), &DATA_KEY, |e| {
            matches!(e, Error::ContextMismatch)
        });
        check(other_context(&[("purpose", "unit test"), ("tenant", "other")]), &DATA_KEY, |e| {
            matches!(e, Error::ContextMismatch)
        });
        check(
            other_context(&[("purpose", "unit test"), ("tenant", "acme"), ("extra", "x")]),
            &DATA_KEY,
            |e| matches!(e, Error::ContextMismatch),
        );
        check(
            DecryptOptions { key_arn: OTHER_ARN.to_owned(), context: default_context() },
            &DATA_KEY,
            |e| matches!(e, Error::WrongKey),
        );
        check(expected(), &[0x11; 32], |e| matches!(e, Error::CommitmentMismatch));
    }
}

#[test]
fn a_data_key_from_another_provider_is_refused() {
    let mut message = seal(&plaintext(20), Suite::Aes256GcmHkdfSha512CommitKey, 16, 100);
    // "aws-kms" → "aws-kmz" in the header (before any check of the tag).
    let at = message.windows(7).position(|w| w == b"aws-kms").expect("provider id");
    message[at + 6] = b'z';
    let (_, result) = open_with(&message, expected(), &DATA_KEY, 1000);
    assert!(matches!(result, Err(Error::WrongProvider)), "{result:?}");
}

#[test]
fn other_formats_are_refused_as_unsupported() {
    let message = seal(&plaintext(20), Suite::Aes256GcmHkdfSha512CommitKey, 16, 100);
    let check = |edit: &dyn Fn(&mut Vec<u8>), want: fn(&Error) -> bool| {
        let mut edited = message.clone();
        edit(&mut edited);
        let (_, result) = open_with(&edited, expected(), &DATA_KEY, 1000);
        let error = result.expect_err("refused");
        assert!(want(&error), "{error:?}");
    };
    // Version 1, a non-committing suite, non-framed content, garbage.
    check(&|m| m[0] = 0x01, |e| matches!(e, Error::Unsupported(_)));
    check(&|m| m[1..3].copy_from_slice(&[0x01, 0x78]), |e| matches!(e, Error::Unsupported(_)));
    check(&|m| m[1..3].copy_from_slice(&[0x03, 0x78]), |e| matches!(e, Error::Unsupported(_)));
    let header = format::parse_header(&message).expect("parses").expect("complete");
    let content_type_at = header.body_len - 32 - 4 - 1;
    check(&|m| m[content_type_at] = 0x01, |e| matches!(e, Error::Unsupported(_)));
    check(&|m| m[0] = b'{', |e| matches!(e, Error::Malformed(_)));
    // A frame length of zero or past the bound.
    check(&|m| m[content_type_at + 1..content_type_at + 5].copy_from_slice(&[0; 4]), |e| {
        matches!(e, Error::Malformed(_))
    });
    check(
        &|m| m[content_type_at + 1..content_type_at + 5].copy_from_slice(&[0x7f, 0, 0, 0]),
        |e| matches!(e, Error::Malformed(_)),
    );
}

#[test]
fn invalid_requests_are_refused() {
    let reserved = context(&[("aws-crypto-public-key", "x")]);
    assert!(matches!(
        PreparedEncryption::new(reserved, EncryptOptions::default()),
        Err(Error::InvalidContext(_))
    ));
    for frame_length in [0, format::MAX_FRAME_LENGTH + 1] {
        let options = EncryptOptions { frame_length, ..EncryptOptions::default() };
        assert!(matches!(
            PreparedEncryption::new(default_context(), options),
            Err(Error::InvalidFrameLength(_))
        ));
    }
    let huge = context(&[("k", &"v".repeat(70_000))]);
    assert!(matches!(
        PreparedEncryption::new(huge, EncryptOptions::default()),
        Err(Error::InvalidContext(_))
    ));
}

#[test]
fn signed_messages_carry_the_public_key_in_their_context() {
    let prepared = PreparedEncryption::new(
        default_context(),
        EncryptOptions { suite: Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384, frame_length: 16 },
    )
    .expect("prepare");
    let kms_context = prepared.kms_context().clone();
    let public = kms_context.get(format::PUBLIC_KEY_CONTEXT_KEY).expect("the public key");
    use base64::Engine as _;
    let point = base64::engine::general_purpose::STANDARD.decode(public).expect("base64");
    assert_eq!(point.len(), 49, "a compressed P-384 point");
    assert!(matches!(point[0], 0x02 | 0x03));
    let encryptor = prepared.start(data_key(&DATA_KEY, BLOB, KEY_ARN)).expect("start");
    let message = seal_with(encryptor, b"", 1);
    let parsed = format::parse_header(&message).expect("parses").expect("complete");
    assert_eq!(parsed.header.context, kms_context);
}

#[test]
fn messages_of_one_template_differ_in_id_and_commitment_only() {
    let prepared =
        PreparedEncryption::new(default_context(), EncryptOptions::default()).expect("prepare");
    let template = Arc::new(prepared.template(BLOB, KEY_ARN).expect("template"));
    let key = AesKey::from_slice(&DATA_KEY).expect("32 bytes");
    let mut headers = Vec::new();
    for body in [&b"first"[..], b"second"] {
        let encryptor = Encryptor::with_template(Arc::clone(&template), &key).expect("start");
        let id = *encryptor.message_id();
        let message = seal_with(encryptor, body, 4);
        assert_eq!(open(&message, 5).expect("decrypts"), body);
        let parsed = format::parse_header(&message).expect("parses").expect("complete");
        assert_eq!(parsed.header.message_id, id);
        assert_eq!(parsed.total_len(), template.header_len());
        headers.push(parsed.header);
    }
    // Ids come from a per-thread pool refilled in batches: never one twice, never a blank.
    let ids: std::collections::HashSet<[u8; MESSAGE_ID_LEN]> = (0..200)
        .map(|_| {
            *Encryptor::with_template(Arc::clone(&template), &key).expect("start").message_id()
        })
        .collect();
    assert_eq!(ids.len(), 200);
    assert!(!ids.contains(&[0; MESSAGE_ID_LEN]));
    let [a, b] = [&headers[0], &headers[1]];
    assert_ne!(a.message_id, b.message_id);
    assert_ne!(a.commit_key, b.commit_key);
    let blank = |h: &Header| Header { message_id: [0; 32], commit_key: [0; 32], ..h.clone() };
    assert_eq!(blank(a), blank(b));
    // A signed message's header holds its own signing key: no template for it.
    let signing = EncryptOptions {
        suite: Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384,
        ..EncryptOptions::default()
    };
    let prepared = PreparedEncryption::new(default_context(), signing).expect("prepare");
    let template = Arc::new(prepared.template(BLOB, KEY_ARN).expect("template"));
    assert!(matches!(Encryptor::with_template(template, &key), Err(Error::Internal(_))));
}

#[test]
fn secrets_stay_out_of_debug() {
    let key = data_key(&DATA_KEY, BLOB, KEY_ARN);
    let prepared =
        PreparedEncryption::new(default_context(), EncryptOptions::default()).expect("prepare");
    let encryptor = prepared.start(data_key(&DATA_KEY, BLOB, KEY_ARN)).expect("start");
    let message_keys = format::MessageKeys::derive(
        Suite::Aes256GcmHkdfSha512CommitKey,
        &AesKey::from_slice(&DATA_KEY).expect("32 bytes"),
        &[0; MESSAGE_ID_LEN],
    )
    .expect("derive");
    let shown = format!("{key:?} {key:#?} {encryptor:?} {message_keys:?}");
    assert!(!shown.to_lowercase().contains("5a"), "{shown}");
    assert!(!shown.contains("90"), "{shown}");
}

#[test]
fn kms_error_names_map_back_to_kinds() {
    for kind in ErrorKind::ALL {
        assert_eq!(ErrorKind::from_aws_name(kind.aws_name()), Some(kind));
    }
    assert_eq!(ErrorKind::from_aws_name("NoSuchException"), None);
}

#[test]
fn key_arns_are_told_from_other_references() {
    assert!(keys::is_key_arn(KEY_ARN));
    assert!(!keys::is_key_arn("arn:aws:kms:us-east-1:111122223333:alias/app"));
    assert!(!keys::is_key_arn("alias/app"));
    assert!(!keys::is_key_arn("00000000-0000-4000-8000-000000000001"));
}

// === one-shot, JSON ===

#[test]
fn one_shot_round_trip_and_refusal() {
    let keys = FixedKeys::new();
    for suite in SUITES {
        let options = EncryptOptions { suite, frame_length: 100 };
        let body = plaintext(1000);
        let message = block_on(encrypt(&keys, "p", KEY_ARN, default_context(), options, &body))
            .expect("encrypts");
        let opened = block_on(decrypt(&keys, "p", expected(), &message)).expect("decrypts");
        assert_eq!(opened.expose_secret(), body);
        let mut tampered = message.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(block_on(decrypt(&keys, "p", expected(), &tampered)).is_err());
        // A blob the key service refuses keeps the service's error kind.
        let other = FixedKeys { blob: b"another blob".to_vec(), ..FixedKeys::new() };
        let error = block_on(decrypt(&other, "p", expected(), &message)).expect_err("refused");
        assert!(
            matches!(&error, Error::KeyService(e) if e.kind() == ErrorKind::InvalidCiphertext),
            "{error:?}"
        );
    }
}

#[test]
fn json_fields_round_trip() {
    let keys = FixedKeys::new();
    let original = json!({
        "name": "Alice",
        "card": {"number": "4111 1111 1111 1111", "expiry": "12/30"},
        "tags": [1, {"secret": true}],
        "odd/key~": 7
    });
    let pointers = ["/card/number", "/tags/1", "/missing/field", "/odd~1key~0"];
    let mut document = original.clone();
    let count = block_on(encrypt_fields(
        &keys,
        "p",
        KEY_ARN,
        &default_context(),
        EncryptOptions::default(),
        &mut document,
        &pointers,
    ))
    .expect("encrypts");
    assert_eq!(count, 3);
    assert_eq!(document["name"], "Alice");
    assert_eq!(document["card"]["expiry"], "12/30");
    assert_eq!(document["tags"][0], 1);
    assert!(document["card"]["number"].as_str().is_some_and(|s| s != "4111 1111 1111 1111"));
    assert!(document["tags"][1].is_string());
    assert!(document["odd/key~"].is_string());
    let count = block_on(decrypt_fields(&keys, "p", &expected(), &mut document, &pointers))
        .expect("decrypts");
    assert_eq!(count, 3);
    assert_eq!(document, original);
    // A field that holds no message, and a pointer that is not one.
    let mut plain = original;
    let error = block_on(decrypt_fields(&keys, "p", &expected(), &mut plain, &["/name"]))
        .expect_err("refused");
    assert!(matches!(error, Error::NotAnEncryptedField(_)), "{error:?}");
    let error = block_on(decrypt_fields(&keys, "p", &expected(), &mut plain, &["name"]))
        .expect_err("refused");
    assert!(matches!(error, Error::InvalidPointer(_)), "{error:?}");
}

// === goldens ===

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/envelope")
}

/// A golden message and what it holds, as `tests/py/make_envelope_goldens.py` writes them.
#[derive(serde::Deserialize)]
struct Golden {
    source: String,
    suite: String,
    data_key_hex: String,
    key_arn: String,
    blob_hex: String,
    context: EncryptionContext,
    frame_length: u32,
    plaintext_file: String,
    message_file: String,
}

fn read_golden(name: &str) -> (Golden, Vec<u8>, Vec<u8>) {
    let dir = golden_dir();
    let text = std::fs::read_to_string(dir.join(name)).expect("golden description");
    let golden: Golden = serde_json::from_str(&text).expect("golden JSON");
    let plaintext = std::fs::read(dir.join(&golden.plaintext_file)).expect("golden plaintext");
    let message = std::fs::read(dir.join(&golden.message_file)).expect("golden message");
    (golden, plaintext, message)
}

fn golden_keys(golden: &Golden) -> FixedKeys {
    FixedKeys {
        data_key: hex::decode(&golden.data_key_hex)
            .expect("hex")
            .try_into()
            .expect("32-byte data key"),
        blob: hex::decode(&golden.blob_hex).expect("hex"),
        key_arn: golden.key_arn.clone(),
    }
}

#[test]
fn messages_of_the_python_sdk_decrypt() {
    for (name, suite) in [
        ("python-0478.json", Suite::Aes256GcmHkdfSha512CommitKey),
        ("python-0578.json", Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384),
        ("python-0578-exact-frames.json", Suite::Aes256GcmHkdfSha512CommitKeyEcdsaP384),
    ] {
        let (golden, plaintext, message) = read_golden(name);
        assert!(golden.source.contains("aws-encryption-sdk"), "{name}: {}", golden.source);
        assert_eq!(golden.suite, format!("{:04x}", suite.id()), "{name}");
        let header = format::parse_header(&message).expect("parses").expect("complete").header;
        assert_eq!(header.suite, suite, "{name}");
        assert_eq!(header.frame_length, golden.frame_length, "{name}");
        let keys = golden_keys(&golden);
        let expected = DecryptOptions { key_arn: golden.key_arn.clone(), context: golden.context };
        let opened = block_on(decrypt(&keys, "p", expected.clone(), &message))
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(opened.expose_secret(), plaintext, "{name}");
        for chunk in [1, 13, 4096] {
            let mut decryptor = Decryptor::new(expected.clone());
            let mut out = Vec::new();
            for piece in message.chunks(chunk) {
                decryptor.update(piece, &mut out).expect("update");
                block_on(decryptor.fetch_data_key(&keys, "p", &mut out)).expect("data key");
            }
            decryptor.finish().unwrap_or_else(|e| panic!("{name} by {chunk}: {e:?}"));
            assert_eq!(out, plaintext, "{name} by {chunk}");
        }
    }
}

/// The fixed message id of kagi's golden message.
const GOLDEN_MESSAGE_ID: [u8; MESSAGE_ID_LEN] = [0x1d; MESSAGE_ID_LEN];

#[test]
fn kagi_writes_the_golden_message_byte_for_byte() {
    let (golden, plaintext, message) = read_golden("kagi-0478.json");
    assert_eq!(golden.suite, "0478");
    let keys = golden_keys(&golden);
    let options = EncryptOptions {
        suite: Suite::Aes256GcmHkdfSha512CommitKey,
        frame_length: golden.frame_length,
    };
    let prepared = PreparedEncryption::new(golden.context.clone(), options).expect("prepare");
    let data_key = data_key(&keys.data_key, &keys.blob, &keys.key_arn);
    let mut encryptor = prepared.start_with_message_id(data_key, GOLDEN_MESSAGE_ID).expect("start");
    let mut out = Vec::new();
    encryptor.update(&plaintext, &mut out).expect("update");
    encryptor.finish(&mut out).expect("finish");
    // The whole body at once, sealed where it lies, makes the same bytes.
    let prepared = PreparedEncryption::new(golden.context.clone(), options).expect("prepare");
    let again = self::data_key(&keys.data_key, &keys.blob, &keys.key_arn);
    let encryptor = prepared.start_with_message_id(again, GOLDEN_MESSAGE_ID).expect("start");
    let mut at_once = Vec::new();
    encryptor.finish_with(&plaintext, &mut at_once).expect("finish");
    assert_eq!(at_once, out);
    // In small pieces, each into a fresh buffer as the proxy does (a frame gathered and sealed
    // in place is handed over as the buffer itself), the same bytes again.
    let prepared = PreparedEncryption::new(golden.context.clone(), options).expect("prepare");
    let again = self::data_key(&keys.data_key, &keys.blob, &keys.key_arn);
    let mut encryptor = prepared.start_with_message_id(again, GOLDEN_MESSAGE_ID).expect("start");
    let mut pieces = Vec::new();
    for piece in plaintext.chunks(7) {
        let mut chunk = Vec::new();
        encryptor.update(piece, &mut chunk).expect("update");
        assert!(encryptor.buffered_len() <= golden.frame_length as usize);
        pieces.extend_from_slice(&chunk);
    }
    encryptor.finish(&mut pieces).expect("finish");
    assert_eq!(pieces, out);
    if std::env::var_os("KAGI_REGENERATE_GOLDENS").is_some() {
        std::fs::write(golden_dir().join(&golden.message_file), &out).expect("write golden");
        return;
    }
    assert_eq!(out, message, "kagi's encoding changed: the format is frozen by this file");
    let expected = DecryptOptions { key_arn: golden.key_arn.clone(), context: golden.context };
    let opened = block_on(decrypt(&keys, "p", expected, &message)).expect("decrypts");
    assert_eq!(opened.expose_secret(), plaintext);
}

// === the keystore as a key service ===

#[test]
fn the_keystore_key_service_authorizes_the_principal() {
    use crate::keystore::clock::{Clock, ManualClock};
    use crate::keystore::{CreateKeyRequest, Keystore, OpContext, Partition, RootKeySource};

    let dir = tempfile::tempdir().expect("tempdir");
    let backend = crate::crypto::BackendKind::AwsLc.backend();
    Keystore::init(backend, dir.path(), &RootKeySource::File).expect("init");
    let keystore = Arc::new(
        Keystore::open(
            backend,
            dir.path(),
            &RootKeySource::File,
            Arc::new(ManualClock::new(1_800_000_000)) as Arc<dyn Clock>,
            Arc::new(crate::audit::NullSink),
            Partition::default(),
        )
        .expect("open"),
    );
    let account = keystore.partition().account.clone();
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{account}:user/proxy")},
            "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
            "Resource": "*"
        }]
    })
    .to_string();
    let ctx =
        OpContext { principal: "admin".into(), source: "unit".into(), request_id: "r".into() };
    let key = block_on(keystore.create_key(
        &ctx,
        CreateKeyRequest { policy: Some(policy), ..CreateKeyRequest::default() },
    ))
    .expect("create key");
    let keys = KeystoreKeys::new(Arc::clone(&keystore), "unit");
    let body = plaintext(300);
    let options = EncryptOptions { frame_length: 128, ..EncryptOptions::default() };
    let message =
        block_on(encrypt(&keys, "proxy", &key.record.id, default_context(), options, &body))
            .expect("the proxy may encrypt");
    let expected = DecryptOptions { key_arn: key.arn.clone(), context: default_context() };
    let opened = block_on(decrypt(&keys, "proxy", expected.clone(), &message)).expect("decrypts");
    assert_eq!(opened.expose_secret(), body);
    let kind = |error: Error| match error {
        Error::KeyService(error) => error.kind(),
        other => panic!("not a key service error: {other:?}"),
    };
    let refused =
        block_on(encrypt(&keys, "intruder", &key.record.id, default_context(), options, &body));
    assert_eq!(kind(refused.expect_err("refused")), ErrorKind::AccessDenied);
    let refused = block_on(decrypt(&keys, "intruder", expected.clone(), &message));
    assert_eq!(kind(refused.expect_err("refused")), ErrorKind::AccessDenied);
    // The operator's key service does not consult policies.
    let operator = KeystoreKeys::without_key_policies(Arc::clone(&keystore), "cli");
    let opened = block_on(decrypt(&operator, "intruder", expected, &message)).expect("decrypts");
    assert_eq!(opened.expose_secret(), body);
    assert_eq!(block_on(keys.key_arn("proxy", &key.record.id)).expect("resolves"), key.arn);
}

#[test]
fn the_context_length_is_that_of_its_encoding() {
    for pairs in [&[][..], &[("a", "")], &[("tenant", "acme"), ("purpose", "golden")]] {
        let context = context(pairs);
        let encoded = format::encode_context(&context).expect("encodes");
        assert_eq!(format::encoded_context_len(&context).expect("fits"), encoded.len());
    }
    let huge = context(&[("k", &"v".repeat(65_529))]);
    assert!(matches!(format::encoded_context_len(&huge), Err(Error::InvalidContext(_))));
    let fits = context(&[("k", &"v".repeat(65_528))]);
    assert_eq!(format::encoded_context_len(&fits).expect("fits"), usize::from(u16::MAX));
}
