//! The `kagi` command line: clap arguments, kept low level (exactly what was typed), and the
//! dispatch to the library.
//!
//! Every failure becomes one line on stderr and an exit code from [`crate::error::exit_code`];
//! a failed command never changes stored keys.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// `println!` for command output. A stdout closed by its reader (`kagi audit show | head`)
/// ends the command quietly, as SIGPIPE ends a Unix tool (Rust ignores the signal, so the
/// write fails instead); any other failure to write is reported and the command fails. Never a
/// panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

mod backup;
mod certs;
mod check;
mod demo;
mod envelope;
mod remote;
mod report;
mod root_key;
mod serve;
mod shares;

use crate::audit::verify::{Filter, VerifyError};
use crate::audit::{AuditConfig, FileSink, chain};
use crate::crypto::{BackendKind, KeyPairSpec, MacAlgorithm, SigningAlgorithm};
use crate::error::{Error, exit_code};
use crate::keystore::clock::{Clock, ManualClock, SystemClock};
use crate::keystore::operations::{DataKeySize, EncryptionAlgorithm, MessageType};
use crate::keystore::store;
use crate::keystore::{
    self, CreateKeyRequest, EncryptionContext, ImportRequest, ImportType, KeyMetadata, KeySpec,
    KeyUsage, Keystore, OpContext, Origin, Partition, RootKey, RootKeySource, WrappingAlgorithm,
};

/// What `kagi --version` prints: the version, and "(FIPS mode)" for a build with the `fips`
/// feature (which runs only with the module in FIPS mode: [`run`] checks).
const VERSION: &str = if crate::crypto::FIPS {
    concat!(env!("CARGO_PKG_VERSION"), " (FIPS mode)")
} else {
    env!("CARGO_PKG_VERSION")
};

/// kagi: a managed keystore modelled on AWS KMS, and a TLS-terminating reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "kagi", version = VERSION, about)]
pub struct Args {
    /// The data directory holding the keystore.
    #[arg(long, global = true, env = "KAGI_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Derive the root key from a passphrase in this environment variable (Argon2id) instead
    /// of the root.key file.
    #[arg(long, global = true, env = "KAGI_ROOT_PASSPHRASE_ENV")]
    pub root_passphrase_env: Option<String>,
    /// A file holding one share of a root key split by `kagi init --shares`: repeated K times
    /// for a command that opens the keystore, once for `kagi unseal`.
    #[arg(long = "share-file", global = true)]
    pub share_files: Vec<PathBuf>,
    /// The crypto backend: aws-lc (default) or rustcrypto.
    #[arg(long, global = true, default_value = "aws-lc")]
    pub backend: String,
    /// Output format for metadata.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Clone, Copy, Debug, Eq, PartialEq, ValueEnum)]
pub enum Output {
    /// Aligned text for people.
    Table,
    /// JSON in the AWS KMS shapes, for scripts.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates a keystore (root key and database) in the data directory; with --shares and
    /// --threshold, the root key is split into shares (any K of N unseal it) and not kept.
    Init(shares::InitArgs),
    /// Gives a sealed `kagi serve` (one started on a data directory made with `kagi init
    /// --shares`) one share, from --share-file or one line of stdin; prints the progress
    /// (`1 of 2 shares`) or `unsealed`.
    Unseal,
    /// Runs the real thing on a fresh checkout: a keystore and a localhost certificate (key in
    /// the keystore) in ./kagi-demo, a sample backend, and `kagi serve` proxying to it, with the
    /// commands to try.
    Demo(demo::DemoArgs),
    /// A tour of the keystore without a server, in a temporary directory: keys, encryption,
    /// rotation, signing, MACs, the lifecycle and the audit trail it leaves.
    Tour,
    /// Manages keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manages aliases.
    #[command(subcommand)]
    Aliases(AliasesCommand),
    /// Encrypts a file or stdin (≤ 4096 bytes) under a key.
    Encrypt(EncryptArgs),
    /// Decrypts a ciphertext blob.
    Decrypt(DecryptArgs),
    /// Signs a message (or a digest) with an asymmetric key.
    Sign(SignArgs),
    /// Verifies a signature; exits 5 when it does not verify.
    Verify(VerifyArgs),
    /// Computes (or with --verify, checks) an HMAC.
    Mac(MacArgs),
    /// Generates a data key under a key.
    DataKey(DataKeyArgs),
    /// Moves a ciphertext to another key, or to its key's newest version, without the
    /// plaintext leaving the keystore.
    ReEncrypt(ReEncryptArgs),
    /// Generates a key pair whose private key is encrypted under a key.
    DataKeyPair(DataKeyPairArgs),
    /// Writes a key's public key (DER SubjectPublicKeyInfo).
    PublicKey(PublicKeyArgs),
    /// ECDH between a KEY_AGREEMENT key and a peer's public key; writes the shared secret.
    DeriveSharedSecret(DeriveSharedSecretArgs),
    /// TLS certificates whose keys live in the keystore.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Serves the AWS-KMS-compatible API (and later the proxy) from a TOML configuration.
    Serve(serve::ServeArgs),
    /// Checks a configuration file as `kagi serve` would, without serving; exits 6 naming the
    /// file and line of the first problem.
    CheckConfig(check::CheckConfigArgs),
    /// Writes a consistent backup of the keystore (sealed, with a checksum), also while a
    /// server runs; `kagi backup verify FILE` checks one.
    Backup(backup::BackupArgs),
    /// Restores a backup into a new, empty keystore holding the same root key, then proves
    /// nothing was lost.
    Restore(backup::RestoreArgs),
    /// Moves the keystore from SQLite into the empty PostgreSQL database of `--config`'s
    /// `[store]`, material still sealed (nothing re-encrypted), then proves nothing was lost.
    Migrate(backup::MigrateArgs),
    /// Reads the audit trail: checks its hash chain, shows its records.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The root key: `kagi root-key rotate` re-seals every key under a new one.
    #[command(subcommand)]
    RootKey(root_key::RootKeyCommand),
    /// Runs the sample backend `kagi demo` proxies to (an in-memory object store with echo,
    /// slow, streaming and WebSocket endpoints), on plain HTTP/1.1 and HTTP/2.
    SampleBackend {
        /// The listen address (port 0: any free port).
        #[arg(long, default_value = "127.0.0.1:9080")]
        listen: std::net::SocketAddr,
        /// Write the address it listens on here once it does.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Reports every key (spec, state, aliases, last use, rotation, deletion, material expiry),
    /// flagging unused keys and keys pending deletion that are still used. Reads a stopped
    /// server's data directory.
    Report(report::ReportArgs),
    /// AWS Encryption SDK messages (format version 2), streamed from stdin to stdout, with
    /// data keys under a keystore key.
    #[command(subcommand)]
    Envelope(envelope::EnvelopeCommand),
}

/// `kagi audit …`.
#[derive(Clone, Debug, Subcommand)]
pub enum AuditCommand {
    /// Checks the hash chain of a trail file, or of a directory of rotated files (default
    /// DATA_DIR/audit); exits 5 naming the first altered, removed, inserted or reordered line.
    Verify {
        /// A trail file or directory.
        path: Option<PathBuf>,
    },
    /// Prints the records matching every filter given.
    Show {
        /// A trail file or directory (default DATA_DIR/audit).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Only this key (key id or key ARN).
        #[arg(long)]
        key: Option<String>,
        /// Only this principal.
        #[arg(long)]
        principal: Option<String>,
        /// Only this operation (Encrypt, CreateKey, RotateKey, …).
        #[arg(long)]
        operation: Option<String>,
        /// Only records at or after this time: epoch seconds, YYYY-MM-DD or
        /// YYYY-MM-DDTHH:MM:SSZ (UTC).
        #[arg(long)]
        since: Option<String>,
        /// Only records at or before this time (same forms).
        #[arg(long)]
        until: Option<String>,
    },
}

/// `kagi keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates a key.
    Create {
        /// SYMMETRIC_DEFAULT, RSA_2048/3072/4096, ECC_NIST_P256/P384/P521, ECC_SECG_P256K1,
        /// HMAC_224/256/384/512.
        #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
        spec: String,
        /// ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC or KEY_AGREEMENT (default: the
        /// spec's first).
        #[arg(long)]
        usage: Option<String>,
        /// AWS_KMS (generated) or EXTERNAL (imported later).
        #[arg(long, default_value = "AWS_KMS")]
        origin: String,
        /// A description.
        #[arg(long, default_value = "")]
        description: String,
        /// A tag, KEY=VALUE (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Lists keys.
    List,
    /// Shows a key's metadata.
    Describe {
        /// Key id, key ARN, alias name or alias ARN.
        key: String,
    },
    /// Enables a key.
    Enable {
        /// Key id or ARN.
        key: String,
    },
    /// Disables a key.
    Disable {
        /// Key id or ARN.
        key: String,
    },
    /// Rotates a symmetric key now (RotateKeyOnDemand).
    Rotate {
        /// Key id or ARN.
        key: String,
    },
    /// Schedules a key's deletion after 7–30 days.
    ScheduleDeletion {
        /// Key id or ARN.
        key: String,
        /// The waiting period in days.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Cancels a scheduled deletion; the key becomes Disabled.
    CancelDeletion {
        /// Key id or ARN.
        key: String,
    },
    /// Automatic rotation settings.
    #[command(subcommand)]
    Rotation(RotationCommand),
    /// Adds or replaces tags.
    Tag {
        /// Key id or ARN.
        key: String,
        /// KEY=VALUE pairs.
        #[arg(required = true)]
        tags: Vec<String>,
    },
    /// Removes tags.
    Untag {
        /// Key id or ARN.
        key: String,
        /// Tag keys.
        #[arg(required = true)]
        tag_keys: Vec<String>,
    },
    /// Carries out what is due: deletions, automatic rotations, expired imported material.
    Sweep,
    /// Writes a wrapping public key and an import token for a key of origin EXTERNAL.
    ImportParameters(ImportParametersArgs),
    /// Imports key material wrapped with the public key of `import-parameters`.
    ImportMaterial(ImportMaterialArgs),
    /// Deletes a key's imported material; the key is PendingImport until it is imported again.
    DeleteMaterial {
        /// Key id or ARN.
        key: String,
    },
}

/// `kagi keys rotation …`.
#[derive(Debug, Subcommand)]
pub enum RotationCommand {
    /// Turns automatic rotation on.
    Enable {
        /// Key id or ARN.
        key: String,
        /// Days between rotations, 90–2560.
        #[arg(long, default_value_t = 365)]
        period_days: u32,
    },
    /// Turns automatic rotation off.
    Disable {
        /// Key id or ARN.
        key: String,
    },
    /// Shows the rotation status.
    Status {
        /// Key id or ARN.
        key: String,
    },
    /// Lists the key's versions.
    List {
        /// Key id or ARN.
        key: String,
    },
}

/// `kagi aliases …`.
#[derive(Debug, Subcommand)]
pub enum AliasesCommand {
    /// Creates an alias.
    Create {
        /// `alias/…`.
        name: String,
        /// Key id or ARN.
        key: String,
    },
    /// Points an alias at another key.
    Update {
        /// `alias/…`.
        name: String,
        /// Key id or ARN.
        key: String,
    },
    /// Deletes an alias.
    Delete {
        /// `alias/…`.
        name: String,
    },
    /// Lists aliases.
    List {
        /// Only the aliases of this key.
        #[arg(long)]
        key: Option<String>,
    },
}

/// Input and output files shared by the data commands.
#[derive(Debug, ClapArgs)]
pub struct Io {
    /// Input file (default: stdin).
    #[arg(long = "in", id = "in")]
    pub input: Option<PathBuf>,
    /// Output file (default: stdout).
    #[arg(long = "out", id = "out")]
    pub output: Option<PathBuf>,
    /// Read and write base64 text instead of raw bytes (binary side only).
    #[arg(long)]
    pub base64: bool,
}

/// `kagi encrypt`.
#[derive(Debug, ClapArgs)]
pub struct EncryptArgs {
    /// Key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// An encryption context pair, KEY=VALUE (repeatable).
    #[arg(long = "context")]
    pub context: Vec<String>,
    /// SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256.
    #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
    pub algorithm: String,
    /// Files.
    #[command(flatten)]
    pub io: Io,
}

/// `kagi decrypt`.
#[derive(Debug, ClapArgs)]
pub struct DecryptArgs {
    /// The key (optional for symmetric ciphertexts; must match when given).
    #[arg(long)]
    pub key: Option<String>,
    /// An encryption context pair, KEY=VALUE (repeatable).
    #[arg(long = "context")]
    pub context: Vec<String>,
    /// SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256.
    #[arg(long)]
    pub algorithm: Option<String>,
    /// Files.
    #[command(flatten)]
    pub io: Io,
}

/// `kagi sign`.
#[derive(Debug, ClapArgs)]
pub struct SignArgs {
    /// Key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// ECDSA_SHA_256, RSASSA_PSS_SHA_256, RSASSA_PKCS1_V1_5_SHA_256, …
    #[arg(long)]
    pub algorithm: String,
    /// The input is a digest, not the message.
    #[arg(long)]
    pub digest: bool,
    /// Files.
    #[command(flatten)]
    pub io: Io,
}

/// `kagi verify`.
#[derive(Debug, ClapArgs)]
pub struct VerifyArgs {
    /// Key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// The signing algorithm.
    #[arg(long)]
    pub algorithm: String,
    /// The input is a digest, not the message.
    #[arg(long)]
    pub digest: bool,
    /// The signature file (raw, or base64 with --base64).
    #[arg(long)]
    pub signature: PathBuf,
    /// Files.
    #[command(flatten)]
    pub io: Io,
}

/// `kagi mac`.
#[derive(Debug, ClapArgs)]
pub struct MacArgs {
    /// Key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// HMAC_SHA_224, HMAC_SHA_256, HMAC_SHA_384 or HMAC_SHA_512.
    #[arg(long)]
    pub algorithm: String,
    /// Check this MAC file instead of printing one; exits 5 when it does not verify.
    #[arg(long)]
    pub verify: Option<PathBuf>,
    /// Files.
    #[command(flatten)]
    pub io: Io,
}

/// `kagi data-key`.
#[derive(Debug, ClapArgs)]
pub struct DataKeyArgs {
    /// Key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// AES_256 or AES_128.
    #[arg(long, conflicts_with = "bytes")]
    pub spec: Option<String>,
    /// Number of bytes, 1–1024.
    #[arg(long)]
    pub bytes: Option<u32>,
    /// An encryption context pair, KEY=VALUE (repeatable).
    #[arg(long = "context")]
    pub context: Vec<String>,
    /// Print only the encrypted data key.
    #[arg(long)]
    pub without_plaintext: bool,
}

/// `kagi keys import-parameters`.
#[derive(Debug, ClapArgs)]
pub struct ImportParametersArgs {
    /// Key id or ARN of a key of origin EXTERNAL.
    pub key: String,
    /// RSA_AES_KEY_WRAP_SHA_256, RSA_AES_KEY_WRAP_SHA_1 (AES-KWP under an RSA-wrapped AES key:
    /// needed for RSA private keys), RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1.
    #[arg(long, default_value = "RSA_AES_KEY_WRAP_SHA_256")]
    pub wrapping_algorithm: String,
    /// RSA_2048, RSA_3072 or RSA_4096.
    #[arg(long, default_value = "RSA_4096")]
    pub wrapping_key_spec: String,
    /// Where to write the wrapping public key (DER SubjectPublicKeyInfo).
    #[arg(long)]
    pub public_key: PathBuf,
    /// Where to write the import token (valid 24 hours).
    #[arg(long)]
    pub token: PathBuf,
}

/// `kagi keys import-material`.
#[derive(Debug, ClapArgs)]
#[command(group(clap::ArgGroup::new("expiry").required(true).args(["expires_at", "no_expiry"])))]
pub struct ImportMaterialArgs {
    /// Key id or ARN.
    pub key: String,
    /// The import token file written by `kagi keys import-parameters`.
    #[arg(long)]
    pub token: PathBuf,
    /// The wrapped key material file.
    #[arg(long)]
    pub material: PathBuf,
    /// When the material expires, in epoch seconds (at most 365 days away).
    #[arg(long)]
    pub expires_at: Option<i64>,
    /// The material never expires.
    #[arg(long)]
    pub no_expiry: bool,
    /// Stage new material for the next `kagi keys rotate` (symmetric keys) instead of importing
    /// the key's (first or same) material.
    #[arg(long)]
    pub new_material: bool,
}

/// `kagi re-encrypt`.
#[derive(Debug, ClapArgs)]
pub struct ReEncryptArgs {
    /// The destination key: key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// The destination encryption context pair, KEY=VALUE (repeatable).
    #[arg(long = "context")]
    pub context: Vec<String>,
    /// The destination algorithm: SYMMETRIC_DEFAULT, RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256.
    #[arg(long, default_value = "SYMMETRIC_DEFAULT")]
    pub algorithm: String,
    /// The source key (optional for symmetric ciphertexts; must match when given).
    #[arg(long)]
    pub source_key: Option<String>,
    /// The source encryption context pair, KEY=VALUE (repeatable).
    #[arg(long = "source-context")]
    pub source_context: Vec<String>,
    /// The source algorithm.
    #[arg(long)]
    pub source_algorithm: Option<String>,
    /// Files: the ciphertext in, the new ciphertext out.
    #[command(flatten)]
    pub io: Io,
}

/// `kagi data-key-pair`.
#[derive(Debug, ClapArgs)]
pub struct DataKeyPairArgs {
    /// The symmetric key that encrypts the private key.
    #[arg(long)]
    pub key: String,
    /// RSA_2048, RSA_3072, RSA_4096, ECC_NIST_P256, ECC_NIST_P384, ECC_NIST_P521 or
    /// ECC_SECG_P256K1.
    #[arg(long)]
    pub spec: String,
    /// An encryption context pair, KEY=VALUE (repeatable).
    #[arg(long = "context")]
    pub context: Vec<String>,
    /// Print only the public key and the encrypted private key.
    #[arg(long)]
    pub without_plaintext: bool,
}

/// `kagi public-key`.
#[derive(Debug, ClapArgs)]
pub struct PublicKeyArgs {
    /// Key id, key ARN, alias name or alias ARN of an asymmetric key.
    #[arg(long)]
    pub key: String,
    /// Output file (default: stdout).
    #[arg(long = "out", id = "out")]
    pub output: Option<PathBuf>,
    /// Write base64 text instead of DER.
    #[arg(long)]
    pub base64: bool,
}

/// `kagi derive-shared-secret`.
#[derive(Debug, ClapArgs)]
pub struct DeriveSharedSecretArgs {
    /// A KEY_AGREEMENT key: key id, key ARN, alias name or alias ARN.
    #[arg(long)]
    pub key: String,
    /// Files: the peer's public key in (DER SubjectPublicKeyInfo), the shared secret out.
    #[command(flatten)]
    pub io: Io,
}

/// Parses `args` (the first is the program name) and runs the command.
///
/// # Errors
/// Any failure, with the exit code it should end the process with.
pub fn run<I, T>(args: I) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = match Args::try_parse_from(args) {
        Ok(args) => args,
        Err(error) => {
            let usage = error.use_stderr();
            let _ = error.print();
            return if usage {
                Err(Error::new(exit_code::USAGE, "invalid usage (see --help)"))
            } else {
                Ok(())
            };
        }
    };
    // Every command may hold key material (the root key, key versions): none leaves a core
    // dump. `kagi serve` logs the outcome; a command that could not do it still runs.
    let _ = crate::hardening::disable_core_dumps();
    // A FIPS build runs only with the module in FIPS mode (its self-tests passed), and never on
    // the rustcrypto backend.
    crate::crypto::check_fips_mode().map_err(|why| {
        Error::new(exit_code::FAILURE, format!("the FIPS module is not in FIPS mode: {why}"))
    })?;
    if let Some(kind) = BackendKind::from_name(&args.backend) {
        kind.check_allowed()
            .map_err(|error| Error::new(exit_code::USAGE, format!("--backend {kind}: {error}")))?;
    }
    if let Command::Serve(serve) = &args.command {
        return serve::run(&args, serve);
    }
    if let Command::Demo(demo) = &args.command {
        return demo::run(&args, demo);
    }
    if let Command::CheckConfig(check) = &args.command {
        return check::run(&args, check);
    }
    // Backups read the store directly, beside a running server; a restore takes its own lock.
    if let Command::Backup(command) = &args.command {
        return backup::run_backup(&args, command);
    }
    if let Command::Restore(command) = &args.command {
        return backup::run_restore(&args, command);
    }
    if let Command::Migrate(command) = &args.command {
        return backup::run_migrate(&args, command);
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|error| {
            Error::new(exit_code::FAILURE, format!("cannot start the runtime: {error}"))
        })?;
    runtime.block_on(dispatch(args))
}

/// `kagi sample-backend`: serves until killed.
async fn sample_backend(
    listen: std::net::SocketAddr,
    ready_file: Option<&Path>,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::new(exit_code::FAILURE, format!("cannot listen on {listen}: {e}")))?;
    let address =
        listener.local_addr().map_err(|e| Error::new(exit_code::FAILURE, e.to_string()))?;
    if let Some(path) = ready_file {
        crate::server::write_atomically(path, address.to_string().as_bytes())
            .map_err(|e| Error::new(exit_code::FAILURE, format!("{}: {e}", path.display())))?;
    }
    eprintln!("sample backend listening on http://{address}");
    crate::demo::sample_backend(listener).await;
    Ok(())
}

async fn dispatch(args: Args) -> Result<(), Error> {
    let backend = BackendKind::from_name(&args.backend)
        .ok_or_else(|| {
            Error::new(
                exit_code::USAGE,
                format!("unknown backend {:?}: use aws-lc or rustcrypto", args.backend),
            )
        })?
        .backend();
    match &args.command {
        Command::Init(init) if init.shares.is_some() => {
            return shares::init(backend, &args.data_dir, args.root_passphrase_env.as_ref(), init);
        }
        Command::Init(_) => {
            let root_source = match &args.root_passphrase_env {
                Some(env_var) => RootKeySource::Passphrase { env_var: env_var.clone() },
                None => RootKeySource::File,
            };
            Keystore::init(backend, &args.data_dir, &root_source).map_err(keystore_error)?;
            outln!("initialised a keystore in {}", args.data_dir.display());
            return Ok(());
        }
        Command::Unseal => return shares::unseal(&args.data_dir, &args.share_files).await,
        Command::Tour => return tour(backend).await,
        Command::SampleBackend { listen, ready_file } => {
            return sample_backend(*listen, ready_file.as_deref()).await;
        }
        Command::Audit(command) => {
            return audit_command(&args.data_dir, args.output, command.clone());
        }
        Command::RootKey(command) => return root_key::run(backend, &args, command).await,
        _ => {}
    }
    let out = Printer { output: args.output };
    // A running server owns the directory: go through its API. Otherwise hold a shared lock so
    // no server starts while this command works on the directory.
    let _lock = match remote::access(&args.data_dir)? {
        remote::Access::Remote(info) if matches!(args.command, Command::Report(_)) => {
            return Err(Error::new(
                exit_code::USAGE,
                format!(
                    "kagi report reads the data directory directly, and the server at {} holds \
                     it: stop the server first",
                    info.api
                ),
            ));
        }
        remote::Access::Remote(info) => {
            if let Command::Envelope(command) = args.command {
                // The server authorizes the data keys for the credentials' principal.
                let keys = crate::envelope::RemoteKeys::new(remote::connect(&info).await?);
                return envelope::run(&keys, "-", command).await;
            }
            return match args.command {
                Command::Certs(command) => {
                    certs::run_remote(&info, &out, &args.data_dir, backend, command).await
                }
                command => remote::run(&info, &out, command).await,
            };
        }
        remote::Access::Direct(lock) => lock,
    };
    let root_source =
        shares::root_source(&args.data_dir, args.root_passphrase_env.as_ref(), &args.share_files)?;
    let keystore = open(backend, &args.data_dir, &root_source)?;
    // A root key rotation a crash interrupted: finish a commit, or open with both keys.
    keystore.reconcile_root(&args.data_dir).await.map_err(keystore_error)?;
    let ctx = cli_context(&keystore)?;
    match args.command {
        Command::Init(_)
        | Command::Unseal
        | Command::RootKey(_)
        | Command::Demo(_)
        | Command::Tour
        | Command::SampleBackend { .. }
        | Command::Audit(_)
        | Command::Serve(_)
        | Command::Backup(_)
        | Command::Restore(_)
        | Command::Migrate(_)
        | Command::CheckConfig(_) => Ok(()),
        Command::Report(report) => {
            report::run(&keystore, &args.data_dir, args.output, &report).await
        }
        Command::Keys(command) => keys(&keystore, &ctx, &out, command).await,
        Command::Envelope(command) => {
            let keys =
                crate::envelope::KeystoreKeys::without_key_policies(Arc::new(keystore), "cli");
            envelope::run(&keys, &ctx.principal, command).await
        }
        Command::Aliases(command) => aliases(&keystore, &ctx, &out, command).await,
        Command::Certs(command) => certs::run(keystore, &ctx, &out, &args.data_dir, command).await,
        Command::Encrypt(a) => {
            let plaintext = read_input(&a.io, false)?;
            let algorithm = parse_encryption_algorithm(&a.algorithm)?;
            let output = keystore
                .encrypt(&ctx, &a.key, &plaintext, &parse_context(&a.context)?, algorithm)
                .await
                .map_err(keystore_error)?;
            write_output(&a.io, &output.ciphertext_blob, true)
        }
        Command::Decrypt(a) => {
            let blob = read_input(&a.io, true)?;
            let algorithm = a.algorithm.as_deref().map(parse_encryption_algorithm).transpose()?;
            let output = keystore
                .decrypt(&ctx, &blob, &parse_context(&a.context)?, a.key.as_deref(), algorithm)
                .await
                .map_err(keystore_error)?;
            write_output(&a.io, output.plaintext.expose_secret(), false)
        }
        Command::Sign(a) => {
            let message = read_input(&a.io, false)?;
            let (signature, _) = keystore
                .sign(
                    &ctx,
                    &a.key,
                    &message,
                    message_type(a.digest),
                    parse_signing_algorithm(&a.algorithm)?,
                )
                .await
                .map_err(keystore_error)?;
            write_output(&a.io, &signature, true)
        }
        Command::Verify(a) => {
            let message = read_input(&a.io, false)?;
            let signature = read_file_maybe_base64(&a.signature, a.io.base64)?;
            keystore
                .verify(
                    &ctx,
                    &a.key,
                    &message,
                    message_type(a.digest),
                    parse_signing_algorithm(&a.algorithm)?,
                    &signature,
                )
                .await
                .map_err(keystore_error)?;
            outln!("signature valid");
            Ok(())
        }
        Command::Mac(a) => {
            let message = read_input(&a.io, false)?;
            let algorithm = MacAlgorithm::from_kms_name(&a.algorithm)
                .ok_or_else(|| invalid(format!("unknown MAC algorithm {:?}", a.algorithm)))?;
            match &a.verify {
                Some(path) => {
                    let mac = read_file_maybe_base64(path, a.io.base64)?;
                    keystore
                        .verify_mac(&ctx, &a.key, &message, algorithm, &mac)
                        .await
                        .map_err(keystore_error)?;
                    outln!("mac valid");
                    Ok(())
                }
                None => {
                    let (mac, _) = keystore
                        .generate_mac(&ctx, &a.key, &message, algorithm)
                        .await
                        .map_err(keystore_error)?;
                    write_output(&a.io, &mac, true)
                }
            }
        }
        Command::DataKey(a) => {
            let size = match (a.spec.as_deref(), a.bytes) {
                (Some("AES_256") | None, None) => DataKeySize::Aes256,
                (Some("AES_128"), None) => DataKeySize::Aes128,
                (None, Some(n)) => DataKeySize::Bytes(n),
                (Some(other), _) => {
                    return Err(invalid(format!(
                        "unknown data key spec {other:?}: use AES_256 or AES_128"
                    )));
                }
            };
            let key = keystore
                .generate_data_key(
                    &ctx,
                    &a.key,
                    size,
                    &parse_context(&a.context)?,
                    !a.without_plaintext,
                )
                .await
                .map_err(keystore_error)?;
            let mut document = json!({
                "KeyId": key.key_arn,
                "CiphertextBlob": BASE64.encode(&key.ciphertext_blob),
            });
            if let Some(plaintext) = &key.plaintext {
                // The operator asked for the plaintext data key: printing it is the point.
                document["Plaintext"] = Value::String(BASE64.encode(plaintext.expose_secret()));
            }
            out.document(&document);
            Ok(())
        }
        Command::ReEncrypt(a) => re_encrypt(&keystore, &ctx, a).await,
        Command::DataKeyPair(a) => data_key_pair(&keystore, &ctx, &out, a).await,
        Command::PublicKey(a) => {
            let info = keystore.get_public_key(&ctx, &a.key).await.map_err(keystore_error)?;
            let io = Io { input: None, output: a.output, base64: a.base64 };
            write_output(&io, &info.public_key, true)
        }
        Command::DeriveSharedSecret(a) => {
            let peer_public_key = read_input(&a.io, true)?;
            let (secret, _, _) = keystore
                .derive_shared_secret(&ctx, &a.key, &peer_public_key)
                .await
                .map_err(keystore_error)?;
            // The operator asked for the shared secret: writing it out is the point.
            write_output(&a.io, secret.expose_secret(), true)
        }
    }
}

async fn keys(
    keystore: &Keystore,
    ctx: &OpContext,
    out: &Printer,
    command: KeysCommand,
) -> Result<(), Error> {
    match command {
        KeysCommand::Create { spec, usage, origin, description, tags } => {
            let request = CreateKeyRequest {
                spec: KeySpec::from_kms_name(&spec)
                    .ok_or_else(|| invalid(format!("unknown key spec {spec:?}")))?,
                usage: usage
                    .map(|u| {
                        KeyUsage::from_kms_name(&u)
                            .ok_or_else(|| invalid(format!("unknown key usage {u:?}")))
                    })
                    .transpose()?,
                origin: Origin::from_kms_name(&origin)
                    .ok_or_else(|| invalid(format!("unknown origin {origin:?}")))?,
                description,
                tags: parse_pairs(&tags, "tag")?,
                policy: None,
            };
            let metadata = keystore.create_key(ctx, request).await.map_err(keystore_error)?;
            out.metadata(&metadata);
        }
        KeysCommand::List => {
            let mut marker = None;
            let mut rows = Vec::new();
            loop {
                let page = keystore
                    .list_keys(ctx, Some(1000), marker.as_deref())
                    .await
                    .map_err(keystore_error)?;
                for (id, _) in page.items {
                    rows.push(keystore.describe_key(ctx, &id).await.map_err(keystore_error)?);
                }
                match page.next_marker {
                    Some(next) => marker = Some(next),
                    None => break,
                }
            }
            let aliases = all_aliases(keystore, ctx).await?;
            out.key_list(&rows, &aliases);
        }
        KeysCommand::Describe { key } => {
            let metadata = keystore.describe_key(ctx, &key).await.map_err(keystore_error)?;
            out.metadata(&metadata);
        }
        KeysCommand::Enable { key } => {
            keystore.enable_key(ctx, &key).await.map_err(keystore_error)?;
            out.done(&format!("enabled {key}"));
        }
        KeysCommand::Disable { key } => {
            keystore.disable_key(ctx, &key).await.map_err(keystore_error)?;
            out.done(&format!("disabled {key}"));
        }
        KeysCommand::Rotate { key } => {
            keystore.rotate_key_on_demand(ctx, &key).await.map_err(keystore_error)?;
            out.done(&format!("rotated {key}"));
        }
        KeysCommand::ScheduleDeletion { key, days } => {
            let schedule = keystore
                .schedule_key_deletion(ctx, &key, Some(days))
                .await
                .map_err(keystore_error)?;
            out.document(&json!({
                "KeyId": schedule.key_arn,
                "DeletionDate": schedule.deletion_date,
                "KeyState": "PendingDeletion",
                "PendingWindowInDays": schedule.pending_window_days,
            }));
        }
        KeysCommand::CancelDeletion { key } => {
            let arn = keystore.cancel_key_deletion(ctx, &key).await.map_err(keystore_error)?;
            out.done(&format!("cancelled the deletion of {arn}; the key is Disabled"));
        }
        KeysCommand::Rotation(command) => match command {
            RotationCommand::Enable { key, period_days } => {
                keystore
                    .enable_key_rotation(ctx, &key, Some(period_days))
                    .await
                    .map_err(keystore_error)?;
                out.done(&format!("automatic rotation of {key} every {period_days} days"));
            }
            RotationCommand::Disable { key } => {
                keystore.disable_key_rotation(ctx, &key).await.map_err(keystore_error)?;
                out.done(&format!("automatic rotation of {key} disabled"));
            }
            RotationCommand::Status { key } => {
                let status =
                    keystore.key_rotation_status(ctx, &key).await.map_err(keystore_error)?;
                let mut document =
                    json!({"KeyId": status.key_arn, "KeyRotationEnabled": status.enabled});
                if let Some(days) = status.period_days {
                    document["RotationPeriodInDays"] = json!(days);
                }
                if let Some(next) = status.next_rotation {
                    document["NextRotationDate"] = json!(next);
                }
                out.document(&document);
            }
            RotationCommand::List { key } => {
                let page = keystore
                    .list_key_rotations(
                        ctx,
                        &key,
                        keystore::IncludeKeyMaterial::AllKeyMaterial,
                        Some(1000),
                        None,
                    )
                    .await
                    .map_err(keystore_error)?;
                let rotations: Vec<Value> = page
                    .items
                    .iter()
                    .map(|entry| {
                        let v = &entry.version;
                        let mut row = json!({
                            "Version": v.version,
                            "KeyMaterialId": v.material_id,
                            "KeyMaterialState": serde_json::to_value(v.state).unwrap_or(Value::Null),
                            "Created": v.created,
                        });
                        if let Some(rotation_type) = v.rotation_type {
                            row["RotationType"] = serde_json::to_value(rotation_type).unwrap_or(Value::Null);
                        }
                        if let Some(date) = v.rotation_date {
                            row["RotationDate"] = json!(date);
                        }
                        if entry.imported {
                            row["ImportState"] = json!(if v.has_material() { "IMPORTED" } else { "PENDING_IMPORT" });
                            if let Some(valid_to) = v.valid_to {
                                row["ValidTo"] = json!(valid_to);
                            }
                        }
                        row
                    })
                    .collect();
                out.document(&json!({ "Rotations": rotations }));
            }
        },
        KeysCommand::Tag { key, tags } => {
            keystore
                .tag_resource(ctx, &key, &parse_pairs(&tags, "tag")?)
                .await
                .map_err(keystore_error)?;
            out.done(&format!("tagged {key}"));
        }
        KeysCommand::Untag { key, tag_keys } => {
            keystore.untag_resource(ctx, &key, &tag_keys).await.map_err(keystore_error)?;
            out.done(&format!("untagged {key}"));
        }
        KeysCommand::Sweep => {
            let report = keystore.sweep(ctx).await.map_err(keystore_error)?;
            out.document(&json!({
                "Deleted": report.deleted,
                "Rotated": report.rotated,
                "Expired": report.expired,
            }));
        }
        KeysCommand::ImportParameters(a) => import_parameters(keystore, ctx, out, a).await?,
        KeysCommand::ImportMaterial(a) => import_material(keystore, ctx, out, a).await?,
        KeysCommand::DeleteMaterial { key } => {
            let arn =
                keystore.delete_imported_key_material(ctx, &key).await.map_err(keystore_error)?;
            out.done(&format!("deleted the imported material of {arn}; the key is PendingImport"));
        }
    }
    Ok(())
}

async fn aliases(
    keystore: &Keystore,
    ctx: &OpContext,
    out: &Printer,
    command: AliasesCommand,
) -> Result<(), Error> {
    match command {
        AliasesCommand::Create { name, key } => {
            keystore.create_alias(ctx, &name, &key).await.map_err(keystore_error)?;
            out.done(&format!("created {name}"));
        }
        AliasesCommand::Update { name, key } => {
            keystore.update_alias(ctx, &name, &key).await.map_err(keystore_error)?;
            out.done(&format!("pointed {name} at {key}"));
        }
        AliasesCommand::Delete { name } => {
            keystore.delete_alias(ctx, &name).await.map_err(keystore_error)?;
            out.done(&format!("deleted {name}"));
        }
        AliasesCommand::List { key } => {
            let page = keystore
                .list_aliases(ctx, key.as_deref(), Some(100), None)
                .await
                .map_err(keystore_error)?;
            let mut items = page.items;
            let mut marker = page.next_marker;
            while let Some(next) = marker {
                let page = keystore
                    .list_aliases(ctx, key.as_deref(), Some(100), Some(&next))
                    .await
                    .map_err(keystore_error)?;
                items.extend(page.items);
                marker = page.next_marker;
            }
            let rows: Vec<Value> = items
                .iter()
                .map(|a| json!({"AliasName": a.name, "AliasArn": a.arn, "TargetKeyId": a.target_key_id}))
                .collect();
            match out.output {
                Output::Json => out.document(&json!({ "Aliases": rows })),
                Output::Table => {
                    for alias in &items {
                        outln!("{:<40} {}", alias.name, alias.target_key_id);
                    }
                }
            }
        }
    }
    Ok(())
}

async fn all_aliases(
    keystore: &Keystore,
    ctx: &OpContext,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut marker: Option<String> = None;
    loop {
        let page = keystore
            .list_aliases(ctx, None, Some(100), marker.as_deref())
            .await
            .map_err(keystore_error)?;
        for alias in page.items {
            by_key.entry(alias.target_key_id).or_default().push(alias.name);
        }
        match page.next_marker {
            Some(next) => marker = Some(next),
            None => return Ok(by_key),
        }
    }
}

/// The keystore demonstration: a temporary data directory, one key of each family, each
/// operation once, printed as it goes.
async fn tour(backend: &'static dyn crate::crypto::CryptoBackend) -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("kagi-tour-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = tour_in(backend, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn tour_in(
    backend: &'static dyn crate::crypto::CryptoBackend,
    dir: &Path,
) -> Result<(), Error> {
    outln!("kagi tour: a keystore in {} on the {} backend", dir.display(), backend.kind());
    Keystore::init(backend, dir, &RootKeySource::File).map_err(keystore_error)?;
    let clock = Arc::new(ManualClock::new(SystemClock.now()));
    let audit = Arc::new(
        FileSink::open(dir, &AuditConfig::default(), backend)
            .map_err(|e| Error::new(exit_code::STORAGE, e.to_string()))?,
    );
    let trail_dir = audit.dir().to_owned();
    let keystore = Keystore::open(
        backend,
        dir,
        &RootKeySource::File,
        clock.clone(),
        audit,
        Partition::default(),
    )
    .map_err(keystore_error)?;
    let ctx = OpContext {
        principal: "demo".into(),
        source: OpContext::CLI.into(),
        request_id: "demo".into(),
    };
    let step = |what: &str| outln!("\n== {what}");

    step("CreateKey SYMMETRIC_DEFAULT, alias/demo");
    let key =
        keystore.create_key(&ctx, CreateKeyRequest::default()).await.map_err(keystore_error)?;
    keystore.create_alias(&ctx, "alias/demo", &key.record.id).await.map_err(keystore_error)?;
    outln!("{}  state={}", key.arn, key.record.state);

    step("Encrypt \"hello, kagi\" with context tenant=acme");
    let mut context = EncryptionContext::new();
    context.insert("tenant".into(), "acme".into());
    let blob = keystore
        .encrypt(
            &ctx,
            "alias/demo",
            b"hello, kagi",
            &context,
            EncryptionAlgorithm::SymmetricDefault,
        )
        .await
        .map_err(keystore_error)?
        .ciphertext_blob;
    outln!("ciphertext blob: {} bytes, {}…", blob.len(), &BASE64.encode(&blob)[..24]);
    let plaintext = keystore
        .decrypt(&ctx, &blob, &context, None, None)
        .await
        .map_err(keystore_error)?
        .plaintext;
    outln!(
        "Decrypt with the same context: {:?}",
        String::from_utf8_lossy(plaintext.expose_secret())
    );
    let mut wrong = EncryptionContext::new();
    wrong.insert("tenant".into(), "globex".into());
    let refused = keystore.decrypt(&ctx, &blob, &wrong, None, None).await;
    outln!(
        "Decrypt with tenant=globex: {}",
        refused.err().map_or("unexpectedly succeeded".into(), |e| e.to_string())
    );

    step("RotateKeyOnDemand, then decrypt the old ciphertext");
    keystore.rotate_key_on_demand(&ctx, &key.record.id).await.map_err(keystore_error)?;
    let again =
        keystore.decrypt(&ctx, &blob, &context, None, None).await.map_err(keystore_error)?;
    outln!(
        "old ciphertext still decrypts after rotation (material {})",
        again.key_material_id.unwrap_or_default()
    );

    step("GenerateDataKey AES_256");
    let data_key = keystore
        .generate_data_key(&ctx, "alias/demo", DataKeySize::Aes256, &context, true)
        .await
        .map_err(keystore_error)?;
    outln!(
        "data key: {} plaintext bytes, {} ciphertext bytes",
        data_key.plaintext.map_or(0, |p| p.len()),
        data_key.ciphertext_blob.len()
    );

    step("CreateKey ECC_NIST_P256 SIGN_VERIFY, Sign and Verify");
    let signing = keystore
        .create_key(
            &ctx,
            CreateKeyRequest { spec: KeySpec::EccNistP256, ..CreateKeyRequest::default() },
        )
        .await
        .map_err(keystore_error)?;
    let (signature, _) = keystore
        .sign(
            &ctx,
            &signing.record.id,
            b"release 1.0",
            MessageType::Raw,
            SigningAlgorithm::EcdsaSha256,
        )
        .await
        .map_err(keystore_error)?;
    keystore
        .verify(
            &ctx,
            &signing.record.id,
            b"release 1.0",
            MessageType::Raw,
            SigningAlgorithm::EcdsaSha256,
            &signature,
        )
        .await
        .map_err(keystore_error)?;
    outln!("ECDSA signature of {} bytes verifies", signature.len());

    step("CreateKey HMAC_256, GenerateMac");
    let hmac = keystore
        .create_key(
            &ctx,
            CreateKeyRequest { spec: KeySpec::Hmac256, ..CreateKeyRequest::default() },
        )
        .await
        .map_err(keystore_error)?;
    let (mac, _) = keystore
        .generate_mac(&ctx, &hmac.record.id, b"message", MacAlgorithm::HmacSha256)
        .await
        .map_err(keystore_error)?;
    outln!("HMAC-SHA-256: {}", hex::encode(&mac));

    step("DisableKey, then Encrypt is refused");
    keystore.disable_key(&ctx, &key.record.id).await.map_err(keystore_error)?;
    let refused = keystore
        .encrypt(&ctx, "alias/demo", b"x", &context, EncryptionAlgorithm::SymmetricDefault)
        .await;
    outln!("{}", refused.err().map_or("unexpectedly succeeded".into(), |e| e.to_string()));

    step("ScheduleKeyDeletion (7 days), move time 8 days on, sweep");
    keystore.schedule_key_deletion(&ctx, &key.record.id, Some(7)).await.map_err(keystore_error)?;
    clock.advance(8 * 86_400);
    let report = keystore.sweep(&ctx).await.map_err(keystore_error)?;
    outln!("deleted: {:?}", report.deleted);
    let gone = keystore.describe_key(&ctx, &key.record.id).await;
    outln!(
        "DescribeKey now: {}",
        gone.err().map_or("unexpectedly succeeded".into(), |e| e.to_string())
    );

    step("The audit trail: one hash-chained line per operation");
    let verified = crate::audit::verify::verify(&trail_dir).map_err(audit_error)?;
    outln!(
        "{}: {} lines verified, chain head {}",
        trail_dir.display(),
        verified.records,
        verified.head.hash
    );
    let records = crate::audit::verify::read_records(&trail_dir).map_err(audit_error)?;
    if let Some(last) = records.last() {
        outln!("the last: {}", serde_json::to_string(last).unwrap_or_default());
    }
    Ok(())
}

// === import, re-encrypt, data key pairs ===

async fn import_parameters(
    keystore: &Keystore,
    ctx: &OpContext,
    out: &Printer,
    a: ImportParametersArgs,
) -> Result<(), Error> {
    let algorithm = WrappingAlgorithm::from_kms_name(&a.wrapping_algorithm)
        .ok_or_else(|| invalid(format!("unknown wrapping algorithm {:?}", a.wrapping_algorithm)))?;
    let wrapping_spec = KeyPairSpec::from_kms_name(&a.wrapping_key_spec)
        .ok_or_else(|| invalid(format!("unknown wrapping key spec {:?}", a.wrapping_key_spec)))?;
    let parameters = keystore
        .get_parameters_for_import(ctx, &a.key, algorithm, wrapping_spec)
        .await
        .map_err(keystore_error)?;
    write_file(&a.public_key, &parameters.public_key)?;
    write_file(&a.token, &parameters.import_token)?;
    out.document(&json!({
        "KeyId": parameters.key_arn,
        "ParametersValidTo": parameters.valid_to,
        "PublicKey": a.public_key.display().to_string(),
        "ImportToken": a.token.display().to_string(),
    }));
    Ok(())
}

async fn import_material(
    keystore: &Keystore,
    ctx: &OpContext,
    out: &Printer,
    a: ImportMaterialArgs,
) -> Result<(), Error> {
    let import_token = read_file_maybe_base64(&a.token, false)?;
    let encrypted_key_material = read_file_maybe_base64(&a.material, false)?;
    let request = ImportRequest {
        import_token: &import_token,
        encrypted_key_material: &encrypted_key_material,
        valid_to: a.expires_at,
        import_type: if a.new_material {
            ImportType::NewKeyMaterial
        } else {
            ImportType::ExistingKeyMaterial
        },
    };
    let (arn, material_id) =
        keystore.import_key_material(ctx, &a.key, request).await.map_err(keystore_error)?;
    let mut document = json!({ "KeyId": arn, "KeyMaterialId": material_id });
    if let Some(valid_to) = a.expires_at {
        document["ValidTo"] = json!(valid_to);
    }
    out.document(&document);
    Ok(())
}

async fn re_encrypt(keystore: &Keystore, ctx: &OpContext, a: ReEncryptArgs) -> Result<(), Error> {
    let blob = read_input(&a.io, true)?;
    let source_algorithm =
        a.source_algorithm.as_deref().map(parse_encryption_algorithm).transpose()?;
    let output = keystore
        .re_encrypt(
            ctx,
            &blob,
            &parse_context(&a.source_context)?,
            a.source_key.as_deref(),
            source_algorithm,
            &a.key,
            &parse_context(&a.context)?,
            parse_encryption_algorithm(&a.algorithm)?,
        )
        .await
        .map_err(keystore_error)?;
    write_output(&a.io, &output.ciphertext_blob, true)
}

async fn data_key_pair(
    keystore: &Keystore,
    ctx: &OpContext,
    out: &Printer,
    a: DataKeyPairArgs,
) -> Result<(), Error> {
    let spec = KeyPairSpec::from_kms_name(&a.spec)
        .ok_or_else(|| invalid(format!("unknown key pair spec {:?}", a.spec)))?;
    let pair = keystore
        .generate_data_key_pair(
            ctx,
            &a.key,
            spec,
            &parse_context(&a.context)?,
            !a.without_plaintext,
        )
        .await
        .map_err(keystore_error)?;
    let mut document = json!({
        "KeyId": pair.key_arn,
        "KeyPairSpec": pair.spec.kms_name(),
        "PublicKey": BASE64.encode(&pair.public_key),
        "PrivateKeyCiphertextBlob": BASE64.encode(&pair.private_key_ciphertext_blob),
    });
    if let Some(private_key) = &pair.private_key_plaintext {
        // The operator asked for the plaintext private key: printing it is the point.
        document["PrivateKeyPlaintext"] = Value::String(BASE64.encode(private_key.expose_secret()));
    }
    out.document(&document);
    Ok(())
}

// === plumbing ===

fn open(
    backend: &'static dyn crate::crypto::CryptoBackend,
    data_dir: &Path,
    root_source: &RootKeySource,
) -> Result<Keystore, Error> {
    let root = load_root(backend, data_dir, root_source)?;
    keystore_with_partition(backend, data_dir, root, Partition::default(), &AuditConfig::default())
}

/// Loads the root key of `data_dir` from `root_source` and checks it against `root.check`.
fn load_root(
    backend: &'static dyn crate::crypto::CryptoBackend,
    data_dir: &Path,
    root_source: &RootKeySource,
) -> Result<RootKey, Error> {
    shares::require_shares(data_dir, root_source)?;
    RootKey::load(backend, data_dir, root_source)
        .map_err(|error| Error::new(exit_code::STORAGE, error.message().to_owned()))
}

/// The command's clock: the system's, or `KAGI_FAKE_NOW`.
fn clock() -> Result<Arc<dyn Clock>, Error> {
    match std::env::var("KAGI_FAKE_NOW") {
        // Testing hook: pin the clock (epoch seconds) so tests can move time past deletion
        // windows, rotation periods and expiry without sleeping.
        Ok(now) => {
            Ok(Arc::new(ManualClock::new(now.parse().map_err(|_| {
                Error::new(exit_code::USAGE, "KAGI_FAKE_NOW must be epoch seconds")
            })?)))
        }
        Err(_) => Ok(Arc::new(SystemClock)),
    }
}

/// Opens the keystore in `data_dir` under `root` (loaded and checked by [`load_root`], or
/// rebuilt from shares), with its audit trail as `audit` says, ARNs in `partition`.
fn keystore_with_partition(
    backend: &'static dyn crate::crypto::CryptoBackend,
    data_dir: &Path,
    root: RootKey,
    partition: Partition,
    audit: &AuditConfig,
) -> Result<Keystore, Error> {
    let clock = clock()?;
    if let Ok(database) = std::fs::read_to_string(data_dir.join(SHARED_STORE_MARKER)) {
        return Err(Error::new(
            exit_code::STORAGE,
            format!(
                "the keys of {} are in PostgreSQL ({}): start `kagi serve --config FILE` on it and \
                 run this command while it serves (it then goes through the server's API)",
                data_dir.display(),
                database.trim()
            ),
        ));
    }
    // The root key is checked before the audit trail is opened, so a directory without a
    // keystore (or opened with the wrong key) gets no trail created in it.
    let audit = Arc::new(
        FileSink::open(data_dir, audit, backend)
            .map_err(|e| Error::new(exit_code::STORAGE, e.to_string()))?,
    );
    Keystore::open_with_root(backend, data_dir, root, clock, audit, partition)
        .map_err(|error| Error::new(exit_code::STORAGE, error.message().to_owned()))
}

/// The file a data directory whose keys are in a shared store holds (the database's URL,
/// without a password), so commands that would open the local store refuse instead.
pub(super) const SHARED_STORE_MARKER: &str = "store.shared";

/// Opens the keystore a server runs on: `store` as configured, the root key and audit trail
/// of `data_dir`.
async fn keystore_for_server(
    backend: &'static dyn crate::crypto::CryptoBackend,
    data_dir: &Path,
    root: RootKey,
    store: &store::StoreSettings,
    partition: Partition,
    audit: &AuditConfig,
) -> Result<Keystore, Error> {
    let store::StoreSettings::Postgres(settings) = store else {
        let keystore = keystore_with_partition(backend, data_dir, root, partition, audit)?;
        keystore.reconcile_root(data_dir).await.map_err(keystore_error)?;
        return Ok(keystore);
    };
    let storage = |message: String| Error::new(exit_code::STORAGE, message);
    let clock = clock()?;
    let audit =
        Arc::new(FileSink::open(data_dir, audit, backend).map_err(|e| storage(e.to_string()))?);
    let shared = store.open(data_dir).await.map_err(|e| storage(e.to_string()))?;
    let keystore =
        Keystore::open_with_store(backend, data_dir, root, shared, clock, audit, partition)
            .await
            .map_err(|error| storage(error.message().to_owned()))?;
    let marker = store::redact_url(&settings.url);
    crate::server::write_atomically(&data_dir.join(SHARED_STORE_MARKER), marker.as_bytes())
        .map_err(|e| {
            storage(format!("cannot write {}: {e}", data_dir.join(SHARED_STORE_MARKER).display()))
        })?;
    Ok(keystore)
}

/// `kagi audit …`: reads the trail files only, never the keystore.
fn audit_command(data_dir: &Path, output: Output, command: AuditCommand) -> Result<(), Error> {
    let out = Printer { output };
    let default_dir = || data_dir.join(AuditConfig::default().dir);
    match command {
        AuditCommand::Verify { path } => {
            let path = path.unwrap_or_else(default_dir);
            let verified = crate::audit::verify::verify(&path).map_err(audit_error)?;
            match output {
                Output::Json => out.document(&json!({
                    "Records": verified.records,
                    "Files": verified.files,
                    "FirstRecord": verified.first_seq,
                    "Head": {
                        "Seq": verified.head.seq,
                        "Hash": verified.head.hash,
                        "File": verified.head.file,
                    },
                    "Notes": verified.notes,
                })),
                Output::Table => {
                    outln!(
                        "verified {} records in {} files: chain head record {} {} ({})",
                        verified.records,
                        verified.files,
                        verified.head.seq,
                        verified.head.hash,
                        verified.head.file
                    );
                    for note in &verified.notes {
                        outln!("note: {note}");
                    }
                }
            }
        }
        AuditCommand::Show { path, key, principal, operation, since, until } => {
            let time = |text: Option<String>| {
                text.map(|t| {
                    chain::parse_time(&t).ok_or_else(|| {
                        invalid(format!("{t:?} is not epoch seconds or YYYY-MM-DD[THH:MM:SSZ]"))
                    })
                })
                .transpose()
            };
            let filter =
                Filter { key, principal, operation, since: time(since)?, until: time(until)? };
            let path = path.unwrap_or_else(default_dir);
            let records = crate::audit::verify::read_records(&path).map_err(audit_error)?;
            let matching = records.iter().filter(|record| filter.matches(record));
            match output {
                Output::Json => {
                    let rows: Vec<&crate::audit::AuditRecord> = matching.collect();
                    out.document(&json!({ "Records": rows }));
                }
                Output::Table => {
                    outln!(
                        "{:<20}  {:<24}  {:<7}  {:<20}  KEY",
                        "TIME",
                        "OPERATION",
                        "OUTCOME",
                        "PRINCIPAL"
                    );
                    for record in matching {
                        let outcome = match (&record.error_code, record.outcome) {
                            (Some(code), _) => code.as_str(),
                            (None, crate::audit::Outcome::Success) => "success",
                            (None, crate::audit::Outcome::Failure) => "failure",
                        };
                        outln!(
                            "{:<20}  {:<24}  {:<7}  {:<20}  {}",
                            chain::format_utc(record.time),
                            record.operation,
                            outcome,
                            record.principal,
                            record.key_arn.as_deref().unwrap_or("-")
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// A trail that does not verify is a rejection (exit 5), like a signature that does not.
fn audit_error(error: VerifyError) -> Error {
    match error {
        VerifyError::Tampered(tamper) => {
            Error::new(exit_code::REJECTED, format!("the audit trail does not verify: {tamper}"))
        }
        VerifyError::Unreadable { .. } => Error::new(exit_code::INVALID, error.to_string()),
    }
}

fn cli_context(keystore: &Keystore) -> Result<OpContext, Error> {
    let principal = std::env::var("USER").unwrap_or_else(|_| "operator".into());
    Ok(OpContext {
        principal: format!("cli:{principal}"),
        source: OpContext::CLI.into(),
        request_id: keystore.new_uuid().map_err(keystore_error)?,
    })
}

/// Maps a keystore error to its exit code (documented in README.md).
fn keystore_error(error: keystore::Error) -> Error {
    use keystore::ErrorKind as K;
    let code = match error.kind() {
        K::NotFound => exit_code::NOT_FOUND,
        K::Disabled | K::InvalidState | K::Conflict => exit_code::KEY_STATE,
        // AccessDenied comes from a running server's policy (through `kagi certs`), as in
        // `remote::api_error`.
        K::InvalidCiphertext
        | K::InvalidSignature
        | K::InvalidMac
        | K::IncorrectKey
        | K::AccessDenied => exit_code::REJECTED,
        K::DependencyTimeout | K::Internal => exit_code::FAILURE,
        _ => exit_code::INVALID,
    };
    Error::new(code, error.to_string())
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(exit_code::INVALID, message)
}

fn parse_pairs(pairs: &[String], what: &str) -> Result<BTreeMap<String, String>, Error> {
    pairs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| invalid(format!("{what} {pair:?} is not KEY=VALUE")))
        })
        .collect()
}

fn parse_context(pairs: &[String]) -> Result<EncryptionContext, Error> {
    parse_pairs(pairs, "context pair")
}

fn parse_encryption_algorithm(name: &str) -> Result<EncryptionAlgorithm, Error> {
    EncryptionAlgorithm::from_kms_name(name)
        .ok_or_else(|| invalid(format!("unknown encryption algorithm {name:?}")))
}

fn parse_signing_algorithm(name: &str) -> Result<SigningAlgorithm, Error> {
    SigningAlgorithm::from_kms_name(name)
        .ok_or_else(|| invalid(format!("unknown signing algorithm {name:?}")))
}

fn message_type(digest: bool) -> MessageType {
    if digest { MessageType::Digest } else { MessageType::Raw }
}

/// Reads the input; `binary` inputs are decoded from base64 when `--base64` is given.
fn read_input(io: &Io, binary: bool) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    match &io.input {
        Some(path) => {
            bytes = std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
        }
        None => {
            std::io::stdin().read_to_end(&mut bytes).map_err(|e| invalid(format!("stdin: {e}")))?;
        }
    }
    if binary && io.base64 { decode_base64(&bytes) } else { Ok(bytes) }
}

fn read_file_maybe_base64(path: &Path, base64: bool) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if base64 { decode_base64(&bytes) } else { Ok(bytes) }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    std::fs::write(path, bytes)
        .map_err(|e| Error::new(exit_code::FAILURE, format!("{}: {e}", path.display())))
}

fn decode_base64(bytes: &[u8]) -> Result<Vec<u8>, Error> {
    let text: Vec<u8> = bytes.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    BASE64.decode(text).map_err(|_| invalid("the input is not valid base64"))
}

/// Writes the output; `binary` outputs are encoded as base64 when `--base64` is given.
fn write_output(io: &Io, bytes: &[u8], binary: bool) -> Result<(), Error> {
    let encoded;
    let bytes = if binary && io.base64 {
        encoded = format!("{}\n", BASE64.encode(bytes));
        encoded.as_bytes()
    } else {
        bytes
    };
    match &io.output {
        Some(path) => std::fs::write(path, bytes)
            .map_err(|e| Error::new(exit_code::FAILURE, format!("{}: {e}", path.display()))),
        None => std::io::stdout()
            .write_all(bytes)
            .and_then(|()| std::io::stdout().flush())
            .map_err(|e| Error::new(exit_code::FAILURE, format!("stdout: {e}"))),
    }
}

/// Writes one line of command output to stdout (see `outln!`).
pub(crate) fn print_line(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(line).and_then(|()| stdout.write_all(b"\n"));
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("kagi: cannot write to stdout: {error}");
            std::process::exit(i32::from(exit_code::FAILURE));
        }
    }
}

struct Printer {
    output: Output,
}

impl Printer {
    fn document(&self, document: &Value) {
        match self.output {
            Output::Json => outln!("{document}"),
            Output::Table => {
                if let Value::Object(map) = document {
                    for (key, value) in map {
                        let shown = match value {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        outln!("{key:<22} {shown}");
                    }
                }
            }
        }
    }

    fn done(&self, message: &str) {
        match self.output {
            Output::Json => outln!("{}", json!({ "Result": message })),
            Output::Table => outln!("{message}"),
        }
    }

    fn metadata(&self, metadata: &KeyMetadata) {
        self.document(&metadata_json(metadata));
    }

    fn key_list(&self, keys: &[KeyMetadata], aliases: &BTreeMap<String, Vec<String>>) {
        match self.output {
            Output::Json => {
                let rows: Vec<Value> = keys.iter().map(metadata_json).collect();
                outln!("{}", json!({ "Keys": rows }));
            }
            Output::Table => {
                outln!(
                    "{:<36}  {:<17}  {:<19}  {:<15}  ALIASES",
                    "KEY ID",
                    "SPEC",
                    "USAGE",
                    "STATE"
                );
                for key in keys {
                    let r = &key.record;
                    let names = aliases.get(&r.id).map(|n| n.join(",")).unwrap_or_default();
                    outln!(
                        "{:<36}  {:<17}  {:<19}  {:<15}  {names}",
                        r.id,
                        r.spec.kms_name(),
                        r.usage.kms_name(),
                        r.state.kms_name()
                    );
                }
            }
        }
    }
}

/// KeyMetadata in the AWS shape, plus the key's tags (which AWS lists apart, ListResourceTags).
fn metadata_json(metadata: &KeyMetadata) -> Value {
    let mut document = crate::api::metadata_json(metadata);
    if !metadata.record.tags.is_empty() {
        document["Tags"] = json!(metadata.record.tags);
    }
    document
}
