//! The configuration file: TOML → [`raw`] structs (serde, spans kept) → a validated [`Config`].
//!
//! Every error names the file and line it comes from. Secrets (principals' secret access keys)
//! are read from the environment or a file when the configuration is built, and held in
//! [`SecretBytes`], which never prints.

mod proxy;
pub mod raw;

pub use proxy::{
    AccessLogConfig, AccessLogFormat, ContextSource, EnvelopeConfig, HostHeader, HostMatch,
    ListenerConfig, ListenerTls, ProxyConfig, RouteConfig, UpstreamConfig, UpstreamProtocol,
    UpstreamTls,
};

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::Spanned;

use crate::audit::{AuditConfig, ContextMode};
use crate::crypto::{BackendKind, SecretBytes};
use crate::keystore::Partition;
use crate::keystore::store::{PasswordSource, PostgresSettings, StoreSettings};

/// The configuration a fresh `kagi serve` runs with when given no file.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

/// A configuration error: where, and what.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{}: {message}", line.map(|line| format!(":{line}")).unwrap_or_default())]
pub struct ConfigError {
    origin: String,
    line: Option<usize>,
    message: String,
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    /// The keystore's data directory.
    pub data_dir: PathBuf,
    /// The crypto backend.
    pub backend: BackendKind,
    /// Region and account of ARNs.
    pub partition: Partition,
    /// The environment variable holding the root passphrase, when the root key derives from one.
    pub root_passphrase_env: Option<String>,
    /// Where keys are kept.
    pub store: StoreSettings,
    /// How often due deletions, rotations and expiries are carried out.
    pub sweep_interval: std::time::Duration,
    /// The KMS API listener.
    pub api: ApiConfig,
    /// The admin listener (`/metrics`, `/healthz`), if any.
    pub admin: Option<SocketAddr>,
    /// Who may call, by access key id.
    pub principals: Arc<Principals>,
    /// Request quotas.
    pub quotas: Quotas,
    /// The audit trail.
    pub audit: AuditConfig,
    /// Webhooks key state changes are POSTed to (`[[webhooks]] url = "http://…"`), in order.
    /// Plain HTTP only, for a local relay: notifications carry ids and states, no secrets.
    pub webhooks: Vec<http::Uri>,
    /// The reverse proxy: listeners, upstream pools, routes.
    pub proxy: ProxyConfig,
    /// Whether `kagi serve` locks its memory in RAM (`[security] lock_memory`, default true;
    /// see `hardening`).
    pub lock_memory: bool,
}

/// The KMS API listener.
#[derive(Debug)]
pub struct ApiConfig {
    /// Where it listens (port 0: any free port, reported in the ready file).
    pub listen: SocketAddr,
    /// The default certificate, by name in DATA_DIR/certs; `None`: `kagi-api`, issued
    /// self-signed (key in the keystore) on first start.
    pub certificate: Option<String>,
    /// The names the self-signed `kagi-api` certificate covers when it is issued.
    pub tls_names: Vec<String>,
    /// The TLS versions offered.
    pub tls_profile: crate::tls::TlsProfile,
}

/// One configured principal.
pub struct Principal {
    /// Its name; its ARN is `arn:aws:iam::ACCOUNT:user/NAME`.
    pub name: String,
    /// Its access key id.
    pub access_key_id: String,
    /// Its secret access key.
    pub secret: SecretBytes,
    /// Whether default key policies grant it key administration, and it may call every
    /// account-level action.
    pub administrator: bool,
    /// Account-level actions (IAM's part in AWS) it may call: `kms:CreateKey`, `kms:ListKeys`,
    /// `kms:ListAliases`, `kms:GenerateRandom`; wildcards allowed.
    pub account_actions: Vec<String>,
    /// Its request quotas: `[quotas]`, overridden by its own `quotas` table.
    pub quotas: Quotas,
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("name", &self.name)
            .field("access_key_id", &self.access_key_id)
            .field("administrator", &self.administrator)
            .field("quotas", &self.quotas)
            .finish_non_exhaustive()
    }
}

/// The principals, by access key id.
#[derive(Debug, Default)]
pub struct Principals {
    by_access_key: HashMap<String, Principal>,
}

impl Principals {
    /// The principal with this access key id.
    pub fn get(&self, access_key_id: &str) -> Option<&Principal> {
        self.by_access_key.get(access_key_id)
    }

    /// The principal with this name.
    pub fn by_name(&self, name: &str) -> Option<&Principal> {
        self.by_access_key.values().find(|p| p.name == name)
    }

    /// Every principal, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Principal> {
        self.by_access_key.values()
    }
}

/// Request quotas: a token bucket per principal and operation class; rates per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quotas {
    /// Symmetric cryptographic operations (Encrypt, Decrypt, GenerateDataKey, MACs…).
    pub symmetric: f64,
    /// Asymmetric cryptographic operations (Sign, Verify, RSA Encrypt, DeriveSharedSecret…).
    pub asymmetric: f64,
    /// Management operations (CreateKey, DescribeKey, List*, policies, aliases…).
    pub management: f64,
    /// How many seconds of rate a bucket holds (the burst).
    pub burst_seconds: f64,
}

impl Default for Quotas {
    fn default() -> Self {
        Self { symmetric: 50_000.0, asymmetric: 2_000.0, management: 100.0, burst_seconds: 1.0 }
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// When the file cannot be read, is not valid TOML, or fails validation.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
            origin: path.display().to_string(),
            line: None,
            message: error.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string(), &base_dir(path))
    }

    /// The embedded default configuration, with relative paths under `base`.
    ///
    /// # Errors
    /// Never in practice; the embedded text is tested.
    pub fn embedded(base: &Path) -> Result<Self, ConfigError> {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        Self::parse(EMBEDDED_DEFAULT, "(embedded default)", &base)
    }

    /// Parses and validates `text`, naming it `origin` in errors; relative paths resolve
    /// against `base`.
    ///
    /// # Errors
    /// When `text` is not valid TOML or fails validation.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, ConfigError> {
        let raw: raw::Config = toml::from_str(text).map_err(|error| ConfigError {
            origin: origin.to_owned(),
            line: error.span().map(|span| line_of(text, span.start)),
            message: error.message().to_owned(),
        })?;
        Builder { text, origin, base }.build(raw)
    }
}

impl Config {
    /// The settings that differ in `new` but take effect only on a restart, by name: the
    /// keystore (data directory, backend, region, account, root passphrase), the API and admin
    /// addresses, the audit trail, the webhooks, `[security]` and the proxy's worker count. Everything else reloads: principals and
    /// quotas, the API's certificates, and the proxy's listeners, upstreams and routes.
    pub fn restart_only_changes(&self, new: &Self) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let checks = [
            ("[keystore] data_dir", self.data_dir != new.data_dir),
            ("[keystore] backend", self.backend != new.backend),
            ("[keystore] region", self.partition.region != new.partition.region),
            ("[keystore] account", self.partition.account != new.partition.account),
            ("[keystore] root_passphrase_env", self.root_passphrase_env != new.root_passphrase_env),
            ("[keystore] sweep_interval_ms", self.sweep_interval != new.sweep_interval),
            ("[store]", self.store != new.store),
            ("[api] listen", self.api.listen != new.api.listen),
            ("[admin] listen", self.admin != new.admin),
            ("[audit]", self.audit != new.audit),
            ("[[webhooks]]", self.webhooks != new.webhooks),
            ("[security] lock_memory", self.lock_memory != new.lock_memory),
            ("[proxy] workers", self.proxy.workers != new.proxy.workers),
        ];
        for (name, differs) in checks {
            if differs {
                changed.push(name);
            }
        }
        changed
    }

    /// Takes `running`'s values of the settings that need a restart, so this configuration
    /// describes what actually runs.
    pub fn keep_restart_only(&mut self, running: &Self) {
        self.data_dir.clone_from(&running.data_dir);
        self.backend = running.backend;
        self.partition = running.partition.clone();
        self.root_passphrase_env.clone_from(&running.root_passphrase_env);
        self.sweep_interval = running.sweep_interval;
        self.store = running.store.clone();
        self.api.listen = running.api.listen;
        self.admin = running.admin;
        self.audit = running.audit.clone();
        self.webhooks.clone_from(&running.webhooks);
        self.lock_memory = running.lock_memory;
        self.proxy.workers = running.proxy.workers;
    }
}

/// Turns raw structs into a [`Config`], naming lines in errors.
struct Builder<'a> {
    text: &'a str,
    origin: &'a str,
    base: &'a Path,
}

impl Builder<'_> {
    fn error<T>(&self, spanned: &Spanned<T>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            origin: self.origin.to_owned(),
            line: Some(line_of(self.text, spanned.span().start)),
            message: message.into(),
        }
    }

    fn path(&self, path: &str) -> PathBuf {
        let path = Path::new(path);
        if path.is_absolute() { path.to_owned() } else { self.base.join(path) }
    }

    fn tls_profile(
        &self,
        name: Option<&Spanned<String>>,
    ) -> Result<crate::tls::TlsProfile, ConfigError> {
        let Some(name) = name else { return Ok(crate::tls::TlsProfile::default()) };
        crate::tls::TlsProfile::from_name(name.get_ref())
            .ok_or_else(|| self.error(name, "tls_profile is intermediate or modern"))
    }

    fn address(&self, text: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        text.get_ref().parse().map_err(|_| {
            self.error(text, format!("'{}' is not an address like 127.0.0.1:8443", text.get_ref()))
        })
    }

    fn build(&self, raw: raw::Config) -> Result<Config, ConfigError> {
        let keystore = raw.keystore;
        let backend = match &keystore.backend {
            None => BackendKind::AwsLc,
            Some(name) => match name.get_ref().as_str() {
                "aws-lc" => BackendKind::AwsLc,
                "rustcrypto" if crate::crypto::FIPS => {
                    return Err(self.error(
                        name,
                        "the rustcrypto backend is not approved in FIPS mode: this kagi was built \
                         with the fips feature, use aws-lc",
                    ));
                }
                "rustcrypto" => BackendKind::RustCrypto,
                other => {
                    return Err(self.error(
                        name,
                        format!("unknown backend '{other}': use aws-lc or rustcrypto"),
                    ));
                }
            },
        };
        let mut partition = Partition::default();
        if let Some(region) = &keystore.region {
            let ok = !region.get_ref().is_empty()
                && region
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(self.error(region, "region must be like us-east-1"));
            }
            partition.region = region.get_ref().clone();
        }
        if let Some(account) = &keystore.account {
            if account.get_ref().len() != 12
                || !account.get_ref().bytes().all(|b| b.is_ascii_digit())
            {
                return Err(self.error(account, "account must be 12 digits"));
            }
            partition.account = account.get_ref().clone();
        }
        let api = ApiConfig {
            listen: self.address(&raw.api.listen)?,
            certificate: match &raw.api.certificate {
                Some(name) if crate::tls::check_name(name.get_ref()).is_err() => {
                    return Err(self.error(name, "a certificate name is 1–64 of A-Z a-z 0-9 _ -"));
                }
                Some(name) => Some(name.get_ref().clone()),
                None => None,
            },
            tls_names: raw
                .api
                .tls_names
                .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into()]),
            tls_profile: self.tls_profile(raw.api.tls_profile.as_ref())?,
        };
        let admin = raw.admin.map(|admin| self.address(&admin.listen)).transpose()?;
        let quotas = self.quotas(Quotas::default(), raw.quotas)?;
        let mut principals = Principals::default();
        for principal in raw.principals {
            let principal = self.principal(principal, quotas)?;
            if principals.by_name(&principal.name).is_some() {
                return Err(ConfigError {
                    origin: self.origin.to_owned(),
                    line: None,
                    message: format!("principal '{}' is defined twice", principal.name),
                });
            }
            principals.by_access_key.insert(principal.access_key_id.clone(), principal);
        }
        let audit = match raw.audit {
            Some(raw) => self.audit(raw)?,
            None => AuditConfig::default(),
        };
        let webhooks = raw
            .webhooks
            .into_iter()
            .map(|webhook| self.webhook(&webhook.url))
            .collect::<Result<_, _>>()?;
        let store = match raw.store {
            Some(raw) => self.store(raw)?,
            None => StoreSettings::Sqlite,
        };
        let sweep_interval = match &keystore.sweep_interval_ms {
            Some(ms) if *ms.get_ref() == 0 => {
                return Err(self.error(ms, "sweep_interval_ms must be at least 1"));
            }
            Some(ms) => std::time::Duration::from_millis(*ms.get_ref()),
            None => std::time::Duration::from_secs(60),
        };
        let taken: Vec<SocketAddr> = std::iter::once(api.listen).chain(admin).collect();
        let proxy = self.proxy(raw.proxy, raw.listeners, raw.upstreams, raw.routes, &taken)?;
        Ok(Config {
            audit,
            webhooks,
            proxy,
            data_dir: self.path(&keystore.data_dir),
            backend,
            partition,
            root_passphrase_env: keystore.root_passphrase_env,
            store,
            sweep_interval,
            api,
            admin,
            principals: Arc::new(principals),
            quotas,
            lock_memory: raw.security.and_then(|security| security.lock_memory).unwrap_or(true),
        })
    }

    fn store(&self, raw: raw::Store) -> Result<StoreSettings, ConfigError> {
        let url = raw.url.get_ref();
        if url == "sqlite" {
            if let Some(extra) = raw.password_file.as_ref().or(raw.password_env.as_ref()) {
                return Err(self.error(extra, "a password is for a postgres:// store"));
            }
            return Ok(StoreSettings::Sqlite);
        }
        if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
            return Err(self.error(
                &raw.url,
                "url is 'sqlite' or a PostgreSQL URL like postgres://kagi@db:5432/kagi",
            ));
        }
        if let Err(error) = url.parse::<tokio_postgres::Config>() {
            return Err(self.error(&raw.url, format!("the PostgreSQL URL does not parse: {error}")));
        }
        let password = match (raw.password_file, raw.password_env) {
            (Some(_), Some(env)) => {
                return Err(self.error(&env, "give password_file or password_env, not both"));
            }
            (Some(file), None) => PasswordSource::File(self.path(file.get_ref())),
            (None, Some(env)) => PasswordSource::Env(env.into_inner()),
            (None, None) => PasswordSource::None,
        };
        let millis = |value: &Option<Spanned<u64>>, default: u64, name: &str| match value {
            Some(ms) if *ms.get_ref() == 0 => {
                Err(self.error(ms, format!("{name} must be at least 1")))
            }
            Some(ms) => Ok(std::time::Duration::from_millis(*ms.get_ref())),
            None => Ok(std::time::Duration::from_millis(default)),
        };
        let pool_size = match &raw.pool_size {
            Some(size) if !(1..=1000).contains(size.get_ref()) => {
                return Err(self.error(size, "pool_size must be 1 to 1000"));
            }
            Some(size) => *size.get_ref() as usize,
            None => 16,
        };
        Ok(StoreSettings::Postgres(PostgresSettings {
            url: url.clone(),
            password,
            pool_size,
            timeout: millis(&raw.timeout_ms, 5000, "timeout_ms")?,
            poll_interval: millis(&raw.poll_interval_ms, 1000, "poll_interval_ms")?,
        }))
    }

    fn webhook(&self, url: &Spanned<String>) -> Result<http::Uri, ConfigError> {
        let uri: http::Uri =
            url.get_ref().parse().map_err(|e| self.error(url, format!("invalid URL: {e}")))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(self.error(url, "a webhook URL is http://host[:port]/path"));
        }
        Ok(uri)
    }

    fn audit(&self, raw: raw::Audit) -> Result<AuditConfig, ConfigError> {
        let mut audit = AuditConfig::default();
        if let Some(dir) = raw.dir {
            audit.dir = PathBuf::from(dir);
        }
        if let Some(bytes) = raw.max_file_bytes {
            if *bytes.get_ref() < 4096 {
                return Err(self.error(&bytes, "max_file_bytes must be at least 4096"));
            }
            audit.max_file_bytes = *bytes.get_ref();
        }
        if let Some(daily) = raw.rotate_daily {
            audit.rotate_daily = daily;
        }
        if let Some(mode) = raw.encryption_context {
            audit.context_mode = ContextMode::from_name(mode.get_ref()).ok_or_else(|| {
                self.error(&mode, "encryption_context must be keys-only, as-given or hmac")
            })?;
        }
        if let Some(ms) = raw.timeout_ms {
            if !(1..=600_000).contains(ms.get_ref()) {
                return Err(self.error(&ms, "timeout_ms must be 1 to 600000"));
            }
            audit.timeout = std::time::Duration::from_millis(*ms.get_ref());
        }
        Ok(audit)
    }

    /// `base` with the rates `raw` gives.
    fn quotas(&self, base: Quotas, raw: Option<raw::Quotas>) -> Result<Quotas, ConfigError> {
        let mut quotas = base;
        let Some(raw) = raw else { return Ok(quotas) };
        for (field, value) in [
            (&mut quotas.symmetric, raw.symmetric),
            (&mut quotas.asymmetric, raw.asymmetric),
            (&mut quotas.management, raw.management),
            (&mut quotas.burst_seconds, raw.burst_seconds),
        ] {
            if let Some(value) = value {
                if !(value.get_ref().is_finite() && *value.get_ref() > 0.0) {
                    return Err(self.error(&value, "must be a positive number"));
                }
                *field = *value.get_ref();
            }
        }
        Ok(quotas)
    }

    fn principal(&self, raw: raw::Principal, quotas: Quotas) -> Result<Principal, ConfigError> {
        let name = raw.name.get_ref();
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
        {
            return Err(self.error(&raw.name, "a principal name is 1–64 of A-Z a-z 0-9 +=,.@_-"));
        }
        let akid = raw.access_key_id.get_ref();
        if akid.len() < 16 || akid.len() > 128 || !akid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(
                self.error(&raw.access_key_id, "an access key id is 16–128 letters or digits")
            );
        }
        let secret = match (&raw.secret, &raw.secret_env, &raw.secret_file) {
            (Some(secret), None, None) => secret.get_ref().as_bytes().to_vec(),
            (None, Some(var), None) => std::env::var(var.get_ref())
                .map_err(|_| {
                    self.error(var, format!("environment variable {} is not set", var.get_ref()))
                })?
                .into_bytes(),
            (None, None, Some(file)) => {
                let path = self.path(file.get_ref());
                let text = std::fs::read_to_string(&path)
                    .map_err(|error| self.error(file, format!("{}: {error}", path.display())))?;
                text.trim_end_matches(['\n', '\r']).as_bytes().to_vec()
            }
            _ => {
                return Err(
                    self.error(&raw.name, "give exactly one of secret, secret_env or secret_file")
                );
            }
        };
        if secret.len() < 16 {
            return Err(self.error(&raw.name, "a secret access key has at least 16 characters"));
        }
        Ok(Principal {
            name: name.clone(),
            access_key_id: akid.clone(),
            secret: SecretBytes::from(secret),
            administrator: raw.administrator.unwrap_or(false),
            account_actions: raw.account_actions.unwrap_or_default(),
            quotas: self.quotas(quotas, raw.quotas)?,
        })
    }
}

/// The absolute directory relative paths in the configuration file at `path` resolve against:
/// the file's own (for a bare file name, whose parent is "", the current directory).
pub(crate) fn base_dir(path: &Path) -> PathBuf {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_owned())
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests;
