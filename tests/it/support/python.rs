//! The Python tools of the end-to-end API tests (boto3, the AWS CLI, the AWS Encryption SDK,
//! cryptography): a virtualenv made once per test process by `tests/py/venv.sh`, which skips
//! the install when the requirements file has not changed since the last one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use super::server::{REGION, Server};

/// `tests/py`.
pub(crate) fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("py")
}

/// Where the virtualenv lives: `$KAGI_TEST_VENV`, else `py-venv` in cargo's target directory
/// (the binary is `TARGET/PROFILE/kagi`), where `.ci/run` creates it in a stage of its own.
fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KAGI_TEST_VENV") {
        return dir.into();
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_kagi"));
    binary
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("py-venv"))
        .expect("the kagi binary lives in TARGET/PROFILE")
}

/// The virtualenv, created or brought up to date by the first test that needs it; the others
/// wait for it (tests run as threads of one process).
pub(crate) fn venv() -> &'static Path {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let venv = VENV.get_or_init(|| {
        let dir = venv_dir();
        let output = Command::new("bash")
            .arg(scripts_dir().join("venv.sh"))
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run tests/py/venv.sh: {e}"))?;
        if output.status.success() {
            Ok(dir)
        } else {
            Err(format!(
                "tests/py/venv.sh {} failed ({}); it needs python3 with venv and access to \
                 PyPI:\n{}{}",
                dir.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    match venv {
        Ok(dir) => dir,
        Err(message) => panic!("{message}"),
    }
}

/// Runs `program args…` in `tests/py` with the virtualenv first on PATH and the environment of
/// the Python tests: the server's address and CA, each principal's credentials as
/// `KAGI_<NAME>_ACCESS_KEY_ID`/`KAGI_<NAME>_SECRET`, and the first principal's as the standard
/// `AWS_*` variables (for the AWS CLI and the Encryption SDK). Nothing of the caller's AWS
/// configuration leaks in, and no proxy is used.
pub(crate) fn run(server: &Server, program: &str, args: &[&str]) -> Output {
    let venv = venv();
    let bin = venv.join("bin");
    let path = std::env::join_paths(
        std::iter::once(bin.clone())
            .chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths)),
    )
    .expect("PATH");
    let program = if bin.join(program).exists() { bin.join(program) } else { program.into() };
    let mut command = Command::new(program);
    command.args(args).current_dir(scripts_dir());
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("AWS_") || name.to_ascii_lowercase().ends_with("_proxy") {
            command.env_remove(name.as_ref());
        }
    }
    let admin = &server.principals[0];
    command
        .env("PATH", path)
        .env("VIRTUAL_ENV", venv)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("NO_PROXY", "*")
        .env("KAGI_ENDPOINT", server.endpoint())
        .env("KAGI_CA_BUNDLE", &server.ready.ca_bundle)
        .env("KAGI_REGION", REGION)
        .env("KAGI_ACCOUNT", super::server::ACCOUNT)
        .env("AWS_ACCESS_KEY_ID", admin.access_key_id)
        .env("AWS_SECRET_ACCESS_KEY", admin.secret)
        .env("AWS_DEFAULT_REGION", REGION)
        .env("AWS_REGION", REGION)
        .env("AWS_ENDPOINT_URL_KMS", server.endpoint())
        .env("AWS_CA_BUNDLE", &server.ready.ca_bundle)
        .env("AWS_CONFIG_FILE", server.path("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", server.path("no-aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "");
    for p in &server.principals {
        let name = p.name.to_ascii_uppercase();
        command
            .env(format!("KAGI_{name}_ACCESS_KEY_ID"), p.access_key_id)
            .env(format!("KAGI_{name}_SECRET"), p.secret);
    }
    command.output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"))
}

/// Runs a test script and requires it to pass; on failure prints its output and the server log.
pub(crate) fn check(server: &Server, program: &str, args: &[&str]) {
    let output = run(server, program, args);
    let log = server.log();
    let report = || {
        format!(
            "{program} {args:?}: {}\n--- stdout\n{}\n--- stderr\n{}\n--- server log (last 60 \
             lines)\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&log, 60)
        )
    };
    assert!(output.status.success(), "{}", report());
    assert!(!log.contains("panicked"), "the server panicked: {}", report());
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
