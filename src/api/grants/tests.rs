//! The grant operations over the API, calling [`Api::handle`] with SigV4-signed requests: a
//! grant lets its grantee do exactly its operations (within its constraints) on the next
//! call, stops on the next call after retirement or revocation, and never beats an explicit
//! Deny in the key policy.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Uri};
use serde_json::{Value, json};

use crate::api::{Api, CONTENT_TYPE, sigv4};
use crate::audit::NullSink;
use crate::config::Config;
use crate::crypto::BackendKind;
use crate::keystore::clock::{Clock, ManualClock};
use crate::keystore::{Keystore, Partition, RootKeySource};
use crate::metrics::Metrics;

const NOW: i64 = 1_800_000_000;
const SECRET: &str = "test-secret-0123456789";

fn arn(name: &str) -> String {
    format!("arn:aws:iam::111122223333:user/{name}")
}

struct Env {
    api: Api,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = BackendKind::AwsLc.backend();
    Keystore::init(backend, dir.path(), &RootKeySource::File).expect("init");
    let keystore = Keystore::open(
        backend,
        dir.path(),
        &RootKeySource::File,
        Arc::new(ManualClock::new(NOW)) as Arc<dyn Clock>,
        Arc::new(NullSink),
        Partition::default(),
    )
    .expect("open");
    let mut text =
        String::from("[keystore]\ndata_dir = \"data\"\n[api]\nlisten = \"127.0.0.1:0\"\n");
    for (name, admin) in [("admin", true), ("alice", false), ("bob", false), ("carol", false)] {
        text.push_str(&format!(
            "[[principals]]\nname = \"{name}\"\naccess_key_id = \"{}\"\nsecret = \"{SECRET}\"\n\
             administrator = {admin}\n",
            access_key(name)
        ));
    }
    let config = Config::parse(&text, "test.toml", dir.path()).expect("config");
    let api = Api::new(Arc::new(keystore), config.principals, Arc::new(Metrics::new()));
    Env { api, _dir: dir }
}

fn access_key(name: &str) -> String {
    format!("AKIA{:0>16}", name.to_ascii_uppercase())
}

impl Env {
    /// Calls `operation` as principal `who`; answers the status and the JSON body.
    async fn call(&self, who: &str, operation: &str, body: Value) -> (u16, Value) {
        let body = serde_json::to_vec(&body).expect("json");
        let uri = Uri::from_static("https://kms.test/");
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_str(&format!("TrentService.{operation}")).expect("header"),
        );
        let akid = access_key(who);
        let signer =
            sigv4::Signer { access_key_id: &akid, secret: SECRET.as_bytes(), region: "us-east-1" };
        sigv4::sign(&Method::POST, &uri, &mut headers, &body, signer, self.api.keystore().now());
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        let (parts, ()) = request.into_parts();
        let peer = "127.0.0.1:1".parse().expect("peer");
        let response = self.api.handle(&parts, Ok(Bytes::from(body)), peer).await;
        let status = response.status().as_u16();
        let value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
        (status, value)
    }

    /// Calls and expects success.
    async fn ok(&self, who: &str, operation: &str, body: Value) -> Value {
        let (status, value) = self.call(who, operation, body).await;
        assert_eq!(status, 200, "{who} {operation}: {value}");
        value
    }

    /// Calls and expects the error `code`.
    async fn fails(&self, who: &str, operation: &str, body: Value, code: &str) {
        let (status, value) = self.call(who, operation, body).await;
        assert_ne!(status, 200, "{who} {operation} should fail with {code}");
        assert_eq!(value["__type"], code, "{who} {operation}: {value}");
    }

    /// A symmetric key made by the administrator (the default policy: admin only).
    async fn key(&self) -> String {
        let out = self.ok("admin", "CreateKey", json!({})).await;
        out["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned()
    }

    async fn grant(&self, key: &str, grantee: &str, operations: &[&str], extra: Value) -> Value {
        let mut body = json!({
            "KeyId": key,
            "GranteePrincipal": arn(grantee),
            "Operations": operations,
        });
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        self.ok("admin", "CreateGrant", body).await
    }

    async fn encrypt(&self, who: &str, key: &str, context: Value) -> (u16, Value) {
        let body = json!({"KeyId": key, "Plaintext": "aGVsbG8=", "EncryptionContext": context});
        self.call(who, "Encrypt", body).await
    }
}

#[tokio::test]
async fn a_grant_lets_its_grantee_do_its_operations_only() {
    let env = env();
    let key = env.key().await;
    let denied = "AccessDeniedException";
    env.fails("alice", "Encrypt", json!({"KeyId": key, "Plaintext": "aGk="}), denied).await;
    let created = env.grant(&key, "alice", &["Encrypt"], json!({})).await;
    let token = created["GrantToken"].as_str().expect("GrantToken").to_owned();
    let grant_id = created["GrantId"].as_str().expect("GrantId").to_owned();
    assert_eq!(grant_id.len(), 64);
    // At once, with or without the token.
    let body = json!({"KeyId": key, "Plaintext": "aGk=", "GrantTokens": [token]});
    let blob = env.ok("alice", "Encrypt", body).await["CiphertextBlob"].clone();
    env.ok("alice", "Encrypt", json!({"KeyId": key, "Plaintext": "aGk="})).await;
    // Nothing else: not Decrypt, not DescribeKey; and nobody else.
    env.fails("alice", "Decrypt", json!({"CiphertextBlob": blob}), denied).await;
    env.fails("alice", "DescribeKey", json!({"KeyId": key}), denied).await;
    env.fails("bob", "Encrypt", json!({"KeyId": key, "Plaintext": "aGk="}), denied).await;
    // An unknown grant token is refused, as AWS does.
    let bogus = json!({"KeyId": key, "Plaintext": "aGk=", "GrantTokens": ["bogus"]});
    env.fails("alice", "Encrypt", bogus, "InvalidGrantTokenException").await;
    // Retirement takes effect on the very next call, and the token dies with the grant.
    env.ok("admin", "RetireGrant", json!({"GrantToken": token})).await;
    env.fails("alice", "Encrypt", json!({"KeyId": key, "Plaintext": "aGk="}), denied).await;
    let stale = json!({"KeyId": key, "Plaintext": "aGk=", "GrantTokens": [token]});
    env.fails("alice", "Encrypt", stale, "InvalidGrantTokenException").await;
    // So does revocation.
    let created = env.grant(&key, "alice", &["Encrypt", "Decrypt"], json!({})).await;
    env.ok("alice", "Decrypt", json!({"CiphertextBlob": blob})).await;
    let revoke = json!({"KeyId": key, "GrantId": created["GrantId"]});
    env.fails("alice", "RevokeGrant", revoke.clone(), denied).await;
    env.ok("admin", "RevokeGrant", revoke).await;
    env.fails("alice", "Decrypt", json!({"CiphertextBlob": blob}), denied).await;
}

#[tokio::test]
async fn encryption_context_constraints_are_enforced() {
    let env = env();
    let key = env.key().await;
    let subset = json!({"Constraints": {"EncryptionContextSubset": {"app": "x"}}});
    env.grant(&key, "alice", &["Encrypt", "Decrypt"], subset).await;
    let equals = json!({"Constraints": {"EncryptionContextEquals": {"app": "x"}}});
    env.grant(&key, "bob", &["Encrypt"], equals).await;
    let (status, out) = env.encrypt("alice", &key, json!({"app": "x", "user": "7"})).await;
    assert_eq!(status, 200, "{out}");
    let (_, out_y) = env.encrypt("alice", &key, json!({"app": "y"})).await;
    assert_eq!(out_y["__type"], "AccessDeniedException");
    assert_eq!(env.encrypt("alice", &key, json!({})).await.1["__type"], "AccessDeniedException");
    // Decrypt under the subset constraint, with the context the blob was made with.
    let context = json!({"app": "x", "user": "7"});
    let body = json!({"CiphertextBlob": out["CiphertextBlob"], "EncryptionContext": context});
    env.ok("alice", "Decrypt", body).await;
    // EncryptionContextEquals: exactly that context.
    assert_eq!(env.encrypt("bob", &key, json!({"app": "x"})).await.0, 200);
    let (_, out) = env.encrypt("bob", &key, json!({"app": "x", "user": "7"})).await;
    assert_eq!(out["__type"], "AccessDeniedException");
    // Constraints are only for symmetric keys and context-taking operations.
    let signing = env
        .ok("admin", "CreateKey", json!({"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"}))
        .await;
    let signing = signing["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned();
    let body = json!({
        "KeyId": signing,
        "GranteePrincipal": arn("alice"),
        "Operations": ["Sign"],
        "Constraints": {"EncryptionContextSubset": {"app": "x"}},
    });
    env.fails("admin", "CreateGrant", body, "ValidationException").await;
}

#[tokio::test]
async fn an_explicit_deny_beats_a_grant() {
    let env = env();
    let key = env.key().await;
    env.grant(&key, "alice", &["Encrypt"], json!({})).await;
    assert_eq!(env.encrypt("alice", &key, json!({})).await.0, 200);
    let policy = json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": arn("admin")}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Deny", "Principal": {"AWS": arn("alice")}, "Action": "kms:Encrypt", "Resource": "*"},
        ],
    });
    let body = json!({"KeyId": key, "Policy": policy.to_string()});
    env.ok("admin", "PutKeyPolicy", body).await;
    let (_, out) = env.encrypt("alice", &key, json!({})).await;
    assert_eq!(out["__type"], "AccessDeniedException");
}

#[tokio::test]
async fn list_grants_pages_and_shapes() {
    let env = env();
    let key = env.key().await;
    let named = json!({
        "Name": "app-reader",
        "RetiringPrincipal": arn("carol"),
        "Constraints": {"EncryptionContextSubset": {"app": "x"}},
    });
    let first = env.grant(&key, "alice", &["Decrypt", "DescribeKey"], named.clone()).await;
    // The same name and parameters: the same grant, a new token.
    let again = env.grant(&key, "alice", &["Decrypt", "DescribeKey"], named).await;
    assert_eq!(first["GrantId"], again["GrantId"]);
    assert_ne!(first["GrantToken"], again["GrantToken"]);
    env.grant(&key, "bob", &["Encrypt"], json!({})).await;
    env.grant(&key, "carol", &["GenerateDataKey"], json!({})).await;
    let mut ids = Vec::new();
    let mut body = json!({"KeyId": key, "Limit": 1});
    loop {
        let page = env.ok("admin", "ListGrants", body.clone()).await;
        let grants = page["Grants"].as_array().expect("Grants");
        assert_eq!(grants.len(), 1);
        ids.push(grants[0]["GrantId"].clone());
        if page["Truncated"] == json!(false) {
            assert!(page.get("NextMarker").is_none());
            break;
        }
        body["Marker"] = page["NextMarker"].clone();
    }
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&first["GrantId"]));
    ids.sort_by_key(ToString::to_string);
    ids.dedup();
    assert_eq!(ids.len(), 3, "each grant once");
    let one =
        env.ok("admin", "ListGrants", json!({"KeyId": key, "GrantId": first["GrantId"]})).await;
    let entry = &one["Grants"][0];
    let key_arn = format!("arn:aws:kms:us-east-1:111122223333:key/{key}");
    assert_eq!(entry["KeyId"], key_arn);
    assert_eq!(entry["Name"], "app-reader");
    assert_eq!(entry["CreationDate"], NOW);
    assert_eq!(entry["GranteePrincipal"], arn("alice"));
    assert_eq!(entry["RetiringPrincipal"], arn("carol"));
    assert_eq!(entry["IssuingAccount"], "arn:aws:iam::111122223333:root");
    assert_eq!(entry["Operations"], json!(["Decrypt", "DescribeKey"]));
    assert_eq!(entry["Constraints"], json!({"EncryptionContextSubset": {"app": "x"}}));
    let bob =
        env.ok("admin", "ListGrants", json!({"KeyId": key, "GranteePrincipal": arn("bob")})).await;
    assert_eq!(bob["Grants"].as_array().expect("Grants").len(), 1);
    assert!(bob["Grants"][0].get("Name").is_none(), "absent members are omitted");
    // The grantee's DescribeKey comes from its grant too, constraints notwithstanding.
    env.ok("alice", "DescribeKey", json!({"KeyId": key})).await;
    // Listing needs kms:ListGrants on the key.
    env.fails("bob", "ListGrants", json!({"KeyId": key}), "AccessDeniedException").await;
    // ListRetirableGrants: one's own, or as the account.
    let mine =
        env.ok("carol", "ListRetirableGrants", json!({"RetiringPrincipal": arn("carol")})).await;
    assert_eq!(mine["Grants"].as_array().expect("Grants").len(), 1);
    assert_eq!(mine["Truncated"], false);
    let theirs = json!({"RetiringPrincipal": arn("carol")});
    env.fails("bob", "ListRetirableGrants", theirs.clone(), "AccessDeniedException").await;
    env.ok("admin", "ListRetirableGrants", theirs).await;
    // The retiring principal retires it by key and grant id.
    let retire = json!({"KeyId": key_arn, "GrantId": first["GrantId"]});
    env.fails("alice", "RetireGrant", retire.clone(), "AccessDeniedException").await;
    env.ok("carol", "RetireGrant", retire).await;
    env.fails("alice", "DescribeKey", json!({"KeyId": key}), "AccessDeniedException").await;
}

#[tokio::test]
async fn grants_that_create_grants_create_no_wider_ones() {
    let env = env();
    let key = env.key().await;
    env.grant(&key, "alice", &["Encrypt", "CreateGrant", "RetireGrant"], json!({})).await;
    let narrower = json!({"KeyId": key, "GranteePrincipal": arn("bob"), "Operations": ["Encrypt"]});
    let created = env.ok("alice", "CreateGrant", narrower).await;
    assert_eq!(env.encrypt("bob", &key, json!({})).await.0, 200);
    let wider = json!({"KeyId": key, "GranteePrincipal": arn("bob"), "Operations": ["Decrypt"]});
    env.fails("alice", "CreateGrant", wider, "AccessDeniedException").await;
    // A grantee whose grant permits RetireGrant retires its own grant.
    let list = env
        .ok("admin", "ListGrants", json!({"KeyId": key, "GranteePrincipal": arn("alice")}))
        .await;
    let own = json!({"KeyId": key, "GrantId": list["Grants"][0]["GrantId"]});
    env.ok("alice", "RetireGrant", own).await;
    env.fails(
        "alice",
        "CreateGrant",
        json!({"KeyId": key, "GranteePrincipal": arn("bob"), "Operations": ["Encrypt"]}),
        "AccessDeniedException",
    )
    .await;
    // Bob's grant lives on until retired or revoked.
    assert_eq!(env.encrypt("bob", &key, json!({})).await.0, 200);
    env.ok("admin", "RetireGrant", json!({"GrantToken": created["GrantToken"]})).await;
    assert_eq!(env.encrypt("bob", &key, json!({})).await.1["__type"], "AccessDeniedException");
}

#[tokio::test]
async fn errors_for_bad_requests_ids_and_tokens() {
    let env = env();
    let key = env.key().await;
    let grant =
        |ops: Value| json!({"KeyId": key, "GranteePrincipal": arn("alice"), "Operations": ops});
    env.fails("admin", "CreateGrant", grant(json!(["Fly"])), "ValidationException").await;
    env.fails("admin", "CreateGrant", grant(json!(["Sign"])), "ValidationException").await;
    env.fails("admin", "CreateGrant", grant(json!("Encrypt")), "SerializationException").await;
    env.fails(
        "admin",
        "CreateGrant",
        json!({"KeyId": key, "Operations": ["Encrypt"]}),
        "ValidationException",
    )
    .await;
    let unknown = "00000000-0000-4000-8000-000000000000";
    let missing =
        json!({"KeyId": unknown, "GranteePrincipal": arn("alice"), "Operations": ["Encrypt"]});
    let (status, out) = env.call("admin", "CreateGrant", missing).await;
    assert_eq!((status, out["__type"].as_str()), (404, Some("NotFoundException")));
    // A dry run creates nothing.
    let mut dry = grant(json!(["Encrypt"]));
    dry["DryRun"] = json!(true);
    env.fails("admin", "CreateGrant", dry, "DryRunOperationException").await;
    let list = env.ok("admin", "ListGrants", json!({"KeyId": key})).await;
    assert_eq!(list["Grants"], json!([]));
    // Unknown or malformed grant ids and tokens.
    let absent = "ab".repeat(32);
    env.fails(
        "admin",
        "RevokeGrant",
        json!({"KeyId": key, "GrantId": absent}),
        "InvalidGrantIdException",
    )
    .await;
    env.fails(
        "admin",
        "RevokeGrant",
        json!({"KeyId": key, "GrantId": "x"}),
        "InvalidGrantIdException",
    )
    .await;
    env.fails(
        "admin",
        "RetireGrant",
        json!({"KeyId": key, "GrantId": absent}),
        "InvalidGrantIdException",
    )
    .await;
    env.fails("admin", "RetireGrant", json!({"GrantToken": "bogus"}), "InvalidGrantTokenException")
        .await;
    env.fails("admin", "RetireGrant", json!({}), "ValidationException").await;
    env.fails(
        "admin",
        "ListGrants",
        json!({"KeyId": key, "GrantId": "x"}),
        "InvalidGrantIdException",
    )
    .await;
    env.fails(
        "admin",
        "ListGrants",
        json!({"KeyId": key, "Marker": "%%"}),
        "InvalidMarkerException",
    )
    .await;
    env.fails("admin", "ListGrants", json!({"KeyId": key, "Limit": 0}), "ValidationException")
        .await;
    let eleven = vec!["t"; 11];
    let body = json!({"KeyId": key, "Plaintext": "aGk=", "GrantTokens": eleven});
    env.fails("admin", "Encrypt", body, "ValidationException").await;
}
