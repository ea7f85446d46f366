//! One handler per KMS operation: read the members, authorize, call the keystore, write the
//! members back. Shapes and limits follow ../shared/reference/kms-service-2.json.

use serde_json::{Value, json};

use super::wire::{Input, algorithms, b64, metadata_json};
use super::{Api, ApiError, Call};
use crate::crypto::{KeyPairSpec, MacAlgorithm, SigningAlgorithm};
use crate::keystore::operations::{DataKeySize, EncryptionAlgorithm, MessageType};
use crate::keystore::{
    CreateKeyRequest, EncryptionContext, ImportRequest, ImportType, IncludeKeyMaterial, KeySpec,
    KeyUsage, Origin, Page, WrappingAlgorithm,
};
use crate::policy::quota::OperationClass;
use crate::policy::{self, Decision, Policy};

/// The largest ciphertext blob KMS takes.
const MAX_CIPHERTEXT: usize = 6144;
/// The largest plaintext Encrypt takes.
const MAX_PLAINTEXT: usize = 4096;
/// The largest Sign/Verify/MAC message.
const MAX_MESSAGE: usize = 4096;
/// At most this many grant tokens per request.
pub(super) const MAX_GRANT_TOKENS: usize = 10;

/// An operation kagi serves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Operation {
    pub(crate) name: &'static str,
    pub(crate) class: OperationClass,
}

macro_rules! operations {
    ($($name:ident => $class:ident, $method:ident $(($($arg:expr),*))?;)*) => {
        /// The operation an `X-Amz-Target` suffix names.
        pub(crate) fn lookup(name: &str) -> Option<Operation> {
            match name {
                $(stringify!($name) => Some(Operation {
                    name: stringify!($name),
                    class: OperationClass::$class,
                }),)*
                _ => None,
            }
        }

        impl Api {
            /// Runs the handler of `call.operation`.
            pub(crate) async fn dispatch(
                &self,
                call: &mut Call<'_>,
                input: Input,
            ) -> Result<Value, ApiError> {
                match call.operation {
                    $(stringify!($name) => self.$method(call, input $($(, $arg)*)?).await,)*
                    _ => Err(ApiError::new("UnknownOperationException", 400, "")),
                }
            }
        }
    };
}

operations! {
    CreateKey => Management, create_key;
    DescribeKey => Management, describe_key;
    ListKeys => Management, list_keys;
    EnableKey => Management, enable_key;
    DisableKey => Management, disable_key;
    UpdateKeyDescription => Management, update_key_description;
    ScheduleKeyDeletion => Management, schedule_key_deletion;
    CancelKeyDeletion => Management, cancel_key_deletion;
    CreateAlias => Management, create_alias;
    UpdateAlias => Management, update_alias;
    DeleteAlias => Management, delete_alias;
    ListAliases => Management, list_aliases;
    TagResource => Management, tag_resource;
    UntagResource => Management, untag_resource;
    ListResourceTags => Management, list_resource_tags;
    GetKeyPolicy => Management, get_key_policy;
    PutKeyPolicy => Management, put_key_policy;
    ListKeyPolicies => Management, list_key_policies;
    GetKeyLastUsage => Management, get_key_last_usage;
    EnableKeyRotation => Management, enable_key_rotation;
    DisableKeyRotation => Management, disable_key_rotation;
    GetKeyRotationStatus => Management, get_key_rotation_status;
    RotateKeyOnDemand => Management, rotate_key_on_demand;
    ListKeyRotations => Management, list_key_rotations;
    GetParametersForImport => Management, get_parameters_for_import;
    ImportKeyMaterial => Management, import_key_material;
    DeleteImportedKeyMaterial => Management, delete_imported_key_material;
    Encrypt => Symmetric, encrypt;
    Decrypt => Symmetric, decrypt;
    ReEncrypt => Symmetric, re_encrypt;
    GenerateDataKey => Symmetric, data_key(true);
    GenerateDataKeyWithoutPlaintext => Symmetric, data_key(false);
    GenerateRandom => Symmetric, generate_random;
    GenerateMac => Symmetric, generate_mac;
    VerifyMac => Symmetric, verify_mac;
    GenerateDataKeyPair => Asymmetric, data_key_pair(true);
    GenerateDataKeyPairWithoutPlaintext => Asymmetric, data_key_pair(false);
    Sign => Asymmetric, sign;
    Verify => Asymmetric, verify;
    GetPublicKey => Asymmetric, get_public_key;
    DeriveSharedSecret => Asymmetric, derive_shared_secret;
    CreateGrant => Management, create_grant;
    ListGrants => Management, list_grants;
    ListRetirableGrants => Management, list_retirable_grants;
    RetireGrant => Management, retire_grant;
    RevokeGrant => Management, revoke_grant;
}

const ENCRYPTION_ALGORITHMS: &[&str] =
    &["SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE"];
const KEY_PAIR_SPECS: &[&str] = &[
    "RSA_2048",
    "RSA_3072",
    "RSA_4096",
    "ECC_NIST_P256",
    "ECC_NIST_P384",
    "ECC_NIST_P521",
    "ECC_SECG_P256K1",
];
const SIGNING_ALGORITHMS: &[&str] = &[
    "RSASSA_PSS_SHA_256",
    "RSASSA_PSS_SHA_384",
    "RSASSA_PSS_SHA_512",
    "RSASSA_PKCS1_V1_5_SHA_256",
    "RSASSA_PKCS1_V1_5_SHA_384",
    "RSASSA_PKCS1_V1_5_SHA_512",
    "ECDSA_SHA_256",
    "ECDSA_SHA_384",
    "ECDSA_SHA_512",
];
const MAC_ALGORITHMS: &[&str] = &["HMAC_SHA_224", "HMAC_SHA_256", "HMAC_SHA_384", "HMAC_SHA_512"];

fn encryption_algorithm(
    input: &Input,
    name: &str,
) -> Result<Option<EncryptionAlgorithm>, ApiError> {
    input.opt_enum(name, EncryptionAlgorithm::from_kms_name, ENCRYPTION_ALGORITHMS)
}

fn signing_algorithm(input: &Input) -> Result<SigningAlgorithm, ApiError> {
    input
        .opt_enum("SigningAlgorithm", SigningAlgorithm::from_kms_name, SIGNING_ALGORITHMS)?
        .ok_or_else(|| ApiError::validation("SigningAlgorithm is required"))
}

fn mac_algorithm(input: &Input) -> Result<MacAlgorithm, ApiError> {
    input
        .opt_enum("MacAlgorithm", MacAlgorithm::from_kms_name, MAC_ALGORITHMS)?
        .ok_or_else(|| ApiError::validation("MacAlgorithm is required"))
}

fn message_type(input: &Input) -> Result<MessageType, ApiError> {
    let parse = |name: &str| match name {
        "RAW" => Some(MessageType::Raw),
        "DIGEST" => Some(MessageType::Digest),
        _ => None,
    };
    Ok(input
        .opt_enum("MessageType", parse, &["RAW", "DIGEST", "EXTERNAL_MU"])?
        .unwrap_or(MessageType::Raw))
}

/// Grant tokens are accepted (AWS SDKs pass them through) and checked for shape.
fn grant_tokens(input: &Input) -> Result<(), ApiError> {
    input.opt_strings("GrantTokens", MAX_GRANT_TOKENS).map(drop)
}

fn refuse_recipient(input: &Input) -> Result<(), ApiError> {
    if input.has("Recipient") {
        return Err(ApiError::unsupported(
            "Recipient (Nitro Enclaves attestation) is not supported",
        ));
    }
    Ok(())
}

/// `value` with `member` set to the key material id, when there is one.
fn with_material_id(mut value: Value, member: &str, id: Option<String>) -> Value {
    if let Some(id) = id {
        value[member] = json!(id);
    }
    value
}

pub(super) fn page<T>(page: Page<T>, field: &str, item: impl Fn(&T) -> Value) -> Value {
    let mut out = json!({
        field: page.items.iter().map(item).collect::<Vec<_>>(),
        "Truncated": page.next_marker.is_some(),
    });
    if let Some(marker) = page.next_marker {
        out["NextMarker"] = json!(marker);
    }
    out
}

pub(super) fn limit_and_marker(
    input: &Input,
    max: u32,
) -> Result<(Option<u32>, Option<&str>), ApiError> {
    let limit = input.opt_u32("Limit", 1, max)?;
    let marker = input.opt_str("Marker")?;
    if let Some(marker) = marker
        && (marker.is_empty() || marker.len() > 1024)
    {
        return Err(ApiError::validation("Marker must be 1 to 1024 characters"));
    }
    Ok((limit, marker))
}

pub(super) fn dry_run_error() -> ApiError {
    ApiError::new(
        "DryRunOperationException",
        412,
        "The request would have succeeded, but the DryRun option is set.",
    )
}

impl Api {
    /// Authorizes, then stops a dry run.
    pub(super) async fn allow(
        &self,
        call: &mut Call<'_>,
        action: &str,
        key_ref: &str,
        context: Option<&EncryptionContext>,
    ) -> Result<(), ApiError> {
        self.authorize(call, action, key_ref, context).await?;
        if call.dry_run {
            // Only a request that would succeed is a successful dry run.
            self.keystore.check_usable(key_ref).await?;
            return Err(dry_run_error());
        }
        Ok(())
    }

    /// A key management call: authorize `action` on `KeyId`, then run it.
    async fn manage(
        &self,
        call: &mut Call<'_>,
        input: &Input,
        action: &str,
    ) -> Result<String, ApiError> {
        let key_ref = input.key_id("KeyId")?.to_owned();
        self.allow(call, action, &key_ref, None).await?;
        Ok(key_ref)
    }

    async fn create_key(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        self.authorize_account(call, "kms:CreateKey").await?;
        let spec_name = input
            .opt_str("KeySpec")?
            .or(input.opt_str("CustomerMasterKeySpec")?)
            .unwrap_or("SYMMETRIC_DEFAULT");
        let spec = KeySpec::from_kms_name(spec_name).ok_or_else(|| {
            ApiError::validation(format!("KeySpec {spec_name} is not a key spec kagi offers"))
        })?;
        let usage = input.opt_enum(
            "KeyUsage",
            KeyUsage::from_kms_name,
            &["ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"],
        )?;
        let origin = match input.opt_str("Origin")?.unwrap_or("AWS_KMS") {
            "AWS_KMS" => Origin::AwsKms,
            "EXTERNAL" => Origin::External,
            "AWS_CLOUDHSM" | "EXTERNAL_KEY_STORE" => {
                return Err(ApiError::unsupported("custom key stores are not supported"));
            }
            other => return Err(ApiError::validation(format!("Origin {other} is not valid"))),
        };
        if input.opt_bool("MultiRegion")?.unwrap_or(false) {
            return Err(ApiError::unsupported("multi-Region keys are not supported"));
        }
        if input.opt_str("CustomKeyStoreId")?.is_some() || input.opt_str("XksKeyId")?.is_some() {
            return Err(ApiError::unsupported("custom key stores are not supported"));
        }
        let description = input.opt_str("Description")?.unwrap_or_default().to_owned();
        let partition = self.keystore.partition();
        let mut notes = Vec::new();
        let policy = match input.opt_str("Policy")? {
            Some(text) => {
                let bypass = input.opt_bool("BypassPolicyLockoutSafetyCheck")?.unwrap_or(false);
                notes = self.check_new_policy(call, text, "*", bypass)?;
                text.to_owned()
            }
            None => {
                let principals = self.principals();
                let administrators: Vec<&str> = principals
                    .iter()
                    .filter(|p| p.administrator)
                    .map(|p| p.name.as_str())
                    .collect();
                policy::default_policy(&partition.account, &administrators, &call.principal.name)
            }
        };
        let request = CreateKeyRequest {
            spec,
            usage,
            origin,
            description,
            tags: input.tags("Tags")?,
            policy: Some(policy),
        };
        let metadata = self.keystore.create_key_noted(&call.ctx, request, notes).await?;
        call.key_arn = Some(metadata.arn.clone());
        Ok(json!({ "KeyMetadata": metadata_json(&metadata) }))
    }

    /// Validates a policy about to be set: it must parse, and unless `bypass`, it must still
    /// let the caller change the policy (AWS's lockout safety check). Parts kagi does not
    /// evaluate are logged.
    fn check_new_policy(
        &self,
        call: &Call<'_>,
        text: &str,
        resource: &str,
        bypass: bool,
    ) -> Result<Vec<String>, ApiError> {
        let malformed =
            |message: String| ApiError::new("MalformedPolicyDocumentException", 400, message);
        let policy = Policy::parse(text).map_err(|error| malformed(error.0))?;
        let notes = policy.unevaluated();
        for note in &notes {
            tracing::warn!(target: "kagi::policy", principal = %call.principal.name, "key policy: {note}");
        }
        if !bypass {
            let partition = self.keystore.partition();
            let decision = policy.evaluate(&policy::Request {
                principal_arn: &call.principal_arn,
                account: &partition.account,
                action: "kms:PutKeyPolicy",
                resource: if resource == "*" { "arn:aws:kms:*" } else { resource },
                encryption_context: None,
            });
            // A resource of "*" in the check stands for the key about to exist.
            let allowed = decision == Decision::Allow
                || (resource == "*"
                    && policy.evaluate(&policy::Request {
                        principal_arn: &call.principal_arn,
                        account: &partition.account,
                        action: "kms:PutKeyPolicy",
                        resource: &format!(
                            "arn:aws:kms:{}:{}:key/new",
                            partition.region, partition.account
                        ),
                        encryption_context: None,
                    }) == Decision::Allow);
            if !allowed {
                return Err(malformed(
                    "The new key policy will not allow you to update the key policy in the \
                     future."
                        .into(),
                ));
            }
        }
        Ok(notes)
    }

    async fn describe_key(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let key_ref = self.manage(call, &input, "kms:DescribeKey").await?;
        let metadata = self.keystore.describe_key(&call.ctx, &key_ref).await?;
        Ok(json!({ "KeyMetadata": metadata_json(&metadata) }))
    }

    async fn list_keys(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        self.authorize_account(call, "kms:ListKeys").await?;
        let (limit, marker) = limit_and_marker(&input, 1000)?;
        let keys = self.keystore.list_keys(&call.ctx, limit, marker).await?;
        Ok(page(keys, "Keys", |(id, arn)| json!({"KeyId": id, "KeyArn": arn})))
    }

    async fn enable_key(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:EnableKey").await?;
        self.keystore.enable_key(&call.ctx, &key_ref).await?;
        Ok(json!({}))
    }

    async fn disable_key(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:DisableKey").await?;
        self.keystore.disable_key(&call.ctx, &key_ref).await?;
        Ok(json!({}))
    }

    async fn update_key_description(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let description = input.str("Description", 0, 8192)?.to_owned();
        let key_ref = self.manage(call, &input, "kms:UpdateKeyDescription").await?;
        self.keystore.update_key_description(&call.ctx, &key_ref, &description).await?;
        Ok(json!({}))
    }

    async fn schedule_key_deletion(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let days = input.opt_u32("PendingWindowInDays", 1, 365)?;
        let key_ref = self.manage(call, &input, "kms:ScheduleKeyDeletion").await?;
        let schedule = self.keystore.schedule_key_deletion(&call.ctx, &key_ref, days).await?;
        Ok(json!({
            "KeyId": schedule.key_arn,
            "DeletionDate": schedule.deletion_date,
            "KeyState": "PendingDeletion",
            "PendingWindowInDays": schedule.pending_window_days,
        }))
    }

    async fn cancel_key_deletion(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:CancelKeyDeletion").await?;
        let arn = self.keystore.cancel_key_deletion(&call.ctx, &key_ref).await?;
        Ok(json!({ "KeyId": arn }))
    }

    async fn create_alias(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let name = input.str("AliasName", 1, 256)?;
        let target = input.key_id("TargetKeyId")?;
        self.allow(call, "kms:CreateAlias", target, None).await?;
        self.keystore.create_alias(&call.ctx, name, target).await?;
        Ok(json!({}))
    }

    async fn update_alias(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let name = input.str("AliasName", 1, 256)?;
        let target = input.key_id("TargetKeyId")?;
        // Both the key the alias leaves and the one it joins must allow it.
        if let Ok(current) = self.keystore.access_target(name).await {
            self.authorize(call, "kms:UpdateAlias", current.key_id(), None).await?;
        }
        self.allow(call, "kms:UpdateAlias", target, None).await?;
        self.keystore.update_alias(&call.ctx, name, target).await?;
        Ok(json!({}))
    }

    async fn delete_alias(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let name = input.str("AliasName", 1, 256)?;
        if let Ok(current) = self.keystore.access_target(name).await {
            self.allow(call, "kms:DeleteAlias", current.key_id(), None).await?;
        }
        self.keystore.delete_alias(&call.ctx, name).await?;
        Ok(json!({}))
    }

    async fn list_aliases(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let key_ref = input.opt_key_id("KeyId")?;
        match key_ref {
            Some(key_ref) => {
                self.authorize(call, "kms:ListAliases", key_ref, None).await?;
            }
            None => self.authorize_account(call, "kms:ListAliases").await?,
        }
        let (limit, marker) = limit_and_marker(&input, 100)?;
        let aliases = self.keystore.list_aliases(&call.ctx, key_ref, limit, marker).await?;
        Ok(page(aliases, "Aliases", |alias| {
            json!({
                "AliasName": alias.name,
                "AliasArn": alias.arn,
                "TargetKeyId": alias.target_key_id,
                "CreationDate": alias.created,
                "LastUpdatedDate": alias.updated,
            })
        }))
    }

    async fn tag_resource(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let tags = input.tags("Tags")?;
        if input.opt_str("Tags").is_ok() && tags.is_empty() {
            return Err(ApiError::validation("Tags is required"));
        }
        let key_ref = self.manage(call, &input, "kms:TagResource").await?;
        self.keystore.tag_resource(&call.ctx, &key_ref, &tags).await?;
        Ok(json!({}))
    }

    async fn untag_resource(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let tag_keys = input.opt_strings("TagKeys", 50)?;
        let key_ref = self.manage(call, &input, "kms:UntagResource").await?;
        self.keystore.untag_resource(&call.ctx, &key_ref, &tag_keys).await?;
        Ok(json!({}))
    }

    async fn list_resource_tags(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let (limit, marker) = limit_and_marker(&input, 50)?;
        let key_ref = self.manage(call, &input, "kms:ListResourceTags").await?;
        let tags = self.keystore.list_resource_tags(&call.ctx, &key_ref, limit, marker).await?;
        Ok(page(tags, "Tags", |(key, value)| json!({"TagKey": key, "TagValue": value})))
    }

    async fn get_key_policy(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        let name = policy_name(&input)?;
        let key_ref = self.manage(call, &input, "kms:GetKeyPolicy").await?;
        let policy = self.keystore.key_policy(&key_ref).await?;
        Ok(json!({ "Policy": policy, "PolicyName": name }))
    }

    async fn put_key_policy(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        policy_name(&input)?;
        let text = input.str("Policy", 1, policy::MAX_POLICY_BYTES)?.to_owned();
        let bypass = input.opt_bool("BypassPolicyLockoutSafetyCheck")?.unwrap_or(false);
        let key_ref = input.key_id("KeyId")?.to_owned();
        let target = self.authorize(call, "kms:PutKeyPolicy", &key_ref, None).await?;
        let notes = self.check_new_policy(call, &text, target.arn(), bypass)?;
        if call.dry_run {
            return Err(dry_run_error());
        }
        self.keystore.put_key_policy(&call.ctx, &key_ref, &text, notes).await?;
        Ok(json!({}))
    }

    async fn list_key_policies(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        limit_and_marker(&input, 1000)?;
        self.manage(call, &input, "kms:ListKeyPolicies").await?;
        Ok(json!({ "PolicyNames": ["default"], "Truncated": false }))
    }

    async fn get_key_last_usage(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:GetKeyLastUsage").await?;
        let metadata = self.keystore.describe_key(&call.ctx, &key_ref).await?;
        let last = self
            .last_use
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&metadata.arn)
            .cloned();
        let mut usage = json!({});
        if let Some(last) = last {
            usage = json!({
                "Operation": last.operation,
                "Timestamp": last.time,
                "KmsRequestId": last.request_id,
            });
        }
        Ok(json!({
            "KeyId": metadata.arn,
            "KeyLastUsage": usage,
            "TrackingStartDate": self.tracking_start.max(metadata.record.created),
            "KeyCreationDate": metadata.record.created,
        }))
    }

    async fn enable_key_rotation(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let period = input.opt_u32("RotationPeriodInDays", 90, 2560)?;
        let key_ref = self.manage(call, &input, "kms:EnableKeyRotation").await?;
        self.keystore.enable_key_rotation(&call.ctx, &key_ref, period).await?;
        Ok(json!({}))
    }

    async fn disable_key_rotation(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:DisableKeyRotation").await?;
        self.keystore.disable_key_rotation(&call.ctx, &key_ref).await?;
        Ok(json!({}))
    }

    async fn get_key_rotation_status(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:GetKeyRotationStatus").await?;
        let status = self.keystore.key_rotation_status(&call.ctx, &key_ref).await?;
        let mut out = json!({ "KeyId": status.key_arn, "KeyRotationEnabled": status.enabled });
        if let Some(days) = status.period_days {
            out["RotationPeriodInDays"] = json!(days);
        }
        if let Some(next) = status.next_rotation {
            out["NextRotationDate"] = json!(next);
        }
        Ok(out)
    }

    async fn rotate_key_on_demand(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:RotateKeyOnDemand").await?;
        let arn = self.keystore.rotate_key_on_demand(&call.ctx, &key_ref).await?;
        Ok(json!({ "KeyId": arn }))
    }

    async fn list_key_rotations(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let (limit, marker) = limit_and_marker(&input, 1000)?;
        let include = input
            .opt_enum(
                "IncludeKeyMaterial",
                IncludeKeyMaterial::from_kms_name,
                &["ALL_KEY_MATERIAL", "ROTATIONS_ONLY"],
            )?
            .unwrap_or_default();
        let key_ref = self.manage(call, &input, "kms:ListKeyRotations").await?;
        let rotations =
            self.keystore.list_key_rotations(&call.ctx, &key_ref, include, limit, marker).await?;
        Ok(page(rotations, "Rotations", |entry| {
            let version = &entry.version;
            let mut out = json!({
                "KeyId": entry.key_arn,
                "KeyMaterialId": version.material_id,
                "KeyMaterialState": serde_json::to_value(version.state).unwrap_or_default(),
            });
            if let Some(date) = version.rotation_date {
                out["RotationDate"] = json!(date);
            }
            if let Some(kind) = version.rotation_type {
                out["RotationType"] = serde_json::to_value(kind).unwrap_or_default();
            }
            if entry.imported {
                out["ImportState"] =
                    json!(if version.has_material() { "IMPORTED" } else { "PENDING_IMPORT" });
                out["ExpirationModel"] = json!(if version.valid_to.is_some() {
                    "KEY_MATERIAL_EXPIRES"
                } else {
                    "KEY_MATERIAL_DOES_NOT_EXPIRE"
                });
                if let Some(valid_to) = version.valid_to {
                    out["ValidTo"] = json!(valid_to);
                }
            }
            out
        }))
    }

    async fn get_parameters_for_import(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let algorithm = input
            .opt_enum(
                "WrappingAlgorithm",
                WrappingAlgorithm::from_kms_name,
                &[
                    "RSAES_PKCS1_V1_5",
                    "RSAES_OAEP_SHA_1",
                    "RSAES_OAEP_SHA_256",
                    "RSA_AES_KEY_WRAP_SHA_1",
                    "RSA_AES_KEY_WRAP_SHA_256",
                ],
            )?
            .ok_or_else(|| ApiError::validation("WrappingAlgorithm is required"))?;
        let spec = input
            .opt_enum(
                "WrappingKeySpec",
                KeyPairSpec::from_kms_name,
                &["RSA_2048", "RSA_3072", "RSA_4096"],
            )?
            .ok_or_else(|| ApiError::validation("WrappingKeySpec is required"))?;
        let key_ref = self.manage(call, &input, "kms:GetParametersForImport").await?;
        let parameters =
            self.keystore.get_parameters_for_import(&call.ctx, &key_ref, algorithm, spec).await?;
        Ok(json!({
            "KeyId": parameters.key_arn,
            "ImportToken": b64(&parameters.import_token),
            "PublicKey": b64(&parameters.public_key),
            "ParametersValidTo": parameters.valid_to,
        }))
    }

    async fn import_key_material(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let import_token = input.blob("ImportToken", MAX_CIPHERTEXT)?;
        let encrypted_key_material = input.blob("EncryptedKeyMaterial", MAX_CIPHERTEXT)?;
        let expires = match input.opt_str("ExpirationModel")? {
            None | Some("KEY_MATERIAL_EXPIRES") => {
                input.opt_str("ExpirationModel")?.is_some()
                    || input.opt_timestamp("ValidTo")?.is_some()
            }
            Some("KEY_MATERIAL_DOES_NOT_EXPIRE") => false,
            Some(other) => {
                return Err(ApiError::validation(format!("ExpirationModel {other} is not valid")));
            }
        };
        let valid_to = input.opt_timestamp("ValidTo")?;
        let valid_to = match (expires, valid_to) {
            (true, Some(valid_to)) => Some(valid_to),
            (true, None) => {
                return Err(ApiError::validation(
                    "ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES",
                ));
            }
            (false, Some(_)) => {
                return Err(ApiError::validation(
                    "ValidTo must be absent when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE",
                ));
            }
            (false, None) => None,
        };
        let import_type = match input.opt_str("ImportType")? {
            None | Some("EXISTING_KEY_MATERIAL") => ImportType::ExistingKeyMaterial,
            Some("NEW_KEY_MATERIAL") => ImportType::NewKeyMaterial,
            Some(other) => {
                return Err(ApiError::validation(format!("ImportType {other} is not valid")));
            }
        };
        let key_ref = self.manage(call, &input, "kms:ImportKeyMaterial").await?;
        let request = ImportRequest {
            import_token: &import_token,
            encrypted_key_material: &encrypted_key_material,
            valid_to,
            import_type,
        };
        let (arn, material_id) =
            self.keystore.import_key_material(&call.ctx, &key_ref, request).await?;
        Ok(json!({ "KeyId": arn, "KeyMaterialId": material_id }))
    }

    async fn delete_imported_key_material(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        let key_ref = self.manage(call, &input, "kms:DeleteImportedKeyMaterial").await?;
        let arn = self.keystore.delete_imported_key_material(&call.ctx, &key_ref).await?;
        Ok(json!({ "KeyId": arn }))
    }

    async fn encrypt(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let key_ref = input.key_id("KeyId")?;
        let plaintext = input.secret_blob("Plaintext", MAX_PLAINTEXT)?;
        let context = input.context("EncryptionContext")?;
        let algorithm = encryption_algorithm(&input, "EncryptionAlgorithm")?
            .unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        self.allow(call, "kms:Encrypt", key_ref, Some(&context)).await?;
        let out = self
            .keystore
            .encrypt(&call.ctx, key_ref, plaintext.expose_secret(), &context, algorithm)
            .await?;
        self.note_use(call, &out.key_arn);
        // The model's EncryptResponse has no KeyMaterialId (the audit trail records it).
        Ok(json!({
            "CiphertextBlob": b64(&out.ciphertext_blob),
            "KeyId": out.key_arn,
            "EncryptionAlgorithm": out.algorithm.kms_name(),
        }))
    }

    /// The key a ciphertext is for: the KeyId given, or else the one the blob names.
    fn ciphertext_key(blob: &[u8], key_id: Option<&str>) -> Result<String, ApiError> {
        match key_id {
            Some(key_id) => Ok(key_id.to_owned()),
            None => crate::keystore::Keystore::ciphertext_key_id(blob).ok_or_else(|| {
                ApiError::new(
                    "InvalidCiphertextException",
                    400,
                    "The ciphertext is not a kagi ciphertext; asymmetric ciphertexts need KeyId",
                )
            }),
        }
    }

    async fn decrypt(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        refuse_recipient(&input)?;
        let blob = input.blob("CiphertextBlob", MAX_CIPHERTEXT)?;
        let context = input.context("EncryptionContext")?;
        let key_id = input.opt_key_id("KeyId")?;
        let algorithm = encryption_algorithm(&input, "EncryptionAlgorithm")?;
        let key_ref = Self::ciphertext_key(&blob, key_id)?;
        self.allow(call, "kms:Decrypt", &key_ref, Some(&context)).await?;
        let out = self.keystore.decrypt(&call.ctx, &blob, &context, key_id, algorithm).await?;
        self.note_use(call, &out.key_arn);
        let value = json!({
            "KeyId": out.key_arn,
            "Plaintext": b64(out.plaintext.expose_secret()),
            "EncryptionAlgorithm": out.algorithm.kms_name(),
        });
        Ok(with_material_id(value, "KeyMaterialId", out.key_material_id))
    }

    async fn re_encrypt(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let blob = input.blob("CiphertextBlob", MAX_CIPHERTEXT)?;
        let source_context = input.context("SourceEncryptionContext")?;
        let source_key_id = input.opt_key_id("SourceKeyId")?;
        let destination = input.key_id("DestinationKeyId")?;
        let destination_context = input.context("DestinationEncryptionContext")?;
        let source_algorithm = encryption_algorithm(&input, "SourceEncryptionAlgorithm")?;
        let destination_algorithm = encryption_algorithm(&input, "DestinationEncryptionAlgorithm")?
            .unwrap_or(EncryptionAlgorithm::SymmetricDefault);
        let source_ref = Self::ciphertext_key(&blob, source_key_id)?;
        self.authorize(call, "kms:ReEncryptFrom", &source_ref, Some(&source_context)).await?;
        self.allow(call, "kms:ReEncryptTo", destination, Some(&destination_context)).await?;
        let out = self
            .keystore
            .re_encrypt(
                &call.ctx,
                &blob,
                &source_context,
                source_key_id,
                source_algorithm,
                destination,
                &destination_context,
                destination_algorithm,
            )
            .await?;
        self.note_use(call, &out.source_key_arn);
        self.note_use(call, &out.key_arn);
        let value = json!({
            "CiphertextBlob": b64(&out.ciphertext_blob),
            "SourceKeyId": out.source_key_arn,
            "KeyId": out.key_arn,
            "SourceEncryptionAlgorithm": out.source_algorithm.kms_name(),
            "DestinationEncryptionAlgorithm": out.destination_algorithm.kms_name(),
        });
        let value = with_material_id(value, "SourceKeyMaterialId", out.source_material_id);
        Ok(with_material_id(value, "DestinationKeyMaterialId", out.destination_material_id))
    }

    async fn data_key(
        &self,
        call: &mut Call<'_>,
        input: Input,
        with_plaintext: bool,
    ) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        refuse_recipient(&input)?;
        let key_ref = input.key_id("KeyId")?;
        let context = input.context("EncryptionContext")?;
        let spec = input.opt_enum(
            "KeySpec",
            |name| match name {
                "AES_256" => Some(DataKeySize::Aes256),
                "AES_128" => Some(DataKeySize::Aes128),
                _ => None,
            },
            &["AES_256", "AES_128"],
        )?;
        let bytes = input.opt_u32("NumberOfBytes", 1, 1024)?;
        let size = match (spec, bytes) {
            (Some(spec), None) => spec,
            (None, Some(bytes)) => DataKeySize::Bytes(bytes),
            _ => {
                return Err(ApiError::validation(
                    "Specify exactly one of KeySpec and NumberOfBytes",
                ));
            }
        };
        let action = if with_plaintext {
            "kms:GenerateDataKey"
        } else {
            "kms:GenerateDataKeyWithoutPlaintext"
        };
        self.allow(call, action, key_ref, Some(&context)).await?;
        let out = self
            .keystore
            .generate_data_key(&call.ctx, key_ref, size, &context, with_plaintext)
            .await?;
        self.note_use(call, &out.key_arn);
        let mut value = json!({
            "CiphertextBlob": b64(&out.ciphertext_blob),
            "KeyId": out.key_arn,
        });
        if let Some(plaintext) = &out.plaintext {
            value["Plaintext"] = json!(b64(plaintext.expose_secret()));
        }
        Ok(with_material_id(value, "KeyMaterialId", out.key_material_id))
    }

    async fn data_key_pair(
        &self,
        call: &mut Call<'_>,
        input: Input,
        with_plaintext: bool,
    ) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        refuse_recipient(&input)?;
        let key_ref = input.key_id("KeyId")?;
        let context = input.context("EncryptionContext")?;
        let spec = input
            .opt_enum("KeyPairSpec", KeyPairSpec::from_kms_name, KEY_PAIR_SPECS)?
            .ok_or_else(|| ApiError::validation("KeyPairSpec is required"))?;
        let action = if with_plaintext {
            "kms:GenerateDataKeyPair"
        } else {
            "kms:GenerateDataKeyPairWithoutPlaintext"
        };
        self.allow(call, action, key_ref, Some(&context)).await?;
        let out = self
            .keystore
            .generate_data_key_pair(&call.ctx, key_ref, spec, &context, with_plaintext)
            .await?;
        self.note_use(call, &out.key_arn);
        let mut value = json!({
            "PrivateKeyCiphertextBlob": b64(&out.private_key_ciphertext_blob),
            "PublicKey": b64(&out.public_key),
            "KeyId": out.key_arn,
            "KeyPairSpec": out.spec.kms_name(),
        });
        if let Some(plaintext) = &out.private_key_plaintext {
            value["PrivateKeyPlaintext"] = json!(b64(plaintext.expose_secret()));
        }
        Ok(with_material_id(value, "KeyMaterialId", out.key_material_id))
    }

    async fn generate_random(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        refuse_recipient(&input)?;
        if input.opt_str("CustomKeyStoreId")?.is_some() {
            return Err(ApiError::unsupported("custom key stores are not supported"));
        }
        let bytes = input
            .opt_u32("NumberOfBytes", 1, 1024)?
            .ok_or_else(|| ApiError::validation("NumberOfBytes is required"))?;
        self.authorize_account(call, "kms:GenerateRandom").await?;
        let random = self.keystore.generate_random(&call.ctx, bytes).await?;
        Ok(json!({ "Plaintext": b64(random.expose_secret()) }))
    }

    async fn sign(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let key_ref = input.key_id("KeyId")?;
        let message = input.blob("Message", MAX_MESSAGE)?;
        let message_type = message_type(&input)?;
        let algorithm = signing_algorithm(&input)?;
        self.allow(call, "kms:Sign", key_ref, None).await?;
        let (signature, arn) =
            self.keystore.sign(&call.ctx, key_ref, &message, message_type, algorithm).await?;
        self.note_use(call, &arn);
        Ok(json!({
            "KeyId": arn,
            "Signature": b64(&signature),
            "SigningAlgorithm": algorithm.kms_name(),
        }))
    }

    async fn verify(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let key_ref = input.key_id("KeyId")?;
        let message = input.blob("Message", MAX_MESSAGE)?;
        let signature = input.blob("Signature", MAX_CIPHERTEXT)?;
        let message_type = message_type(&input)?;
        let algorithm = signing_algorithm(&input)?;
        self.allow(call, "kms:Verify", key_ref, None).await?;
        let arn = self
            .keystore
            .verify(&call.ctx, key_ref, &message, message_type, algorithm, &signature)
            .await?;
        self.note_use(call, &arn);
        Ok(json!({
            "KeyId": arn,
            "SignatureValid": true,
            "SigningAlgorithm": algorithm.kms_name(),
        }))
    }

    async fn get_public_key(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let key_ref = input.key_id("KeyId")?;
        self.allow(call, "kms:GetPublicKey", key_ref, None).await?;
        let info = self.keystore.get_public_key(&call.ctx, key_ref).await?;
        let mut value = json!({
            "KeyId": info.key_arn,
            "PublicKey": b64(&info.public_key),
            "KeySpec": info.spec.kms_name(),
            "CustomerMasterKeySpec": info.spec.kms_name(),
            "KeyUsage": info.usage.kms_name(),
        });
        let (field, names) = algorithms(info.spec, info.usage);
        value[field] = json!(names);
        Ok(value)
    }

    async fn generate_mac(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let key_ref = input.key_id("KeyId")?;
        let message = input.blob("Message", MAX_MESSAGE)?;
        let algorithm = mac_algorithm(&input)?;
        self.allow(call, "kms:GenerateMac", key_ref, None).await?;
        let (mac, arn) =
            self.keystore.generate_mac(&call.ctx, key_ref, &message, algorithm).await?;
        self.note_use(call, &arn);
        Ok(json!({ "Mac": b64(&mac), "MacAlgorithm": algorithm.kms_name(), "KeyId": arn }))
    }

    async fn verify_mac(&self, call: &mut Call<'_>, input: Input) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        let key_ref = input.key_id("KeyId")?;
        let message = input.blob("Message", MAX_MESSAGE)?;
        let mac = input.blob("Mac", 6144)?;
        let algorithm = mac_algorithm(&input)?;
        self.allow(call, "kms:VerifyMac", key_ref, None).await?;
        let arn = self.keystore.verify_mac(&call.ctx, key_ref, &message, algorithm, &mac).await?;
        self.note_use(call, &arn);
        Ok(json!({ "KeyId": arn, "MacValid": true, "MacAlgorithm": algorithm.kms_name() }))
    }

    async fn derive_shared_secret(
        &self,
        call: &mut Call<'_>,
        input: Input,
    ) -> Result<Value, ApiError> {
        grant_tokens(&input)?;
        refuse_recipient(&input)?;
        let key_ref = input.key_id("KeyId")?;
        match input.opt_str("KeyAgreementAlgorithm")? {
            Some("ECDH") => {}
            Some(other) => {
                return Err(ApiError::validation(format!(
                    "KeyAgreementAlgorithm {other} is not valid: use ECDH"
                )));
            }
            None => return Err(ApiError::validation("KeyAgreementAlgorithm is required")),
        }
        let public_key = input.blob("PublicKey", 8192)?;
        self.allow(call, "kms:DeriveSharedSecret", key_ref, None).await?;
        let (secret, arn, origin) =
            self.keystore.derive_shared_secret(&call.ctx, key_ref, &public_key).await?;
        self.note_use(call, &arn);
        Ok(json!({
            "KeyId": arn,
            "SharedSecret": b64(secret.expose_secret()),
            "KeyAgreementAlgorithm": "ECDH",
            "KeyOrigin": origin,
        }))
    }
}

/// PolicyName: only `default` exists.
fn policy_name(input: &Input) -> Result<&'static str, ApiError> {
    match input.opt_str("PolicyName")? {
        None | Some("default") => Ok("default"),
        Some(other) => Err(ApiError::new(
            "NotFoundException",
            404,
            format!("Key policy {other} does not exist; the only policy is 'default'"),
        )),
    }
}
