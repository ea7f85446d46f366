//! The grant operations (CreateGrant, ListGrants, ListRetirableGrants, RetireGrant,
//! RevokeGrant) and the check of the `GrantTokens` any request may carry. Shapes follow
//! ../shared/reference/kms-service-2.json; the rules are the keystore's (`keystore::grants`),
//! grant evaluation is `policy::grant_allows`, consulted by [`Api::authorize`].

use serde_json::{Value, json};

use super::operations::{MAX_GRANT_TOKENS, dry_run_error, limit_and_marker, page};
use super::wire::Input;
use super::{Api, ApiError, Call};
use crate::keystore::{
    EncryptionContext, GrantConstraints, GrantEntry, GrantOperation, GrantRef, NewGrant, Retirer,
};
use crate::policy;

/// The grant operation names, for validation messages.
fn operation_names() -> Vec<&'static str> {
    GrantOperation::ALL.iter().map(|op| op.kms_name()).collect()
}

/// `Operations`: a required, non-empty list of GrantOperation names.
fn operations(input: &Input) -> Result<Vec<GrantOperation>, ApiError> {
    if !input.has("Operations") {
        return Err(ApiError::validation("Operations is required"));
    }
    input
        .opt_strings("Operations", GrantOperation::ALL.len() * 4)?
        .iter()
        .map(|name| {
            GrantOperation::from_kms_name(name).ok_or_else(|| {
                ApiError::validation(format!(
                    "1 validation error detected: Value '{name}' at 'operations' failed to \
                     satisfy constraint: Member must satisfy enum value set: [{}]",
                    operation_names().join(", ")
                ))
            })
        })
        .collect()
}

/// `Constraints`: EncryptionContextEquals and EncryptionContextSubset; SourceArn is refused.
fn constraints(input: &Input) -> Result<Option<GrantConstraints>, ApiError> {
    let Some(members) = input.opt_struct("Constraints")? else { return Ok(None) };
    if members.has("SourceArn") {
        return Err(ApiError::unsupported("the SourceArn grant constraint is not supported"));
    }
    let map = |name: &str| -> Result<Option<EncryptionContext>, ApiError> {
        if members.has(name) { members.context(name).map(Some) } else { Ok(None) }
    };
    Ok(Some(GrantConstraints {
        encryption_context_equals: map("EncryptionContextEquals")?,
        encryption_context_subset: map("EncryptionContextSubset")?,
    }))
}

fn refuse_service_principal(input: &Input, name: &str) -> Result<(), ApiError> {
    if input.has(name) {
        return Err(ApiError::validation(format!(
            "{name}: service principals are not supported; name an IAM principal"
        )));
    }
    Ok(())
}

/// A GrantListEntry.
fn grant_json(entry: &GrantEntry, account: &str) -> Value {
    let grant = &entry.grant;
    let mut value = json!({
        "KeyId": entry.key_arn,
        "GrantId": grant.grant_id,
        "CreationDate": grant.created,
        "GranteePrincipal": grant.grantee_principal,
        "IssuingAccount": format!("arn:aws:iam::{}:root", if grant.issuing_account.is_empty() {
            account
        } else {
            &grant.issuing_account
        }),
        "Operations": grant.operations.iter().map(|op| op.kms_name()).collect::<Vec<_>>(),
    });
    if let Some(name) = &grant.name {
        value["Name"] = json!(name);
    }
    if let Some(retiring) = &grant.retiring_principal {
        value["RetiringPrincipal"] = json!(retiring);
    }
    if let Some(constraints) = &grant.constraints {
        let mut out = json!({});
        if let Some(equals) = &constraints.encryption_context_equals {
            out["EncryptionContextEquals"] = json!(equals);
        }
        if let Some(subset) = &constraints.encryption_context_subset {
            out["EncryptionContextSubset"] = json!(subset);
        }
        value["Constraints"] = out;
    }
    value
}

impl Api {
    /// Checks the `GrantTokens` member of any request: at most 10 tokens of 1–8192
    /// characters, each naming an existing grant (InvalidGrantTokenException otherwise, audited).
    pub(super) async fn check_grant_tokens(
        &self,
        call: &Call<'_>,
        input: &Input,
    ) -> Result<(), ApiError> {
        let tokens = input.opt_strings("GrantTokens", MAX_GRANT_TOKENS)?;
        if tokens.iter().any(|t| t.is_empty() || t.chars().count() > 8192) {
            return Err(ApiError::validation("each grant token must be 1 to 8192 characters"));
        }
        if let Err(error) = self.keystore.check_grant_tokens(&tokens).await {
            self.keystore.audit_refusal(&call.ctx, call.operation, None, &error).await?;
            return Err(error.into());
        }
        Ok(())
    }

    /// Whether the caller acts for the account on account-level `action`, without auditing.
    fn acts_for_account(call: &Call<'_>, action: &str) -> bool {
        call.principal.administrator
            || call
                .principal
                .account_actions
                .iter()
                .any(|a| policy::wildcard_match(a, action, true))
    }

    pub(super) async fn create_grant(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let key_ref = input.key_id("KeyId")?.to_owned();
        refuse_service_principal(&input, "GranteeServicePrincipal")?;
        refuse_service_principal(&input, "RetiringServicePrincipal")?;
        let grantee = input
            .opt_str("GranteePrincipal")?
            .ok_or_else(|| ApiError::validation("GranteePrincipal is required"))?
            .to_owned();
        let retiring = input.opt_str("RetiringPrincipal")?.map(str::to_owned);
        let name = input.opt_str("Name")?.map(str::to_owned);
        let operations = operations(&input)?;
        let constraints = constraints(&input)?;
        // A grant that lets its grantee create grants lets it create no wider ones.
        self.authorize_where(call, "kms:CreateGrant", &key_ref, None, |parent| {
            policy::grant_covers(parent, &operations, constraints.as_ref())
        })
        .await?;
        if call.dry_run {
            return Err(dry_run_error());
        }
        let request = NewGrant {
            grantee_principal: grantee,
            retiring_principal: retiring,
            operations,
            constraints,
            name,
            issuing_principal: call.principal_arn.clone(),
        };
        let created = self.keystore.create_grant(&call.ctx, &key_ref, request).await?;
        Ok(json!({ "GrantToken": created.grant_token, "GrantId": created.grant_id }))
    }

    pub(super) async fn list_grants(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let (limit, marker) = limit_and_marker(&input, 100)?;
        refuse_service_principal(&input, "GranteeServicePrincipal")?;
        let grant_id = input.opt_str("GrantId")?;
        let grantee = input.opt_str("GranteePrincipal")?;
        let key_ref = input.key_id("KeyId")?;
        self.authorize(call, "kms:ListGrants", key_ref, None).await?;
        let grants =
            self.keystore.list_grants(&call.ctx, key_ref, grant_id, grantee, limit, marker).await?;
        let account = &self.keystore.partition().account;
        Ok(page(grants, "Grants", |entry| grant_json(entry, account)))
    }

    /// Account-level (an IAM permission in AWS): callers may list the grants they may retire
    /// themselves; listing another principal's needs the account action.
    pub(super) async fn list_retirable_grants(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let (limit, marker) = limit_and_marker(&input, 100)?;
        refuse_service_principal(&input, "RetiringServicePrincipal")?;
        let retiring = input
            .opt_str("RetiringPrincipal")?
            .ok_or_else(|| ApiError::validation("RetiringPrincipal is required"))?;
        if retiring != call.principal_arn {
            self.authorize_account(call, "kms:ListRetirableGrants").await?;
        }
        let grants =
            self.keystore.list_retirable_grants(&call.ctx, retiring, limit, marker).await?;
        let account = &self.keystore.partition().account;
        Ok(page(grants, "Grants", |entry| grant_json(entry, account)))
    }

    /// Permission comes from the grant itself (its retiring principal, or its grantee when it
    /// permits RetireGrant) or from acting for the account; the keystore decides.
    pub(super) async fn retire_grant(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let token = input.opt_str("GrantToken")?;
        if let Some(token) = token
            && (token.is_empty() || token.chars().count() > 8192)
        {
            return Err(ApiError::validation("GrantToken must be 1 to 8192 characters"));
        }
        let key_ref = input.opt_key_id("KeyId")?;
        let grant_id = input.opt_str("GrantId")?;
        let grant = match (token, key_ref, grant_id) {
            (Some(token), _, _) => GrantRef::Token(token),
            (None, Some(key_ref), Some(grant_id)) => GrantRef::Id { key_ref, grant_id },
            _ => {
                return Err(ApiError::validation(
                    "RetireGrant needs GrantToken, or KeyId and GrantId",
                ));
            }
        };
        let retirer = Retirer {
            principal_arn: &call.principal_arn,
            account_admin: Self::acts_for_account(call, "kms:RetireGrant"),
        };
        let arn = self.keystore.retire_grant(&call.ctx, grant, retirer, call.dry_run).await?;
        call.key_arn = Some(arn);
        if call.dry_run {
            return Err(dry_run_error());
        }
        Ok(json!({}))
    }

    pub(super) async fn revoke_grant(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let grant_id = input.str("GrantId", 1, 128)?;
        let key_ref = input.key_id("KeyId")?;
        self.allow(call, "kms:RevokeGrant", key_ref, None).await?;
        self.keystore.revoke_grant(&call.ctx, key_ref, grant_id).await?;
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests;
