//! Key policies in the AWS policy language, and request quotas.
//!
//! A policy is parsed once ([`Policy::parse`]) and evaluated on every call ([`Policy::evaluate`]):
//! an explicit Deny wins, then any Allow, else the request is denied. kagi evaluates the
//! condition keys `kms:EncryptionContext:*`, `kms:EncryptionContextKeys` and `kms:CallerAccount`
//! with the string operators; any other key or operator fails safe (an Allow carrying it never
//! matches, a Deny carrying it always does) and is reported by [`Policy::unevaluated`].

pub mod authorize;
mod grant;
pub mod quota;

pub use authorize::{Authorizer, KeyAccess};
pub use grant::{
    constraints_hold, grant_allows, grant_covers, grant_principal_matches, may_retire,
};

use std::collections::BTreeMap;

use serde_json::Value;

/// The largest policy document AWS accepts, in bytes.
pub const MAX_POLICY_BYTES: usize = 32_768;

/// A policy that is not valid policy JSON (`MalformedPolicyDocumentException`).
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct MalformedPolicy(pub String);

/// A parsed key policy.
#[derive(Clone, Debug)]
pub struct Policy {
    statements: Vec<Statement>,
}

#[derive(Clone, Debug)]
struct Statement {
    sid: Option<String>,
    allow: bool,
    principals: Vec<String>,
    actions: Vec<String>,
    not_actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

#[derive(Clone, Debug)]
struct Condition {
    /// The operator as written (`ForAnyValue:StringLike`).
    operator: String,
    key: String,
    values: Vec<String>,
    /// Set when kagi cannot evaluate this condition; then it fails safe.
    unsupported: Option<String>,
}

/// What is asked: who, what action, on which key, with which context.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The caller's ARN (`arn:aws:iam::ACCOUNT:user/NAME`).
    pub principal_arn: &'a str,
    /// The caller's account.
    pub account: &'a str,
    /// `kms:Encrypt`.
    pub action: &'a str,
    /// The key ARN.
    pub resource: &'a str,
    /// The request's encryption context, when the operation takes one.
    pub encryption_context: Option<&'a BTreeMap<String, String>>,
}

/// The outcome of evaluating a policy.
#[derive(Clone, Debug, Eq, PartialEq)]
pub enum Decision {
    /// An Allow matched and no Deny did.
    Allow,
    /// A Deny matched (its Sid, if any).
    ExplicitDeny(Option<String>),
    /// Nothing matched.
    ImplicitDeny,
}

impl Policy {
    /// Parses a policy document.
    ///
    /// # Errors
    /// [`MalformedPolicy`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, MalformedPolicy> {
        let bad = |message: &str| MalformedPolicy(message.to_owned());
        if text.len() > MAX_POLICY_BYTES {
            return Err(bad("The policy is larger than 32768 bytes"));
        }
        let document: Value =
            serde_json::from_str(text).map_err(|e| bad(&format!("The policy is not JSON: {e}")))?;
        let document = document.as_object().ok_or_else(|| bad("The policy must be an object"))?;
        for key in document.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(bad(&format!("Unknown policy element {key}")));
            }
        }
        match document.get("Version").and_then(Value::as_str) {
            None | Some("2012-10-17" | "2008-10-17") => {}
            Some(other) => return Err(bad(&format!("Unsupported policy version {other}"))),
        }
        let statements = match document.get("Statement") {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(object @ Value::Object(_)) => vec![object],
            _ => return Err(bad("The policy needs a Statement list")),
        };
        if statements.is_empty() {
            return Err(bad("The policy needs at least one statement"));
        }
        let statements =
            statements.into_iter().map(parse_statement).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { statements })
    }

    /// Evaluates `request` against this policy.
    pub fn evaluate(&self, request: &Request<'_>) -> Decision {
        let mut allowed = false;
        for statement in &self.statements {
            if !statement.applies_to(request) {
                continue;
            }
            if statement.allow {
                allowed |= statement.conditions.iter().all(|c| c.holds(request) == Some(true));
            } else if statement.conditions.iter().all(|c| c.holds(request) != Some(false)) {
                return Decision::ExplicitDeny(statement.sid.clone());
            }
        }
        if allowed { Decision::Allow } else { Decision::ImplicitDeny }
    }

    /// The parts kagi does not evaluate (and so fails safe on), one line each.
    pub fn unevaluated(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for (i, statement) in self.statements.iter().enumerate() {
            let name = statement.sid.clone().unwrap_or_else(|| format!("#{}", i + 1));
            for condition in &statement.conditions {
                if let Some(why) = &condition.unsupported {
                    let effect = if statement.allow {
                        "this Allow never matches"
                    } else {
                        "this Deny always matches"
                    };
                    notes.push(format!("statement {name}: {why}; {effect}"));
                }
            }
        }
        notes
    }
}

fn strings(value: &Value, what: &str) -> Result<Vec<String>, MalformedPolicy> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| MalformedPolicy(format!("{what} must hold strings")))
            })
            .collect(),
        _ => Err(MalformedPolicy(format!("{what} must be a string or a list of strings"))),
    }
}

fn parse_statement(value: &Value) -> Result<Statement, MalformedPolicy> {
    let bad = |message: String| MalformedPolicy(message);
    let object = value.as_object().ok_or_else(|| bad("A statement must be an object".into()))?;
    for key in object.keys() {
        if !matches!(
            key.as_str(),
            "Sid" | "Effect" | "Principal" | "Action" | "NotAction" | "Resource" | "Condition"
        ) {
            return Err(bad(format!("Unsupported statement element {key}")));
        }
    }
    let sid = match object.get("Sid") {
        None => None,
        Some(Value::String(sid)) => Some(sid.clone()),
        Some(_) => return Err(bad("Sid must be a string".into())),
    };
    let allow = match object.get("Effect").and_then(Value::as_str) {
        Some("Allow") => true,
        Some("Deny") => false,
        _ => return Err(bad("Effect must be Allow or Deny".into())),
    };
    let principals = match object.get("Principal") {
        Some(Value::String(star)) if star == "*" => vec!["*".to_owned()],
        Some(Value::Object(map)) => {
            let mut principals = Vec::new();
            for (kind, value) in map {
                if kind != "AWS" {
                    return Err(bad(format!("Unsupported principal type {kind}")));
                }
                principals.extend(strings(value, "Principal")?);
            }
            principals
        }
        _ => return Err(bad("A key policy statement needs a Principal".into())),
    };
    for principal in &principals {
        let valid = principal == "*"
            || (principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit()))
            || principal.starts_with("arn:aws:iam::");
        if !valid {
            return Err(bad(format!("Invalid principal {principal}")));
        }
    }
    let (actions, not_actions) = match (object.get("Action"), object.get("NotAction")) {
        (Some(action), None) => (strings(action, "Action")?, Vec::new()),
        (None, Some(not_action)) => (Vec::new(), strings(not_action, "NotAction")?),
        _ => return Err(bad("A statement needs exactly one of Action and NotAction".into())),
    };
    for action in actions.iter().chain(&not_actions) {
        if action != "*" && !action.to_ascii_lowercase().starts_with("kms:") {
            return Err(bad(format!("Invalid action {action}: key policies name kms: actions")));
        }
    }
    let resources = match object.get("Resource") {
        Some(value) => strings(value, "Resource")?,
        None => return Err(bad("A statement needs a Resource".into())),
    };
    let mut conditions = Vec::new();
    if let Some(value) = object.get("Condition") {
        let map = value.as_object().ok_or_else(|| bad("Condition must be an object".into()))?;
        for (operator, block) in map {
            let block = block
                .as_object()
                .ok_or_else(|| bad(format!("Condition {operator} must be an object")))?;
            for (key, values) in block {
                let values = match values {
                    Value::Bool(b) => vec![b.to_string()],
                    other => strings(other, "A condition value")?,
                };
                conditions.push(Condition::new(operator, key, values));
            }
        }
    }
    Ok(Statement { sid, allow, principals, actions, not_actions, resources, conditions })
}

impl Statement {
    fn applies_to(&self, request: &Request<'_>) -> bool {
        let principal = self.principals.iter().any(|p| principal_matches(p, request));
        let action = if self.actions.is_empty() {
            !self.not_actions.iter().any(|a| wildcard_match(a, request.action, true))
        } else {
            self.actions.iter().any(|a| wildcard_match(a, request.action, true))
        };
        let resource = self.resources.iter().any(|r| wildcard_match(r, request.resource, false));
        principal && action && resource
    }
}

/// Whether a policy principal names the caller: `*`, the caller's account (as `ACCOUNT` or
/// `arn:aws:iam::ACCOUNT:root`), or the caller's own ARN.
fn principal_matches(principal: &str, request: &Request<'_>) -> bool {
    principal == "*"
        || principal == request.account
        || principal == format!("arn:aws:iam::{}:root", request.account)
        || principal == request.principal_arn
}

impl Condition {
    fn new(operator: &str, key: &str, values: Vec<String>) -> Self {
        let lower = key.to_ascii_lowercase();
        let key_supported = lower.starts_with("kms:encryptioncontext:")
            || lower == "kms:encryptioncontextkeys"
            || lower == "kms:calleraccount";
        let base = operator.split_once(':').map_or(operator, |(_, base)| base);
        let qualifier_ok = match operator.split_once(':') {
            None => true,
            Some((qualifier, _)) => matches!(qualifier, "ForAllValues" | "ForAnyValue"),
        };
        let operator_supported = qualifier_ok
            && matches!(
                base,
                "StringEquals"
                    | "StringNotEquals"
                    | "StringEqualsIgnoreCase"
                    | "StringNotEqualsIgnoreCase"
                    | "StringLike"
                    | "StringNotLike"
                    | "Null"
            )
            && !(base == "Null" && operator.contains(':'));
        let unsupported = if !key_supported {
            Some(format!("condition key {key} is not evaluated by kagi"))
        } else if !operator_supported {
            Some(format!("condition operator {operator} is not evaluated by kagi"))
        } else {
            None
        };
        Self { operator: operator.to_owned(), key: key.to_owned(), values, unsupported }
    }

    /// Whether the condition holds; `None` when kagi cannot tell (unsupported).
    fn holds(&self, request: &Request<'_>) -> Option<bool> {
        if self.unsupported.is_some() {
            return None;
        }
        let lower = self.key.to_ascii_lowercase();
        let context = request.encryption_context;
        // The request's values for the key: None when the key is absent from the request.
        let present: Option<Vec<&str>> = if lower == "kms:calleraccount" {
            Some(vec![request.account])
        } else if lower == "kms:encryptioncontextkeys" {
            context.filter(|c| !c.is_empty()).map(|c| c.keys().map(String::as_str).collect())
        } else {
            // kms:EncryptionContext:KEY: the context key is case-sensitive, as in AWS.
            let context_key = &self.key["kms:EncryptionContext:".len()..];
            context.and_then(|c| c.get(context_key)).map(|v| vec![v.as_str()])
        };
        let (qualifier, base) = match self.operator.split_once(':') {
            Some((qualifier, base)) => (Some(qualifier), base),
            None => (None, self.operator.as_str()),
        };
        if base == "Null" {
            let want_null = self.values.iter().any(|v| v == "true");
            return Some(present.is_none() == want_null);
        }
        let negated = base.contains("Not");
        let matches_one = |value: &str| {
            self.values.iter().any(|pattern| match base {
                "StringEquals" | "StringNotEquals" => pattern == value,
                "StringEqualsIgnoreCase" | "StringNotEqualsIgnoreCase" => {
                    pattern.eq_ignore_ascii_case(value)
                }
                _ => wildcard_match(pattern, value, false),
            })
        };
        Some(match (qualifier, present) {
            // ForAllValues holds vacuously over no values; ForAnyValue does not.
            (Some("ForAllValues"), None) => true,
            (Some("ForAllValues"), Some(values)) => {
                values.iter().all(|v| matches_one(v) != negated)
            }
            (_, None) => negated,
            (_, Some(values)) => {
                let any = values.iter().any(|v| matches_one(v));
                if negated { !any } else { any }
            }
        })
    }
}

/// Glob matching with `*` (any run) and `?` (one character), as IAM does.
pub fn wildcard_match(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if ignore_case {
        (pattern.to_lowercase().chars().collect(), text.to_lowercase().chars().collect())
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The ARN of a configured principal.
pub fn user_arn(account: &str, name: &str) -> String {
    format!("arn:aws:iam::{account}:user/{name}")
}

/// The default key policy: full access for the configured administrators and the creator.
pub fn default_policy(account: &str, administrators: &[&str], creator: &str) -> String {
    let mut principals: Vec<String> =
        administrators.iter().map(|name| user_arn(account, name)).collect();
    let creator = user_arn(account, creator);
    if !principals.contains(&creator) {
        principals.push(creator);
    }
    let document = serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable key administrators and the key's creator",
            "Effect": "Allow",
            "Principal": {"AWS": principals},
            "Action": "kms:*",
            "Resource": "*"
        }]
    });
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

#[cfg(test)]
mod tests;
