//! Grants (CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant): a grant
//! gives a principal named operations on one key, optionally only for a given encryption
//! context.
//!
//! Grants live in their key's record (`KeyRecord::grants`) and change only through
//! `Keystore::update`, so they are consistent at once: a grant works on the next call after
//! CreateGrant, and stops working on the next call after RetireGrant or RevokeGrant.
//! *Evaluating* grants is `crate::policy`'s job (`grant_allows`); the keystore stores them and
//! enforces AWS's rules for making and removing them.
//!
//! A grant token is base64url of `0x01 ‖ key id (16 B) ‖ grant id (32 B) ‖ nonce (16 B)`: it is
//! opaque to callers, unique per CreateGrant call, and maps back to its grant without a lookup
//! table. Tokens carry no authority of their own (kagi's grants need no eventual-consistency
//! bridge); a token is valid while its grant exists.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::key::{GrantConstraints, GrantOperation, GrantRecord, KeyRecord, KeySpec, KeyState};
use super::lifecycle::OperationClass;
use super::{Error, ErrorKind, Keystore, OpContext, Page, paginate};

/// Most grants per key (AWS allows 50,000; kagi keeps grants in the key's record).
pub const MAX_GRANTS_PER_KEY: usize = 500;
/// Most pairs in one encryption context constraint.
pub const MAX_CONSTRAINT_PAIRS: usize = 8;
/// Longest value in an encryption context constraint, in characters.
pub const MAX_CONSTRAINT_VALUE: usize = 384;

const TOKEN_VERSION: u8 = 1;
const TOKEN_LEN: usize = 1 + 16 + 32 + 16;

/// What CreateGrant takes.
#[derive(Clone, Debug)]
pub struct NewGrant {
    /// Who may use the grant: an IAM ARN, or an account (id or root ARN).
    pub grantee_principal: String,
    /// Who may retire it, besides the account and (with RetireGrant) the grantee.
    pub retiring_principal: Option<String>,
    /// The operations it permits.
    pub operations: Vec<GrantOperation>,
    /// Encryption context constraints.
    pub constraints: Option<GrantConstraints>,
    /// A friendly name: a retry with the same name and parameters returns the same grant.
    pub name: Option<String>,
    /// The ARN of the principal creating the grant.
    pub issuing_principal: String,
}

/// What CreateGrant answers.
#[derive(Clone, Debug)]
pub struct CreatedGrant {
    /// The key ARN.
    pub key_arn: String,
    /// The grant id (an existing one when the request repeated a named grant).
    pub grant_id: String,
    /// A new token for the grant.
    pub grant_token: String,
}

/// A grant as ListGrants and ListRetirableGrants return it.
#[derive(Clone, Debug)]
pub struct GrantEntry {
    /// The key's ARN.
    pub key_arn: String,
    /// The grant.
    pub grant: GrantRecord,
}

/// How RetireGrant names a grant.
#[derive(Clone, Copy, Debug)]
pub enum GrantRef<'a> {
    /// By a token CreateGrant returned.
    Token(&'a str),
    /// By key (id or ARN) and grant id.
    Id {
        /// The key id or key ARN.
        key_ref: &'a str,
        /// The grant id.
        grant_id: &'a str,
    },
}

/// Who asks to retire a grant.
#[derive(Clone, Copy, Debug)]
pub struct Retirer<'a> {
    /// The caller's ARN.
    pub principal_arn: &'a str,
    /// Whether the caller acts for the account (may retire any grant of it).
    pub account_admin: bool,
}

impl Keystore {
    /// CreateGrant: adds a grant to a key (Enabled, Disabled or PendingImport; not pending
    /// deletion). With a `name`, a grant of the same name, grantee, operations, constraints
    /// and retiring principal already on the key is returned instead of a new one.
    ///
    /// # Errors
    /// ValidationException for an operation the key does not support, constraints on a key or
    /// operation without encryption context, or malformed principals and names;
    /// LimitExceededException past [`MAX_GRANTS_PER_KEY`]; NotFoundException;
    /// KMSInvalidStateException for a key pending deletion.
    pub async fn create_grant(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        request: NewGrant,
    ) -> Result<CreatedGrant, Error> {
        let trail = self.trail(ctx, "CreateGrant");
        let outcome = self.create_grant_inner(&trail, key_ref, request).await;
        trail.finish_key(outcome, |g| &g.key_arn).await
    }

    async fn create_grant_inner(
        &self,
        trail: &super::trail::Trail<'_>,
        key_ref: &str,
        request: NewGrant,
    ) -> Result<CreatedGrant, Error> {
        let NewGrant {
            grantee_principal,
            retiring_principal,
            mut operations,
            constraints,
            name,
            issuing_principal,
        } = request;
        check_principal("GranteePrincipal", &grantee_principal)?;
        if let Some(retiring) = &retiring_principal {
            check_principal("RetiringPrincipal", retiring)?;
        }
        if let Some(name) = &name {
            check_grant_name(name)?;
        }
        let mut seen = std::collections::HashSet::new();
        operations.retain(|op| seen.insert(*op));
        if operations.is_empty() {
            return Err(Error::validation("Operations must name at least one grant operation"));
        }
        let constraints = constraints.filter(|c| !c.is_empty());
        if let Some(constraints) = &constraints {
            check_constraints(constraints)?;
        }
        let same = |grant: &GrantRecord| {
            name.is_some()
                && grant.name == name
                && grant.grantee_principal == grantee_principal
                && grant.retiring_principal == retiring_principal
                && grant.constraints == constraints
                && same_operations(&grant.operations, &operations)
        };
        // A retry of a named grant changes nothing.
        let key = self.resolve(key_ref, false).await?;
        super::lifecycle::check(OperationClass::Manage, &key.record, &key.arn)?;
        if let Some(existing) = key.record.grants.iter().find(|g| same(g)) {
            return Ok(CreatedGrant {
                key_arn: key.arn.clone(),
                grant_token: self.grant_token(&key.uuid, &existing.grant_id)?,
                grant_id: existing.grant_id.clone(),
            });
        }
        let new_id = self.new_material_id()?;
        let now = self.now();
        let account = self.partition.account.clone();
        let mut chosen = None;
        let mut uuid = [0u8; 16];
        let arn = self
            .update(trail, key_ref, false, OperationClass::Manage, |record, loaded| {
                uuid = loaded.uuid;
                check_operations_fit(record.spec, record.usage, &operations, &loaded.arn)?;
                if constraints.is_some() {
                    check_constraints_fit(record.spec, &operations)?;
                }
                // A concurrent retry may have created it meanwhile.
                if let Some(existing) = record.grants.iter().find(|g| same(g)) {
                    chosen = Some(existing.grant_id.clone());
                    return Ok(Vec::new());
                }
                if record.grants.len() >= MAX_GRANTS_PER_KEY {
                    return Err(Error::new(
                        ErrorKind::LimitExceeded,
                        format!("{} already has {MAX_GRANTS_PER_KEY} grants", loaded.arn),
                    ));
                }
                record.grants.push(GrantRecord {
                    grant_id: new_id.clone(),
                    name: name.clone(),
                    grantee_principal: grantee_principal.clone(),
                    retiring_principal: retiring_principal.clone(),
                    operations: operations.clone(),
                    constraints: constraints.clone(),
                    created: now,
                    issuing_account: account.clone(),
                    issuing_principal: issuing_principal.clone(),
                });
                chosen = Some(new_id.clone());
                Ok(Vec::new())
            })
            .await?;
        let grant_id = chosen.ok_or_else(|| Error::internal("no grant chosen; this is a bug"))?;
        Ok(CreatedGrant {
            key_arn: arn,
            grant_token: self.grant_token(&uuid, &grant_id)?,
            grant_id,
        })
    }

    /// ListGrants: the key's grants, oldest first, optionally only the one with `grant_id` or
    /// those of `grantee`; paginated (1–100, default 50).
    ///
    /// # Errors
    /// NotFoundException; InvalidGrantIdException for a malformed grant id;
    /// InvalidMarkerException.
    pub async fn list_grants(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        grant_id: Option<&str>,
        grantee: Option<&str>,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<Page<GrantEntry>, Error> {
        let outcome = async {
            if let Some(id) = grant_id {
                check_grant_id(id)?;
            }
            let key = self.resolve(key_ref, false).await?;
            super::lifecycle::check(OperationClass::Read, &key.record, &key.arn)?;
            let mut entries: Vec<(String, GrantEntry)> = key
                .record
                .grants
                .iter()
                .filter(|g| grant_id.is_none_or(|id| g.grant_id == id))
                .filter(|g| grantee.is_none_or(|p| g.grantee_principal == p))
                .map(|g| (sort_key(g), GrantEntry { key_arn: key.arn.clone(), grant: g.clone() }))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Ok((key.arn.clone(), paginate(entries, limit, marker, 100, 50)?))
        }
        .await;
        let outcome = self.trail(ctx, "ListGrants").finish_key(outcome, |(arn, _)| arn).await;
        outcome.map(|(_, page)| page)
    }

    /// ListRetirableGrants: every grant, on any key not yet deleted, whose retiring principal
    /// is `retiring_principal`; paginated (1–100, default 50).
    ///
    /// # Errors
    /// ValidationException for a malformed principal; InvalidMarkerException.
    pub async fn list_retirable_grants(
        &self,
        ctx: &OpContext,
        retiring_principal: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> Result<Page<GrantEntry>, Error> {
        let outcome = async {
            check_principal("RetiringPrincipal", retiring_principal)?;
            let mut entries = Vec::new();
            for key in self.store.keys().await? {
                if key.state == KeyState::Deleted {
                    continue;
                }
                let arn = self.key_arn(&key.id);
                for grant in key.grants {
                    if grant.retiring_principal.as_deref() == Some(retiring_principal) {
                        let sort = format!("{}/{}", key.id, sort_key(&grant));
                        entries.push((sort, GrantEntry { key_arn: arn.clone(), grant }));
                    }
                }
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            paginate(entries, limit, marker, 100, 50)
        }
        .await;
        self.trail(ctx, "ListRetirableGrants").finish(outcome, |_| (None, None), None).await
    }

    /// RetireGrant: removes a grant named by token or by key and grant id, for its retiring
    /// principal, its grantee when it permits RetireGrant, or the account. With `dry_run`,
    /// only checks (and audits nothing unless the check fails).
    ///
    /// # Errors
    /// InvalidGrantTokenException for a token kagi did not issue or whose grant is gone;
    /// InvalidGrantIdException for an unknown grant id; NotFoundException for an unknown key;
    /// AccessDeniedException when the caller may not retire the grant.
    pub async fn retire_grant(
        &self,
        ctx: &OpContext,
        grant: GrantRef<'_>,
        retirer: Retirer<'_>,
        dry_run: bool,
    ) -> Result<String, Error> {
        let trail = self.trail(ctx, "RetireGrant");
        let outcome = async {
            let (key_ref, grant_id, missing) = match grant {
                GrantRef::Token(token) => {
                    let (key_id, grant_id) = decode_token(token)?;
                    (key_id, grant_id, ErrorKind::InvalidGrantToken)
                }
                GrantRef::Id { key_ref, grant_id } => {
                    check_grant_id(grant_id)?;
                    (key_ref.to_owned(), grant_id.to_owned(), ErrorKind::InvalidGrantId)
                }
            };
            let account = self.partition.account.as_str();
            let find = |record: &KeyRecord, arn: &str| {
                retirable(record, arn, &grant_id, missing, retirer, account)
            };
            let result = if dry_run {
                match self.resolve(&key_ref, false).await {
                    Ok(key) => super::lifecycle::check(OperationClass::Read, &key.record, &key.arn)
                        .and_then(|()| find(&key.record, &key.arn))
                        .map(|_| key.arn.clone()),
                    Err(e) => Err(e),
                }
            } else {
                self.update(&trail, &key_ref, false, OperationClass::Read, |record, loaded| {
                    let index = find(record, &loaded.arn)?;
                    record.grants.remove(index);
                    Ok(Vec::new())
                })
                .await
            };
            match (grant, result) {
                // A token names its key: a key that is gone makes the token invalid.
                (GrantRef::Token(_), Err(e)) if e.kind() == ErrorKind::NotFound => {
                    Err(Error::new(ErrorKind::InvalidGrantToken, "the grant token names no grant"))
                }
                (_, result) => result,
            }
        }
        .await;
        if !dry_run || outcome.is_err() {
            return trail.finish_key(outcome, |arn| arn).await;
        }
        outcome
    }

    /// RevokeGrant: removes a grant of a key (the caller was authorized by the key policy).
    ///
    /// # Errors
    /// InvalidGrantIdException for an unknown grant id; NotFoundException.
    pub async fn revoke_grant(
        &self,
        ctx: &OpContext,
        key_ref: &str,
        grant_id: &str,
    ) -> Result<String, Error> {
        let trail = self.trail(ctx, "RevokeGrant");
        let outcome = async {
            check_grant_id(grant_id)?;
            self.update(&trail, key_ref, false, OperationClass::Read, |record, _| {
                let before = record.grants.len();
                record.grants.retain(|g| g.grant_id != grant_id);
                if record.grants.len() == before {
                    return Err(Error::new(
                        ErrorKind::InvalidGrantId,
                        format!("grant {grant_id} does not exist on the key"),
                    ));
                }
                Ok(Vec::new())
            })
            .await
        }
        .await;
        trail.finish_key(outcome, |arn| arn).await
    }

    /// Checks the grant tokens a request carries: each must name an existing grant (AWS
    /// answers InvalidGrantTokenException otherwise). kagi's grants are consistent at once, so
    /// a valid token adds no permission of its own.
    ///
    /// # Errors
    /// InvalidGrantTokenException.
    pub async fn check_grant_tokens(&self, tokens: &[String]) -> Result<(), Error> {
        for token in tokens {
            let (key_id, grant_id) = decode_token(token)?;
            let exists = match self.resolve(&key_id, false).await {
                Ok(key) => {
                    key.record.state != KeyState::Deleted
                        && key.record.grants.iter().any(|g| g.grant_id == grant_id)
                }
                Err(e) if e.kind() == ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if !exists {
                return Err(Error::new(
                    ErrorKind::InvalidGrantToken,
                    "the grant token names no grant",
                ));
            }
        }
        Ok(())
    }

    fn grant_token(&self, key_uuid: &[u8; 16], grant_id: &str) -> Result<String, Error> {
        let id = hex::decode(grant_id).map_err(|_| Error::internal("grant id is not hex"))?;
        let mut nonce = [0u8; 16];
        self.backend.fill_random(&mut nonce)?;
        let mut token = Vec::with_capacity(TOKEN_LEN);
        token.push(TOKEN_VERSION);
        token.extend_from_slice(key_uuid);
        token.extend_from_slice(&id);
        token.extend_from_slice(&nonce);
        Ok(URL_SAFE_NO_PAD.encode(token))
    }
}

/// The index of grant `grant_id` in `record`, if `retirer` may retire it.
fn retirable(
    record: &KeyRecord,
    arn: &str,
    grant_id: &str,
    missing: ErrorKind,
    retirer: Retirer<'_>,
    account: &str,
) -> Result<usize, Error> {
    let index = record
        .grants
        .iter()
        .position(|g| g.grant_id == grant_id)
        .ok_or_else(|| Error::new(missing, "the grant does not exist (or was retired)"))?;
    if !crate::policy::may_retire(
        &record.grants[index],
        retirer.principal_arn,
        account,
        retirer.account_admin,
    ) {
        return Err(Error::new(
            ErrorKind::AccessDenied,
            format!(
                "User: {} is not authorized to perform: kms:RetireGrant on resource: {arn} \
                 because it is neither the grant's retiring principal nor a grantee allowed to \
                 retire it",
                retirer.principal_arn
            ),
        ));
    }
    Ok(index)
}

/// The key id and grant id a token names.
fn decode_token(token: &str) -> Result<(String, String), Error> {
    let invalid = || Error::new(ErrorKind::InvalidGrantToken, "the grant token is not valid");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    if bytes.len() != TOKEN_LEN || bytes[0] != TOKEN_VERSION {
        return Err(invalid());
    }
    let key_id = uuid::Uuid::from_slice(&bytes[1..17]).map_err(|_| invalid())?.to_string();
    Ok((key_id, hex::encode(&bytes[17..49])))
}

/// Grants sort by creation time (in seconds), then id: pages list them oldest first, and a
/// marker stays a valid position while grants come and go.
fn sort_key(grant: &GrantRecord) -> String {
    format!("{:020}:{}", grant.created.max(0), grant.grant_id)
}

fn same_operations(a: &[GrantOperation], b: &[GrantOperation]) -> bool {
    a.len() == b.len() && a.iter().all(|op| b.contains(op))
}

fn check_grant_id(grant_id: &str) -> Result<(), Error> {
    if grant_id.len() != 64 || !grant_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::new(
            ErrorKind::InvalidGrantId,
            format!("{grant_id:?} is not a grant id (64 hexadecimal digits)"),
        ));
    }
    Ok(())
}

/// A principal as the model constrains it (1–256 of `[\w+=,.@:/-]`), and an ARN or an
/// account id.
fn check_principal(member: &str, principal: &str) -> Result<(), Error> {
    let allowed = |c: char| c.is_alphanumeric() || "_+=,.@:/-".contains(c);
    let shape_ok = (1..=256).contains(&principal.chars().count()) && principal.chars().all(allowed);
    let account = principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit());
    if !shape_ok || !(account || principal.starts_with("arn:")) {
        return Err(Error::validation(format!(
            "{member} {principal:?} is not a valid principal: give an ARN or an account id"
        )));
    }
    Ok(())
}

fn check_grant_name(name: &str) -> Result<(), Error> {
    let ok = (1..=256).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b":/_-".contains(&b));
    if !ok {
        return Err(Error::validation("Name must be 1 to 256 characters of [a-zA-Z0-9:/_-]"));
    }
    Ok(())
}

fn check_constraints(constraints: &GrantConstraints) -> Result<(), Error> {
    for context in [&constraints.encryption_context_equals, &constraints.encryption_context_subset]
        .into_iter()
        .flatten()
    {
        if context.len() > MAX_CONSTRAINT_PAIRS {
            return Err(Error::validation(format!(
                "an encryption context constraint holds at most {MAX_CONSTRAINT_PAIRS} pairs"
            )));
        }
        if context.values().any(|v| v.chars().count() > MAX_CONSTRAINT_VALUE) {
            return Err(Error::validation(format!(
                "encryption context constraint values are at most {MAX_CONSTRAINT_VALUE} \
                 characters"
            )));
        }
    }
    Ok(())
}

/// Every operation must be one the key supports (no Sign grant on an encryption key).
fn check_operations_fit(
    spec: KeySpec,
    usage: super::KeyUsage,
    operations: &[GrantOperation],
    arn: &str,
) -> Result<(), Error> {
    if let Some(op) = operations.iter().find(|op| !op.fits(spec, usage)) {
        return Err(Error::validation(format!(
            "Grant operation {op} is not valid for {arn} (KeySpec {spec}, KeyUsage {})",
            usage.kms_name()
        )));
    }
    Ok(())
}

/// Encryption context constraints need a symmetric encryption key, and only operations that
/// take a context (plus DescribeKey, RetireGrant and CreateGrant, which ignore them).
fn check_constraints_fit(spec: KeySpec, operations: &[GrantOperation]) -> Result<(), Error> {
    let ok = spec == KeySpec::SymmetricDefault
        && operations.iter().all(|op| op.takes_encryption_context() || op.is_key_independent());
    if !ok {
        return Err(Error::validation(
            "encryption context grant constraints are allowed only for symmetric encryption \
             keys and operations that take an encryption context",
        ));
    }
    Ok(())
}
