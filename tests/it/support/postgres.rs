//! A throwaway PostgreSQL cluster for a test (tests/pg/cluster.sh), stopped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster in a temporary directory, reached over its Unix socket.
pub(crate) struct PgCluster {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// The URL of its `postgres` database.
    pub(crate) url: String,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg/cluster.sh")
}

fn postgres_installed() -> bool {
    Command::new("sh")
        .args([
            "-c",
            "command -v pg_config >/dev/null || ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1",
        ])
        .status()
        .is_ok_and(|status| status.success())
}

impl PgCluster {
    /// Starts a new cluster; `None` (the test is skipped, saying so) when PostgreSQL is not
    /// installed, except under `CI=true`, where that fails.
    pub(crate) fn start() -> Option<Self> {
        if !postgres_installed() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not installed: .ci/run installs it"
            );
            eprintln!("PostgreSQL is not installed: skipping this test");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // The cluster runs as the postgres user when the tests run as root: let it in.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let path = dir.path().join("pg");
        let output = Command::new("bash")
            .arg(script())
            .args(["start", path.to_str().expect("utf-8")])
            .output()
            .expect("run cluster.sh");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let url = String::from_utf8(output.stdout).expect("utf-8").trim().to_owned();
        Some(Self { _dir: dir, path, url })
    }

    fn run(&self, command: &str) {
        let output = Command::new("bash")
            .arg(script())
            .args([command, self.path.to_str().expect("utf-8")])
            .output()
            .expect("run cluster.sh");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    /// Stops the database (fast shutdown: sessions are cut).
    pub(crate) fn stop(&self) {
        self.run("stop");
    }

    /// Starts it again after [`PgCluster::stop`].
    pub(crate) fn start_again(&self) {
        self.run("restart");
    }

    /// A `[store]` table for kagi on this cluster, with short deadlines and polls for tests.
    pub(crate) fn store_table(&self) -> String {
        format!(
            "[store]\nurl = {:?}\ntimeout_ms = 3000\npoll_interval_ms = 100\npool_size = 4\n",
            self.url
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["stop", self.path.to_str().unwrap_or_default()])
            .output();
    }
}
