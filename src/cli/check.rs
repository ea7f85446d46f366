//! `kagi check-config FILE`: the checks `kagi serve` makes on its configuration, offline, with
//! the same messages, and a non-zero exit when one fails.
//!
//! Always: the file parses and validates (every reference resolves, names and addresses are
//! unique), every certificate it names is in the data directory's store, and every CA bundle it
//! names reads. When no server holds the data directory and the keystore opens: also that each
//! certificate's public key is its keystore key's, and that each envelope route's key exists —
//! the checks a reload makes. With a server running, those two are left to the server: a reload
//! (SIGHUP) makes them and refuses the file naming the problem.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args as ClapArgs;

use super::remote::{self, Access};
use crate::config::Config;
use crate::error::{Error, exit_code};
use crate::tls::CertStore;

/// `kagi check-config`.
#[derive(Debug, ClapArgs)]
pub struct CheckConfigArgs {
    /// The TOML configuration to check.
    pub file: PathBuf,
}

/// Loads and validates the file, then checks what it names.
pub(super) fn run(args: &super::Args, check: &CheckConfigArgs) -> Result<(), Error> {
    let file = check.file.display().to_string();
    let invalid = |message: String| Error::new(exit_code::INVALID, format!("{file}: {message}"));
    let config = Config::load(&check.file)
        .map_err(|error| Error::new(exit_code::INVALID, error.to_string()))?;
    let store = CertStore::new(&config.data_dir);
    let exists = config.data_dir.exists();
    let mut certificates: Vec<(String, String)> = Vec::new();
    if let Some(name) = &config.api.certificate {
        certificates.push(("[api] certificate".into(), name.clone()));
    }
    for listener in &config.proxy.listeners {
        for name in listener.tls.iter().flat_map(|tls| &tls.certificates) {
            certificates.push((format!("listener {:?}", listener.name), name.clone()));
        }
        let client_ca =
            listener.tls.as_ref().and_then(|tls| Some((tls.client_ca.as_deref()?, tls)));
        if let Some((ca, tls)) = client_ca {
            let resolver = Arc::new(crate::tls::SniResolver::new());
            let sessions = crate::tls::SessionState::new().map_err(|e| invalid(e.to_string()))?;
            crate::tls::server_config(resolver, Some(ca), tls.profile, &sessions)
                .map_err(|e| invalid(format!("listener {:?}: client_ca: {e}", listener.name)))?;
        }
    }
    for upstream in &config.proxy.upstreams {
        let counter =
            prometheus::IntCounter::new("check", "check").map_err(|e| invalid(e.to_string()))?;
        let histogram =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("check", "check"))
                .map_err(|e| invalid(e.to_string()))?;
        crate::proxy::Pool::new(Arc::clone(upstream), counter, histogram).map_err(invalid)?;
    }
    if exists {
        for (what, name) in &certificates {
            if !store.exists(name) {
                return Err(invalid(format!(
                    "{what}: certificate {name:?} is not in {} (see `kagi certs list`)",
                    config.data_dir.join("certs").display()
                )));
            }
        }
    }
    let keys = if !exists {
        "not checked: the data directory does not exist yet".to_owned()
    } else if let crate::keystore::store::StoreSettings::Postgres(settings) = &config.store {
        format!(
            "not checked here: the keys are in {} (SIGHUP a node: its reload checks them and \
             refuses the file naming the problem)",
            crate::keystore::store::redact_url(&settings.url)
        )
    } else {
        match remote::access(&config.data_dir)? {
            Access::Remote(info) => format!(
                "not checked here: the server at {} holds the data directory (SIGHUP it: a \
                 reload checks them and refuses the file naming the problem)",
                info.api
            ),
            Access::Direct(_lock) => {
                check_keys(args, &config, &store, &certificates).map_err(invalid)?
            }
        }
    };
    outln!(
        "{file}: ok (api {}, admin {}, {} principal(s), {} listener(s), {} route(s), data \
         directory {}; certificate and envelope keys {keys})",
        config.api.listen,
        config.admin.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        config.principals.iter().count(),
        config.proxy.listeners.len(),
        config.proxy.routes.len(),
        config.data_dir.display()
    );
    Ok(())
}

/// Opens the keystore and checks each certificate against its key and each envelope route's
/// key exists, as a reload does.
fn check_keys(
    args: &super::Args,
    config: &Config,
    store: &CertStore,
    certificates: &[(String, String)],
) -> Result<String, String> {
    let root_source = super::shares::root_source(
        &config.data_dir,
        config.root_passphrase_env.as_ref().or(args.root_passphrase_env.as_ref()),
        &args.share_files,
    )
    .map_err(|e| format!("the keystore: {e}"))?;
    let keystore = super::open(config.backend.backend(), &config.data_dir, &root_source)
        .map_err(|e| format!("the keystore: {e}"))?;
    let keystore = Arc::new(keystore);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        for (what, name) in certificates {
            let stored = store.load(name).map_err(|e| format!("{what}: {e}"))?;
            crate::tls::load_entry(&keystore, stored).await.map_err(|e| format!("{what}: {e}"))?;
        }
        let keys = crate::envelope::KeystoreKeys::without_key_policies(
            Arc::clone(&keystore),
            "check-config",
        );
        for route in &config.proxy.routes {
            let Some(envelope) = &route.envelope else { continue };
            crate::envelope::KeyService::key_arn(&keys, &envelope.principal, &envelope.key)
                .await
                .map_err(|e| format!("route {:?}: key {:?}: {e}", route.name, envelope.key))?;
        }
        Ok::<_, String>("checked".to_owned())
    })
}
