//! The `kagi` command line: clap arguments, kept low level, and the dispatch to the library.

use std::ffi::OsString;

use clap::{Parser, Subcommand};

use crate::error::{Error, exit_code};

/// kagi: a managed keystore modelled on AWS KMS, and a TLS-terminating reverse proxy.
#[derive(Debug, Parser)]
#[command(name = "kagi", version, about)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Demonstrates the crypto layer on both backends.
    Demo,
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
            let code = if error.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::OK
            };
            let _ = error.print();
            return if code == exit_code::OK {
                Ok(())
            } else {
                Err(Error::new(code, "invalid usage"))
            };
        }
    };
    match args.command {
        Command::Demo => Ok(()),
    }
}
