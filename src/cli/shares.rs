//! The root key split into shares, from the command line: `kagi init --shares N --threshold K`
//! (split it and hand the shares out once), `kagi unseal` (give a sealed `kagi serve` one
//! share), and which root key source a command uses.
//!
//! Commands that open the keystore themselves (`kagi keys list`, …) take the shares as
//! `--share-file FILE`, repeated K times; stdin stays theirs for data. `kagi serve` without
//! `--share-file` starts sealed and waits for `kagi unseal` (see `server::unseal`).

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;
use zeroize::Zeroizing;

use crate::crypto::CryptoBackend;
use crate::error::{Error, exit_code};
use crate::keystore::shares::MAX_SHARE_TEXT;
use crate::keystore::{Keystore, RootKeySource, RootShare, SharePolicy};
use crate::server::unseal::{Reply, SOCKET_FILE, send_share};

/// `kagi init`.
#[derive(Debug, ClapArgs)]
pub struct InitArgs {
    /// Split the root key into this many shares (2–255), no single one of which opens the
    /// keystore; no root.key is written.
    #[arg(long, requires = "threshold")]
    pub shares: Option<u8>,
    /// How many of the shares unseal the keystore (2 to --shares).
    #[arg(long, requires = "shares")]
    pub threshold: Option<u8>,
    /// Write each share to DIR/share-INDEX.txt (mode 0600) instead of stdout.
    #[arg(long, requires = "shares")]
    pub shares_dir: Option<PathBuf>,
}

/// The root key source of a command on `data_dir`: a split root key's shares from
/// `share_files`, else the passphrase variable, else `root.key`.
///
/// # Errors
/// When the options do not fit the directory: shares given for a root key that is not split,
/// a passphrase for one that is, or a split root key and no shares (saying how to give them).
pub(super) fn root_source(
    data_dir: &Path,
    passphrase_env: Option<&String>,
    share_files: &[PathBuf],
) -> Result<RootKeySource, Error> {
    let policy = SharePolicy::read(data_dir)
        .map_err(|error| Error::new(exit_code::STORAGE, error.message().to_owned()))?;
    match (policy, passphrase_env) {
        (None, _) if !share_files.is_empty() => Err(Error::new(
            exit_code::USAGE,
            format!(
                "--share-file is for a data directory made with `kagi init --shares`, and the \
                 root key of {} is not split",
                data_dir.display()
            ),
        )),
        (None, Some(env_var)) => Ok(RootKeySource::Passphrase { env_var: env_var.clone() }),
        (None, None) => Ok(RootKeySource::File),
        (Some(_), Some(env_var)) => Err(Error::new(
            exit_code::USAGE,
            format!(
                "the root key of {} is split into shares, not derived from a passphrase: unset \
                 {env_var} (--root-passphrase-env, KAGI_ROOT_PASSPHRASE_ENV, root_passphrase_env)",
                data_dir.display()
            ),
        )),
        (Some(_), None) => Ok(RootKeySource::Shares { files: share_files.to_vec() }),
    }
}

/// Refuses a command on a split root key without shares, saying how to give them.
pub(super) fn require_shares(data_dir: &Path, source: &RootKeySource) -> Result<(), Error> {
    let RootKeySource::Shares { files } = source else { return Ok(()) };
    if !files.is_empty() {
        return Ok(());
    }
    let threshold = SharePolicy::read(data_dir)
        .ok()
        .flatten()
        .map_or_else(|| "K".to_owned(), |policy| policy.threshold().to_string());
    Err(Error::new(
        exit_code::USAGE,
        format!(
            "the root key of {} is split into shares: give this command {threshold} of them \
             with --share-file FILE (repeated), or run `kagi serve` and unseal it with `kagi \
             unseal`",
            data_dir.display()
        ),
    ))
}

/// `kagi init --shares N --threshold K [--shares-dir DIR]`.
pub(super) fn init(
    backend: &'static dyn CryptoBackend,
    data_dir: &Path,
    passphrase_env: Option<&String>,
    init: &InitArgs,
) -> Result<(), Error> {
    let (Some(shares), Some(threshold)) = (init.shares, init.threshold) else {
        return Err(Error::new(exit_code::USAGE, "--shares and --threshold go together"));
    };
    if passphrase_env.is_some() {
        return Err(Error::new(
            exit_code::USAGE,
            "--shares and a root passphrase are two different root keys: choose one",
        ));
    }
    let policy = SharePolicy::new(backend, shares, threshold)
        .map_err(|error| Error::new(exit_code::USAGE, error.message().to_owned()))?;
    // Checked before the keystore exists, so a directory that cannot take the shares does not
    // leave a keystore no one can unseal.
    if let Some(dir) = &init.shares_dir {
        prepare_shares_dir(dir, shares)?;
    }
    let split = Keystore::init_split(backend, data_dir, policy).map_err(super::keystore_error)?;
    let summary = format!(
        "initialised a keystore in {} whose root key is split into {shares} shares, any \
         {threshold} of which unseal it; no root.key is kept",
        data_dir.display()
    );
    hand_out(&split, init.shares_dir.as_deref(), &summary).map_err(|e| lost_shares(data_dir, &e))
}

/// Shows new shares once: on stdout (the summary on stderr), or one file per share in `dir`
/// (mode 0600).
///
/// # Errors
/// When they cannot be written: they are then lost.
pub(super) fn hand_out(
    split: &[RootShare],
    dir: Option<&Path>,
    summary: &str,
) -> std::io::Result<()> {
    let shares = split.len();
    let Some(dir) = dir else {
        eprintln!("{summary}");
        eprintln!(
            "the {shares} shares below are shown only once: give each to a different person \
             and keep no copy here"
        );
        let mut stdout = std::io::stdout().lock();
        for share in split {
            writeln!(stdout, "{}", share.to_text().as_str())?;
        }
        return stdout.flush();
    };
    outln!("{summary}");
    for share in split {
        let path = dir.join(format!("share-{}.txt", share.index()));
        let mut text = share.to_text();
        text.push('\n');
        write_private(&path, text.as_bytes())?;
        outln!("share {} written to {}", share.index(), path.display());
    }
    outln!(
        "these files are the only copies of the shares: give each to a different person, then \
         delete them here"
    );
    Ok(())
}

/// `kagi unseal`: one share, from `--share-file` or one line of stdin, to the sealed server.
pub(super) async fn unseal(data_dir: &Path, share_files: &[PathBuf]) -> Result<(), Error> {
    let text = match share_files {
        [] => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("paste one share and press Enter:");
            }
            // Sized once, so the line is never moved to a bigger buffer (leaving a copy).
            let mut line = Zeroizing::new(String::with_capacity(MAX_SHARE_TEXT + 1));
            std::io::stdin()
                .lock()
                .take(u64::try_from(MAX_SHARE_TEXT).unwrap_or(u64::MAX))
                .read_line(&mut line)
                .map_err(|e| Error::new(exit_code::FAILURE, format!("cannot read stdin: {e}")))?;
            line
        }
        [path] => {
            let mut text = Zeroizing::new(String::with_capacity(MAX_SHARE_TEXT + 1));
            std::fs::File::open(path)
                .and_then(|file| {
                    file.take(u64::try_from(MAX_SHARE_TEXT).unwrap_or(u64::MAX))
                        .read_to_string(&mut text)
                })
                .map_err(|e| {
                    Error::new(exit_code::INVALID, format!("cannot read {}: {e}", path.display()))
                })?;
            text
        }
        _ => {
            return Err(Error::new(
                exit_code::USAGE,
                "kagi unseal gives the server one share: pass --share-file once (each share \
                 holder runs kagi unseal)",
            ));
        }
    };
    let socket = data_dir.join(SOCKET_FILE);
    let reply = send_share(data_dir, &text).await.map_err(|error| {
        Error::new(
            exit_code::FAILURE,
            format!(
                "no sealed server answers on {} ({error}): is `kagi serve` running on {} and \
                 still sealed?",
                socket.display(),
                data_dir.display()
            ),
        )
    })?;
    match reply {
        Reply::Need { have, threshold } => {
            outln!("share accepted: {have} of {threshold} shares, waiting for more");
            Ok(())
        }
        Reply::Unsealed => {
            outln!("unsealed");
            Ok(())
        }
        Reply::Refused { message, reset: false } => {
            Err(Error::new(exit_code::REJECTED, format!("share refused: {message}")))
        }
        Reply::Refused { message, reset: true } => Err(Error::new(
            exit_code::REJECTED,
            format!("{message}; every share given so far is dropped: start again"),
        )),
    }
}

/// Makes `dir` (mode 0700) and checks no share file of a previous split is in the way.
pub(super) fn prepare_shares_dir(dir: &Path, shares: u8) -> Result<(), Error> {
    let fail =
        |e: std::io::Error| Error::new(exit_code::STORAGE, format!("{}: {e}", dir.display()));
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        {
            use std::os::unix::fs::DirBuilderExt as _;
            builder.mode(0o700);
        }
        builder.create(dir).map_err(fail)?;
    }
    for index in 1..=shares {
        let path = dir.join(format!("share-{index}.txt"));
        if path.exists() {
            return Err(Error::new(
                exit_code::STORAGE,
                format!("{} already exists: choose an empty --shares-dir", path.display()),
            ));
        }
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn lost_shares(data_dir: &Path, error: &std::io::Error) -> Error {
    Error::new(
        exit_code::STORAGE,
        format!(
            "cannot hand out the shares ({error}): the keystore in {} can never be unsealed; \
             delete it and run kagi init again",
            data_dir.display()
        ),
    )
}
