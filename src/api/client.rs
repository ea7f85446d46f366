//! A small KMS API client: one keep-alive TLS connection (HTTP/1.1 or HTTP/2), SigV4-signed
//! JSON calls. The `kagi` command uses it against a running server; tests and the load
//! generator use it to speak HTTP/2, which boto3 cannot.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::sigv4::{self, Signer};
use super::{CONTENT_TYPE, TARGET_PREFIX};
use crate::crypto::SecretBytes;

/// Which HTTP version to speak.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum HttpVersion {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 (ALPN `h2`).
    Http2,
}

/// Access key id, secret and region.
pub struct Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret: SecretBytes,
    /// The region of the credential scope.
    pub region: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// A failure to reach the server or to read its answer (as opposed to an API error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// What a call can end in.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The server answered with an AWS error.
    #[error("{}: {}", .0.code_name, .0.message)]
    Api(RemoteError),
    /// The server could not be reached or answered nonsense.
    #[error(transparent)]
    Transport(#[from] ClientError),
}

/// An AWS error as received.
#[derive(Clone, Debug)]
pub struct RemoteError {
    /// The HTTP status.
    pub status: u16,
    /// The `__type`.
    pub code_name: String,
    /// The message.
    pub message: String,
    /// The `X-Amzn-ErrorType` header.
    pub error_type_header: Option<String>,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

/// A connection to a kagi (or any AWS KMS) endpoint.
pub struct Client {
    sender: Sender,
    uri: Uri,
    credentials: Arc<Credentials>,
    clock: fn() -> i64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("uri", &self.uri).finish_non_exhaustive()
    }
}

/// A TLS client configuration trusting the PEM certificates in `ca_bundle`.
///
/// # Errors
/// When the file cannot be read or holds no certificate.
pub fn tls_config(
    ca_bundle: &Path,
    version: HttpVersion,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(ca_bundle)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| ClientError(format!("{}: {e}", ca_bundle.display())))?;
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(ClientError(format!("{} holds no usable certificate", ca_bundle.display())));
    }
    let provider = Arc::new(crate::tls::crypto_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![match version {
        HttpVersion::Http1 => b"http/1.1".to_vec(),
        HttpVersion::Http2 => b"h2".to_vec(),
    }];
    Ok(config)
}

async fn tcp_connect(address: &str) -> Result<TcpStream, ClientError> {
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| ClientError(format!("cannot connect to {address}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

fn port_of(address: &str) -> &str {
    address.rsplit(':').next().unwrap_or("443")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Client {
    /// Connects to `address` (`host:port`), verifying the certificate for `server_name`.
    ///
    /// # Errors
    /// When the connection or the TLS handshake fails, or the server does not speak `version`.
    pub async fn connect(
        address: &str,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        version: HttpVersion,
        credentials: Arc<Credentials>,
    ) -> Result<Self, ClientError> {
        let tcp = tcp_connect(address).await?;
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| ClientError(format!("invalid server name {server_name}: {e}")))?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError(format!("TLS with {address} failed: {e}")))?;
        let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if version == HttpVersion::Http2 && negotiated.as_deref() != Some(b"h2") {
            return Err(ClientError(format!("{address} did not agree to HTTP/2")));
        }
        let uri = format!("https://{server_name}:{}/", port_of(address));
        Self::handshake(TokioIo::new(stream), address, &uri, version, credentials).await
    }

    /// Connects to `address` over plain HTTP/1.1 (for endpoints without TLS, such as the
    /// emulators benchmarks compare kagi with).
    ///
    /// # Errors
    /// When the connection fails.
    pub async fn connect_plain(
        address: &str,
        credentials: Arc<Credentials>,
    ) -> Result<Self, ClientError> {
        let tcp = tcp_connect(address).await?;
        let uri = format!("http://{address}/");
        Self::handshake(TokioIo::new(tcp), address, &uri, HttpVersion::Http1, credentials).await
    }

    async fn handshake<T>(
        io: TokioIo<T>,
        address: &str,
        uri: &str,
        version: HttpVersion,
        credentials: Arc<Credentials>,
    ) -> Result<Self, ClientError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let sender = match version {
            HttpVersion::Http2 => {
                let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| ClientError(format!("HTTP/2 with {address} failed: {e}")))?;
                tokio::spawn(connection);
                Sender::Http2(sender)
            }
            HttpVersion::Http1 => {
                let (sender, connection) = http1::handshake(io)
                    .await
                    .map_err(|e| ClientError(format!("HTTP/1.1 with {address} failed: {e}")))?;
                tokio::spawn(connection);
                Sender::Http1(sender)
            }
        };
        let uri: Uri = uri.parse().map_err(|e| ClientError(format!("invalid endpoint: {e}")))?;
        Ok(Self { sender, uri, credentials, clock: unix_now })
    }

    /// Whether the connection can still carry requests (a server may close it after any
    /// answer).
    pub fn is_open(&self) -> bool {
        match &self.sender {
            Sender::Http1(sender) => !sender.is_closed(),
            Sender::Http2(sender) => !sender.is_closed(),
        }
    }

    /// Sends `body` as operation `operation`, signed or not; returns the raw response (for
    /// tests that check headers and statuses).
    ///
    /// # Errors
    /// When the request cannot be sent or the answer not read.
    pub async fn send_raw(
        &mut self,
        operation: &str,
        body: Bytes,
        sign: bool,
    ) -> Result<http::Response<Bytes>, ClientError> {
        // HTTP/2 carries the scheme and authority as pseudo-headers; HTTP/1.1 takes the
        // origin form (`/`) with a Host header.
        let target = match self.sender {
            Sender::Http2(_) => self.uri.clone(),
            Sender::Http1(_) => Uri::from_static("/"),
        };
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(target)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("x-amz-target", format!("{TARGET_PREFIX}{operation}"))
            .body(Full::new(body.clone()))
            .map_err(|e| ClientError(e.to_string()))?;
        if matches!(self.sender, Sender::Http2(_)) {
            *request.version_mut() = http::Version::HTTP_2;
        } else if let Some(authority) = self.uri.authority() {
            let host = HeaderValue::from_str(authority.as_str())
                .map_err(|e| ClientError(e.to_string()))?;
            request.headers_mut().insert(http::header::HOST, host);
        }
        if sign {
            let credentials = &self.credentials;
            let signer = Signer {
                access_key_id: &credentials.access_key_id,
                secret: credentials.secret.expose_secret(),
                region: &credentials.region,
            };
            let method = request.method().clone();
            sigv4::sign(&method, &self.uri, request.headers_mut(), &body, signer, (self.clock)());
        }
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                sender.ready().await.map_err(|e| ClientError(e.to_string()))?;
                sender.send_request(request).await
            }
            Sender::Http2(sender) => {
                sender.ready().await.map_err(|e| ClientError(e.to_string()))?;
                sender.send_request(request).await
            }
        }
        .map_err(|e| ClientError(format!("the request failed: {e}")))?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| ClientError(format!("reading the answer failed: {e}")))?
            .to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }

    /// Calls `operation` with `input`; returns the output members.
    ///
    /// # Errors
    /// [`CallError::Api`] for an AWS error answer, [`CallError::Transport`] otherwise.
    pub async fn call(&mut self, operation: &str, input: &Value) -> Result<Value, CallError> {
        let body = Bytes::from(serde_json::to_vec(input).map_err(|e| ClientError(e.to_string()))?);
        let response = self.send_raw(operation, body, true).await?;
        let status = response.status().as_u16();
        let value: Value = if response.body().is_empty() {
            Value::Object(serde_json::Map::new())
        } else {
            serde_json::from_slice(response.body())
                .map_err(|e| ClientError(format!("the answer (HTTP {status}) is not JSON: {e}")))?
        };
        if status == 200 {
            return Ok(value);
        }
        let text = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default();
        Err(CallError::Api(RemoteError {
            status,
            code_name: text("__type").to_owned(),
            message: if text("message").is_empty() { text("Message") } else { text("message") }
                .to_owned(),
            error_type_header: response
                .headers()
                .get("x-amzn-errortype")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }))
    }
}
