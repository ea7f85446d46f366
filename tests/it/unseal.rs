//! A root key split into shares (issue 8, root key custody): `kagi init --shares`, a sealed
//! `kagi serve` that `kagi unseal` opens share by share, refusals of garbage, typos, other
//! keystores' shares and wrong sets, and commands given their shares with `--share-file`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kagi::api::client::HttpVersion;
use serde_json::json;

use crate::support::server::{ADMIN, Server};
use crate::support::{Kagi, Run, arg};

/// Exit code of a refused share (`exit_code::REJECTED`).
const REJECTED: i32 = 5;
/// How long a server may take to reach a state the test polls for.
const DEADLINE: Duration = Duration::from_secs(60);

/// A keystore made with `kagi init --shares N --threshold K`, and its shares' texts.
fn init_split(shares: u8, threshold: u8) -> (Kagi, Vec<String>) {
    let kagi = Kagi::uninitialised();
    let run =
        kagi.ok(&["init", "--shares", &shares.to_string(), "--threshold", &threshold.to_string()]);
    assert!(run.stderr.contains("only once"), "{}", run.stderr);
    let texts: Vec<String> = run.stdout_text().lines().map(str::to_owned).collect();
    assert_eq!(texts.len(), usize::from(shares), "one share per line: {}", run.stdout_text());
    assert!(texts.iter().all(|text| text.starts_with("kagi-share-v1:")), "{texts:?}");
    assert!(!kagi.data_dir().join("root.key").exists(), "no root key on disk");
    (kagi, texts)
}

/// `kagi unseal` with `share` on stdin.
fn unseal(kagi: &Kagi, share: &str) -> Run {
    kagi.run_with_input(&["unseal"], format!("{share}\n").as_bytes())
}

/// Polls until `condition` holds, failing if the server exits first.
fn wait_for(server: &mut Server, what: &str, condition: impl Fn(&Server) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition(server) {
        assert!(
            server.is_running(),
            "kagi serve exited while waiting for {what}:\n{}",
            server.log()
        );
        assert!(Instant::now() < deadline, "timed out waiting for {what}:\n{}", server.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn socket(data_dir: &Path) -> PathBuf {
    data_dir.join("unseal.sock")
}

/// Starts `kagi serve` on `kagi`'s directory and waits until it is sealed and waiting.
fn start_sealed(kagi: &Kagi) -> Server {
    let mut server = Server::spawn_on(&kagi.data_dir(), &[ADMIN]);
    let socket = socket(&kagi.data_dir());
    wait_for(&mut server, "the unseal socket", |_| socket.exists());
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&socket).expect("socket").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "unseal.sock is private");
    }
    server
}

/// A share with one hex digit of its value changed: a typo.
fn mistyped(share: &str) -> String {
    let position = share.rfind(':').expect("checksum") - 5;
    let mut bytes = share.as_bytes().to_vec();
    bytes[position] = if bytes[position] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).expect("ascii")
}

#[test]
fn a_sealed_server_opens_with_threshold_shares() {
    let (kagi, shares) = init_split(3, 2);
    let (_other, other_shares) = init_split(3, 2);
    let mut server = start_sealed(&kagi);
    assert!(server.log().contains("sealed"), "{}", server.log());
    assert!(server.log().contains("waiting for 2"), "{}", server.log());
    assert!(!server.is_ready(), "a sealed server does not listen");

    // Commands find the directory held by a sealed server, and say so.
    let sealed = kagi.run(&["keys", "list"]);
    assert_eq!(sealed.code, 7, "{}", sealed.stderr);
    assert!(sealed.stderr.contains("sealed"), "{}", sealed.stderr);

    let first = unseal(&kagi, &shares[0]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout_text().contains("1 of 2 shares"), "{}", first.stdout_text());

    // Refused one by one; the progress stays.
    for (what, bad) in [
        ("garbage", "not a share at all".to_owned()),
        ("a typo", mistyped(&shares[1])),
        ("another keystore's share", other_shares[1].clone()),
        ("the same share again", shares[0].clone()),
    ] {
        let refused = unseal(&kagi, &bad);
        assert_eq!(refused.code, REJECTED, "{what}: {} {}", refused.stdout_text(), refused.stderr);
        assert!(refused.stderr.contains("refused"), "{what}: {}", refused.stderr);
        assert!(!server.is_ready(), "{what} does not unseal");
    }
    assert!(server.log().contains("checksum"), "{}", server.log());

    // The second share, from a file.
    let file = kagi.write("share-3.txt", format!("{}\n", shares[2]).as_bytes());
    let last = kagi.run(&["unseal", "--share-file", arg(&file)]);
    assert_eq!(last.code, 0, "{}", last.stderr);
    assert_eq!(last.stdout_text().trim(), "unsealed");
    server.wait_until_ready();
    assert!(!socket(&kagi.data_dir()).exists(), "the socket is gone once unsealed");
    for share in &shares {
        let value = share.split(':').nth(3).expect("value");
        assert!(!server.log().contains(value), "no share in the log");
    }

    // The keystore works: a key, an encryption and its decryption through the API.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (key_id, blob) = runtime.block_on(async {
        let mut client = server.client(HttpVersion::Http2, &ADMIN).await;
        let key = client.call("CreateKey", &json!({})).await.expect("CreateKey");
        let key_id = key["KeyMetadata"]["KeyId"].as_str().expect("KeyId").to_owned();
        let plaintext = kagi::api::wire::b64(b"custody");
        let encrypted = client
            .call("Encrypt", &json!({"KeyId": key_id, "Plaintext": plaintext}))
            .await
            .expect("Encrypt");
        let decrypted = client
            .call("Decrypt", &json!({"CiphertextBlob": encrypted["CiphertextBlob"]}))
            .await
            .expect("Decrypt");
        assert_eq!(decrypted["Plaintext"], plaintext);
        let blob = encrypted["CiphertextBlob"].as_str().expect("blob").to_owned();
        (key_id, blob)
    });
    assert!(server.terminate(), "kagi serve exits 0 on SIGTERM");

    // With the server stopped, a command opens the keystore itself given two shares as files,
    // and refuses clearly without them.
    let share_1 = kagi.write("share-1.txt", shares[0].as_bytes());
    let blob_file = kagi.write("blob.b64", blob.as_bytes());
    let plain = kagi.ok(&[
        "decrypt",
        "--base64",
        "--in",
        arg(&blob_file),
        "--share-file",
        arg(&share_1),
        "--share-file",
        arg(&file),
    ]);
    assert_eq!(plain.stdout, b"custody");
    let listed =
        kagi.ok(&["keys", "list", "--share-file", arg(&share_1), "--share-file", arg(&file)]);
    assert!(listed.stdout_text().contains(&key_id), "{}", listed.stdout_text());
    let without = kagi.fails(&["keys", "list"], 2);
    assert!(without.stderr.contains("--share-file"), "{}", without.stderr);
    let too_few = kagi.fails(&["keys", "list", "--share-file", arg(&share_1)], 7);
    assert!(too_few.stderr.contains("2 shares are needed"), "{}", too_few.stderr);
}

#[test]
fn a_wrong_pair_of_shares_is_refused() {
    let (kagi, _shares) = init_split(3, 2);
    let (other, other_shares) = init_split(3, 2);
    // Another keystore's pair, given to a command: refused by their set.
    let files: Vec<PathBuf> = other_shares
        .iter()
        .enumerate()
        .map(|(index, text)| kagi.write(&format!("other-{index}.txt"), text.as_bytes()))
        .collect();
    let refused = kagi.fails(
        &["keys", "list", "--share-file", arg(&files[0]), "--share-file", arg(&files[1])],
        7,
    );
    assert!(refused.stderr.contains("another keystore"), "{}", refused.stderr);

    // With the other keystore's root.shares restored over this one's by mistake, the other's
    // shares pass every check of their own; root.check still refuses the key they make, and
    // the server starts the unseal again, still sealed.
    std::fs::copy(other.data_dir().join("root.shares"), kagi.data_dir().join("root.shares"))
        .expect("copy root.shares");
    let refused = kagi.fails(
        &["keys", "list", "--share-file", arg(&files[0]), "--share-file", arg(&files[1])],
        7,
    );
    assert!(refused.stderr.contains("do not open the keystore"), "{}", refused.stderr);
    let mut server = start_sealed(&kagi);
    let first = unseal(&kagi, &other_shares[0]);
    assert!(first.stdout_text().contains("1 of 2 shares"), "{}", first.stderr);
    let wrong = unseal(&kagi, &other_shares[1]);
    assert_eq!(wrong.code, REJECTED, "{}", wrong.stderr);
    assert!(wrong.stderr.contains("do not open the keystore"), "{}", wrong.stderr);
    assert!(wrong.stderr.contains("start again"), "{}", wrong.stderr);
    // The progress was reset: the first share counts as the first again.
    let again = unseal(&kagi, &other_shares[1]);
    assert!(
        again.stdout_text().contains("1 of 2 shares"),
        "{} {}",
        again.stdout_text(),
        again.stderr
    );
    assert!(!server.is_ready());
    assert!(server.is_running());

    // SIGTERM while sealed: a clean exit, the socket removed, nothing opened.
    let data_dir = kagi.data_dir();
    assert!(server.terminate(), "a sealed kagi serve exits 0 on SIGTERM");
    assert!(!socket(&data_dir).exists(), "the socket is removed at exit");
}

#[test]
fn init_refuses_bad_splits() {
    let kagi = Kagi::uninitialised();
    for (shares, threshold) in [("3", "1"), ("2", "3"), ("256", "2")] {
        let run = kagi.run(&["init", "--shares", shares, "--threshold", threshold]);
        assert_eq!(run.code, 2, "{shares} {threshold}: {}", run.stderr);
    }
    let one = kagi.run(&["init", "--shares", "3", "--threshold", "1"]);
    assert!(one.stderr.contains("at least 2"), "{}", one.stderr);
    assert!(!kagi.data_dir().join("root.check").exists(), "nothing was created");

    // --shares-dir: one private file per share, shown nowhere else.
    let dir = kagi.path("shares");
    let run = kagi.ok(&["init", "--shares", "2", "--threshold", "2", "--shares-dir", arg(&dir)]);
    assert!(!run.stdout_text().contains("kagi-share-v1"), "{}", run.stdout_text());
    for index in 1..=2 {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(format!("share-{index}.txt"));
        let mode = std::fs::metadata(&path).expect("share file").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }
    let shares: Vec<String> = (1..=2)
        .map(|i| dir.join(format!("share-{i}.txt")))
        .map(|p| p.to_str().expect("utf-8").to_owned())
        .collect();
    kagi.ok(&["keys", "list", "--share-file", &shares[0], "--share-file", &shares[1]]);
    // A second init over it is refused.
    kagi.fails(&["init", "--shares", "2", "--threshold", "2"], 6);
    kagi.fails(&["init"], 6);
}
