//! Test harness: a temporary data directory and the real `kagi` binary run against it; `kagi
//! serve` started for a test ([`server`]) and the Python tools that drive it ([`python`]).

pub(crate) mod postgres;
pub(crate) mod python;
pub(crate) mod server;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A keystore in a temporary directory, driven through the `kagi` binary.
pub(crate) struct Kagi {
    dir: tempfile::TempDir,
    /// The clock the binary sees (`KAGI_FAKE_NOW`), in epoch seconds.
    pub(crate) now: i64,
}

/// What one run of the binary did.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not json ({e}): {}", self.stdout_text()))
    }
}

impl Kagi {
    /// A fresh, initialised keystore.
    pub(crate) fn new() -> Self {
        let kagi = Self::uninitialised();
        kagi.ok(&["init"]);
        kagi
    }

    /// A temporary directory with no keystore yet.
    pub(crate) fn uninitialised() -> Self {
        Self { dir: tempfile::tempdir().expect("tempdir"), now: 1_800_000_000 }
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `kagi --data-dir DIR ARGS…` with `stdin`.
    pub(crate) fn run_with_input(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run_with_env(args, stdin, &[])
    }

    /// Runs `kagi --data-dir DIR ARGS…` with `stdin` and the environment variables `env`
    /// (and no AWS credentials but those).
    pub(crate) fn run_with_env(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kagi"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(args)
            .env("KAGI_FAKE_NOW", self.now.to_string())
            .env_remove("KAGI_DATA_DIR")
            .env_remove("KAGI_ROOT_PASSPHRASE_ENV")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_PROFILE")
            .env("AWS_SHARED_CREDENTIALS_FILE", self.path("no-such-credentials"))
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kagi");
        child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
        let Output { status, stdout, stderr } = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        assert!(!stderr.contains("panicked"), "kagi panicked: {stderr}");
        Run { code: status.code().unwrap_or(-1), stdout, stderr }
    }

    pub(crate) fn run(&self, args: &[&str]) -> Run {
        self.run_with_input(args, b"")
    }

    /// Runs and requires success.
    pub(crate) fn ok(&self, args: &[&str]) -> Run {
        let run = self.run(args);
        assert_eq!(run.code, 0, "kagi {args:?} failed: {}", run.stderr);
        run
    }

    /// Runs and requires exit `code`, with one line on stderr.
    pub(crate) fn fails(&self, args: &[&str], code: i32) -> Run {
        let run = self.run(args);
        assert_eq!(
            run.code,
            code,
            "kagi {args:?}: stdout {} stderr {}",
            run.stdout_text(),
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "one line on stderr: {}", run.stderr);
        run
    }

    /// Creates a key, returns its id.
    pub(crate) fn create_key(&self, extra: &[&str]) -> String {
        let mut args = vec!["--output", "json", "keys", "create"];
        args.extend_from_slice(extra);
        let metadata = self.ok(&args).json();
        metadata["KeyId"].as_str().expect("KeyId").to_owned()
    }

    pub(crate) fn describe(&self, key: &str) -> serde_json::Value {
        self.ok(&["--output", "json", "keys", "describe", key]).json()
    }

    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).expect("write");
        path
    }
}

pub(crate) fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// A plain HTTP/1.1 GET with std only (for the admin listener): the whole response.
pub(crate) fn http_get(address: &str, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}
