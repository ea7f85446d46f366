use std::path::Path;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "kagi.toml", Path::new("/etc/kagi"))
}

const MINIMAL: &str = r#"
[keystore]
data_dir = "data"

[api]
listen = "127.0.0.1:0"
"#;

#[test]
fn the_embedded_default_is_valid() {
    let config = Config::embedded(Path::new("/srv")).unwrap();
    assert_eq!(config.data_dir, Path::new("/srv/data"));
    assert_eq!(config.api.listen.port(), 8443);
    let admin = config.principals.by_name("admin").unwrap();
    assert!(admin.administrator);
    assert!(!format!("{config:?}").contains("kagi-demo-secret"), "secrets never print");
    assert_eq!(config.audit, AuditConfig::default());
}

#[test]
fn relative_paths_resolve_against_the_files_directory() {
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(base_dir(Path::new("/etc/kagi/kagi.toml")), Path::new("/etc/kagi"));
    assert_eq!(base_dir(Path::new("conf/kagi.toml")), cwd.join("conf"));
    // A bare file name: its parent is "", which must mean the current directory, so that the
    // data directory (and the CA bundle path in the ready file) come out absolute.
    assert_eq!(base_dir(Path::new("kagi.toml")), cwd);
    assert!(base_dir(Path::new("kagi.toml")).is_absolute());
}

#[test]
fn a_minimal_file_takes_defaults() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.data_dir, Path::new("/etc/kagi/data"));
    assert_eq!(config.partition.region, "us-east-1");
    assert_eq!(config.quotas, Quotas::default());
    assert!(config.admin.is_none() && config.api.certificate.is_none());
}

#[test]
fn errors_name_the_line() {
    let cases = [
        (format!("{MINIMAL}[quotas]\nsymmetric = -1.0\n"), 8, "positive"),
        (format!("{MINIMAL}bogus = 1\n"), 7, "unknown field"),
        (MINIMAL.replace("127.0.0.1:0", "localhost"), 6, "not an address"),
        (format!("{MINIMAL}[admin]\nlisten = 5\n"), 8, "string"),
        (MINIMAL.replace("[keystore]", "[keystore]\nbackend = \"ring\""), 3, "unknown backend"),
        (MINIMAL.replace("[keystore]", "[keystore]\naccount = \"12\""), 3, "12 digits"),
        (
            format!(
                "{MINIMAL}[[principals]]\nname = \"a\"\naccess_key_id = \"AKIA0000000000000001\"\n"
            ),
            8,
            "exactly one",
        ),
        (
            format!(
                "{MINIMAL}[[principals]]\nname = \"a b\"\naccess_key_id = \"AKIA0000000000000001\"\nsecret = \"0123456789abcdef\"\n"
            ),
            8,
            "principal name",
        ),
        (
            format!(
                "{MINIMAL}[[principals]]\nname = \"a\"\naccess_key_id = \"AKIA0000000000000001\"\nsecret_env = \"KAGI_TEST_UNSET_VARIABLE\"\n"
            ),
            10,
            "not set",
        ),
        (format!("{MINIMAL}[api\n"), 7, ""),
        (format!("{MINIMAL}[audit]\nencryption_context = \"all\"\n"), 8, "keys-only, as-given"),
        (format!("{MINIMAL}[audit]\ntimeout_ms = 0\n"), 8, "timeout_ms"),
    ];
    for (text, line, needle) in cases {
        let error = parse(&text).unwrap_err().to_string();
        assert!(error.starts_with(&format!("kagi.toml:{line}: ")), "{error}\n---\n{text}");
        assert!(error.contains(needle), "{error}");
    }
}

#[test]
fn a_principal_may_have_its_own_quotas() {
    let text = format!(
        "{MINIMAL}[quotas]\nmanagement = 50.0\n\n[[principals]]\nname = \"batch\"\n\
         access_key_id = \"AKIA0000000000000002\"\nsecret = \"0123456789abcdef\"\n\
         quotas = {{ management = 0.5, burst_seconds = 4.0 }}\n"
    );
    let config = parse(&text).unwrap();
    let batch = config.principals.by_name("batch").unwrap();
    assert_eq!(batch.quotas.management, 0.5);
    assert_eq!(batch.quotas.burst_seconds, 4.0);
    assert_eq!(batch.quotas.symmetric, Quotas::default().symmetric);
    assert_eq!(config.quotas.management, 50.0);
    let bad = text.replace("management = 0.5", "management = -1.0");
    assert!(parse(&bad).unwrap_err().to_string().starts_with("kagi.toml:14: "), "{bad}");
}

#[test]
fn secrets_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alice.secret"), "0123456789abcdefXYZ\n").unwrap();
    let text = format!(
        "{MINIMAL}[[principals]]\nname = \"alice\"\naccess_key_id = \"AKIA0000000000000001\"\n\
         secret_file = \"alice.secret\"\n"
    );
    let config = Config::parse(&text, "kagi.toml", dir.path()).unwrap();
    let alice = config.principals.get("AKIA0000000000000001").unwrap();
    assert_eq!(alice.secret.expose_secret(), b"0123456789abcdefXYZ");
    assert_eq!(alice.quotas, Quotas::default());
    assert!(!alice.administrator);
}

#[test]
fn webhooks_are_plain_http_urls() {
    let config =
        parse(&format!("{MINIMAL}[[webhooks]]\nurl = \"http://127.0.0.1:9000/kagi\"\n")).unwrap();
    assert_eq!(config.webhooks.len(), 1);
    assert_eq!(config.webhooks[0].port_u16(), Some(9000));
    assert!(parse(MINIMAL).unwrap().webhooks.is_empty());
    for bad in ["https://example.com/", "not a url", "/relative"] {
        let text = format!("{MINIMAL}[[webhooks]]\nurl = {bad:?}\n");
        assert!(parse(&text).is_err(), "{bad}");
    }
}
