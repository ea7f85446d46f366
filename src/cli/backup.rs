//! `kagi backup`, `kagi backup verify` and `kagi restore`: the command-line side of
//! [`crate::backup`].
//!
//! `kagi backup` works beside a running server: it reads the store directly (one consistent
//! moment) without the server's lock, and needs no root key. `kagi restore` takes the new data
//! directory's lock, so no server starts on it meanwhile.
//!
//! Exit codes: 5 for a damaged, inconsistent or tampered backup (or one whose restore lost
//! something), 6 for a backup from a newer kagi, 7 for a wrong or missing root key, a
//! destination that is not empty, or no keystore where one is needed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args as ClapArgs, Subcommand};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::remote::ServerLock;
use super::{Args, Output};
use crate::audit::{AuditConfig, FileSink};
use crate::backup::{self, BackupError, Counts, Source};
use crate::config::Config;
use crate::crypto::{BackendKind, CryptoBackend};
use crate::error::{Error, exit_code};
use crate::keystore::store::StoreSettings;
use crate::keystore::{Keystore, OpContext, Partition, RootKey, RootKeySource, SharePolicy};

/// `kagi backup`.
#[derive(Debug, ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    /// Checks a backup instead of taking one.
    #[command(subcommand)]
    pub command: Option<BackupCommand>,
    /// Where to write the backup (mode 0600, written atomically); `-` for stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The server's configuration: the data directory, audit directory and ARN partition come
    /// from it instead of --data-dir and the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `kagi backup …`.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Checks a backup without restoring it: its checksum, structure and the consistency of its
    /// records; and, when the data directory holds a keystore, that its root key is the one the
    /// backup was made under and opens every sealed version (nothing is printed or kept).
    Verify(VerifyArgs),
}

/// `kagi backup verify`.
#[derive(Debug, ClapArgs)]
pub struct VerifyArgs {
    /// The backup file (`-`: stdin).
    pub file: PathBuf,
    /// Check the file only, even when the data directory holds a root key.
    #[arg(long)]
    pub structure_only: bool,
    /// Take the data directory (and root passphrase variable) from this configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// `kagi restore`.
#[derive(Debug, ClapArgs)]
pub struct RestoreArgs {
    /// The backup file (`-`: stdin).
    pub file: PathBuf,
    /// The new node's configuration: the data directory, audit directory and ARN partition
    /// come from it instead of --data-dir and the defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Where a command works: from `--config`, or from the global flags and the defaults.
#[derive(Debug)]
struct Site {
    data_dir: PathBuf,
    audit: AuditConfig,
    partition: Partition,
    root_source: RootKeySource,
    backend: &'static dyn CryptoBackend,
    store: StoreSettings,
}

impl Site {
    fn new(args: &Args, config: Option<&Path>) -> Result<Self, Error> {
        let backend_kind = BackendKind::from_name(&args.backend).ok_or_else(|| {
            Error::new(
                exit_code::USAGE,
                format!("unknown backend {:?}: use aws-lc or rustcrypto", args.backend),
            )
        })?;
        // Shares given on the command line, else the passphrase, else `root.key`.
        let passphrase = |env_var: Option<&String>| match env_var {
            _ if !args.share_files.is_empty() => {
                RootKeySource::Shares { files: args.share_files.clone() }
            }
            Some(env_var) => RootKeySource::Passphrase { env_var: env_var.clone() },
            None => RootKeySource::File,
        };
        let Some(path) = config else {
            return Ok(Self {
                data_dir: args.data_dir.clone(),
                audit: AuditConfig::default(),
                partition: Partition::default(),
                root_source: passphrase(args.root_passphrase_env.as_ref()),
                backend: backend_kind.backend(),
                store: StoreSettings::Sqlite,
            });
        };
        let config = Config::load(path)
            .map_err(|error| Error::new(exit_code::INVALID, error.to_string()))?;
        Ok(Self {
            root_source: passphrase(
                config.root_passphrase_env.as_ref().or(args.root_passphrase_env.as_ref()),
            ),
            backend: config.backend.backend(),
            data_dir: config.data_dir,
            audit: config.audit,
            partition: config.partition,
            store: config.store,
        })
    }

    fn load_root(&self) -> Result<RootKey, Error> {
        RootKey::load(self.backend, &self.data_dir, &self.root_source)
            .map_err(|error| Error::new(exit_code::STORAGE, error.message().to_owned()))
    }
}

/// Runs `kagi backup [verify]`.
pub(super) fn run_backup(args: &Args, backup: &BackupArgs) -> Result<(), Error> {
    runtime()?.block_on(async {
        match &backup.command {
            Some(BackupCommand::Verify(verify)) => {
                let site = Site::new(args, verify.config.as_deref())?;
                run_verify(&site, args.output, verify)
            }
            None => {
                let site = Site::new(args, backup.config.as_deref())?;
                let out = backup.out.as_deref().ok_or_else(|| {
                    Error::new(
                        exit_code::USAGE,
                        "kagi backup needs --out FILE (or --out - for stdout)",
                    )
                })?;
                take(&site, args.output, out).await
            }
        }
    })
}

/// Runs `kagi restore`.
pub(super) fn run_restore(args: &Args, restore: &RestoreArgs) -> Result<(), Error> {
    let site = Site::new(args, restore.config.as_deref())?;
    runtime()?.block_on(restore_into(&site, args.output, &restore.file))
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|error| {
        Error::new(exit_code::FAILURE, format!("cannot start the runtime: {error}"))
    })
}

async fn take(site: &Site, output: Output, out: &Path) -> Result<(), Error> {
    let store =
        backup::open_store(&site.data_dir, &site.store, false).await.map_err(backup_error)?;
    let audit_dir = site.data_dir.join(&site.audit.dir);
    let source = Source {
        store: store.as_ref(),
        store_kind: match site.store {
            StoreSettings::Sqlite => "sqlite",
            StoreSettings::Postgres(_) => "postgres",
        },
        data_dir: &site.data_dir,
        audit_dir: Some(&audit_dir),
        partition: &site.partition,
        certificates: true,
    };
    let now = super::clock()?.now();
    let taken = backup::take(&source, now).await.map_err(backup_error)?;
    let bytes = backup::encode(&taken).map_err(backup_error)?;
    let to_stdout = out == Path::new("-");
    if to_stdout {
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::new(exit_code::FAILURE, format!("stdout: {e}")))?;
    } else {
        backup::write_atomically(out, &bytes).map_err(backup_error)?;
    }
    let sha256 = hex::encode(Sha256::digest(&bytes));
    let head = taken.header.audit_head.as_ref();
    let summary = match output {
        Output::Json => json!({
            "File": out,
            "Sha256": sha256,
            "Bytes": bytes.len(),
            "Created": taken.header.created,
            "Counts": taken.header.counts,
            "AuditHead": head,
        })
        .to_string(),
        Output::Table => format!(
            "backed up {} to {}: {} bytes, sha256 {sha256}; audit chain head {}",
            counts_text(&taken.header.counts),
            out.display(),
            bytes.len(),
            head.map_or_else(
                || "unavailable".to_owned(),
                |h| format!("record {} {}", h.seq, h.hash)
            ),
        ),
    };
    // The backup itself may be on stdout: the summary goes to stderr then.
    if to_stdout {
        eprintln!("{summary}");
    } else {
        outln!("{summary}");
    }
    Ok(())
}

fn run_verify(site: &Site, output: Output, verify: &VerifyArgs) -> Result<(), Error> {
    let checked = backup::read(&verify.file).map_err(backup_error)?;
    let with_root = !verify.structure_only && site.data_dir.join("root.check").exists();
    let sealed = if with_root {
        let root = site.load_root()?;
        Some(backup::check_sealed(site.backend, &root, &checked).map_err(backup_error)?)
    } else {
        None
    };
    let header = &checked.header;
    match output {
        Output::Json => outln!(
            "{}",
            json!({
                "File": verify.file,
                "FormatVersion": header.format_version,
                "KagiVersion": header.kagi_version,
                "Created": header.created,
                "Counts": header.counts,
                "AuditHead": header.audit_head,
                "RootKeyChecked": sealed.is_some(),
                "VersionsOpened": sealed.map(|s| s.versions),
                "VersionsDestroyed": sealed.map(|s| s.destroyed),
                "ImportTokensOpened": sealed.map(|s| s.import_tokens),
            })
        ),
        Output::Table => {
            outln!(
                "{}: checksum and records consistent: {}, taken at {} by kagi {}",
                verify.file.display(),
                counts_text(&header.counts),
                crate::audit::chain::format_utc(header.created),
                header.kagi_version
            );
            match sealed {
                Some(sealed) => outln!(
                    "the root key of {} is the backup's and opens all {} versions with material \
                     ({} destroyed) and {} import tokens",
                    site.data_dir.display(),
                    sealed.versions,
                    sealed.destroyed,
                    sealed.import_tokens
                ),
                None => outln!(
                    "sealed material not checked: no root key given (--data-dir or --config of a \
                     keystore with the same root key checks it)"
                ),
            }
        }
    }
    Ok(())
}

async fn restore_into(site: &Site, output: Output, file: &Path) -> Result<(), Error> {
    let restored = backup::read(file).map_err(backup_error)?;
    let data_dir = &site.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| Error::new(exit_code::STORAGE, format!("{}: {e}", data_dir.display())))?;
    // No server may start on the directory while it is restored into.
    let _lock = ServerLock::acquire(data_dir)?;
    let header = &restored.header;
    let root = if data_dir.join("root.check").exists() {
        site.load_root()?
    } else {
        // A new node: the operator put the root key (root.key, or the passphrase) there; the
        // backup's check value proves it is the right one before anything is written.
        RootKey::adopt(
            site.backend,
            data_dir,
            &site.root_source,
            &header.root_check,
            header.root_salt.as_deref(),
            header.root_lineage.as_deref(),
            header.root_shares.as_deref().and_then(|policy| SharePolicy::decode(policy.as_bytes())),
        )
        .map_err(|error| Error::new(exit_code::STORAGE, error.message().to_owned()))?
    };
    let store = backup::open_store(data_dir, &site.store, true).await.map_err(backup_error)?;
    let audit = Arc::new(
        FileSink::open(data_dir, &site.audit, site.backend)
            .map_err(|e| Error::new(exit_code::STORAGE, e.to_string()))?,
    );
    let clock = super::clock()?;
    let ctx = context(site.backend)?;
    let sealed = backup::restore(
        site.backend,
        &root,
        store.as_ref(),
        audit.as_ref(),
        &ctx,
        clock.now(),
        &restored,
    )
    .await
    .map_err(|error| restore_error(error, data_dir))?;
    let certificates = backup::restore_certificates(data_dir, &restored).map_err(backup_error)?;
    // Prove it: the backup in memory as the source, the restored keystore as the destination.
    let destination = Keystore::with_store(
        site.backend,
        store,
        root,
        Arc::clone(&clock),
        audit,
        site.partition.clone(),
    );
    let source = backup::keystore_of(site.backend, site.load_root()?, clock, &restored)
        .await
        .map_err(backup_error)?;
    let proof =
        backup::prove_nothing_lost(&source, &destination, &ctx).await.map_err(backup_error)?;
    let counts = Counts { certificates, ..proof.counts };
    let partition_changed = header.partition.region != site.partition.region
        || header.partition.account != site.partition.account;
    if partition_changed {
        eprintln!(
            "note: the backup's keys were in region {} account {}, this node's ARNs are in {} {}: \
             key policies and grants still name the old account",
            header.partition.region,
            header.partition.account,
            site.partition.region,
            site.partition.account
        );
    }
    match output {
        Output::Json => outln!(
            "{}",
            json!({
                "DataDir": data_dir,
                "Counts": counts,
                "VersionsOpened": sealed.versions,
                "Proof": {
                    "Unsealed": proof.unsealed,
                    "EncryptDecrypt": proof.encrypt_decrypt,
                    "SignVerify": proof.sign_verify,
                    "Mac": proof.mac,
                    "KeyAgreement": proof.key_agreement,
                    "RecordsOnly": proof.records_only,
                },
                "SourceAuditHead": header.audit_head,
            })
        ),
        Output::Table => {
            outln!("restored {} into {}", counts_text(&counts), data_dir.display());
            outln!(
                "checked: every record equal to the backup's, {} versions open under the root \
                 key; {} keys encrypt/decrypt, {} sign/verify, {} MAC, {} key agreement across \
                 backup and restore; {} keys not Enabled checked by record",
                proof.unsealed,
                proof.encrypt_decrypt,
                proof.sign_verify,
                proof.mac,
                proof.key_agreement,
                proof.records_only
            );
            if let Some(head) = &header.audit_head {
                outln!(
                    "the source's audit chain ended at record {} {} when the backup was taken; \
                     this node's trail starts anew (keep the old trail)",
                    head.seq,
                    head.hash
                );
            }
        }
    }
    Ok(())
}

/// Who restores: the operator, from the command line.
fn context(backend: &dyn CryptoBackend) -> Result<OpContext, Error> {
    let principal = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    let mut id = [0u8; 16];
    backend.fill_random(&mut id)?;
    Ok(OpContext {
        principal: format!("cli:{principal}"),
        source: OpContext::CLI.into(),
        request_id: uuid::Builder::from_random_bytes(id).into_uuid().to_string(),
    })
}

fn counts_text(counts: &Counts) -> String {
    let Counts { keys, versions, aliases, import_tokens, certificates } = counts;
    format!(
        "{keys} keys ({versions} versions), {aliases} aliases, {import_tokens} import tokens, \
         {certificates} certificates"
    )
}

fn restore_error(error: BackupError, data_dir: &Path) -> Error {
    match error {
        BackupError::WrongRootKey(_) => Error::new(
            exit_code::STORAGE,
            format!(
                "the backup was made under another root key than the one of {}: refusing to \
                 restore it (put the original root key there)",
                data_dir.display()
            ),
        ),
        other => backup_error(other),
    }
}

/// The exit code of each backup failure (see the module documentation).
fn backup_error(error: BackupError) -> Error {
    let code = match &error {
        BackupError::Corrupt(_)
        | BackupError::Inconsistent(_)
        | BackupError::Unseal(_)
        | BackupError::Lost(_) => exit_code::REJECTED,
        BackupError::NewerFormat { .. } => exit_code::INVALID,
        BackupError::WrongRootKey(_)
        | BackupError::NotEmpty(_)
        | BackupError::NoKeystore(_)
        | BackupError::Store(_)
        | BackupError::Keystore(_) => exit_code::STORAGE,
        BackupError::Io { .. } | BackupError::Audit(_) | BackupError::Certificates(_) => {
            exit_code::FAILURE
        }
    };
    Error::new(code, error.to_string())
}

/// What `kagi migrate` moves the keystore from.
#[derive(Clone, Copy, Debug, Eq, PartialEq, clap::ValueEnum)]
pub enum StoreKind {
    /// `DATA_DIR/keystore.db`.
    Sqlite,
    /// The `[store]` database of the configuration.
    Postgres,
}

/// `kagi migrate`.
#[derive(Debug, ClapArgs)]
pub struct MigrateArgs {
    /// The store the keys are in now.
    #[arg(long, value_enum, default_value = "sqlite")]
    pub from: StoreKind,
    /// The store they move to.
    #[arg(long, value_enum, default_value = "postgres")]
    pub to: StoreKind,
    /// The configuration naming the data directory and the `[store]` database to move to.
    #[arg(long)]
    pub config: PathBuf,
}

/// Runs `kagi migrate --from sqlite --to postgres --config FILE`: copies every record as it is
/// (material stays sealed under the same root key: nothing is re-encrypted) into the empty
/// database, then proves nothing was lost by using every enabled key across the two stores.
pub(super) fn run_migrate(args: &Args, migrate: &MigrateArgs) -> Result<(), Error> {
    if (migrate.from, migrate.to) != (StoreKind::Sqlite, StoreKind::Postgres) {
        return Err(Error::new(
            exit_code::USAGE,
            "kagi migrate moves a keystore from sqlite to postgres (--from sqlite --to postgres)",
        ));
    }
    let site = Site::new(args, Some(&migrate.config))?;
    if !matches!(site.store, StoreSettings::Postgres(_)) {
        return Err(Error::new(
            exit_code::USAGE,
            format!(
                "{} has no PostgreSQL [store]: add one with the database to migrate to",
                migrate.config.display()
            ),
        ));
    }
    // No server may write to the SQLite store meanwhile: what it wrote would be left behind.
    let _lock = ServerLock::acquire(&site.data_dir)?;
    runtime()?.block_on(migrate_to(&site, args.output, &migrate.config))
}

async fn migrate_to(site: &Site, output: Output, config: &Path) -> Result<(), Error> {
    let storage = |message: String| Error::new(exit_code::STORAGE, message);
    let from = backup::open_store(&site.data_dir, &StoreSettings::Sqlite, false)
        .await
        .map_err(backup_error)?;
    let to = backup::open_store(&site.data_dir, &site.store, true).await.map_err(backup_error)?;
    to.restore(from.snapshot().await.map_err(|e| storage(e.to_string()))?).await.map_err(
        |error| match error {
            crate::keystore::store::StoreError::AlreadyExists(what) => storage(format!(
                "the database is not empty ({what}): kagi migrates only into an empty one"
            )),
            other => storage(other.to_string()),
        },
    )?;
    let clock = super::clock()?;
    let audit = Arc::new(
        FileSink::open(&site.data_dir, &site.audit, site.backend)
            .map_err(|e| storage(e.to_string()))?,
    );
    let source = Keystore::with_store(
        site.backend,
        from,
        site.load_root()?,
        Arc::clone(&clock),
        Arc::clone(&audit) as Arc<dyn crate::audit::AuditSink>,
        site.partition.clone(),
    );
    // Opening records the root key's check value in the database, as a node's start does.
    let destination = Keystore::open_with_store(
        site.backend,
        &site.data_dir,
        site.load_root()?,
        to,
        clock,
        audit,
        site.partition.clone(),
    )
    .await
    .map_err(|error| storage(error.message().to_owned()))?;
    let ctx = context(site.backend)?;
    let proof =
        backup::prove_nothing_lost(&source, &destination, &ctx).await.map_err(backup_error)?;
    let StoreSettings::Postgres(settings) = &site.store else { unreachable!("checked above") };
    let database = crate::keystore::store::redact_url(&settings.url);
    // From now on the data directory's keys are the database's: commands refuse the old file.
    crate::server::write_atomically(
        &site.data_dir.join(super::SHARED_STORE_MARKER),
        database.as_bytes(),
    )
    .map_err(|e| storage(format!("cannot mark {} as migrated: {e}", site.data_dir.display())))?;
    match output {
        Output::Json => outln!(
            "{}",
            json!({
                "Database": database,
                "Keys": proof.counts.keys,
                "Versions": proof.counts.versions,
                "Aliases": proof.counts.aliases,
                "ImportTokens": proof.counts.import_tokens,
                "Unsealed": proof.unsealed,
                "EncryptDecrypt": proof.encrypt_decrypt,
                "SignVerify": proof.sign_verify,
                "Mac": proof.mac,
                "KeyAgreement": proof.key_agreement,
            })
        ),
        Output::Table => {
            outln!("migrated {} to {database}", counts_text(&proof.counts));
            outln!(
                "proved: {} versions unsealed; across the two stores {} keys encrypted and \
                 decrypted, {} signed and verified, {} MACs verified, {} shared secrets equal",
                proof.unsealed,
                proof.encrypt_decrypt,
                proof.sign_verify,
                proof.mac,
                proof.key_agreement
            );
            outln!(
                "{} keeps the old keystore.db, no longer used: start `kagi serve --config {}`",
                site.data_dir.display(),
                config.display()
            );
        }
    }
    Ok(())
}
