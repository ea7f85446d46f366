//! `kagi root-key rotate`: a new root key of the same kind (a `root.key` file, a passphrase,
//! or shares), every version of key material re-sealed under it. While `kagi serve` holds the
//! data directory, the server does the work (over `DATA_DIR/control.sock`) and keeps serving;
//! otherwise this command opens the keystore itself. See `keystore::root_rotation` for the
//! steps and how an interrupted rotation resumes.

use std::path::{Path, PathBuf};

use clap::{Args as ClapArgs, Subcommand};
use serde_json::json;

use super::{Args, Printer, remote, shares};
use crate::crypto::CryptoBackend;
use crate::error::{Error, exit_code};
use crate::keystore::{NextRoot, NextRootSource, RootRotation, SharePolicy};
use crate::server::control::{self, Reply, Request};

/// `kagi root-key …`.
#[derive(Debug, Subcommand)]
pub enum RootKeyCommand {
    /// Re-seals every version of key material under a new root key of the same kind, while a
    /// server keeps serving; an interrupted rotation is resumed (by the server when it starts
    /// again, or by running this again).
    Rotate(RotateArgs),
}

/// `kagi root-key rotate`.
#[derive(Debug, ClapArgs)]
pub struct RotateArgs {
    /// For a root key derived from a passphrase: the environment variable holding the new
    /// passphrase (set it in the server's environment before its next start).
    #[arg(long)]
    pub new_passphrase_env: Option<String>,
    /// For a split root key: how many new shares (default: as many as now).
    #[arg(long)]
    pub shares: Option<u8>,
    /// For a split root key: how many new shares unseal (default: as many as now).
    #[arg(long)]
    pub threshold: Option<u8>,
    /// For a split root key: write each new share to DIR/share-INDEX.txt (mode 0600) instead
    /// of stdout.
    #[arg(long)]
    pub shares_dir: Option<PathBuf>,
}

/// Runs `command` on `args.data_dir`.
///
/// # Errors
/// Options that do not fit the root key's kind, a keystore that cannot be opened, or a
/// rotation that fails (it then resumes later: the message says so).
pub(super) async fn run(
    backend: &'static dyn CryptoBackend,
    args: &Args,
    command: &RootKeyCommand,
) -> Result<(), Error> {
    let RootKeyCommand::Rotate(rotate) = command;
    let data_dir = &args.data_dir;
    let source = next_source(data_dir, args, rotate)?;
    // Taken before the new key is made: a command that cannot reach the keystore hands out
    // no shares.
    let access = remote::access(data_dir)?;
    if let remote::Access::Direct(_) = &access
        && data_dir.join(super::SHARED_STORE_MARKER).exists()
    {
        return Err(Error::new(
            exit_code::STORAGE,
            format!(
                "the keys of {} are in PostgreSQL: run this while `kagi serve` serves on it",
                data_dir.display()
            ),
        ));
    }
    let (next, split) = NextRoot::generate(backend, &source)
        .map_err(|error| Error::new(exit_code::USAGE, error.message().to_owned()))?;
    if !split.is_empty() {
        if let Some(dir) = &rotate.shares_dir {
            shares::prepare_shares_dir(dir, u8::try_from(split.len()).unwrap_or(u8::MAX))?;
        }
        let summary = format!(
            "the new root key of {} is split into {} shares, any {} of which unseal it; they \
             replace the current shares once the rotation commits",
            data_dir.display(),
            split.len(),
            rotate
                .threshold
                .or_else(|| current_policy(data_dir).map(|p| p.threshold()))
                .unwrap_or(0)
        );
        // Before anything changes: once the rotation commits, these are the only way in.
        shares::hand_out(&split, rotate.shares_dir.as_deref(), &summary).map_err(|error| {
            Error::new(
                exit_code::STORAGE,
                format!("cannot hand out the new shares ({error}): the rotation was not started"),
            )
        })?;
    }
    let out = Printer { output: args.output };
    let done = match access {
        remote::Access::Remote(_) => {
            let request = Request::RotateRoot { next: next.to_wire() };
            drop(next);
            let reply = control::send(data_dir, &request).await.map_err(|error| {
                Error::new(
                    exit_code::FAILURE,
                    format!(
                        "cannot reach the server's control socket {}: {error}",
                        data_dir.join(control::SOCKET_FILE).display()
                    ),
                )
            })?;
            match reply {
                Reply::Rotated(done) => done,
                Reply::Failed { message } => return Err(stopped(&message)),
            }
        }
        remote::Access::Direct(lock) => {
            // Alone on the directory: no other command may seal under the old key meanwhile.
            drop(lock);
            let _lock = remote::ServerLock::acquire(data_dir)?;
            let root_source = shares::root_source(
                data_dir,
                args.root_passphrase_env.as_ref(),
                &args.share_files,
            )?;
            let keystore = super::open(backend, data_dir, &root_source)?;
            let ctx = super::cli_context(&keystore)?;
            keystore
                .rotate_root(&ctx, data_dir, next, std::time::Duration::ZERO)
                .await
                .map_err(|error| stopped(error.message()))?
        }
    };
    report(&out, data_dir, &source, done);
    Ok(())
}

/// What a stopped rotation tells the operator.
fn stopped(message: &str) -> Error {
    Error::new(
        exit_code::FAILURE,
        format!(
            "the root key rotation stopped: {message}. Nothing is lost: it resumes when the \
             server starts again, or when this command runs again"
        ),
    )
}

fn report(out: &Printer, data_dir: &Path, source: &NextRootSource, done: RootRotation) {
    let now_in = match source {
        NextRootSource::File => format!("{}", data_dir.join("root.key").display()),
        NextRootSource::Passphrase { env_var } => {
            format!("the passphrase of {env_var} (give it to the server from its next start)")
        }
        NextRootSource::Shares { .. } => "the new shares".to_owned(),
    };
    let message = format!(
        "root key rotated: {} versions of {} keys re-sealed; the root key is now {now_in}, and \
         the old one opens nothing",
        done.versions, done.keys
    );
    match out.output {
        super::Output::Json => out.document(
            &json!({"RotatedKeys": done.keys, "ResealedVersions": done.versions, "Result": message}),
        ),
        super::Output::Table => out.done(&message),
    }
}

fn current_policy(data_dir: &Path) -> Option<SharePolicy> {
    SharePolicy::read(data_dir).ok().flatten()
}

/// The kind of new key `data_dir`'s root key calls for, from the options.
fn next_source(data_dir: &Path, args: &Args, rotate: &RotateArgs) -> Result<NextRootSource, Error> {
    let usage = |message: String| Error::new(exit_code::USAGE, message);
    if !data_dir.join("root.check").exists() {
        return Err(Error::new(
            exit_code::STORAGE,
            format!("{} holds no keystore", data_dir.display()),
        ));
    }
    if let Some(policy) = current_policy(data_dir) {
        if rotate.new_passphrase_env.is_some() {
            return Err(usage(
                "the root key is split into shares: --new-passphrase-env does not apply".into(),
            ));
        }
        return Ok(NextRootSource::Shares {
            shares: rotate.shares.unwrap_or(policy.shares()),
            threshold: rotate.threshold.unwrap_or(policy.threshold()),
        });
    }
    if rotate.shares.is_some() || rotate.threshold.is_some() || rotate.shares_dir.is_some() {
        return Err(usage(format!(
            "the root key of {} is not split into shares: --shares, --threshold and \
             --shares-dir do not apply",
            data_dir.display()
        )));
    }
    if data_dir.join("root.salt").exists() {
        let env_var = rotate.new_passphrase_env.clone().ok_or_else(|| {
            usage(
                "the root key derives from a passphrase: give the new one with \
                 --new-passphrase-env VAR"
                    .into(),
            )
        })?;
        if args.root_passphrase_env.as_ref() == Some(&env_var) {
            return Err(usage(
                "--new-passphrase-env must name another variable than the current passphrase's"
                    .into(),
            ));
        }
        return Ok(NextRootSource::Passphrase { env_var });
    }
    if rotate.new_passphrase_env.is_some() {
        return Err(usage(format!(
            "the root key of {} is a root.key file: --new-passphrase-env does not apply",
            data_dir.display()
        )));
    }
    Ok(NextRootSource::File)
}
