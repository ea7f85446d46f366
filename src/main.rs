//! The `kagi` binary: parse the command line, run, turn the outcome into an exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    match kagi::run(std::env::args_os()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kagi: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
