//! Webhook notifications from `kagi serve`: every key state change the API makes is POSTed as
//! JSON, in order, retried after a refusal; a dead webhook delays neither key operations nor the
//! other webhooks.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kagi::api::client::HttpVersion;
use serde_json::{Value, json};

use crate::support::http_get;
use crate::support::server::{ADMIN, Server};

/// A webhook receiver on a thread: refuses its first `refuse` requests with 500, accepts the
/// rest; every request's (status given, JSON body) goes to the channel.
fn receiver(refuse: usize) -> (String, mpsc::Receiver<(u16, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hooks/kagi", listener.local_addr().unwrap());
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            assert!(request_line.starts_with("POST /hooks/kagi "), "{request_line}");
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let status = if n < refuse { 500 } else { 200 };
            write!(stream, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            if sender.send((status, serde_json::from_slice(&body).unwrap())).is_err() {
                return;
            }
        }
    });
    (url, received)
}

#[test]
fn state_changes_reach_the_webhooks_in_order_and_a_dead_one_delays_nothing() {
    let (url, received) = receiver(1);
    // A port nothing listens on.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/", listener.local_addr().unwrap())
    };
    let extra = format!("[[webhooks]]\nurl = {dead:?}\n\n[[webhooks]]\nurl = {url:?}\n");
    let server = Server::start_with(&[ADMIN], "", &extra);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    let key = runtime.block_on(async {
        let mut client = server.client(HttpVersion::Http1, &ADMIN).await;
        let created = client.call("CreateKey", &json!({})).await.unwrap();
        let key = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
        let id = json!({"KeyId": key});
        for operation in ["DisableKey", "EnableKey", "RotateKeyOnDemand"] {
            client.call(operation, &id).await.unwrap();
        }
        // Not a state change: not notified.
        client.call("Encrypt", &json!({"KeyId": key, "Plaintext": "eA=="})).await.unwrap();
        client
            .call("ScheduleKeyDeletion", &json!({"KeyId": key, "PendingWindowInDays": 7}))
            .await
            .unwrap();
        client.call("CancelKeyDeletion", &id).await.unwrap();
        key
    });
    // The dead webhook retries for seconds per notification (about 18 s for these six); the
    // key operations did not wait for it.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let expected =
        ["created", "disabled", "enabled", "rotated", "deletion_scheduled", "deletion_cancelled"];
    // Every delivery, of any key (the server's first start also creates its API certificate's
    // key), as (key id, change).
    let (mut accepted, mut refused) = (Vec::new(), Vec::new());
    let ours = |list: &Vec<(String, String)>| {
        list.iter().filter(|(id, _)| *id == key).map(|(_, c)| c.clone()).collect::<Vec<_>>()
    };
    while ours(&accepted).len() < expected.len() {
        let (status, body) = received
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("notifications so far: {accepted:?}\n{}", server.log()));
        assert_eq!(body["type"], "kagi.key.state_change");
        let entry = (
            body["key_id"].as_str().unwrap().to_owned(),
            body["change"].as_str().unwrap().to_owned(),
        );
        if status == 200 { accepted.push(entry) } else { refused.push(entry) }
    }
    assert_eq!(ours(&accepted), expected);
    // The first delivery was refused, then retried and accepted.
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(accepted.contains(&refused[0]), "{refused:?} retried: {accepted:?}");
    let delivered = accepted.len();
    let metrics = http_get(&server.ready.admin.to_string(), "/metrics");
    assert!(
        metrics.contains(&format!(
            r#"kagi_webhook_deliveries_total{{outcome="delivered",webhook="1"}} {delivered}"#
        )),
        "{metrics}"
    );
}
