//! `kagi demo`: the real thing on a fresh checkout. It makes (or reuses) a keystore in a local
//! directory, an internal CA and a certificate for localhost whose keys live in that keystore,
//! starts the sample backend (an in-memory object store, `crate::demo`), writes a
//! configuration that puts kagi's proxy in front of it, prints what to try, and serves that
//! configuration (the KMS API, the proxy, metrics) until Ctrl-C. Editing the written
//! `kagi.toml` reloads it live.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args as ClapArgs;

use super::{Args, keystore_error, open};
use crate::config::Config;
use crate::error::{Error, exit_code};
use crate::keystore::{KeySpec, Keystore, OpContext, RootKeySource};
use crate::tls::{
    CertIssuer, CertStore, DEFAULT_CA_VALIDITY_DAYS, DEFAULT_VALIDITY_DAYS, IssueRequest, KeyChoice,
};

/// `kagi demo`.
#[derive(Debug, ClapArgs)]
pub struct DemoArgs {
    /// Where the demo keeps its keystore, certificates, configuration and logs (reused by the
    /// next run).
    #[arg(long, default_value = "kagi-demo")]
    pub dir: PathBuf,
    /// The proxy's HTTPS listener.
    #[arg(long, default_value = "127.0.0.1:8444")]
    pub listen: SocketAddr,
    /// The KMS API's listener.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub api_listen: SocketAddr,
    /// The admin listener (/metrics).
    #[arg(long, default_value = "127.0.0.1:9443")]
    pub admin_listen: SocketAddr,
    /// Write the listening addresses here (JSON) once the listeners are up.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// The demo principal (as in the embedded default).
const ACCESS_KEY_ID: &str = "AKIAKAGIDEMOADMIN000";
const SECRET: &str = "kagi-demo-secret-do-not-use-in-production";

/// Sets up the demo directory, then serves it.
pub(super) fn run(args: &Args, demo: &DemoArgs) -> Result<(), Error> {
    let dir = std::path::absolute(&demo.dir).unwrap_or_else(|_| demo.dir.clone());
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::new(exit_code::STORAGE, format!("{}: {e}", dir.display())))?;
    let data_dir = dir.join("data");
    let backend = crate::crypto::BackendKind::from_name(&args.backend)
        .ok_or_else(|| Error::new(exit_code::USAGE, format!("unknown backend {:?}", args.backend)))?
        .backend();
    if !data_dir.join("root.key").exists() {
        Keystore::init(backend, &data_dir, &RootKeySource::File).map_err(keystore_error)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(exit_code::FAILURE, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(certificates(backend, &data_dir))?;
    drop(runtime);
    let sample = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::new(exit_code::FAILURE, format!("sample backend: {e}")))?;
    let sample_address =
        sample.local_addr().map_err(|e| Error::new(exit_code::FAILURE, e.to_string()))?;
    let config_path = dir.join("kagi.toml");
    let text = config_text(demo, sample_address);
    std::fs::write(&config_path, &text)
        .map_err(|e| Error::new(exit_code::STORAGE, format!("{}: {e}", config_path.display())))?;
    let config =
        Config::load(&config_path).map_err(|e| Error::new(exit_code::INVALID, e.to_string()))?;
    print_guide(&dir, demo);
    super::serve::run_config(
        args,
        config,
        Some(&config_path),
        demo.ready_file.as_deref(),
        Some(sample),
    )
}

/// The CA `demo-ca` and the certificate `demo` (localhost, 127.0.0.1, ::1), made once.
async fn certificates(
    backend: &'static dyn crate::crypto::CryptoBackend,
    data_dir: &Path,
) -> Result<(), Error> {
    let store = CertStore::new(data_dir);
    if store.exists("demo") {
        return Ok(());
    }
    let keystore = open(backend, data_dir, &RootKeySource::File)?;
    let ctx = OpContext {
        principal: "kagi-demo".into(),
        source: OpContext::CLI.into(),
        request_id: keystore.new_uuid().map_err(keystore_error)?,
    };
    let issuer = CertIssuer::new(&keystore, &ctx, &store);
    let tls = |e: crate::tls::TlsError| Error::new(exit_code::FAILURE, e.to_string());
    if !store.exists("demo-ca") {
        issuer
            .create_ca("demo-ca", KeySpec::EccNistP256, DEFAULT_CA_VALIDITY_DAYS)
            .await
            .map_err(tls)?;
    }
    issuer
        .issue(IssueRequest {
            name: "demo".into(),
            dns_names: vec!["localhost".into()],
            ip_addresses: vec![
                "127.0.0.1".parse().expect("an address"),
                "::1".parse().expect("an address"),
            ],
            key: KeyChoice::New(KeySpec::EccNistP256),
            ca: Some("demo-ca".into()),
            days: DEFAULT_VALIDITY_DAYS,
        })
        .await
        .map_err(tls)?;
    Ok(())
}

fn config_text(demo: &DemoArgs, sample: SocketAddr) -> String {
    format!(
        r#"# Written by `kagi demo` (rewritten by each run: copy it elsewhere to keep your edits).
# kagi reloads this file when it changes: try adding a route. config/kagi.toml in the source
# tree documents every setting.

[keystore]
data_dir = "data"

[api]
listen = "{api}"

[admin]
listen = "{admin}"

[[principals]]
name = "admin"
access_key_id = "{ACCESS_KEY_ID}"
secret = "{SECRET}"
administrator = true

[proxy]
access_log = "access.log"

[[listeners]]
name = "demo"
listen = "{listen}"
certificates = ["demo"]

[[upstreams]]
name = "sample"
targets = ["{sample}"]

[[routes]]
name = "sample"
upstream = "sample"
max_body_bytes = 104857600
"#,
        api = demo.api_listen,
        admin = demo.admin_listen,
        listen = demo.listen,
    )
}

fn print_guide(dir: &Path, demo: &DemoArgs) {
    let ca = dir.join("data/certs/demo-ca.pem");
    let proxy = if demo.listen.ip().is_loopback() && demo.listen.is_ipv4() {
        format!("https://localhost:{}", demo.listen.port())
    } else {
        format!("https://{}", demo.listen)
    };
    let ca = ca.display();
    outln!(
        r#"kagi demo: keystore, certificates, configuration and logs in {dir}

The proxy ({proxy}) terminates TLS with a certificate whose P-256 key is in kagi's keystore
(the keystore signs every handshake) and forwards to a sample object store on loopback.

  curl --cacert {ca} {proxy}/echo
  curl --cacert {ca} -T README.md {proxy}/objects/readme
  curl --cacert {ca} {proxy}/objects/readme | head
  curl --cacert {ca} --http2 -sI {proxy}/objects/readme

The KMS API (https://{api}) works with any AWS tool:

  export AWS_ACCESS_KEY_ID={ACCESS_KEY_ID} AWS_SECRET_ACCESS_KEY={SECRET}
  export AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL_KMS=https://{api} AWS_CA_BUNDLE={api_ca}
  aws kms list-keys

Metrics: curl http://{admin}/metrics | grep kagi_proxy
Access log: {dir}/access.log.  Edit {dir}/kagi.toml and kagi reloads it.  Ctrl-C stops.
"#,
        dir = dir.display(),
        api = demo.api_listen,
        admin = demo.admin_listen,
        api_ca = dir.join("data/api-ca.pem").display(),
    );
}
