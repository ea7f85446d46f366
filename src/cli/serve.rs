//! `kagi serve`: load the configuration, open (or on first run create) the keystore, serve
//! until SIGINT or SIGTERM. A keystore whose root key is split into shares starts sealed and
//! waits for `kagi unseal` (`server::unseal`) before it opens anything else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args as ClapArgs;

use super::remote::{ServerInfo, ServerLock};
use super::{Args, keystore_for_server, load_root};
use crate::config::Config;
use crate::error::{Error, exit_code};
use crate::keystore::store::StoreSettings;
use crate::keystore::{Keystore, RootKey, RootKeySource, SharePolicy};
use crate::server::unseal::await_unseal;
use crate::server::{Ready, ServeError, write_atomically};

/// `kagi serve`.
#[derive(Debug, ClapArgs)]
pub struct ServeArgs {
    /// The TOML configuration (default: the embedded default, paths relative to the current
    /// directory).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write the listening addresses here (JSON) once the listeners are up.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// Runs the server on a multi-threaded runtime.
pub(super) fn run(args: &Args, serve: &ServeArgs) -> Result<(), Error> {
    let config = match &serve.config {
        Some(path) => Config::load(path),
        None => Config::embedded(Path::new(".")),
    }
    .map_err(|error| Error::new(exit_code::INVALID, error.to_string()))?;
    run_config(args, config, serve.config.as_deref(), serve.ready_file.as_deref(), None)
}

/// Serves `config` (read from `config_path`, which reloads, if given) until SIGINT or SIGTERM,
/// creating the keystore on first start. With `backend`, the sample backend runs on that
/// listener too (`kagi demo`).
pub(super) fn run_config(
    args: &Args,
    config: Config,
    config_path: Option<&Path>,
    ready_file: Option<&Path>,
    backend: Option<std::net::TcpListener>,
) -> Result<(), Error> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    harden(config.lock_memory);
    if crate::crypto::FIPS {
        // `cli::run` has checked the module is in FIPS mode before anything else ran.
        tracing::info!("FIPS mode: the AWS-LC FIPS module is in FIPS mode (self-tests passed)");
    }
    let root_source = super::shares::root_source(
        &config.data_dir,
        config.root_passphrase_env.as_ref().or(args.root_passphrase_env.as_ref()),
        &args.share_files,
    )?;
    let backend_kind = config.backend.backend();
    let fresh = std::fs::read_dir(&config.data_dir).map_or(true, |mut dir| dir.next().is_none());
    if fresh {
        // First run: create the keystore. A directory with anything in it is never
        // re-initialised, so a missing root key is an error, not a silent new keystore.
        let made = match config.store {
            // The keys live in the shared database: only the root key is local.
            StoreSettings::Postgres(_) => {
                RootKey::create(backend_kind, &config.data_dir, &root_source).map(drop)
            }
            StoreSettings::Sqlite => Keystore::init(backend_kind, &config.data_dir, &root_source),
        };
        made.map_err(|error| Error::new(exit_code::STORAGE, error.to_string()))?;
        tracing::info!(data_dir = %config.data_dir.display(), "initialised a new keystore");
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|error| {
            Error::new(exit_code::FAILURE, format!("cannot start the runtime: {error}"))
        })?;
    let mut lock = ServerLock::acquire(&config.data_dir)?;
    runtime.block_on(async {
        if let Some(listener) = backend {
            let _ = listener.set_nonblocking(true);
            let listener = tokio::net::TcpListener::from_std(listener)
                .map_err(|e| Error::new(exit_code::FAILURE, e.to_string()))?;
            tokio::spawn(crate::demo::sample_backend(listener));
        }
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let root = match &root_source {
            // A split root key and no share files: start sealed, as Vault does.
            RootKeySource::Shares { files } if files.is_empty() => {
                let policy = SharePolicy::read(&config.data_dir)
                    .ok()
                    .flatten()
                    .ok_or_else(|| Error::new(exit_code::STORAGE, "root.shares went away"))?;
                let unsealed =
                    await_unseal(backend_kind, &config.data_dir, policy, shutdown.as_mut())
                        .await
                        .map_err(|error| Error::new(exit_code::FAILURE, error.to_string()))?;
                match unsealed {
                    Some(root) => root,
                    // SIGTERM or SIGINT while sealed: nothing was opened.
                    None => return Ok(()),
                }
            }
            source => load_root(backend_kind, &config.data_dir, source)?,
        };
        let keystore = Arc::new(
            keystore_for_server(
                backend_kind,
                &config.data_dir,
                root,
                &config.store,
                config.partition.clone(),
                &config.audit,
            )
            .await?,
        );
        // `kagi root-key rotate` talks to it; a rotation a stop interrupted resumes.
        let settle = config.store.poll_interval().map_or(Duration::ZERO, |poll| poll * 2);
        let _control =
            crate::server::control::start(Arc::clone(&keystore), &config.data_dir, settle)
                .map_err(|error| Error::new(exit_code::FAILURE, error.to_string()))?;
        let region = config.partition.region.clone();
        let on_ready = |ready: &Ready| {
            let info = ServerInfo {
                pid: std::process::id(),
                api: ready.api.to_string(),
                ca_bundle: ready.ca_bundle.clone(),
                region: region.clone(),
            };
            lock.publish(&info)
                .map_err(|e| ServeError(format!("cannot publish the address: {e}")))?;
            if let Some(path) = ready_file {
                let text = serde_json::to_string(ready).map_err(|e| ServeError(e.to_string()))?;
                write_atomically(path, text.as_bytes())
                    .map_err(|e| ServeError(format!("cannot write {}: {e}", path.display())))?;
            }
            Ok(())
        };
        crate::server::serve(config, config_path, keystore, on_ready, shutdown)
            .await
            .map_err(|error| Error::new(exit_code::FAILURE, error.to_string()))
    })
}

/// Disables core dumps and locks memory (see `crate::hardening`), and logs what the kernel
/// reports: a failure is a warning, not a refusal to start.
fn harden(lock_memory: bool) {
    let core = crate::hardening::disable_core_dumps();
    match &core.error {
        None => tracing::info!(
            core_limit_zero = core.limit_zero,
            dumpable = !core.not_dumpable,
            "core dumps disabled"
        ),
        Some(error) => tracing::warn!(
            core_limit_zero = core.limit_zero,
            dumpable = !core.not_dumpable,
            %error,
            "core dumps not fully disabled"
        ),
    }
    let memory = crate::hardening::lock_memory(lock_memory);
    if memory.is_locked() {
        tracing::info!(locked = true, "{memory}");
    } else if memory == crate::hardening::MemoryLock::Disabled {
        tracing::info!(locked = false, "{memory}");
    } else {
        tracing::warn!(locked = false, "{memory}");
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
