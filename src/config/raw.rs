//! The configuration file as written: serde structs that keep each value's span, so validation
//! errors can name the line. Unknown keys are errors (a typo never silently does nothing).

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[keystore]`.
    pub keystore: Keystore,
    /// `[api]`.
    pub api: Api,
    /// `[admin]`.
    pub admin: Option<Admin>,
    /// `[[principals]]`.
    #[serde(default)]
    pub principals: Vec<Principal>,
    /// `[quotas]`.
    pub quotas: Option<Quotas>,
    /// `[audit]`.
    pub audit: Option<Audit>,
    /// `[store]`: where keys are kept (default: SQLite in the data directory).
    pub store: Option<Store>,
    /// `[[webhooks]]`.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
    /// `[security]`.
    pub security: Option<Security>,
    /// `[proxy]`: settings of the reverse proxy as a whole.
    pub proxy: Option<Proxy>,
    /// `[[listeners]]`: where the proxy accepts clients.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// `[[upstreams]]`: pools of backend targets.
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    /// `[[routes]]`: which requests go to which pool, first match in file order.
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// `[proxy]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    /// How long SIGTERM waits for requests in flight, in milliseconds.
    pub drain_timeout_ms: Option<Spanned<u64>>,
    /// `json` (default) or `text`.
    pub access_log_format: Option<Spanned<String>>,
    /// A file the access log is appended to; `-` or absent: standard output.
    pub access_log: Option<Spanned<String>>,
    /// Worker threads serving the listeners' connections (default: one per CPU).
    pub workers: Option<Spanned<u64>>,
}

/// `[[listeners]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Its name, for routes and logs.
    pub name: Spanned<String>,
    /// The listen address.
    pub listen: Spanned<String>,
    /// Whether clients speak TLS to it (default true).
    pub tls: Option<Spanned<bool>>,
    /// Certificates served, by name in DATA_DIR/certs; the first is the default.
    pub certificates: Option<Vec<Spanned<String>>>,
    /// A PEM CA bundle: clients must present a certificate it issued.
    pub client_ca: Option<Spanned<String>>,
    /// Mozilla's TLS profile: `intermediate` (default) or `modern`.
    pub tls_profile: Option<Spanned<String>>,
    /// Connections open at once; more are closed at accept.
    pub max_connections: Option<Spanned<u64>>,
    /// How long a client may take to send a request's headers, in milliseconds.
    pub header_timeout_ms: Option<Spanned<u64>>,
    /// How long a connection may sit idle between requests, in milliseconds.
    pub idle_timeout_ms: Option<Spanned<u64>>,
    /// The largest request head (request line and headers), in bytes.
    pub max_header_bytes: Option<Spanned<u64>>,
}

/// `[[upstreams]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Its name, for routes.
    pub name: Spanned<String>,
    /// `host:port` targets, tried round robin.
    pub targets: Spanned<Vec<Spanned<String>>>,
    /// Whether kagi speaks TLS to the targets (default false).
    pub tls: Option<Spanned<bool>>,
    /// A PEM CA bundle the targets' certificates must chain to (TLS only; default: none,
    /// which is an error: kagi does not guess a trust store).
    pub ca: Option<Spanned<String>>,
    /// The name the targets' certificates must carry (TLS only; default: the target's host).
    pub server_name: Option<Spanned<String>>,
    /// `http1` (default) or `http2`.
    pub protocol: Option<Spanned<String>>,
    /// How long a connection may take, in milliseconds.
    pub connect_timeout_ms: Option<Spanned<u64>>,
    /// How long a response's head may take, in milliseconds.
    pub response_timeout_ms: Option<Spanned<u64>>,
    /// How long a failed target is skipped, in milliseconds.
    pub fail_timeout_ms: Option<Spanned<u64>>,
    /// Idle connections kept per target.
    pub max_idle_per_target: Option<Spanned<u64>>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Its name, for logs, metrics and as the principal it acts as.
    pub name: Spanned<String>,
    /// The listeners it applies to (default: all).
    pub listeners: Option<Vec<Spanned<String>>>,
    /// The host it matches: exact, or `*.example.com` (default: any).
    pub host: Option<Spanned<String>>,
    /// The path prefix it matches (default `/`).
    pub path_prefix: Option<Spanned<String>>,
    /// The upstream pool requests go to.
    pub upstream: Spanned<String>,
    /// The largest request body, in bytes.
    pub max_body_bytes: Option<Spanned<u64>>,
    /// The Host the upstream sees: `client` (default: as the client sent it), `upstream`
    /// (the target's address), or a fixed name.
    pub host_header: Option<Spanned<String>>,
    /// `[routes.envelope]`: encrypt request bodies, decrypt response bodies.
    pub envelope: Option<Envelope>,
}

/// `[routes.envelope]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The KMS key (id, ARN or alias).
    pub key: Spanned<String>,
    /// The request methods whose bodies are encrypted (default PUT, POST, PATCH).
    pub methods: Option<Vec<Spanned<String>>>,
    /// The request content types encrypted (`type/subtype`, `type/*`; default: all).
    pub content_types: Option<Vec<Spanned<String>>>,
    /// `[[routes.envelope.context]]`: the encryption context, pair by pair.
    #[serde(default)]
    pub context: Vec<ContextPair>,
    /// Whether response bodies are decrypted (default true).
    pub decrypt_responses: Option<bool>,
    /// Whether a response that is not an encrypted message passes through (default false: 502).
    pub allow_plaintext_responses: Option<bool>,
    /// `0478` (default) or `0578`.
    pub suite: Option<Spanned<String>>,
    /// Plaintext bytes per frame (default 65536).
    pub frame_length: Option<Spanned<u64>>,
    /// JSON pointers: only these values are encrypted, each into its own message.
    pub json_fields: Option<Vec<Spanned<String>>>,
    /// The largest JSON document in field mode, in bytes (default 1 MiB).
    pub max_json_bytes: Option<Spanned<u64>>,
    /// The principal the route acts as under key policies (default `route-NAME`).
    pub principal: Option<Spanned<String>>,
    /// Range requests: `refuse` (default, 416) or `decrypt` (served from the decrypted stream).
    pub range: Option<Spanned<String>>,
}

/// `[[routes.envelope.context]]`: one pair, its value from exactly one source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextPair {
    /// The context key.
    pub key: Spanned<String>,
    /// A constant value.
    pub value: Option<Spanned<String>>,
    /// A request header (a request without it is refused).
    pub header: Option<Spanned<String>>,
    /// `route` (the route's name) or `path` (the request path).
    pub from: Option<Spanned<String>>,
}

/// `[[webhooks]]`: where key state changes are POSTed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://host:port/path`.
    pub url: Spanned<String>,
}

/// `[audit]`: the trail. Paths are relative to the data directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    /// The trail's directory.
    pub dir: Option<String>,
    /// Start a new file past this many bytes.
    pub max_file_bytes: Option<Spanned<u64>>,
    /// Start a new file each UTC day.
    pub rotate_daily: Option<bool>,
    /// `keys-only` (default), `as-given` or `hmac`.
    pub encryption_context: Option<Spanned<String>>,
    /// How long an operation waits for its line, in milliseconds.
    pub timeout_ms: Option<Spanned<u64>>,
}

/// `[store]`: a PostgreSQL database shared by several nodes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    /// `sqlite` (the default) or `postgres://user@host:port/dbname`.
    pub url: Spanned<String>,
    /// A file holding the database password.
    pub password_file: Option<Spanned<String>>,
    /// An environment variable holding the database password.
    pub password_env: Option<Spanned<String>>,
    /// Most connections per node.
    pub pool_size: Option<Spanned<u64>>,
    /// Longest a database call may take, in milliseconds.
    pub timeout_ms: Option<Spanned<u64>>,
    /// How often each node reads the change feed, in milliseconds.
    pub poll_interval_ms: Option<Spanned<u64>>,
}

/// `[keystore]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Keystore {
    /// The data directory, relative to the configuration file.
    pub data_dir: String,
    /// `aws-lc` (default) or `rustcrypto`.
    pub backend: Option<Spanned<String>>,
    /// The region in ARNs.
    pub region: Option<Spanned<String>>,
    /// The account in ARNs.
    pub account: Option<Spanned<String>>,
    /// The environment variable holding the root passphrase.
    pub root_passphrase_env: Option<String>,
    /// How often due deletions, rotations and expiries are carried out, in milliseconds.
    pub sweep_interval_ms: Option<Spanned<u64>>,
}

/// `[api]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// The listen address.
    pub listen: Spanned<String>,
    /// The name of a certificate in DATA_DIR/certs (`kagi certs …`).
    pub certificate: Option<Spanned<String>>,
    /// Names for the self-signed certificate.
    pub tls_names: Option<Vec<String>>,
    /// Mozilla's TLS profile: `intermediate` (default) or `modern`.
    pub tls_profile: Option<Spanned<String>>,
}

/// `[security]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Security {
    /// Lock the server's memory in RAM (`mlockall`), default true.
    pub lock_memory: Option<bool>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// The listen address of `/metrics` and `/healthz`.
    pub listen: Spanned<String>,
}

/// `[[principals]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principal {
    /// The name.
    pub name: Spanned<String>,
    /// The access key id.
    pub access_key_id: Spanned<String>,
    /// The secret, inline (for tests and demos).
    pub secret: Option<Spanned<String>>,
    /// The environment variable holding the secret.
    pub secret_env: Option<Spanned<String>>,
    /// A file holding the secret.
    pub secret_file: Option<Spanned<String>>,
    /// Whether default key policies make it an administrator.
    pub administrator: Option<bool>,
    /// Its own quotas, overriding `[quotas]` field by field.
    pub quotas: Option<Quotas>,
    /// Account-level actions it may call besides (`kms:CreateKey`, `kms:ListKeys`,
    /// `kms:ListAliases`, `kms:GenerateRandom`); administrators may call them all.
    pub account_actions: Option<Vec<String>>,
}

/// `[quotas]`: requests per second per principal.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Symmetric cryptographic operations.
    pub symmetric: Option<Spanned<f64>>,
    /// Asymmetric cryptographic operations.
    pub asymmetric: Option<Spanned<f64>>,
    /// Management operations.
    pub management: Option<Spanned<f64>>,
    /// Seconds of rate a bucket holds.
    pub burst_seconds: Option<Spanned<f64>>,
}
