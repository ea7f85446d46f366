//! kagi's integration tests: one test binary (`cargo test --test it`), one module per area.
//!
//! Every crypto test loops over [`kagi::crypto::BackendKind::ALL`], so each backend is held to
//! the same vectors and properties, and the two are checked against each other.

// Every applicable Wycheproof vector (AES-GCM, ECDSA, RSA PKCS#1/PSS/OAEP, HMAC, ECDH, HKDF,
// AES-KWP),
// on each backend.
mod wycheproof;

// Cross-backend checks: keys, signatures, ciphertexts and MACs made by one backend are accepted
// (or reproduced) by the other.
mod differential;

// Property tests of the crypto layer: AEAD round trips and tampering, malformed input never
// panics and fails with the documented error, secrets stay out of `Debug`.
mod crypto_props;

// The harness: temporary data directories and the real `kagi` binary run against them.
mod support;

// The `kagi` command line end to end: every command, state transition and refusal.
mod cli;

// `kagi serve` driven over HTTPS by real AWS tooling: boto3 through every operation, the AWS CLI
// and the AWS Encryption SDK (Python scripts in tests/py, run from a virtualenv made on demand).
mod api;

// `kill -9` of concurrent `kagi` processes at an arbitrary moment: every operation that reported
// success survives, and the keystore stays whole.
#[cfg(unix)]
mod crash;

// A full disk under `kagi serve` (a tmpfs, so only as root with CI=true): operations fail with
// a KMS error, the service resumes once space is freed, nothing earlier is lost.
#[cfg(unix)]
mod disk_full;

// `kagi serve` through kagi's own client: HTTP/2 and HTTP/1.1, SigV4 refusals, protocol errors,
// metrics, shutdown.
mod server;

// TLS certificates whose keys live in the keystore: `kagi certs` (CA, issue, import, list,
// renew) on a stopped server's directory and through a running server's API, and `kagi serve`
// choosing them by SNI, refusing a disabled key's handshakes.
mod certs;

// The admin listener after a scripted workload: exact per-key counters, AES-GCM usage per key
// version, inventory gauges, /readyz, and `promtool check metrics` on the scrape.
mod metrics;

// config/alerts.yml through promtool: the rules check, and their unit tests pass.
mod alerts;

// `kagi report` on a data directory: the inventory as table, JSON and HTML, with its flags.
mod report;

// Webhook notifications of key state changes from `kagi serve`: order, retries, isolation.
mod notify;

// The audit trail through the binary: `kagi audit verify` accepts what operations left and names
// the line a changed byte broke; rotation across days; `kagi audit show` filters.
mod audit;

// `kagi backup` while a server serves, `kagi backup verify`, `kagi restore` on a fresh machine
// (the old ciphertext decrypts there), and the refusals: another root key, a changed byte.
mod backup;

// The reverse proxy in front of real sample backends: routing, limits, reload, drain.
mod proxy;
// `kagi envelope` (AWS Encryption SDK messages) against the official Python SDK through `kagi
// serve`, both ways and both suites; tampered and truncated messages refused with no output.
mod envelope;

// A root key split into shares: `kagi init --shares`, a sealed `kagi serve` opened by `kagi
// unseal`, refusals of bad, foreign and wrong shares, `--share-file` for direct commands.
#[cfg(unix)]
mod unseal;
// `kagi root-key rotate`: while serving, and on passphrase and split root keys.
mod root_key;

// Envelope routes of the proxy in front of a real object store: ciphertext at rest, plaintext
// to clients, context binding, tampering, rotation, disabled keys, JSON fields, the Python SDK.
mod envelope_proxy;

// sslyze against the KMS API listener and proxy listeners: Mozilla's intermediate and modern
// profiles, and none of the TLS attacks it probes.
mod tls_scan;

// Key material out of core dumps and swap: `kagi serve`'s core limit, dumpable flag and locked
// memory, seen from /proc.
#[cfg(target_os = "linux")]
mod hardening;

// Hostile clients: slowloris, oversized heads and bodies, HTTP/2 stream floods and rapid reset,
// malformed TLS, idle connections up to the limit; a well-behaved client is served throughout.
mod hostile;

// The authorization matrix: principals × operations × keys through the KMS API (ids, ARNs,
// aliases, grants, explicit denies, ReEncrypt's two keys) and the envelope routes' principals.
mod authz;

// Several nodes on one PostgreSQL database; `kagi migrate`.
mod cluster;
