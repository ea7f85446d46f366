//! `kagi check-config FILE`: the checks `kagi serve` makes on its configuration, offline, with
//! the same messages, and a non-zero exit when one fails.

use std::path::PathBuf;

use clap::Args as ClapArgs;

use crate::config::Config;
use crate::error::{Error, exit_code};
use crate::tls::CertStore;

/// `kagi check-config`.
#[derive(Debug, ClapArgs)]
pub struct CheckConfigArgs {
    /// The TOML configuration to check.
    pub file: PathBuf,
}

/// Loads and validates the file, then checks what it names exists: the API's certificate in
/// the data directory's store (when the directory exists already).
pub(super) fn run(args: &CheckConfigArgs) -> Result<(), Error> {
    let config = Config::load(&args.file)
        .map_err(|error| Error::new(exit_code::INVALID, error.to_string()))?;
    if let Some(name) = &config.api.certificate
        && config.data_dir.exists()
        && !CertStore::new(&config.data_dir).exists(name)
    {
        return Err(Error::new(
            exit_code::INVALID,
            format!(
                "{}: [api] certificate {name:?} is not in {} (see `kagi certs list`)",
                args.file.display(),
                config.data_dir.join("certs").display()
            ),
        ));
    }
    println!(
        "{}: ok (api {}, admin {}, {} principal(s), data directory {})",
        args.file.display(),
        config.api.listen,
        config.admin.map_or_else(|| "none".to_owned(), |a| a.to_string()),
        config.principals.iter().count(),
        config.data_dir.display()
    );
    Ok(())
}
