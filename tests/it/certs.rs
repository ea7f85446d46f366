//! `kagi certs` through the binary (CA, issue, import, list, renew), on the data directory
//! directly and through a running server's API, then `kagi serve` handshaking with a rustls
//! client: SNI chooses the certificate, no SNI gets the default, and a certificate whose key is
//! disabled fails its handshakes without taking the server down.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

use crate::support::server::{ADMIN, Server};
use crate::support::{Kagi, arg};

/// A keystore whose clock is the real one: the server checks certificates against real time.
fn kagi() -> Kagi {
    let mut kagi = Kagi::new();
    kagi.now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        .try_into()
        .expect("fits");
    kagi
}

fn json(kagi: &Kagi, args: &[&str]) -> Value {
    let mut all = vec!["--output", "json", "certs"];
    all.extend_from_slice(args);
    kagi.ok(&all).json()
}

/// The chain `kagi certs` keeps for `name`.
fn chain(data_dir: &Path, name: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(data_dir.join("certs").join(format!("{name}.pem")))
        .expect("chain file")
        .collect::<Result<_, _>>()
        .expect("PEM chain")
}

/// A TLS handshake with `server_name` as SNI (none: connect by IP, so no SNI is sent), trusting
/// `roots`; the leaf certificate the server presented.
fn handshake(
    address: SocketAddr,
    server_name: Option<&str>,
    roots: &[CertificateDer<'static>],
) -> Result<CertificateDer<'static>, String> {
    handshake_with(address, server_name, roots, &rustls::version::TLS13)
}

/// [`handshake`] with one protocol version only.
fn handshake_with(
    address: SocketAddr,
    server_name: Option<&str>,
    roots: &[CertificateDer<'static>],
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<CertificateDer<'static>, String> {
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots.iter().cloned());
    assert!(added > 0, "a usable root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = match server_name {
        Some(name) => ServerName::try_from(name.to_owned()).expect("DNS name"),
        None => ServerName::IpAddress(address.ip().into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        let tls = connector.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (_, connection) = tls.get_ref();
        assert_eq!(connection.alpn_protocol(), Some(&b"h2"[..]), "ALPN h2 first");
        assert_eq!(connection.protocol_version(), Some(version.version));
        Ok(connection.peer_certificates().expect("a certificate")[0].clone())
    })
}

/// Whether any file under `dir` holds a PEM private key.
fn holds_private_key(dir: &Path) -> Option<String> {
    for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = holds_private_key(&path) {
                return Some(found);
            }
        } else if std::fs::read(&path)
            .is_ok_and(|bytes| bytes.windows(b"PRIVATE KEY".len()).any(|w| w == b"PRIVATE KEY"))
        {
            return Some(path.display().to_string());
        }
    }
    None
}

#[test]
fn certificates_are_issued_renewed_and_chosen_by_sni() {
    let kagi = kagi();
    let data_dir = kagi.data_dir();
    let ca = json(&kagi, &["ca", "create", "--name", "test-ca"]);
    assert_eq!(ca["Kind"], "ca");
    assert_eq!(ca["KeyAlias"], "alias/kagi/ca/test-ca");
    let site =
        json(&kagi, &["issue", "--name", "site-a", "--dns", "a.example.test", "--ca", "test-ca"]);
    assert_eq!(site["IssuingCa"], "test-ca");
    assert_eq!(site["Names"], serde_json::json!(["a.example.test"]));
    let days_left = site["DaysLeft"].as_i64().unwrap();
    assert!((89..=90).contains(&days_left), "90 days by default: {site}");
    json(
        &kagi,
        &[
            "issue",
            "--name",
            "wild",
            "--dns",
            "*.wild.example.test",
            "--ca",
            "test-ca",
            "--key-spec",
            "ECC_NIST_P384",
        ],
    );
    json(
        &kagi,
        &[
            "issue",
            "--name",
            "rsa-site",
            "--dns",
            "rsa.example.test",
            "--ca",
            "test-ca",
            "--key-spec",
            "RSA_2048",
            "--days",
            "30",
        ],
    );
    json(
        &kagi,
        &["issue", "--name", "api", "--dns", "localhost", "--ip", "127.0.0.1", "--ca", "test-ca"],
    );
    // A self-signed certificate on a key of the operator's choice.
    let own_key = kagi.create_key(&["--spec", "ECC_NIST_P256", "--usage", "SIGN_VERIFY"]);
    let own =
        json(&kagi, &["issue", "--name", "own", "--dns", "own.example.test", "--key", &own_key]);
    assert_eq!(own["KeyId"], own_key.as_str());
    assert_eq!(own["IssuingCa"], Value::Null);
    // An existing name, a CA that is not one, a key that does not sign.
    kagi.fails(&["certs", "issue", "--name", "api", "--dns", "x.example.test"], 6);
    kagi.fails(&["certs", "issue", "--name", "x", "--dns", "x.example.test", "--ca", "api"], 6);
    let symmetric = kagi.create_key(&[]);
    kagi.fails(&["certs", "issue", "--name", "x", "--dns", "x.test", "--key", &symmetric], 6);

    // An imported chain and key: the key goes into the keystore as an EXTERNAL key.
    let imported_key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["imported.example.test".to_owned()]).unwrap();
    let imported_cert = params.self_signed(&imported_key).unwrap();
    let chain_file = kagi.write("imported.pem", imported_cert.pem().as_bytes());
    let key_file = kagi.write("imported.key", imported_key.serialize_pem().as_bytes());
    let other_key =
        kagi.write("other.key", rcgen::KeyPair::generate().unwrap().serialize_pem().as_bytes());
    kagi.fails(
        &[
            "certs",
            "import",
            "--name",
            "bad",
            "--chain",
            arg(&chain_file),
            "--key",
            arg(&other_key),
        ],
        6,
    );
    let imported = json(
        &kagi,
        &["import", "--name", "imported", "--chain", arg(&chain_file), "--key", arg(&key_file)],
    );
    assert_eq!(imported["Kind"], "imported");
    let described = kagi.describe(imported["KeyId"].as_str().unwrap());
    assert_eq!(described["Origin"], "EXTERNAL");

    let listed = json(&kagi, &["list"]);
    let names: Vec<&str> = listed["Certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api", "imported", "own", "rsa-site", "site-a", "test-ca", "wild"]);
    let table = kagi.ok(&["certs", "list"]).stdout_text();
    assert!(table.contains("*.wild.example.test") && table.contains("DAYS LEFT"), "{table}");

    // Renewal: a new key, the alias moved to it, the same names and issuer.
    let renewed = json(&kagi, &["renew", "site-a"]);
    assert_ne!(renewed["KeyId"], site["KeyId"]);
    assert_eq!(renewed["KeyAlias"], "alias/kagi/certs/site-a");
    assert_eq!(renewed["Names"], site["Names"]);
    assert_eq!(renewed["IssuingCa"], "test-ca");
    let alias = kagi.describe("alias/kagi/certs/site-a");
    assert_eq!(alias["KeyId"], renewed["KeyId"]);

    // Served: the CA (and the imported self-signed certificate) as roots.
    let mut roots = chain(&data_dir, "test-ca");
    roots.extend(chain(&data_dir, "imported"));
    roots.extend(chain(&data_dir, "own"));
    let leaf = |name: &str| chain(&data_dir, name).remove(0);
    let server = Server::start_on(&data_dir, &[ADMIN], "certificate = \"api\"");
    let address = server.ready.api;
    for (sni, expected) in [
        (Some("a.example.test"), "site-a"),
        (Some("A.Example.Test"), "site-a"),
        (Some("x.wild.example.test"), "wild"),
        (Some("rsa.example.test"), "rsa-site"),
        (Some("imported.example.test"), "imported"),
        (Some("own.example.test"), "own"),
        (Some("localhost"), "api"),
        (None, "api"),
    ] {
        let presented = handshake(address, sni, &roots)
            .unwrap_or_else(|e| panic!("{sni:?}: {e}\n{}", server.log()));
        assert!(presented == leaf(expected), "{sni:?} gets {expected}");
    }
    // TLS 1.2 too (ECDHE-ECDSA and ECDHE-RSA suites, the keystore signing the key exchange).
    for (sni, expected) in [
        ("a.example.test", "site-a"),
        ("x.wild.example.test", "wild"),
        ("rsa.example.test", "rsa-site"),
    ] {
        let presented = handshake_with(address, Some(sni), &roots, &rustls::version::TLS12)
            .unwrap_or_else(|e| panic!("TLS 1.2 {sni}: {e}\n{}", server.log()));
        assert!(presented == leaf(expected), "TLS 1.2 {sni} gets {expected}");
    }
    // A wildcard covers one label only; a name nobody covers gets the default, which does not
    // name it (the client refuses).
    assert!(handshake(address, Some("a.b.wild.example.test"), &roots).is_err());
    assert!(handshake(address, Some("unknown.example.test"), &roots).is_err());
    // The API's CA bundle is the default certificate's root.
    let bundle: Vec<_> = CertificateDer::pem_file_iter(&server.ready.ca_bundle)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(bundle == chain(&data_dir, "test-ca"), "api-ca.pem is the CA");
    assert!(server.terminate(), "clean exit");

    // A disabled key: its certificate's handshakes fail, the others go on.
    kagi.ok(&["keys", "disable", renewed["KeyId"].as_str().unwrap()]);
    let server = Server::start_on(&data_dir, &[ADMIN], "certificate = \"api\"");
    let address = server.ready.api;
    assert!(handshake(address, Some("a.example.test"), &roots).is_err());
    assert!(handshake(address, Some("a.example.test"), &roots).is_err());
    assert!(handshake(address, None, &roots).is_ok(), "the server still serves");
    assert!(handshake(address, Some("x.wild.example.test"), &roots).is_ok());
    let log = server.log();
    assert!(log.contains("refused a handshake signature"), "{log}");
    assert!(server.terminate(), "clean exit");

    // A key pending deletion: the same.
    kagi.ok(&["keys", "schedule-deletion", site["KeyId"].as_str().unwrap(), "--days", "7"]);
    let wild_key = json(&kagi, &["list"])["Certificates"][6]["KeyId"].as_str().unwrap().to_owned();
    kagi.ok(&["keys", "schedule-deletion", &wild_key, "--days", "7"]);
    let server = Server::start_on(&data_dir, &[ADMIN], "certificate = \"api\"");
    assert!(handshake(server.ready.api, Some("x.wild.example.test"), &roots).is_err());
    assert!(handshake(server.ready.api, None, &roots).is_ok());
    drop(server);

    // No private key anywhere in the data directory.
    assert_eq!(holds_private_key(&data_dir), None);
}

#[test]
fn first_start_issues_the_api_certificate_in_the_keystore_and_keeps_it() {
    // A data directory that outlives each server (a server's own goes with it).
    let kagi = Kagi::uninitialised();
    let data_dir = kagi.data_dir();
    let server = Server::start_on(&data_dir, &[ADMIN], "");
    let first = chain(&data_dir, "kagi-api");
    let bundle = std::fs::read(&server.ready.ca_bundle).unwrap();
    assert!(handshake(server.ready.api, Some("localhost"), &first).is_ok());
    assert!(handshake(server.ready.api, None, &first).is_ok(), "127.0.0.1 is named");
    assert!(server.terminate());
    let server = Server::start_on(&data_dir, &[ADMIN], "");
    assert!(chain(&data_dir, "kagi-api") == first, "kept across starts");
    assert_eq!(std::fs::read(&server.ready.ca_bundle).unwrap(), bundle);
    drop(server);
    let meta: Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("certs").join("kagi-api.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["key_alias"], "alias/kagi/api-tls");
    assert_eq!(holds_private_key(&data_dir), None);
}

#[test]
fn a_certificate_that_does_not_match_its_key_is_refused() {
    let kagi = kagi();
    let data_dir = kagi.data_dir();
    json(&kagi, &["issue", "--name", "api", "--dns", "localhost", "--ip", "127.0.0.1"]);
    json(&kagi, &["issue", "--name", "other", "--dns", "other.example.test"]);
    // Swap api's chain for other's: the key named in api.json no longer matches.
    let certs = data_dir.join("certs");
    std::fs::copy(certs.join("other.pem"), certs.join("api.pem")).unwrap();
    let config = kagi.path("kagi.toml");
    std::fs::write(
        &config,
        format!(
            "[keystore]\ndata_dir = {:?}\n[api]\nlisten = \"127.0.0.1:0\"\ncertificate = \"api\"\n",
            arg(&data_dir)
        ),
    )
    .unwrap();
    let run = kagi.run(&["serve", "--config", arg(&config)]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("does not match its keystore key"), "{}", run.stderr);
}

#[test]
fn certificates_are_issued_through_a_running_server_as_its_principal() {
    let kagi = kagi();
    let data_dir = kagi.data_dir();
    let server = Server::start_on(&data_dir, &[ADMIN], "");
    let admin =
        [("AWS_ACCESS_KEY_ID", ADMIN.access_key_id), ("AWS_SECRET_ACCESS_KEY", ADMIN.secret)];
    let remote = |args: &[&str]| {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        let run = kagi.run_with_env(&all, b"", &admin);
        assert_eq!(run.code, 0, "kagi {args:?}: {}\n{}", run.stderr, server.log());
        run.json()
    };

    let ca = remote(&["certs", "ca", "create", "--name", "remote-ca"]);
    assert_eq!(ca["KeyAlias"], "alias/kagi/ca/remote-ca");
    let site = remote(&[
        "certs",
        "issue",
        "--name",
        "site",
        "--dns",
        "site.example.test",
        "--ca",
        "remote-ca",
    ]);
    assert_eq!(site["IssuingCa"], "remote-ca");
    let own = remote(&["certs", "issue", "--name", "own", "--dns", "own.example.test"]);
    assert_eq!(own["IssuingCa"], Value::Null, "self-signed");
    let created = remote(&["keys", "create", "--spec", "ECC_NIST_P384", "--usage", "SIGN_VERIFY"]);
    let chosen_key = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let chosen = remote(&[
        "certs",
        "issue",
        "--name",
        "chosen",
        "--dns",
        "chosen.example.test",
        "--key",
        &chosen_key,
        "--ca",
        "remote-ca",
    ]);
    assert_eq!(chosen["KeyId"], chosen_key.as_str());

    // An imported key becomes an EXTERNAL key of the server's keystore.
    let imported_key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["imported.example.test".to_owned()]).unwrap();
    let chain_file =
        kagi.write("imported.pem", params.self_signed(&imported_key).unwrap().pem().as_bytes());
    let key_file = kagi.write("imported.key", imported_key.serialize_pem().as_bytes());
    let imported = remote(&[
        "certs",
        "import",
        "--name",
        "imported",
        "--chain",
        arg(&chain_file),
        "--key",
        arg(&key_file),
    ]);
    let described = remote(&["keys", "describe", imported["KeyId"].as_str().unwrap()]);
    assert_eq!(described["KeyMetadata"]["Origin"], "EXTERNAL");

    // Renewal moves the alias on the server.
    let renewed = remote(&["certs", "renew", "site"]);
    assert_ne!(renewed["KeyId"], site["KeyId"]);
    let alias = remote(&["keys", "describe", "alias/kagi/certs/site"]);
    assert_eq!(alias["KeyMetadata"]["KeyId"], renewed["KeyId"]);

    // Listing reads the files only: no credentials needed.
    let listed = kagi.ok(&["--output", "json", "certs", "list"]).json();
    let names: Vec<&str> = listed["Certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chosen", "imported", "kagi-api", "own", "remote-ca", "site"]);
    // A key operation without credentials is a usage error, not a direct access.
    let run = kagi.fails(&["certs", "issue", "--name", "x", "--dns", "x.example.test"], 2);
    assert!(run.stderr.contains("needs credentials"), "{}", run.stderr);
    assert!(!data_dir.join("certs").join("x.json").exists());
    assert!(server.terminate(), "the server ran on undisturbed");

    // The server did every key operation, audited as the principal that signed the calls.
    let records = |operation: &str| {
        let document =
            kagi.ok(&["--output", "json", "audit", "show", "--operation", operation]).json();
        document["Records"].as_array().unwrap().clone()
    };
    // CreateKey: the CA's, site's, own's, the chosen key, the imported key, site's new key.
    for (operation, expected) in [("CreateKey", 6), ("Sign", 5), ("ImportKeyMaterial", 1)] {
        let by_admin: Vec<Value> =
            records(operation).into_iter().filter(|r| r["principal"] == "admin").collect();
        assert_eq!(by_admin.len(), expected, "{operation}: {by_admin:?}");
        assert!(by_admin.iter().all(|r| r["outcome"] == "success"), "{by_admin:?}");
    }
    let everything = kagi.ok(&["--output", "json", "audit", "show"]).json();
    let around: Vec<&Value> = everything["Records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["principal"].as_str().is_some_and(|p| p.starts_with("cli:")))
        .collect();
    assert!(around.is_empty(), "nothing went around the server: {around:?}");

    // Served after a restart: each certificate verifies against its root, and the handshake,
    // signed by the keystore, proves its key is the keystore key.
    let mut roots = chain(&data_dir, "remote-ca");
    roots.extend(chain(&data_dir, "own"));
    roots.extend(chain(&data_dir, "imported"));
    let server = Server::start_on(&data_dir, &[ADMIN], "");
    for (sni, expected) in [
        ("site.example.test", "site"),
        ("own.example.test", "own"),
        ("chosen.example.test", "chosen"),
        ("imported.example.test", "imported"),
    ] {
        let presented = handshake(server.ready.api, Some(sni), &roots)
            .unwrap_or_else(|e| panic!("{sni}: {e}\n{}", server.log()));
        assert!(presented == chain(&data_dir, expected).remove(0), "{sni} gets {expected}");
    }
    assert_eq!(chain(&data_dir, "site").len(), 2, "the CA's certificate follows the leaf");
    drop(server);
    assert_eq!(holds_private_key(&data_dir), None);
}
