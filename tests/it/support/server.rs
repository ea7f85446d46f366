//! `kagi serve` in a temporary directory: a configuration written for the test, the real binary
//! started on port 0, its addresses read from the ready file, and the process killed on drop
//! (also when the test panics).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kagi::api::client::{Client, Credentials, HttpVersion, tls_config};
use kagi::crypto::SecretBytes;

/// The region and account of the test server's ARNs.
pub(crate) const REGION: &str = "us-east-1";
pub(crate) const ACCOUNT: &str = "111122223333";

/// How long the server may take to start listening before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A principal the test server knows.
#[derive(Clone, Debug)]
pub(crate) struct TestPrincipal {
    /// Its name; the environment variables of the Python tests use it upper-cased.
    pub(crate) name: &'static str,
    pub(crate) access_key_id: &'static str,
    pub(crate) secret: &'static str,
    pub(crate) administrator: bool,
    pub(crate) account_actions: &'static [&'static str],
}

/// An administrator (every account-level action; default key policies name it).
pub(crate) const ADMIN: TestPrincipal = TestPrincipal {
    name: "admin",
    access_key_id: "AKIAKAGITESTADMIN0001",
    secret: "admin-secret-for-kagi-api-tests",
    administrator: true,
    account_actions: &[],
};

/// A principal with no account-level action: it can do only what key policies give it.
pub(crate) const APP: TestPrincipal = TestPrincipal {
    name: "app",
    access_key_id: "AKIAKAGITESTAPP00001",
    secret: "app-secret-for-kagi-api-tests",
    administrator: false,
    account_actions: &[],
};

/// What the ready file says.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) api: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) ca_bundle: PathBuf,
}

/// A running `kagi serve`, killed on drop.
pub(crate) struct Server {
    child: Child,
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    pub(crate) ready: Ready,
    pub(crate) principals: Vec<TestPrincipal>,
}

impl Server {
    /// Starts a server knowing `principals`, with the `[quotas]` section `quotas` (TOML lines),
    /// and waits until it listens.
    pub(crate) fn start(principals: &[TestPrincipal], quotas: &str) -> Self {
        Self::launch(&[], None, principals, quotas, "", "")
    }

    /// [`Server::start`] with more configuration (TOML tables) after `[quotas]`.
    pub(crate) fn start_with(principals: &[TestPrincipal], quotas: &str, extra: &str) -> Self {
        Self::launch(&[], None, principals, quotas, "", extra)
    }

    /// [`Server::start_with`], run by the command `wrapper` (e.g. `setpriv …`), which execs
    /// `kagi serve …` given as its last arguments.
    pub(crate) fn start_under(wrapper: &[&str], principals: &[TestPrincipal], extra: &str) -> Self {
        Self::launch(wrapper, None, principals, "", "", extra)
    }

    /// Starts a server on an existing data directory, with `api` added to its `[api]` section
    /// (TOML lines).
    pub(crate) fn start_on(data_dir: &Path, principals: &[TestPrincipal], api: &str) -> Self {
        Self::launch(&[], Some(data_dir), principals, "", api, "")
    }

    /// [`Server::start_on`] with more configuration (TOML tables) at the end.
    pub(crate) fn start_on_with(
        data_dir: &Path,
        principals: &[TestPrincipal],
        extra: &str,
    ) -> Self {
        Self::launch(&[], Some(data_dir), principals, "", "", extra)
    }

    /// What the ready file says the proxy listener `name` listens on.
    pub(crate) fn listener(&self, name: &str) -> SocketAddr {
        let text = std::fs::read_to_string(self.dir.path().join("ready.json")).expect("ready file");
        let ready: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        ready["listeners"][name].as_str().expect("listener").parse().expect("address")
    }

    /// Starts a server on `data_dir` without waiting for it to listen: a sealed start, which
    /// waits for `kagi unseal` first. [`Server::wait_until_ready`] then waits for it.
    pub(crate) fn spawn_on(data_dir: &Path, principals: &[TestPrincipal]) -> Self {
        Self::spawn(&[], Some(data_dir), principals, "", "", "", &[], &[])
    }

    fn launch(
        wrapper: &[&str],
        data_dir: Option<&Path>,
        principals: &[TestPrincipal],
        quotas: &str,
        api: &str,
        extra: &str,
    ) -> Self {
        let mut server = Self::spawn(wrapper, data_dir, principals, quotas, api, extra, &[], &[]);
        server.wait_until_ready();
        server
    }

    /// Starts a node of a cluster on `data_dir`: `keystore` lines go into `[keystore]`,
    /// `extra` after the generated configuration (a `[store]` table, say), `env` into its
    /// environment (`KAGI_FAKE_NOW`, say); waits until it listens.
    pub(crate) fn start_node(
        data_dir: &Path,
        principals: &[TestPrincipal],
        keystore: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut server =
            Self::spawn(&[], Some(data_dir), principals, "", "", extra, &[keystore], env);
        server.wait_until_ready();
        server
    }

    #[allow(clippy::too_many_arguments)] // One private constructor behind the public ones.
    fn spawn(
        wrapper: &[&str],
        data_dir: Option<&Path>,
        principals: &[TestPrincipal],
        quotas: &str,
        api: &str,
        extra: &str,
        keystore: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = data_dir.map_or_else(|| dir.path().join("data"), Path::to_owned);
        let config = dir.path().join("kagi.toml");
        let mut text = config_text(&data_dir, principals, quotas, api, &keystore.join("\n"));
        text.push('\n');
        text.push_str(extra);
        std::fs::write(&config, text).expect("config");
        let ready_file = dir.path().join("ready.json");
        let log = File::create(dir.path().join("server.log")).expect("log file");
        let kagi = env!("CARGO_BIN_EXE_kagi");
        let mut command = match wrapper.split_first() {
            None => Command::new(kagi),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(kagi);
                command
            }
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready_file)
            .env_remove("KAGI_FAKE_NOW")
            .env_remove("KAGI_DATA_DIR")
            .env_remove("KAGI_ROOT_PASSPHRASE_ENV")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kagi serve");
        Self {
            child,
            dir,
            data_dir,
            ready: Ready {
                api: ([127, 0, 0, 1], 0).into(),
                admin: ([127, 0, 0, 1], 0).into(),
                ca_bundle: PathBuf::new(),
            },
            principals: principals.to_vec(),
        }
    }

    /// Whether the server has written its ready file (it listens).
    pub(crate) fn is_ready(&self) -> bool {
        self.dir.path().join("ready.json").exists()
    }

    /// Whether the server process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits until the server listens, and reads its addresses.
    pub(crate) fn wait_until_ready(&mut self) {
        let ready_file = self.dir.path().join("ready.json");
        self.ready = self.wait_ready(&ready_file);
    }

    /// Polls for the ready file (written atomically once both listeners are up); fails early if
    /// the server exits.
    fn wait_ready(&mut self, path: &Path) -> Ready {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(path) {
                let ready: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ready file is not JSON ({e}): {text}"));
                let api = ready["api"].as_str().expect("api address").parse().expect("address");
                let admin =
                    ready["admin"].as_str().expect("admin address").parse().expect("address");
                let ca_bundle = PathBuf::from(ready["ca_bundle"].as_str().expect("ca_bundle"));
                assert!(ca_bundle.is_absolute(), "ca_bundle is an absolute path: {text}");
                assert!(ca_bundle.is_file(), "ca_bundle exists: {text}");
                return Ready { api, admin, ca_bundle };
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("kagi serve exited with {status} before listening:\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "kagi serve not ready in time:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far (one line per request).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The API's base URL.
    pub(crate) fn endpoint(&self) -> String {
        format!("https://{}", self.ready.api)
    }

    /// A scratch directory for the test's files.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The data directory the server holds.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.data_dir.clone()
    }

    /// A client of kagi's own, connected as `principal` over `version`.
    pub(crate) async fn client(&self, version: HttpVersion, principal: &TestPrincipal) -> Client {
        self.client_with(version, principal.access_key_id, principal.secret).await
    }

    /// A client signing with any access key id and secret (to test refusals).
    ///
    /// # Panics
    /// When it cannot connect.
    pub(crate) async fn client_with(
        &self,
        version: HttpVersion,
        access_key_id: &str,
        secret: &str,
    ) -> Client {
        let tls = Arc::new(tls_config(&self.ready.ca_bundle, version).expect("CA bundle"));
        let credentials = Arc::new(Credentials {
            access_key_id: access_key_id.to_owned(),
            secret: SecretBytes::from_slice(secret.as_bytes()),
            region: REGION.to_owned(),
        });
        Client::connect(&self.ready.api.to_string(), "localhost", tls, version, credentials)
            .await
            .expect("connects")
    }

    /// Stops the server at once (SIGKILL), keeping its directory.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits; returns whether the server exited successfully.
    pub(crate) fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs");
        self.child.wait().expect("server exits").success()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(
    data_dir: &Path,
    principals: &[TestPrincipal],
    quotas: &str,
    api: &str,
    keystore: &str,
) -> String {
    let mut text = format!(
        "[keystore]\ndata_dir = {data:?}\nregion = {REGION:?}\naccount = {ACCOUNT:?}\n{keystore}\n\n\
         [api]\nlisten = \"127.0.0.1:0\"\n{api}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n",
        data = data_dir.to_str().expect("utf-8 path"),
    );
    for p in principals {
        text.push_str(&format!(
            "[[principals]]\nname = {:?}\naccess_key_id = {:?}\nsecret = {:?}\n\
             administrator = {}\naccount_actions = {:?}\n\n",
            p.name, p.access_key_id, p.secret, p.administrator, p.account_actions
        ));
    }
    text.push_str("[quotas]\n");
    text.push_str(quotas);
    text
}

/// A new HTTP/1.1 client of the API at `api` (trusting `ca_bundle`) as `principal`, or why it
/// cannot connect: for a test's client that opens its connection again.
pub(crate) async fn client_for(
    api: &str,
    ca_bundle: &Path,
    principal: &TestPrincipal,
) -> Result<Client, String> {
    let tls = Arc::new(tls_config(ca_bundle, HttpVersion::Http1).map_err(|e| e.to_string())?);
    let credentials = Arc::new(Credentials {
        access_key_id: principal.access_key_id.to_owned(),
        secret: SecretBytes::from_slice(principal.secret.as_bytes()),
        region: REGION.to_owned(),
    });
    Client::connect(api, "localhost", tls, HttpVersion::Http1, credentials)
        .await
        .map_err(|e| e.to_string())
}
