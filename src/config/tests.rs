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
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(config.proxy.workers, cpus, "one proxy worker per CPU");
}

#[test]
fn the_proxy_worker_count_is_restart_only() {
    let running = parse(MINIMAL).unwrap();
    let mut new = parse(&format!("{MINIMAL}[proxy]\nworkers = 7\n")).unwrap();
    assert_eq!(new.proxy.workers, 7);
    assert_eq!(running.restart_only_changes(&new), ["[proxy] workers"]);
    new.keep_restart_only(&running);
    assert_eq!(new.proxy.workers, running.proxy.workers);
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
        (format!("{MINIMAL}[proxy]\nworkers = 0\n"), 8, "must be 1 to 256"),
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

#[test]
fn the_commented_example_is_complete_and_valid() {
    let text = include_str!("../../config/kagi.toml");
    // Its secrets come from the environment and a file: give them here.
    let text = text
        .replace("secret_env = \"KAGI_OPS_SECRET\"", "secret = \"an-ops-secret-of-enough-length\"");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/app.secret"), "an-app-secret-of-enough-length\n")
        .unwrap();
    let config = Config::parse(&text, "kagi.toml", dir.path()).unwrap();
    let proxy = &config.proxy;
    assert_eq!(proxy.listeners.len(), 2);
    assert_eq!(proxy.upstreams[0].targets.len(), 2);
    assert_eq!(proxy.routes[0].host, HostMatch::Exact("static.example.com".into()));
    assert_eq!(proxy.routes[1].max_body_bytes, 16 * 1024 * 1024);
    assert_eq!(proxy.access_log.path, Some(dir.path().join("access.log")));
    // Every table and key the configuration accepts appears in the example.
    for key in [
        "data_dir",
        "backend",
        "region",
        "account",
        "root_passphrase_env",
        "certificate",
        "tls_names",
        "tls_profile",
        "secret_env",
        "secret_file",
        "account_actions",
        "burst_seconds",
        "encryption_context",
        "rotate_daily",
        "max_file_bytes",
        "timeout_ms",
        "[[webhooks]]",
        "lock_memory",
        "drain_timeout_ms",
        "workers",
        "access_log_format",
        "client_ca",
        "max_connections",
        "header_timeout_ms",
        "idle_timeout_ms",
        "max_header_bytes",
        "protocol",
        "server_name",
        "connect_timeout_ms",
        "response_timeout_ms",
        "fail_timeout_ms",
        "max_idle_per_target",
        "listeners = ",
        "path_prefix",
        "max_body_bytes",
        "host_header",
    ] {
        assert!(text.contains(key), "config/kagi.toml does not document {key}");
    }
}

#[test]
fn proxy_tables_are_checked_whole() {
    let base =
        format!("{MINIMAL}\n[[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:9000\"]\n");
    let error = |extra: &str| parse(&format!("{base}{extra}")).unwrap_err().to_string();
    assert!(
        error("[[routes]]\nname = \"r\"\nupstream = \"nope\"\n")
            .contains("no [[upstreams]] is named \"nope\"")
    );
    assert!(
        error("[[routes]]\nname = \"r\"\nupstream = \"app\"\nlisteners = [\"x\"]\n")
            .contains("no [[listeners]]")
    );
    let twice = "[[routes]]\nname = \"a\"\nupstream = \"app\"\n[[routes]]\nname = \"b\"\nupstream = \"app\"\n";
    assert!(error(twice).contains("already matches the same host and path"));
    let listener = "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:9\"\n";
    assert!(error(listener).contains("names its certificates"));
    let two = "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:9\"\ntls = false\n\
               [[listeners]]\nname = \"m\"\nlisten = \"127.0.0.1:9\"\ntls = false\n\
               [[routes]]\nname = \"r\"\nupstream = \"app\"\n";
    let message = error(two);
    assert!(message.contains("kagi.toml:") && message.contains("already used"), "{message}");
    assert!(error("[[upstreams]]\nname = \"t\"\ntargets = [\"nohost\"]\n").contains("host:port"));
    assert!(
        error("[[upstreams]]\nname = \"t\"\ntargets = [\"a:1\"]\ntls = true\n")
            .contains("CA bundle")
    );
    let config = parse(&format!(
        "{base}[[routes]]\nname = \"w\"\nhost = \"*.Example.com\"\nupstream = \"app\"\n"
    ))
    .unwrap();
    let route = &config.proxy.routes[0];
    assert!(route.host.matches("a.example.com"));
    assert!(!route.host.matches("example.com") && !route.host.matches("a.b.example.com"));
}

#[test]
fn tls_profiles_are_intermediate_by_default_or_modern() {
    let route = "[[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:9000\"]\n\
                 [[routes]]\nname = \"r\"\nupstream = \"app\"\n";
    let listener = |extra: &str| {
        format!(
            "{MINIMAL}{extra}\n[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:9\"\n\
             certificates = [\"web\"]\n{extra}\n{route}"
        )
    };
    let config = parse(&listener("")).unwrap();
    assert_eq!(config.api.tls_profile, crate::tls::TlsProfile::Intermediate);
    let tls = config.proxy.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.profile, crate::tls::TlsProfile::Intermediate);
    let config = parse(&listener("tls_profile = \"modern\"")).unwrap();
    assert_eq!(config.api.tls_profile, crate::tls::TlsProfile::Modern);
    let tls = config.proxy.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.profile, crate::tls::TlsProfile::Modern);
    let error = parse(&listener("tls_profile = \"old\"")).unwrap_err().to_string();
    assert!(error.contains("kagi.toml:7: tls_profile is intermediate or modern"), "{error}");
    let plain = format!(
        "{MINIMAL}[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:9\"\ntls = false\n\
         tls_profile = \"modern\"\n{route}"
    );
    let error = parse(&plain).unwrap_err().to_string();
    assert!(error.contains("tls_profile on a listener with tls = false"), "{error}");
}
