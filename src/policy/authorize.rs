//! Authorizing a principal's action on a key: the key policy, then the key's grants, an
//! explicit Deny in the policy winning over both. Denials are audited.
//!
//! One path for every caller that acts as a named principal under the key policies: the KMS
//! API (`crate::api`) and the envelope's keystore-backed `KeyService`
//! (`crate::envelope::KeystoreKeys`). It does not authenticate anyone: the caller says who the
//! principal is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::{Decision, Policy, Request, grant_allows};
use crate::keystore::{self, AccessTarget, EncryptionContext, ErrorKind, Keystore, OpContext};

/// Key authorization with a cache of parsed key policies (by key id, valid while the key
/// record's revision is unchanged).
#[derive(Debug, Default)]
pub struct Authorizer {
    policies: Mutex<HashMap<String, (u64, Arc<Policy>)>>,
}

/// One authorization question: who asks to do what on which key.
#[derive(Clone, Copy, Debug)]
pub struct KeyAccess<'a> {
    /// The caller's ARN (`arn:aws:iam::ACCOUNT:user/NAME`, see [`super::user_arn`]).
    pub principal_arn: &'a str,
    /// The operation as the audit trail names it (`GenerateDataKey`).
    pub operation: &'a str,
    /// The IAM action (`kms:GenerateDataKey`).
    pub action: &'a str,
    /// The request's encryption context, when the operation takes one.
    pub context: Option<&'a EncryptionContext>,
}

impl Authorizer {
    /// An authorizer with an empty policy cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `access` is allowed on `target`: the key policy or a grant `grant_ok` accepts
    /// must allow it, and the key policy may not deny it. A denial is written to the audit
    /// trail (as `ctx` describes the call) before it is returned.
    ///
    /// # Errors
    /// AccessDeniedException; KMSInternalException when the denial cannot be audited.
    pub async fn authorize(
        &self,
        keystore: &Keystore,
        ctx: &OpContext,
        target: &AccessTarget,
        access: KeyAccess<'_>,
        grant_ok: impl Fn(&keystore::GrantRecord) -> bool,
    ) -> Result<(), keystore::Error> {
        let KeyAccess { principal_arn, operation, action, context } = access;
        let partition = keystore.partition();
        let request = Request {
            principal_arn,
            account: &partition.account,
            action,
            resource: target.arn(),
            encryption_context: context,
        };
        let decision = match self.policy(target) {
            Some(policy) => policy.evaluate(&request),
            None => Decision::ImplicitDeny,
        };
        // Grants add permissions where the policy is silent; an explicit Deny still wins.
        let decision = match decision {
            Decision::ImplicitDeny
                if target.grants().iter().any(|g| grant_ok(g) && grant_allows(g, &request)) =>
            {
                Decision::Allow
            }
            other => other,
        };
        let why = match decision {
            Decision::Allow => return Ok(()),
            Decision::ExplicitDeny(_) => "with an explicit deny in a resource-based policy",
            Decision::ImplicitDeny => "because no resource-based policy or grant allows the action",
        };
        let error = keystore::Error::new(
            ErrorKind::AccessDenied,
            format!(
                "User: {principal_arn} is not authorized to perform: {action} on resource: {} \
                 {why}",
                target.arn()
            ),
        );
        keystore.audit_refusal(ctx, operation, Some(target.arn()), &error).await?;
        Err(error)
    }

    /// The parsed policy of `target`, from the cache while its revision is unchanged. A stored
    /// policy that no longer parses allows nothing.
    fn policy(&self, target: &AccessTarget) -> Option<Arc<Policy>> {
        let mut cache = self.policies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((revision, policy)) = cache.get(target.key_id())
            && *revision == target.revision()
        {
            return Some(Arc::clone(policy));
        }
        let policy = Arc::new(Policy::parse(target.policy()).ok()?);
        cache.insert(target.key_id().to_owned(), (target.revision(), Arc::clone(&policy)));
        Some(policy)
    }
}
