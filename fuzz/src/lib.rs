//! The checks behind kagi's fuzz targets, one module per target (`fuzz_targets/NAME.rs` calls
//! `NAME::check`). Each feeds untrusted bytes to one parser of the kagi library through its
//! public API and asserts what must hold for any input: no panic, and the property named in the
//! module's doc (chunking does not change a decryption, what kagi signs it verifies, both crypto
//! backends agree, …). README.md says how to run them.
//!
//! The inputs are kept readable where the format allows it (a SigV4 request is HTTP text, a KMS
//! call is an operation name and a JSON body), so that the seed corpora under `corpus/` are
//! real requests and messages from kagi's tests, and a crash file can be read as it is.

use std::collections::BTreeMap;

/// The data key, key ARN and encryption context of the golden messages in
/// `tests/data/envelope` (every one of them was made with these).
pub mod golden {
    use super::BTreeMap;

    /// The data key of every golden message: the bytes 0x20 to 0x3f.
    pub const DATA_KEY: [u8; 32] = {
        let mut key = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            key[i] = 0x20 + i as u8;
            i += 1;
        }
        key
    };

    /// The KMS key ARN the golden messages' data keys are under.
    pub const KEY_ARN: &str =
        "arn:aws:kms:us-east-1:111122223333:key/6f1e5a0c-27c3-4bb9-9a3a-5a8c1d2e3f40";

    /// The golden messages' encryption context.
    pub fn context() -> BTreeMap<String, String> {
        [("purpose", "golden"), ("tenant", "acme")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// A small deterministic generator (xorshift64*), for chunk sizes: the fuzzer's bytes pick
/// the seed, so a crash replays exactly.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is mapped to a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `1..=max` (`max` ≥ 1).
    pub fn size(&mut self, max: usize) -> usize {
        1 + (self.next_u64() % max as u64) as usize
    }
}

/// Target `envelope_decrypt`: an AWS Encryption SDK message (the body of an envelope route,
/// `kagi envelope decrypt`'s input) through [`kagi::envelope::Decryptor`].
///
/// Input: one mode byte, then the message. The mode picks the expectations (bit 7 set: the
/// golden key ARN and context; clear: whatever the header names, so that a mutated header still
/// reaches the data key and the frames) and seeds the chunk sizes. The data key supplied is
/// always the golden one, so the golden messages in the corpus decrypt and their mutations
/// exercise the frame and footer parsers.
///
/// Property: the outcome (plaintext released, and the error or success) is the same whether
/// the message arrives whole or in arbitrary chunks; every error is a message fault; no
/// plaintext comes out before the header authenticated.
pub mod envelope_decrypt {
    use kagi::crypto::AesKey;
    use kagi::envelope::format::{self, PROVIDER_ID_KMS, PUBLIC_KEY_CONTEXT_KEY};
    use kagi::envelope::{DecryptOptions, Decryptor};

    use super::{Rng, golden};

    /// What one decryption gave: the plaintext released and the error, if any.
    #[derive(Debug, Eq, PartialEq)]
    struct Outcome {
        plaintext: Vec<u8>,
        error: Option<String>,
    }

    /// See the module doc.
    pub fn check(data: &[u8]) {
        let Some((&mode, message)) = data.split_first() else { return };
        let expected = expectations(mode, message);
        let whole = decrypt_in_chunks(&expected, message, &mut std::iter::once(message.len()));
        let mut rng = Rng::new(u64::from(mode) ^ message.len() as u64);
        let max = usize::from(mode & 0x7f) * 8 + 1;
        let chunked =
            decrypt_in_chunks(&expected, message, &mut std::iter::from_fn(|| Some(rng.size(max))));
        assert_eq!(whole, chunked, "chunking changed the outcome");
    }

    fn expectations(mode: u8, message: &[u8]) -> DecryptOptions {
        let golden =
            DecryptOptions { key_arn: golden::KEY_ARN.to_owned(), context: golden::context() };
        if mode & 0x80 != 0 {
            return golden;
        }
        let Ok(Some(parsed)) = format::parse_header(message) else { return golden };
        let header = parsed.header;
        let key_arn = header
            .data_keys
            .iter()
            .find(|key| key.provider_id == PROVIDER_ID_KMS)
            .map(|key| String::from_utf8_lossy(&key.provider_info).into_owned())
            .unwrap_or_else(|| golden.key_arn.clone());
        let mut context = header.context;
        context.remove(PUBLIC_KEY_CONTEXT_KEY);
        DecryptOptions { key_arn, context }
    }

    fn decrypt_in_chunks(
        expected: &DecryptOptions,
        message: &[u8],
        sizes: &mut dyn Iterator<Item = usize>,
    ) -> Outcome {
        let data_key = AesKey::from_slice(&golden::DATA_KEY).expect("32 bytes");
        let mut decryptor = Decryptor::new(expected.clone());
        let mut plaintext = Vec::new();
        let mut rest = message;
        let mut error = None;
        while !rest.is_empty() && error.is_none() {
            let size = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
            let (chunk, after) = rest.split_at(size);
            rest = after;
            let mut out = Vec::new();
            let mut result = decryptor.update(chunk, &mut out);
            if result.is_ok() && decryptor.data_key_request().is_some() {
                result = decryptor.supply_data_key(&data_key, &mut out);
            }
            if result.is_ok() && decryptor.header().is_none() {
                assert!(out.is_empty(), "plaintext before the header authenticated");
            }
            plaintext.extend_from_slice(&out);
            if let Err(e) = result {
                assert!(e.is_message_fault(), "not a message fault: {e:?}");
                error = Some(format!("{e:?}"));
            }
        }
        if error.is_none()
            && let Err(e) = decryptor.finish()
        {
            error = Some(format!("{e:?}"));
        }
        Outcome { plaintext, error }
    }
}

/// Target `kms_blob`: kagi's KMS ciphertext blob (Decrypt's `CiphertextBlob`) and the
/// encryption-context serialization both it and the envelope header use.
///
/// Property: a blob that decodes re-encodes to the same header bytes; both crypto backends
/// agree on opening it under a fixed key (same plaintext, or both refuse); a context that
/// decodes encodes to bytes that decode to the same context.
pub mod kms_blob {
    use kagi::crypto::{AesKey, BackendKind, TAG_LEN};
    use kagi::envelope::format::{decode_context, encode_context};
    use kagi::keystore::ciphertext::{self, BlobHeader, HEADER_LEN};

    /// The fixed key the corpus's blobs are sealed under.
    pub const KEY: [u8; 32] = [0x4b; 32];

    /// The encryption context the corpus's blobs are bound to.
    pub fn context() -> super::BTreeMap<String, String> {
        [("purpose".to_owned(), "fuzz".to_owned())].into_iter().collect()
    }

    /// See the module doc.
    pub fn check(data: &[u8]) {
        if let Ok(context) = decode_context(data) {
            let encoded = encode_context(&context).expect("a decoded context encodes");
            assert_eq!(decode_context(&encoded).expect("re-decodes"), context);
            assert!(encoded.len() <= data.len());
        }
        let Some((header, body)) = BlobHeader::decode(data) else {
            assert!(
                data.len() < HEADER_LEN + TAG_LEN
                    || ![ciphertext::BLOB_VERSION_1, ciphertext::BLOB_VERSION_2].contains(&data[0])
            );
            return;
        };
        assert_eq!(&header.encode()[..], &data[..HEADER_LEN]);
        assert_eq!(body, &data[HEADER_LEN..]);
        let key = AesKey::from_slice(&KEY).expect("32 bytes");
        let aad = ciphertext::associated_data(&header, &context());
        let [aws_lc, rust_crypto] = [BackendKind::AwsLc, BackendKind::RustCrypto].map(|kind| {
            kind.backend()
                .open(&key, &header.nonce, &aad, body)
                .map(|plaintext| plaintext.expose_secret().to_vec())
                .ok()
        });
        assert_eq!(aws_lc, rust_crypto, "the backends disagree");
    }
}

/// Target `sigv4`: a SigV4-signed request (the Authorization header, the canonical request,
/// `X-Amz-Date`) through [`kagi::api::sigv4::verify`].
///
/// Input: HTTP-like text, `METHOD URI` on the first line, `name: value` lines, an empty line,
/// the body (header values may hold any bytes). Lines that do not parse are skipped.
///
/// Property: verification never panics; a request kagi's own [`kagi::api::sigv4::sign`] signs
/// (the same request with its signature headers replaced) verifies.
pub mod sigv4 {
    use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
    use kagi::api::sigv4::{self, RequestParts, Signer};

    /// The access key id of the corpus's requests.
    pub const ACCESS_KEY_ID: &str = "AKIAFUZZ000000000000";
    /// Its secret.
    pub const SECRET: &[u8] = b"fuzz-secret-0123456789";
    /// The region.
    pub const REGION: &str = "us-east-1";
    /// The time the corpus's requests were signed at (2027-01-15T08:00:00Z).
    pub const NOW: i64 = 1_800_000_000;

    /// A request read from the fuzzer's text.
    #[derive(Debug)]
    pub struct Request {
        /// The method.
        pub method: Method,
        /// The URI.
        pub uri: Uri,
        /// The headers.
        pub headers: HeaderMap,
        /// The body.
        pub body: Vec<u8>,
    }

    /// Reads the text format of the module doc; `None` when the first line is not a method
    /// and a URI.
    pub fn parse(data: &[u8]) -> Option<Request> {
        let split = data.windows(2).position(|w| w == b"\n\n");
        let (head, body) = match split {
            Some(at) => (&data[..at], &data[at + 2..]),
            None => (data, &[][..]),
        };
        let mut lines = head.split(|&b| b == b'\n').map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let first = lines.next()?;
        let mut words = first.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let method = Method::from_bytes(words.next()?).ok()?;
        let uri = Uri::try_from(words.next()?).ok()?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
            if let (Ok(name), Ok(value)) =
                (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
            {
                headers.append(name, value);
            }
        }
        Some(Request { method, uri, headers, body: body.to_vec() })
    }

    /// See the module doc.
    pub fn check(data: &[u8]) {
        let Some(request) = parse(data) else { return };
        let raw_date = request.headers.get("x-amz-date").map(HeaderValue::as_bytes);
        let now = raw_date
            .and_then(|date| sigv4::parse_amz_date(&String::from_utf8_lossy(date)))
            .unwrap_or(NOW);
        let _ = verify(&request, now);

        // What kagi signs, kagi verifies: when the request can be signed at all (every header
        // it would sign is visible ASCII, and it has a host).
        let mut headers = request.headers.clone();
        for name in ["authorization", "x-amz-date", "x-amz-content-sha256"] {
            headers.remove(name);
        }
        let signable = headers.iter().all(|(name, value)| {
            !(name == "host" || name == "content-type" || name.as_str().starts_with("x-amz-"))
                || value.to_str().is_ok()
        });
        let has_host = headers.contains_key("host") || request.uri.authority().is_some();
        if !signable || !has_host {
            return;
        }
        let signer = Signer { access_key_id: ACCESS_KEY_ID, secret: SECRET, region: REGION };
        sigv4::sign(&request.method, &request.uri, &mut headers, &request.body, signer, NOW);
        let signed = Request { headers, ..request };
        if let Err(error) = verify(&signed, NOW) {
            panic!("kagi does not verify what it signed: {error:?}\n{signed:?}");
        }
    }

    fn verify(request: &Request, now: i64) -> Result<(), sigv4::AuthError> {
        let parts = RequestParts {
            method: &request.method,
            uri: &request.uri,
            headers: &request.headers,
            body: &request.body,
        };
        sigv4::verify(
            parts,
            now,
            |region| region == REGION,
            |akid| (akid == ACCESS_KEY_ID).then_some(SECRET),
        )
        .map(drop)
    }
}

/// Target `kms_request`: a KMS API call (AWS JSON 1.1 body) through [`kagi::api::Api::handle`],
/// signed by the fuzzer's principal, against a keystore in a temporary directory that holds a
/// few keys of each kind (aliases `alias/fuzz-*`, see [`kms_request::FIXTURES`]).
///
/// Input: the first line is `[PRINCIPAL ]OPERATION` (`admin` by default, `alice` has no
/// rights), the rest the JSON body.
///
/// Property: whatever the body, the answer is 200 or a 4xx with a JSON error body: nothing a
/// request carries produces a 500 or a panic.
pub mod kms_request {
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, OnceLock};

    use bytes::Bytes;
    use http::{HeaderMap, HeaderValue, Method, Uri};
    use kagi::api::{Api, CONTENT_TYPE, sigv4};
    use kagi::audit::NullSink;
    use kagi::config::Config;
    use kagi::crypto::BackendKind;
    use kagi::keystore::clock::{Clock, ManualClock};
    use kagi::keystore::{Keystore, Partition, RootKeySource};
    use kagi::metrics::Metrics;

    const NOW: i64 = 1_800_000_000;
    const SECRET: &str = "fuzz-secret-0123456789";

    /// The keys made before the first input: (alias, CreateKey body).
    pub const FIXTURES: &[(&str, &str)] = &[
        ("alias/fuzz-sym", r#"{}"#),
        ("alias/fuzz-hmac", r#"{"KeySpec":"HMAC_256","KeyUsage":"GENERATE_VERIFY_MAC"}"#),
        ("alias/fuzz-sign", r#"{"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY"}"#),
        ("alias/fuzz-rsa", r#"{"KeySpec":"RSA_2048","KeyUsage":"ENCRYPT_DECRYPT"}"#),
        ("alias/fuzz-ecdh", r#"{"KeySpec":"ECC_NIST_P256","KeyUsage":"KEY_AGREEMENT"}"#),
        ("alias/fuzz-external", r#"{"Origin":"EXTERNAL"}"#),
    ];

    struct Harness {
        runtime: tokio::runtime::Runtime,
        api: Api,
    }

    fn access_key(name: &str) -> String {
        format!("AKIA{:0>16}", name.to_ascii_uppercase())
    }

    /// Where the keystore lives: `/dev/shm` when there is one (SQLite's fsyncs cost nothing
    /// there), in a directory named after this process. libFuzzer ends the process without
    /// dropping statics, so each start removes the directories of processes that are gone.
    fn data_dir() -> PathBuf {
        let shm = Path::new("/dev/shm");
        let root = if shm.is_dir() { shm.to_owned() } else { std::env::temp_dir() };
        let root = root.join("kagi-fuzz");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let alive = name
                    .to_str()
                    .and_then(|name| name.parse::<u32>().ok())
                    .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                if !alive {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = root.join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzz data directory");
        dir
    }

    fn harness() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(|| {
            let dir = data_dir();
            let backend = BackendKind::AwsLc.backend();
            Keystore::init(backend, &dir, &RootKeySource::File).expect("init");
            let keystore = Keystore::open(
                backend,
                &dir,
                &RootKeySource::File,
                Arc::new(ManualClock::new(NOW)) as Arc<dyn Clock>,
                Arc::new(NullSink),
                Partition::default(),
            )
            .expect("open");
            let mut text = String::from(
                "[keystore]\ndata_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n\
                 [quotas]\nsymmetric = 1e12\nasymmetric = 1e12\nmanagement = 1e12\n",
            );
            for (name, admin) in [("admin", true), ("alice", false)] {
                text.push_str(&format!(
                    "[[principals]]\nname = \"{name}\"\naccess_key_id = \"{}\"\n\
                     secret = \"{SECRET}\"\nadministrator = {admin}\n",
                    access_key(name)
                ));
            }
            let config = Config::parse(&text, "fuzz.toml", &dir).expect("config");
            let api = Api::new(Arc::new(keystore), config.principals, Arc::new(Metrics::new()));
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let harness = Harness { runtime, api };
            for (alias, body) in FIXTURES {
                let (status, out) = harness.call("admin", "CreateKey", body.as_bytes());
                assert_eq!(status, 200, "CreateKey {body}: {out}");
                let key_id = out["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned();
                let body = serde_json::json!({"AliasName": alias, "TargetKeyId": key_id});
                let (status, out) =
                    harness.call("admin", "CreateAlias", body.to_string().as_bytes());
                assert_eq!(status, 200, "CreateAlias {alias}: {out}");
            }
            harness
        })
    }

    impl Harness {
        fn call(&self, who: &str, operation: &str, body: &[u8]) -> (u16, serde_json::Value) {
            let uri = Uri::from_static("https://kms.us-east-1.amazonaws.com/");
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
            if let Ok(target) = HeaderValue::from_str(&format!("TrentService.{operation}")) {
                headers.insert("x-amz-target", target);
            }
            let akid = access_key(who);
            let signer = sigv4::Signer {
                access_key_id: &akid,
                secret: SECRET.as_bytes(),
                region: "us-east-1",
            };
            sigv4::sign(&Method::POST, &uri, &mut headers, body, signer, NOW);
            let mut request = http::Request::new(());
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri;
            *request.headers_mut() = headers;
            let (parts, ()) = request.into_parts();
            let peer: SocketAddr = ([127, 0, 0, 1], 1).into();
            let body = Bytes::copy_from_slice(body);
            let response = self.runtime.block_on(self.api.handle(&parts, Ok(body), peer));
            let status = response.status().as_u16();
            let value = serde_json::from_slice(response.body()).unwrap_or(serde_json::Value::Null);
            (status, value)
        }
    }

    /// See the module doc.
    pub fn check(data: &[u8]) {
        let (first, body) = match data.iter().position(|&b| b == b'\n') {
            Some(at) => (&data[..at], &data[at + 1..]),
            None => (data, &[][..]),
        };
        let Ok(first) = std::str::from_utf8(first) else { return };
        let (who, operation) = match first.trim().split_once(' ') {
            Some(("alice", operation)) => ("alice", operation),
            _ => ("admin", first.trim()),
        };
        let harness = harness();
        let (status, value) = harness.call(who, operation, body);
        assert!(status == 200 || (400..500).contains(&status), "{operation}: {status} {value}");
        if status != 200 {
            assert!(value["__type"].is_string(), "{operation}: {status} {value}");
        }
    }
}

/// Target `config`: the TOML configuration through [`kagi::config::Config::parse`] (parse and
/// validate; a base directory that does not exist, so nothing relative is read).
///
/// Property: no panic; a configuration that builds has no restart-only difference from itself.
pub mod config {
    use std::path::Path;

    use kagi::config::Config;

    /// See the module doc.
    pub fn check(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let base = Path::new("/nonexistent/kagi-fuzz");
        if let Ok(config) = Config::parse(text, "fuzz.toml", base) {
            assert!(config.restart_only_changes(&config).is_empty());
        }
    }
}

/// Target `policy`: a key policy document (PutKeyPolicy's `Policy`, CreateKey's) through
/// [`kagi::policy::Policy::parse`], then evaluated.
///
/// Property: no panic; an evaluation depends only on its request (the same request twice gives
/// the same decision).
pub mod policy {
    use kagi::policy::{Decision, Policy, Request};

    use super::BTreeMap;

    /// See the module doc.
    pub fn check(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else { return };
        let Ok(policy) = Policy::parse(text) else { return };
        let _ = policy.unevaluated();
        let context: BTreeMap<String, String> =
            [("tenant", "acme"), ("Purpose", "fuzz")].map(|(k, v)| (k.into(), v.into())).into();
        let key = "arn:aws:kms:us-east-1:111122223333:key/6f1e5a0c-27c3-4bb9-9a3a-5a8c1d2e3f40";
        for principal_arn in
            ["arn:aws:iam::111122223333:user/admin", "arn:aws:iam::444455556666:user/other"]
        {
            for action in ["kms:Encrypt", "kms:Decrypt", "kms:PutKeyPolicy", "kms:CreateGrant"] {
                for encryption_context in [None, Some(&context)] {
                    let request = Request {
                        principal_arn,
                        account: "111122223333",
                        action,
                        resource: key,
                        encryption_context,
                    };
                    let decision: Decision = policy.evaluate(&request);
                    assert_eq!(decision, policy.evaluate(&request));
                }
            }
        }
    }
}
