//! Header hygiene between client and upstream: hop-by-hop fields removed in both directions
//! (RFC 9110 §7.6.1: `Connection` and every field it names, `Keep-Alive`, `Proxy-Connection`,
//! `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
//! `Proxy-Authorization`), except that a WebSocket upgrade keeps `Connection: upgrade` and
//! `Upgrade`; and the `X-Forwarded-*` fields set on the way in.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The hop-by-hop fields every proxy removes (names, not strings: each removal would
/// otherwise parse its name again).
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// `X-Forwarded-For`.
pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The protocol a request upgrades to (`Upgrade: websocket` with `Connection: upgrade`), if
/// it is one kagi passes through.
pub(super) fn websocket_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let connection_says_upgrade = headers.get_all(header::CONNECTION).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|token| token.trim().eq_ignore_ascii_case("upgrade")))
    });
    let websocket = upgrade.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    (connection_says_upgrade && websocket).then(|| upgrade.clone())
}

/// Removes the hop-by-hop fields, and those `Connection` names. With `upgrade`, the request
/// or response keeps `Connection: upgrade` and `Upgrade: <upgrade>`.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        // `Connection: close` names no field worth keeping either.
        headers.remove(&name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
}

/// Sets `X-Forwarded-For` (appending `client`, the client's address, to what earlier proxies
/// said), `X-Forwarded-Proto` and `X-Forwarded-Host`.
pub(super) fn set_forwarded(
    headers: &mut HeaderMap,
    client: &HeaderValue,
    tls: bool,
    host: Option<HeaderValue>,
) {
    let earlier: Vec<&str> =
        headers.get_all(&X_FORWARDED_FOR).iter().filter_map(|v| v.to_str().ok()).collect();
    let forwarded_for = if earlier.is_empty() {
        Some(client.clone())
    } else {
        let client = client.to_str().unwrap_or_default();
        HeaderValue::from_str(&format!("{}, {client}", earlier.join(", "))).ok()
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR, value);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(if tls { "https" } else { "http" }));
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

/// A client's address as `X-Forwarded-For` gives it, made once per connection.
pub(super) fn client_address(ip: IpAddr) -> HeaderValue {
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_go() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("x-secret-hop", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic Zm9v"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-checksum"),
            ("content-type", "text/plain"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut map, None);
        let left: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type", "x-kept"]);
    }

    #[test]
    fn a_websocket_upgrade_keeps_its_two_fields() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        let upgrade = websocket_upgrade(&map);
        assert!(upgrade.is_some());
        strip_hop_by_hop(&mut map, upgrade.as_ref());
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
        assert!(map.contains_key("sec-websocket-key"));
        // Upgrade to anything else (h2c) is not passed through.
        assert!(
            websocket_upgrade(&headers(&[("connection", "upgrade"), ("upgrade", "h2c")])).is_none()
        );
        assert!(websocket_upgrade(&headers(&[("upgrade", "websocket")])).is_none());
    }

    #[test]
    fn forwarded_fields_append_to_earlier_proxies() {
        let mut map = headers(&[("x-forwarded-for", "203.0.113.7"), ("x-forwarded-host", "evil")]);
        let host = HeaderValue::from_static("app.example.com");
        set_forwarded(&mut map, &client_address("127.0.0.1".parse().unwrap()), true, Some(host));
        assert_eq!(map["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-host"], "app.example.com");
        let mut map = HeaderMap::new();
        set_forwarded(&mut map, &client_address("::1".parse().unwrap()), false, None);
        assert_eq!(map["x-forwarded-for"], "::1");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert!(!map.contains_key("x-forwarded-host"));
    }
}
