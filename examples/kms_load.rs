//! A KMS load generator: several keep-alive connections issuing SigV4-signed Encrypt (or
//! GenerateDataKey) requests for a fixed time, then requests/s and latency percentiles as one
//! JSON line. Given several endpoints (nodes of one cluster), it spreads the connections over
//! them in turn.
//!
//! `bench/kms_vs_moto.sh` runs it against kagi and against moto's server with the same
//! settings, `bench/cluster_vs_sqlite.sh` against 1–3 nodes on PostgreSQL and one on SQLite.
//! It runs on one thread, so on a 2-core machine the server under test has the other.
//!
//! ```text
//! cargo run --release --example kms_load -- --endpoint https://127.0.0.1:8443 \
//!     --ca-bundle data/api-ca.pem --access-key-id AKIA… --secret … --connections 16 --seconds 10
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use kagi::api::client::{CallError, Client, Credentials, HttpVersion, tls_config};
use kagi::crypto::SecretBytes;
use serde_json::json;

/// Encrypt load against a KMS endpoint.
#[derive(Debug, Parser)]
struct Args {
    /// `https://HOST:PORT` (TLS, trusting --ca-bundle) or `http://HOST:PORT`; repeat it for
    /// several nodes.
    #[arg(long, required = true)]
    endpoint: Vec<String>,
    /// The PEM files to trust for https endpoints (all of them trusted for each).
    #[arg(long)]
    ca_bundle: Vec<std::path::PathBuf>,
    /// `Encrypt` or `GenerateDataKey` (AES_256).
    #[arg(long, default_value = "Encrypt")]
    operation: String,
    /// The TLS server name (default: localhost).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, env = "AWS_ACCESS_KEY_ID")]
    access_key_id: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    secret: String,
    #[arg(long, default_value = "us-east-1")]
    region: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// How long to run, after a one-second warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Plaintext size of each Encrypt.
    #[arg(long, default_value_t = 256)]
    plaintext_bytes: usize,
    /// Speak HTTP/2 (https only).
    #[arg(long)]
    http2: bool,
}

/// One PEM file trusting every --ca-bundle (each node's certificate), written once.
fn merged_bundle(args: &Args) -> Option<std::path::PathBuf> {
    if args.ca_bundle.is_empty() {
        return None;
    }
    let mut pem = Vec::new();
    for path in &args.ca_bundle {
        pem.extend(std::fs::read(path).expect("CA bundle"));
        pem.push(b'\n');
    }
    let bundle = std::env::temp_dir().join(format!("kms_load-{}.pem", std::process::id()));
    std::fs::write(&bundle, &pem).expect("write the bundle");
    Some(bundle)
}

async fn connect(
    args: &Args,
    bundle: Option<&std::path::Path>,
    credentials: &Arc<Credentials>,
    which: usize,
) -> Client {
    let credentials = Arc::clone(credentials);
    let endpoint = &args.endpoint[which % args.endpoint.len()];
    if let Some(address) = endpoint.strip_prefix("http://") {
        return Client::connect_plain(address.trim_end_matches('/'), credentials)
            .await
            .expect("connect");
    }
    let address = endpoint.strip_prefix("https://").expect("http:// or https://");
    let version = if args.http2 { HttpVersion::Http2 } else { HttpVersion::Http1 };
    let tls =
        Arc::new(tls_config(bundle.expect("--ca-bundle for https"), version).expect("CA bundle"));
    Client::connect(address.trim_end_matches('/'), &args.server_name, tls, version, credentials)
        .await
        .expect("connect")
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(run(Arc::new(args)));
}

async fn run(args: Arc<Args>) {
    let credentials = Arc::new(Credentials {
        access_key_id: args.access_key_id.clone(),
        secret: SecretBytes::from_slice(args.secret.as_bytes()),
        region: args.region.clone(),
    });
    let bundle = Arc::new(merged_bundle(&args));
    let mut setup = connect(&args, (*bundle).as_deref(), &credentials, 0).await;
    let key = setup.call("CreateKey", &json!({"Description": "load test"})).await.expect("key");
    let key_id = key["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned();
    let plaintext =
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; args.plaintext_bytes]);
    let input = Arc::new(match args.operation.as_str() {
        "Encrypt" => {
            json!({"KeyId": key_id, "Plaintext": plaintext, "EncryptionContext": {"bench": "1"}})
        }
        "GenerateDataKey" => {
            json!({"KeyId": key_id, "KeySpec": "AES_256", "EncryptionContext": {"bench": "1"}})
        }
        other => panic!("--operation {other}: Encrypt or GenerateDataKey"),
    });
    let warm_up = Instant::now() + Duration::from_secs(1);
    let end = warm_up + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for which in 0..args.connections {
        let mut client = connect(&args, (*bundle).as_deref(), &credentials, which).await;
        let input = Arc::clone(&input);
        let (args, credentials) = (Arc::clone(&args), Arc::clone(&credentials));
        let bundle = Arc::clone(&bundle);
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            let mut reconnects = 0u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                if !client.is_open() {
                    // Servers that close after each answer (moto's development server) pay
                    // for a new connection per request; that is part of their rate.
                    client = connect(&args, (*bundle).as_deref(), &credentials, which).await;
                    reconnects += 1;
                }
                let result = client.call(&args.operation, &input).await;
                if start >= warm_up {
                    match result {
                        Ok(_) => latencies.push(start.elapsed().as_micros() as u32),
                        Err(CallError::Api(_)) => errors += 1,
                        Err(CallError::Transport(_)) => {}
                    }
                }
            }
            (latencies, errors, reconnects)
        }));
    }
    let (mut latencies, mut errors, mut reconnects) = (Vec::new(), 0, 0);
    for task in tasks {
        let (mut l, e, r) = task.await.expect("task");
        latencies.append(&mut l);
        errors += e;
        reconnects += r;
    }
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    let report = json!({
        "endpoint": args.endpoint,
        "operation": args.operation,
        "connections": args.connections,
        "seconds": args.seconds,
        "requests": latencies.len(),
        "errors": errors,
        "reconnects": reconnects,
        "requests_per_second": latencies.len() as f64 / args.seconds as f64,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
    });
    println!("{report}");
}
