//! The authorization matrix: principals × operations × keys, through the KMS API and through
//! the proxy's envelope routes (each acting as its own principal), with every cell's expected
//! outcome written down. Key policies allow, an explicit Deny beats a grant, grants add what a
//! policy leaves out, aliases and ARNs reach exactly what the key id reaches, and ReEncrypt needs
//! ReEncryptFrom on the source key and ReEncryptTo on the destination.
//!
//! On failure the whole matrix is printed, expected against actual, with the wrong cells
//! marked.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use kagi::api::client::{CallError, Client, HttpVersion};
use serde_json::json;

use crate::proxy;
use crate::support::server::{ACCOUNT, ADMIN, Server, TestPrincipal};

const ALICE: TestPrincipal = TestPrincipal {
    name: "alice",
    access_key_id: "AKIAKAGITESTALICE001",
    secret: "alice-secret-for-kagi-authz-tests",
    administrator: false,
    account_actions: &[],
};
const BOB: TestPrincipal = TestPrincipal {
    name: "bob",
    access_key_id: "AKIAKAGITESTBOB00001",
    secret: "bob-secret-for-kagi-authz-tests",
    administrator: false,
    account_actions: &[],
};
const CAROL: TestPrincipal = TestPrincipal {
    name: "carol",
    access_key_id: "AKIAKAGITESTCAROL001",
    secret: "carol-secret-for-kagi-authz-tests",
    administrator: false,
    account_actions: &[],
};
const PRINCIPALS: [TestPrincipal; 4] = [ADMIN, ALICE, BOB, CAROL];

/// The operations of the API matrix, in column order.
const OPERATIONS: [&str; 5] = ["DescribeKey", "Encrypt", "Decrypt", "GenerateDataKey", "ReEncrypt"];

/// The expected API matrix: principal, key, then for each of [`OPERATIONS`] whether it is
/// allowed (`Y`) or AccessDeniedException (`-`). ReEncrypt goes from this key to the other one.
///
/// Why, from the policies and grants [`set_up_keys`] makes:
/// - admin: `kms:*` on both keys.
/// - alice: A's policy gives her everything but ReEncryptTo on B is missing, so A→B is denied;
///   B's policy gives her only ReEncryptFrom, so B→A (From on B, To on A) is allowed.
/// - bob: A's policy gives DescribeKey and denies Decrypt explicitly, which beats his Decrypt
///   grant on A; B's policy gives Describe, Encrypt, Decrypt and ReEncryptFrom, but B→A needs
///   ReEncryptTo on A.
/// - carol: nothing in either policy; a grant on A gives Encrypt and Decrypt only.
const EXPECTED: [(&str, &str, &str); 8] = [
    ("admin", "A", "YYYYY"),
    ("admin", "B", "YYYYY"),
    ("alice", "A", "YYYY-"),
    ("alice", "B", "----Y"),
    ("bob", "A", "Y----"),
    ("bob", "B", "YYY--"),
    ("carol", "A", "-YY--"),
    ("carol", "B", "-----"),
];

/// The expected envelope-route matrix: route (its principal `route-NAME`, or `principal`),
/// the key, whether PUT (GenerateDataKey) and GET (Decrypt) are allowed.
///
/// - vault: A's policy allows route-vault GenerateDataKey and Decrypt.
/// - granted: only a grant on A (GenerateDataKey, Decrypt) for route-granted.
/// - writer: A's policy allows route-writer GenerateDataKey only.
/// - locked: nothing for route-locked.
/// - vault-b: acts as route-vault, whose rights on A do not reach B.
const ROUTES: [(&str, &str, bool, bool); 5] = [
    ("vault", "A", true, true),
    ("granted", "A", true, true),
    ("writer", "A", true, false),
    ("locked", "A", false, false),
    ("vault-b", "B", false, false),
];

fn arn(name: &str) -> String {
    format!("arn:aws:iam::{ACCOUNT}:user/{name}")
}

/// A key's three spellings, which must reach the same cells.
#[derive(Clone, Debug)]
struct KeyRefs {
    id: String,
    arn: String,
    alias: String,
}

impl KeyRefs {
    fn all(&self) -> [(&'static str, &str); 3] {
        [("id", &self.id), ("arn", &self.arn), ("alias", &self.alias)]
    }
}

/// Creates keys A and B with their policies, aliases and grants (as admin).
async fn set_up_keys(admin: &mut Client) -> (KeyRefs, KeyRefs) {
    let admin_statement = json!({"Sid": "admin", "Effect": "Allow", "Action": "kms:*",
        "Resource": "*", "Principal": {"AWS": arn("admin")}});
    let policy_a = json!({"Version": "2012-10-17", "Statement": [
        admin_statement,
        {"Sid": "alice", "Effect": "Allow", "Resource": "*", "Principal": {"AWS": arn("alice")},
         "Action": ["kms:DescribeKey", "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey",
                    "kms:ReEncryptFrom", "kms:ReEncryptTo"]},
        {"Sid": "bob", "Effect": "Allow", "Resource": "*", "Principal": {"AWS": arn("bob")},
         "Action": "kms:DescribeKey"},
        {"Sid": "no-decrypt-for-bob", "Effect": "Deny", "Resource": "*",
         "Principal": {"AWS": arn("bob")}, "Action": "kms:Decrypt"},
        {"Sid": "vault", "Effect": "Allow", "Resource": "*",
         "Principal": {"AWS": arn("route-vault")},
         "Action": ["kms:GenerateDataKey", "kms:Decrypt"]},
        {"Sid": "writer", "Effect": "Allow", "Resource": "*",
         "Principal": {"AWS": arn("route-writer")}, "Action": "kms:GenerateDataKey"}
    ]});
    let policy_b = json!({"Version": "2012-10-17", "Statement": [
        admin_statement,
        {"Sid": "alice", "Effect": "Allow", "Resource": "*", "Principal": {"AWS": arn("alice")},
         "Action": "kms:ReEncryptFrom"},
        {"Sid": "bob", "Effect": "Allow", "Resource": "*", "Principal": {"AWS": arn("bob")},
         "Action": ["kms:DescribeKey", "kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom"]}
    ]});
    let mut keys = Vec::new();
    for (name, policy) in [("a", policy_a), ("b", policy_b)] {
        let key = admin
            .call("CreateKey", &json!({"Policy": policy.to_string(), "Description": name}))
            .await
            .expect("CreateKey");
        let id = key["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned();
        let arn = key["KeyMetadata"]["Arn"].as_str().expect("Arn").to_owned();
        let alias = format!("alias/authz-{name}");
        admin
            .call("CreateAlias", &json!({"AliasName": alias, "TargetKeyId": id}))
            .await
            .expect("CreateAlias");
        keys.push(KeyRefs { id, arn, alias });
    }
    let b = keys.pop().expect("B");
    let a = keys.pop().expect("A");
    for (grantee, operations) in [
        ("bob", json!(["Decrypt"])),
        ("carol", json!(["Encrypt", "Decrypt"])),
        ("route-granted", json!(["GenerateDataKey", "Decrypt"])),
    ] {
        admin
            .call(
                "CreateGrant",
                &json!({"KeyId": a.id, "GranteePrincipal": arn(grantee), "Operations": operations}),
            )
            .await
            .expect("CreateGrant");
    }
    (a, b)
}

/// Calls `operation` on `key` (spelled `key_ref`) as `client`; `blob` is a ciphertext of `key`
/// and `other` the other key, ReEncrypt's destination. Ok(()) when allowed; Err("denied") for
/// AccessDeniedException; any other error as a message (a wrong cell).
async fn attempt(
    client: &mut Client,
    operation: &str,
    key_ref: &str,
    blob: &str,
    other: &KeyRefs,
) -> Result<(), String> {
    let input = match operation {
        "DescribeKey" => json!({"KeyId": key_ref}),
        "Encrypt" => json!({"KeyId": key_ref, "Plaintext": "c2VjcmV0"}),
        "Decrypt" => json!({"KeyId": key_ref, "CiphertextBlob": blob}),
        "GenerateDataKey" => json!({"KeyId": key_ref, "KeySpec": "AES_256"}),
        "ReEncrypt" => json!({"SourceKeyId": key_ref, "CiphertextBlob": blob,
                              "DestinationKeyId": other.alias}),
        other => unreachable!("no such operation in the matrix: {other}"),
    };
    match client.call(operation, &input).await {
        Ok(_) => Ok(()),
        Err(CallError::Api(error)) if error.code_name == "AccessDeniedException" => {
            Err("denied".into())
        }
        Err(error) => Err(format!("unexpected: {error}")),
    }
}

#[test]
fn every_principal_gets_exactly_what_policies_and_grants_give_through_api_and_routes() {
    let first = Server::start(&PRINCIPALS, "");
    let runtime = proxy::runtime();
    let mut table = String::new();
    let mut wrong = 0;
    let (a, b) = runtime.block_on(async {
        let mut admin = first.client(HttpVersion::Http2, &ADMIN).await;
        let (a, b) = set_up_keys(&mut admin).await;
        let mut blobs = Vec::new();
        for key in [&a, &b] {
            let encrypted = admin
                .call("Encrypt", &json!({"KeyId": key.id, "Plaintext": "c2VjcmV0"}))
                .await
                .expect("Encrypt");
            blobs.push(encrypted["CiphertextBlob"].as_str().expect("blob").to_owned());
        }
        let _ = writeln!(table, "{:<7} {:<4} {:<6} {:<16} {:<8} actual", "who", "key", "as", "operation", "expected");
        for (who, key_name, cells) in EXPECTED {
            let principal = PRINCIPALS.iter().find(|p| p.name == who).expect("principal");
            let mut client = first.client(HttpVersion::Http2, principal).await;
            let (key, other, blob) =
                if key_name == "A" { (&a, &b, &blobs[0]) } else { (&b, &a, &blobs[1]) };
            for (operation, cell) in OPERATIONS.iter().zip(cells.chars()) {
                for (spelling, key_ref) in key.all() {
                    let outcome = attempt(&mut client, operation, key_ref, blob, other).await;
                    let expected = if cell == 'Y' { "allowed" } else { "denied" };
                    let actual = match &outcome {
                        Ok(()) => "allowed".to_owned(),
                        Err(message) => message.clone(),
                    };
                    let mark = if actual == expected { "" } else { "  <-- wrong" };
                    if !mark.is_empty() {
                        wrong += 1;
                    }
                    let _ = writeln!(
                        table,
                        "{who:<7} {key_name:<4} {spelling:<6} {operation:<16} {expected:<8} {actual}{mark}"
                    );
                }
            }
        }
        (a, b)
    });
    // Every denial above was audited and counted.
    let denied = crate::support::http_get(&first.ready.admin.to_string(), "/metrics")
        .lines()
        .filter(|line| line.starts_with("kagi_api_access_denied_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>();
    let expected_denials = EXPECTED
        .iter()
        .map(|(_, _, cells)| cells.chars().filter(|c| *c == '-').count() * 3)
        .sum::<usize>();

    // The envelope routes, as their own principals, on a restart with the proxy configured.
    let mut first = first;
    first.kill();
    let kagi = crate::support::Kagi::uninitialised();
    let (_store, store) = proxy::backend(&kagi.path(""), "store");
    let mut routes = format!(
        "[[listeners]]\nname = \"plain\"\nlisten = \"127.0.0.1:0\"\ntls = false\n\n\
         [[upstreams]]\nname = \"store\"\ntargets = [\"{store}\"]\n\n"
    );
    for (route, key_name, _, _) in ROUTES {
        let key = if key_name == "A" { &a.alias } else { &b.alias };
        let principal = if route == "vault-b" { "principal = \"route-vault\"\n" } else { "" };
        let _ = write!(
            routes,
            "[[routes]]\nname = \"{route}\"\npath_prefix = \"/objects/{route}/\"\nupstream = \"store\"\n\
             [routes.envelope]\nkey = \"{key}\"\n{principal}\n"
        );
    }
    let server = Server::start_on_with(&first.data_dir(), &PRINCIPALS, &routes);
    let listener = server.listener("plain");
    let _ = writeln!(table, "\n{:<8} {:<4} {:<5} {:<8} actual", "route", "key", "op", "expected");
    runtime.block_on(async {
        // A ciphertext of key A, stored through the route allowed to write it, then copied
        // under every route's path: each route's GET is its principal's Decrypt of key A.
        let put = http(listener, "PUT", "/objects/vault/seed", b"route secret").await;
        assert_eq!(put.0, 201, "the seed object: {put:?}");
        let sealed = http(store, "GET", "/objects/vault/seed", b"").await.1;
        for (route, key_name, may_put, may_get) in ROUTES {
            let put =
                http(listener, "PUT", &format!("/objects/{route}/own"), b"route secret").await;
            let stored = http(store, "PUT", &format!("/objects/{route}/copied"), &sealed).await;
            assert_eq!(stored.0, 201);
            let get = http(listener, "GET", &format!("/objects/{route}/copied"), b"").await;
            let checks = [
                ("PUT", may_put, put.0 == 201, put.0),
                ("GET", may_get, get.0 == 200 && get.1 == b"route secret".as_slice(), get.0),
            ];
            for (op, allowed, succeeded, status) in checks {
                // GET on vault-b is a key mismatch (the object is under A), not a denial.
                if route == "vault-b" && op == "GET" {
                    continue;
                }
                let expected = if allowed { "allowed" } else { "denied" };
                let actual = match (succeeded, status) {
                    (true, _) => "allowed".to_owned(),
                    (false, 403) => "denied".to_owned(),
                    (false, status) => format!("unexpected: {status}"),
                };
                let mark = if actual == expected { "" } else { "  <-- wrong" };
                if !mark.is_empty() {
                    wrong += 1;
                }
                let _ = writeln!(
                    table,
                    "{route:<8} {key_name:<4} {op:<5} {expected:<8} {actual}{mark}"
                );
            }
        }
    });
    assert!(wrong == 0, "{wrong} cells of the authorization matrix are wrong:\n{table}");
    assert_eq!(denied, expected_denials as f64, "denials counted:\n{table}");
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// One plain HTTP/1.1 request: status and body.
async fn http(address: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(address).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.expect("handshake");
    tokio::spawn(connection);
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "store")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes().to_vec();
    (status, body)
}
