//! The AWS-KMS-compatible API: AWS JSON 1.1 over HTTPS, SigV4, key policies, quotas.
//!
//! [`Api::handle`] takes one whole request and answers it; it is HTTP-version agnostic (the
//! server feeds it HTTP/1.1 and HTTP/2 alike). Each request goes: authenticate (SigV4) →
//! identify the operation → quota → parse → authorize (key policy) → keystore (which audits) →
//! answer, log line, metrics. Business rules stay in the keystore; this module only translates.

pub mod client;
mod grants;
mod operations;
pub mod sigv4;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use serde_json::Value;

use crate::config::{Principal, Principals};
use crate::keystore::{self, AccessTarget, EncryptionContext, ErrorKind, Keystore, OpContext};
use crate::metrics::Metrics;
use crate::policy::quota::Limiter;
use crate::policy::{self, Authorizer, KeyAccess};

pub use wire::metadata_json;

/// The JSON protocol's content type.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
/// The `X-Amz-Target` prefix of every KMS operation.
pub const TARGET_PREFIX: &str = "TrentService.";
/// The largest request body accepted, in bytes (the largest KMS input, a 32 KiB policy or an
/// imported RSA-4096 key, fits with room to spare).
pub const MAX_BODY: usize = 256 * 1024;

/// The operations whose input has a DryRun member (kms-service-2.json).
const DRY_RUN_OPERATIONS: &[&str] = &[
    "CreateGrant",
    "Decrypt",
    "DeriveSharedSecret",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateMac",
    "ReEncrypt",
    "RetireGrant",
    "RevokeGrant",
    "Sign",
    "Verify",
    "VerifyMac",
];

/// An error as the wire carries it.
#[derive(Clone, Debug)]
pub struct ApiError {
    /// The `__type`.
    pub code: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// The message.
    pub message: String,
}

impl ApiError {
    fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self { code, status, message: message.into() }
    }

    /// `SerializationException`: the body or a member has the wrong JSON type.
    pub fn serialization(message: impl Into<String>) -> Self {
        Self::new("SerializationException", 400, message)
    }

    /// `ValidationException`: a value is missing, out of range or too long.
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", 400, message)
    }

    /// `UnsupportedOperationException`.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new("UnsupportedOperationException", 400, message)
    }
}

impl From<keystore::Error> for ApiError {
    fn from(error: keystore::Error) -> Self {
        let kind = error.kind();
        Self::new(kind.aws_name(), kind.http_status(), error.message())
    }
}

impl From<sigv4::AuthError> for ApiError {
    fn from(error: sigv4::AuthError) -> Self {
        Self::new(error.code(), error.status(), error.to_string())
    }
}

/// A request being served: who calls, and what the log line and audit need.
#[derive(Debug)]
pub(crate) struct Call<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) principal_arn: String,
    pub(crate) ctx: OpContext,
    pub(crate) operation: &'static str,
    /// The key the request concerned, once known (for the log line).
    pub(crate) key_arn: Option<String>,
    /// Its spec, when authorization resolved the key (for the per-key metrics).
    pub(crate) key_spec: Option<keystore::KeySpec>,
    pub(crate) dry_run: bool,
}

/// When and how a key was last used (GetKeyLastUsage).
#[derive(Clone, Debug)]
pub(crate) struct LastUse {
    pub(crate) operation: &'static str,
    pub(crate) time: i64,
    pub(crate) request_id: String,
}

/// The API service.
#[derive(Debug)]
pub struct Api {
    keystore: Arc<Keystore>,
    /// Replaced whole on a configuration reload; a request keeps the set it started with.
    principals: std::sync::RwLock<Arc<Principals>>,
    limiter: Limiter,
    metrics: Arc<Metrics>,
    /// Key policy evaluation (with its cache of parsed policies).
    authorizer: Authorizer,
    last_use: Mutex<HashMap<String, LastUse>>,
    /// When last-use tracking started (the server's start).
    tracking_start: i64,
    started: Instant,
}

impl Api {
    /// An API over `keystore`, authenticating `principals`, with `quotas`.
    pub fn new(
        keystore: Arc<Keystore>,
        principals: Arc<Principals>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let tracking_start = keystore.now();
        Self {
            keystore,
            principals: std::sync::RwLock::new(principals),
            limiter: Limiter::default(),
            metrics,
            authorizer: Authorizer::new(),
            last_use: Mutex::new(HashMap::new()),
            tracking_start,
            started: Instant::now(),
        }
    }

    /// The principals requests authenticate as, now.
    pub fn principals(&self) -> Arc<Principals> {
        Arc::clone(&self.principals.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Replaces the principals (a configuration reload); requests in flight keep the old set.
    pub fn set_principals(&self, principals: Arc<Principals>) {
        *self.principals.write().unwrap_or_else(std::sync::PoisonError::into_inner) = principals;
    }

    /// The keystore behind the API.
    pub fn keystore(&self) -> &Arc<Keystore> {
        &self.keystore
    }

    /// Answers one request. `body` is the whole body, or the error reading it gave (the
    /// server enforces [`MAX_BODY`]).
    pub async fn handle(
        &self,
        parts: &http::request::Parts,
        body: Result<Bytes, ApiError>,
        peer: SocketAddr,
    ) -> http::Response<Bytes> {
        let start = Instant::now();
        let request_id = self.request_id();
        let mut log = LogLine { operation: "-", principal: "-".into(), key: None, key_spec: None };
        let answer = self.answer(parts, body, peer, &request_id, &mut log).await;
        let (status, body, code) = match answer {
            Ok(value) => (200, serde_json::to_vec(&value).unwrap_or_default(), None),
            Err(error) => {
                let body = serde_json::json!({"__type": error.code, "message": error.message});
                (error.status, serde_json::to_vec(&body).unwrap_or_default(), Some(error.code))
            }
        };
        let elapsed = start.elapsed();
        let outcome = code.unwrap_or("success");
        self.metrics.api_request(log.operation, outcome, elapsed);
        self.count_key_operation(&log, outcome).await;
        tracing::info!(
            target: "kagi::api",
            method = %parts.method,
            operation = log.operation,
            principal = %log.principal,
            key = log.key.as_deref().unwrap_or("-"),
            outcome,
            status,
            latency_us = elapsed.as_micros() as u64,
            request_id = %request_id,
            peer = %peer,
        );
        let mut response = http::Response::new(Bytes::from(body));
        *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert("x-amzn-requestid", value);
        }
        if let Some(code) = code {
            headers.insert("x-amzn-errortype", HeaderValue::from_static(code));
        }
        response
    }

    async fn answer(
        &self,
        parts: &http::request::Parts,
        body: Result<Bytes, ApiError>,
        peer: SocketAddr,
        request_id: &str,
        log: &mut LogLine,
    ) -> Result<Value, ApiError> {
        let body = body?;
        let body = body.as_ref();
        // Authenticate before anything else.
        let request = sigv4::RequestParts {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
            body,
        };
        let partition = self.keystore.partition();
        let principals = self.principals();
        let verified = sigv4::verify(
            request,
            self.keystore.now(),
            |region| region == partition.region,
            |akid| principals.get(akid).map(|p| p.secret.expose_secret()),
        )?;
        let principal = principals
            .get(verified.access_key_id)
            .ok_or_else(|| ApiError::from(sigv4::AuthError::UnknownAccessKey))?;
        log.principal.clone_from(&principal.name);
        if parts.method != Method::POST || parts.uri.path() != "/" {
            return Err(ApiError::new(
                "UnknownOperationException",
                400,
                "KMS takes POST / with an X-Amz-Target header",
            ));
        }
        let target = parts
            .headers
            .get("x-amz-target")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        let operation = target
            .strip_prefix(TARGET_PREFIX)
            .and_then(operations::lookup)
            .ok_or_else(|| ApiError::new("UnknownOperationException", 400, ""))?;
        log.operation = operation.name;
        let ctx = OpContext {
            principal: principal.name.clone(),
            source: peer.ip().to_string(),
            request_id: request_id.to_owned(),
        };
        let mut call = Call {
            principal,
            principal_arn: policy::user_arn(&partition.account, &principal.name),
            ctx,
            operation: operation.name,
            key_arn: None,
            key_spec: None,
            dry_run: false,
        };
        if !self.limiter.try_acquire(
            &principal.name,
            &principal.quotas,
            operation.class,
            self.started.elapsed().as_secs_f64(),
        ) {
            let error = keystore::Error::new(
                ErrorKind::Throttling,
                "You have exceeded the rate at which you may call KMS. Reduce the frequency of \
                 your calls.",
            );
            self.keystore.audit_refusal(&call.ctx, operation.name, None, &error).await?;
            return Err(error.into());
        }
        let input = wire::Input::parse(body)?;
        // Only the operations whose input has DryRun honour it; others ignore the member.
        if DRY_RUN_OPERATIONS.contains(&operation.name) {
            call.dry_run = input.opt_bool("DryRun")?.unwrap_or(false);
        }
        self.check_grant_tokens(&call, &input).await?;
        let result = self.dispatch(&mut call, input).await;
        log.key = call.key_arn.take();
        log.key_spec = call.key_spec;
        result
    }

    fn request_id(&self) -> String {
        self.keystore.new_uuid().unwrap_or_else(|_| {
            uuid::Builder::from_random_bytes(rand_fallback()).into_uuid().to_string()
        })
    }

    /// Authorizes `action` on the key `key_ref` names for `call`: the key policy or a grant
    /// must allow it and the key policy may not deny it. Denials are audited.
    pub(crate) async fn authorize(
        &self,
        call: &mut Call<'_>,
        action: &str,
        key_ref: &str,
        context: Option<&EncryptionContext>,
    ) -> Result<AccessTarget, ApiError> {
        self.authorize_where(call, action, key_ref, context, |_| true).await
    }

    /// [`Api::authorize`], counting only the grants `grant_ok` accepts (CreateGrant through a
    /// grant may create no wider grant).
    pub(crate) async fn authorize_where(
        &self,
        call: &mut Call<'_>,
        action: &str,
        key_ref: &str,
        context: Option<&EncryptionContext>,
        grant_ok: impl Fn(&keystore::GrantRecord) -> bool,
    ) -> Result<AccessTarget, ApiError> {
        let target = self.keystore.access_target(key_ref).await?;
        call.key_arn = Some(target.arn().to_owned());
        call.key_spec = Some(target.spec());
        let access = KeyAccess {
            principal_arn: &call.principal_arn,
            operation: call.operation,
            action,
            context,
        };
        self.authorizer.authorize(&self.keystore, &call.ctx, &target, access, grant_ok).await?;
        Ok(target)
    }

    /// Authorizes an account-level action (CreateKey, ListKeys, ListAliases, GenerateRandom):
    /// in AWS an IAM policy decides; in kagi, administrators may, others may not.
    pub(crate) async fn authorize_account(
        &self,
        call: &Call<'_>,
        action: &str,
    ) -> Result<(), ApiError> {
        if call.principal.administrator
            || call
                .principal
                .account_actions
                .iter()
                .any(|a| policy::wildcard_match(a, action, true))
        {
            return Ok(());
        }
        let error = keystore::Error::new(
            ErrorKind::AccessDenied,
            format!(
                "User: {} is not authorized to perform: {action} because no identity-based \
                 policy allows the action",
                call.principal_arn
            ),
        );
        self.keystore.audit_refusal(&call.ctx, call.operation, None, &error).await?;
        Err(error.into())
    }

    /// Counts a request that named an existing key in the per-key metrics. The spec comes from
    /// authorization; the few operations that name a key without it (CreateKey, RetireGrant by
    /// token) look it up.
    async fn count_key_operation(&self, log: &LogLine, outcome: &str) {
        let Some(arn) = log.key.as_deref() else { return };
        let Some(key_id) = crate::metrics::keys::key_id_of_arn(arn) else { return };
        let spec = match log.key_spec {
            Some(spec) => spec,
            None => match self.keystore.access_target(arn).await {
                Ok(target) => target.spec(),
                Err(_) => return,
            },
        };
        self.metrics.keys().operation(log.operation, key_id, spec, outcome);
    }

    /// Notes a successful cryptographic use of a key (GetKeyLastUsage).
    pub(crate) fn note_use(&self, call: &Call<'_>, key_arn: &str) {
        let mut uses = self.last_use.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        uses.insert(
            key_arn.to_owned(),
            LastUse {
                operation: call.operation,
                time: self.keystore.now(),
                request_id: call.ctx.request_id.clone(),
            },
        );
    }
}

/// Only reached if the OS random source fails, for a request id (not a secret).
fn rand_fallback() -> [u8; 16] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    nanos.to_le_bytes()
}

/// What the per-request log line says.
#[derive(Debug)]
struct LogLine {
    operation: &'static str,
    principal: String,
    key: Option<String>,
    key_spec: Option<keystore::KeySpec>,
}
