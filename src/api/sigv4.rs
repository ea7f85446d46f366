//! AWS Signature Version 4, service `kms`: verification of incoming requests, and signing for
//! kagi's own clients (the command line against a server, tests, the load generator).
//!
//! Verification follows botocore's signer exactly (KMS-PROTOCOL.md §2.9): the canonical request
//! covers exactly the headers the client lists in `SignedHeaders`, the payload hash is always
//! computed from the body received, and signatures compare in constant time.

use std::fmt::Write as _;

use hmac::{Hmac, KeyInit as _, Mac as _};
use http::{HeaderMap, Method, Uri};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::audit::chain::{civil_from_days, days_from_civil};

/// The only algorithm SigV4 names.
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The service in the credential scope.
pub const SERVICE: &str = "kms";
/// How far a request's time may be from the server's, in seconds (AWS: 15 minutes).
pub const MAX_SKEW: i64 = 15 * 60;

/// Why a request is not authenticated; each becomes the AWS error of the same name.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header (HTTP 403 `MissingAuthenticationToken`).
    #[error("Missing Authentication Token")]
    Missing,
    /// The header is there but a part is missing or malformed (`IncompleteSignatureException`).
    #[error("{0}")]
    Incomplete(String),
    /// The access key id is not configured (`UnrecognizedClientException`).
    #[error("The security token included in the request is invalid.")]
    UnknownAccessKey,
    /// The signature does not match, or the scope or payload hash is wrong
    /// (`InvalidSignatureException`).
    #[error("{0}")]
    BadSignature(String),
}

impl AuthError {
    /// The AWS error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "MissingAuthenticationTokenException",
            Self::Incomplete(_) => "IncompleteSignatureException",
            Self::UnknownAccessKey => "UnrecognizedClientException",
            Self::BadSignature(_) => "InvalidSignatureException",
        }
    }

    /// The HTTP status AWS answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing => 403,
            _ => 400,
        }
    }
}

/// The parts of an `Authorization` header.
#[derive(Debug)]
struct Authorization<'a> {
    access_key_id: &'a str,
    date: &'a str,
    region: &'a str,
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Authorization<'_>, AuthError> {
    let incomplete = |what: &str| {
        AuthError::Incomplete(format!(
            "Authorization header requires '{what}' parameter. Authorization={value}"
        ))
    };
    let rest = value
        .strip_prefix(ALGORITHM)
        .filter(|rest| rest.starts_with(' '))
        .ok_or_else(|| AuthError::Incomplete(format!("Unsupported authorization: {value}")))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let Some((name, part_value)) = part.trim().split_once('=') else { continue };
        match name {
            "Credential" => credential = Some(part_value),
            "SignedHeaders" => signed_headers = Some(part_value),
            "Signature" => signature = Some(part_value),
            _ => {}
        }
    }
    let credential = credential.ok_or_else(|| incomplete("Credential"))?;
    let signed_headers = signed_headers.ok_or_else(|| incomplete("SignedHeaders"))?;
    let signature = signature.ok_or_else(|| incomplete("Signature"))?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(AuthError::Incomplete(format!(
            "Credential should be scoped to a valid region, service and terminator: {credential}"
        )));
    };
    if access_key_id.is_empty() || date.len() != 8 || !date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AuthError::Incomplete(format!("Malformed credential scope: {credential}")));
    }
    let signed_headers: Vec<&str> = signed_headers.split(';').collect();
    if signed_headers
        .iter()
        .any(|name| name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()))
    {
        return Err(AuthError::Incomplete("SignedHeaders must be lowercase names".into()));
    }
    Ok(Authorization { access_key_id, date, region, service, signed_headers, signature })
}

/// A request as SigV4 sees it.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The target URI (for HTTP/2, with the `:authority`).
    pub uri: &'a Uri,
    /// The headers as received.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// A verified request: who signed it.
#[derive(Debug, Eq, PartialEq)]
pub struct Verified<'a> {
    /// The access key id that signed.
    pub access_key_id: &'a str,
    /// The region of the credential scope.
    pub region: &'a str,
}

/// Verifies `request`'s signature at time `now` (Unix seconds).
///
/// `secret_of` finds the secret of an access key id; `region_ok` says whether a scope's region
/// is served here.
///
/// # Errors
/// The [`AuthError`] AWS would answer with.
pub fn verify<'r, 's>(
    request: RequestParts<'r>,
    now: i64,
    region_ok: impl Fn(&str) -> bool,
    secret_of: impl FnOnce(&str) -> Option<&'s [u8]>,
) -> Result<Verified<'r>, AuthError> {
    let header = request.headers.get(http::header::AUTHORIZATION).ok_or(AuthError::Missing)?;
    let header = header
        .to_str()
        .map_err(|_| AuthError::Incomplete("The Authorization header is not ASCII".into()))?;
    let auth = parse_authorization(header)?;
    if auth.service != SERVICE {
        return Err(AuthError::BadSignature(format!(
            "Credential should be scoped to correct service: '{SERVICE}'."
        )));
    }
    if !region_ok(auth.region) {
        return Err(AuthError::BadSignature(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            auth.region
        )));
    }
    let amz_date = header_str(request.headers, "x-amz-date").ok_or_else(|| {
        AuthError::Incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
                .into(),
        )
    })?;
    let time = parse_amz_date(amz_date)
        .ok_or_else(|| AuthError::Incomplete(format!("Invalid X-Amz-Date: {amz_date}")))?;
    if !amz_date.starts_with(auth.date) {
        return Err(AuthError::BadSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from \
             HTTP: '{}' != '{}'",
            auth.date,
            &amz_date[..8]
        )));
    }
    if (time - now).abs() > MAX_SKEW {
        return Err(AuthError::BadSignature(format!(
            "Signature expired: {amz_date} is now outside the allowed skew of 15 minutes from \
             the server's time {}",
            format_amz_date(now)
        )));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.contains(&required) {
            return Err(AuthError::BadSignature(format!("'{required}' must be a signed header")));
        }
    }
    let payload_hash = hex::encode(Sha256::digest(request.body));
    if let Some(claimed) = header_str(request.headers, "x-amz-content-sha256")
        && claimed != payload_hash
    {
        return Err(AuthError::BadSignature(if claimed == "UNSIGNED-PAYLOAD" {
            "UNSIGNED-PAYLOAD is not accepted: sign the payload".into()
        } else {
            "The provided 'x-amz-content-sha256' header does not match what was computed.".into()
        }));
    }
    let canonical = canonical_request(request, &auth.signed_headers, &payload_hash)
        .map_err(AuthError::BadSignature)?;
    let secret = secret_of(auth.access_key_id).ok_or(AuthError::UnknownAccessKey)?;
    let scope = format!("{}/{}/{SERVICE}/aws4_request", auth.date, auth.region);
    let expected = signature(secret, auth.date, auth.region, amz_date, &scope, &canonical);
    let given = hex::decode(auth.signature).unwrap_or_default();
    if !bool::from(expected.as_slice().ct_eq(&given)) {
        return Err(AuthError::BadSignature(
            "The request signature we calculated does not match the signature you provided. \
             Check your AWS Secret Access Key and signing method. Consult the service \
             documentation for details."
                .into(),
        ));
    }
    Ok(Verified { access_key_id: auth.access_key_id, region: auth.region })
}

/// Who signs, and for which region.
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    /// The access key id.
    pub access_key_id: &'a str,
    /// The secret access key.
    pub secret: &'a [u8],
    /// The region of the credential scope.
    pub region: &'a str,
}

impl std::fmt::Debug for Signer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Signs a request in place: adds `x-amz-date`, `x-amz-content-sha256` and `authorization`,
/// covering `host` (from the URI when no header is set), every `x-amz-*` header and
/// `content-type`.
pub fn sign(
    method: &Method,
    uri: &Uri,
    headers: &mut HeaderMap,
    body: &[u8],
    signer: Signer<'_>,
    now: i64,
) {
    let Signer { access_key_id, secret, region } = signer;
    let amz_date = format_amz_date(now);
    let payload_hash = hex::encode(Sha256::digest(body));
    let insert = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    insert(headers, "x-amz-date", &amz_date);
    insert(headers, "x-amz-content-sha256", &payload_hash);
    if !headers.contains_key(http::header::HOST)
        && let Some(authority) = uri.authority()
    {
        insert(headers, "host", authority.as_str());
    }
    let mut names: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|name| *name == "host" || *name == "content-type" || name.starts_with("x-amz-"))
        .collect();
    names.sort_unstable();
    names.dedup();
    let request = RequestParts { method, uri, headers, body };
    let canonical = canonical_request(request, &names, &payload_hash).unwrap_or_default();
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{SERVICE}/aws4_request");
    let signature = hex::encode(signature(secret, date, region, &amz_date, &scope, &canonical));
    let value = format!(
        "{ALGORITHM} Credential={access_key_id}/{scope}, SignedHeaders={}, Signature={signature}",
        names.join(";")
    );
    insert(headers, "authorization", &value);
}

fn signature(
    secret: &[u8],
    date: &str,
    region: &str,
    amz_date: &str,
    scope: &str,
    canonical: &str,
) -> Vec<u8> {
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    let mut key = b"AWS4".to_vec();
    key.extend_from_slice(secret);
    let mut key = hmac(&key, date.as_bytes());
    for part in [region, SERVICE, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    hmac(&key, string_to_sign.as_bytes())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The canonical request over exactly `signed_headers`.
fn canonical_request(
    request: RequestParts<'_>,
    signed_headers: &[&str],
    payload_hash: &str,
) -> Result<String, String> {
    let mut out = String::with_capacity(256);
    out.push_str(request.method.as_str());
    out.push('\n');
    uri_encode_into(&mut out, request.uri.path(), false);
    out.push('\n');
    canonical_query_into(&mut out, request.uri.query().unwrap_or(""));
    out.push('\n');
    for name in signed_headers {
        out.push_str(name);
        out.push(':');
        if *name == "host" {
            let host = header_str(request.headers, "host")
                .or_else(|| request.uri.authority().map(http::uri::Authority::as_str))
                .ok_or("the signed header 'host' is missing")?;
            push_trimmed(&mut out, host);
        } else {
            let mut values = request.headers.get_all(*name).iter().peekable();
            if values.peek().is_none() {
                return Err(format!("the signed header '{name}' is missing"));
            }
            let mut first = true;
            for value in values {
                if !first {
                    out.push(',');
                }
                first = false;
                let value =
                    value.to_str().map_err(|_| format!("the header '{name}' is not ASCII"))?;
                push_trimmed(&mut out, value);
            }
        }
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&signed_headers.join(";"));
    out.push('\n');
    out.push_str(payload_hash);
    Ok(out)
}

/// Trims a header value and collapses runs of spaces into one.
fn push_trimmed(out: &mut String, value: &str) {
    let mut words = value.split_ascii_whitespace();
    if let Some(first) = words.next() {
        out.push_str(first);
        for word in words {
            out.push(' ');
            out.push_str(word);
        }
    }
}

fn canonical_query_into(out: &mut String, query: &str) {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (mut n, mut v) = (String::new(), String::new());
            uri_encode_into(&mut n, &percent_decode(name), true);
            uri_encode_into(&mut v, &percent_decode(value), true);
            (n, v)
        })
        .collect();
    pairs.sort();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        if let Some(byte) = decoded {
            out.push(byte);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// URI-encodes as SigV4 does: unreserved characters stay, everything else is `%XX`;
/// `/` stays unless `encode_slash`.
fn uri_encode_into(out: &mut String, text: &str, encode_slash: bool) {
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (byte == b'/' && !encode_slash)
        {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// Parses `YYYYMMDDTHHMMSSZ` into Unix seconds.
pub fn parse_amz_date(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    // On bytes: slicing the `str` would panic inside a multi-byte character.
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        bytes[range]
            .iter()
            .try_fold(0i64, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
    };
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let (month, day) = (u32::try_from(month).ok()?, u32::try_from(day).ok()?);
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Formats Unix seconds as `YYYYMMDDTHHMMSSZ`.
pub fn format_amz_date(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const NOW: i64 = 1_440_938_160; // 2015-08-30T12:36:00Z

    fn signed(body: &[u8]) -> (Method, Uri, HeaderMap) {
        let (method, uri) = (Method::POST, Uri::from_static("https://kms.example:8443/"));
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/x-amz-json-1.1".parse().unwrap());
        headers.insert("x-amz-target", "TrentService.Encrypt".parse().unwrap());
        let signer = Signer { access_key_id: "AKIDEXAMPLE", secret: SECRET, region: "us-east-1" };
        sign(&method, &uri, &mut headers, body, signer, NOW);
        (method, uri, headers)
    }

    fn check(
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), AuthError> {
        let parts = RequestParts { method, uri, headers, body };
        verify(
            parts,
            now,
            |region| region == "us-east-1",
            |akid| (akid == "AKIDEXAMPLE").then_some(SECRET),
        )
        .map(drop)
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(format_amz_date(NOW), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(NOW));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20240229T235959Z"), Some(1_709_251_199));
        for bad in ["", "20150830T123600", "2015083OT123600Z", "20151330T123600Z"] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    /// Found by the `sigv4` fuzz target: 16 bytes with `T` and `Z` in place but a multi-byte
    /// character across a field boundary panicked (a `str` sliced inside the character).
    #[test]
    fn non_ascii_dates_are_refused_without_panicking() {
        for bad in ["20\u{20ac}101T000000Z", "201\u{e9}0830T123600Z", "\u{1f600}0830T123600Z"] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    /// The `get-vanilla` case of AWS's SigV4 test suite (service `service`, so its scope is
    /// rebuilt here for `kms`: the canonical request and string layout are what is checked).
    #[test]
    fn canonical_request_matches_the_aws_suite() {
        let uri = Uri::from_static("/");
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().unwrap());
        headers.insert("x-amz-date", "20150830T123600Z".parse().unwrap());
        let parts = RequestParts { method: &Method::GET, uri: &uri, headers: &headers, body: b"" };
        let hash = hex::encode(Sha256::digest(b""));
        let canonical = canonical_request(parts, &["host", "x-amz-date"], &hash).unwrap();
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n\
             host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // The suite's signature for service `service` in us-east-1.
        let scope = "20150830/us-east-1/service/aws4_request";
        let string_to_sign = format!(
            "{ALGORITHM}\n20150830T123600Z\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let mut key = hmac(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20150830");
        for part in ["us-east-1", "service", "aws4_request"] {
            key = hmac(&key, part.as_bytes());
        }
        assert_eq!(
            hex::encode(hmac(&key, string_to_sign.as_bytes())),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn a_signed_request_verifies() {
        let body = br#"{"KeyId":"alias/app","Plaintext":"aGk="}"#;
        let (method, uri, headers) = signed(body);
        check(&method, &uri, &headers, body, NOW).unwrap();
        check(&method, &uri, &headers, body, NOW + MAX_SKEW).unwrap();
    }

    #[test]
    fn every_change_is_refused() {
        let body = br#"{"KeyId":"alias/app","Plaintext":"aGk="}"#;
        let (method, uri, headers) = signed(body);
        let bad = |result: Result<(), AuthError>| result.unwrap_err().code();
        // Another body, with and without the content hash header.
        assert_eq!(bad(check(&method, &uri, &headers, b"{}", NOW)), "InvalidSignatureException");
        let mut without_hash = headers.clone();
        without_hash.remove("x-amz-content-sha256");
        assert_eq!(
            bad(check(&method, &uri, &without_hash, b"{}", NOW)),
            "InvalidSignatureException"
        );
        // A signed header changed.
        let mut changed = headers.clone();
        changed.insert("x-amz-target", "TrentService.Decrypt".parse().unwrap());
        assert_eq!(bad(check(&method, &uri, &changed, body, NOW)), "InvalidSignatureException");
        // Too old, too new.
        for now in [NOW + MAX_SKEW + 1, NOW - MAX_SKEW - 1] {
            assert_eq!(bad(check(&method, &uri, &headers, body, now)), "InvalidSignatureException");
        }
        // An unknown key, no header, a mangled header.
        let mut unknown = headers.clone();
        let value = unknown["authorization"].to_str().unwrap().replace("AKIDEXAMPLE", "AKIDOTHER");
        unknown.insert("authorization", value.parse().unwrap());
        assert_eq!(bad(check(&method, &uri, &unknown, body, NOW)), "UnrecognizedClientException");
        let mut none = headers.clone();
        none.remove("authorization");
        assert_eq!(
            bad(check(&method, &uri, &none, body, NOW)),
            "MissingAuthenticationTokenException"
        );
        let mut mangled = headers.clone();
        mangled.insert("authorization", "AWS4-HMAC-SHA256 Credential=x".parse().unwrap());
        assert_eq!(bad(check(&method, &uri, &mangled, body, NOW)), "IncompleteSignatureException");
        // UNSIGNED-PAYLOAD.
        let mut unsigned = headers;
        unsigned.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        assert_eq!(bad(check(&method, &uri, &unsigned, body, NOW)), "InvalidSignatureException");
        // Another region.
        let (method2, uri2) = (Method::POST, Uri::from_static("https://kms.example:8443/"));
        let mut other = HeaderMap::new();
        let signer = Signer { access_key_id: "AKIDEXAMPLE", secret: SECRET, region: "eu-west-1" };
        sign(&method2, &uri2, &mut other, body, signer, NOW);
        assert_eq!(bad(check(&method2, &uri2, &other, body, NOW)), "InvalidSignatureException");
    }

    #[test]
    fn unsigned_headers_may_change() {
        let body = b"{}";
        let (method, uri, mut headers) = signed(body);
        headers.insert("user-agent", "Boto3/1.40".parse().unwrap());
        headers.insert("amz-sdk-invocation-id", "x".parse().unwrap());
        check(&method, &uri, &headers, body, NOW).unwrap();
    }

    #[test]
    fn http2_host_comes_from_the_authority() {
        let body = b"{}";
        let (method, uri, mut headers) = signed(body);
        headers.remove("host");
        check(&method, &uri, &headers, body, NOW).unwrap();
        let other = Uri::from_static("https://elsewhere:8443/");
        assert!(check(&method, &other, &headers, body, NOW).is_err());
    }
}
