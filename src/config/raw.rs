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
    /// `[[webhooks]]`.
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
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
