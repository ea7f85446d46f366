//! AWS JSON 1.1 members: reading a request's members with the errors AWS gives (a wrong JSON
//! type is `SerializationException`, a missing or out-of-range value `ValidationException`),
//! and writing the shapes several operations share (KeyMetadata).

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use super::ApiError;
use crate::crypto::SecretBytes;
use crate::keystore::operations::EncryptionAlgorithm;
use crate::keystore::{EncryptionContext, KeyMetadata, KeyState, KeyUsage, Origin};

/// A request's members.
#[derive(Debug)]
pub struct Input(Map<String, Value>);

impl Input {
    /// Parses a body: a JSON object (an empty body counts as `{}`).
    ///
    /// # Errors
    /// SerializationException for anything else.
    pub fn parse(body: &[u8]) -> Result<Self, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(Map::new()));
        }
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::serialization("The request body must be a JSON object")),
            Err(error) => {
                Err(ApiError::serialization(format!("The request body is not valid JSON: {error}")))
            }
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    /// Whether the member is present (and not null).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn wrong_type(name: &str, expected: &str) -> ApiError {
        ApiError::serialization(format!("{name} must be {expected}"))
    }

    fn missing(name: &str) -> ApiError {
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{}' failed to satisfy constraint: \
             Member must not be null",
            lower_first(name)
        ))
    }

    /// An optional string member.
    ///
    /// # Errors
    /// SerializationException when it is not a string.
    pub fn opt_str(&self, name: &str) -> Result<Option<&str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(Self::wrong_type(name, "a string")),
        }
    }

    /// A required string member of `min..=max` characters.
    ///
    /// # Errors
    /// ValidationException when absent or out of bounds; SerializationException for a
    /// non-string.
    pub fn str(&self, name: &str, min: usize, max: usize) -> Result<&str, ApiError> {
        let value = self.opt_str(name)?.ok_or_else(|| Self::missing(name))?;
        check_len(name, value.chars().count(), min, max)?;
        Ok(value)
    }

    /// A required KeyId-like member (1–2048 characters).
    ///
    /// # Errors
    /// As [`Input::str`].
    pub fn key_id(&self, name: &str) -> Result<&str, ApiError> {
        self.str(name, 1, 2048)
    }

    /// An optional KeyId-like member.
    ///
    /// # Errors
    /// As [`Input::str`].
    pub fn opt_key_id(&self, name: &str) -> Result<Option<&str>, ApiError> {
        let value = self.opt_str(name)?;
        if let Some(value) = value {
            check_len(name, value.chars().count(), 1, 2048)?;
        }
        Ok(value)
    }

    /// An optional base64 blob of at most `max` decoded bytes.
    ///
    /// # Errors
    /// SerializationException for a non-string or bad base64; ValidationException for size.
    pub fn opt_blob(&self, name: &str, max: usize) -> Result<Option<Vec<u8>>, ApiError> {
        let Some(text) = self.opt_str(name)? else { return Ok(None) };
        let bytes = STANDARD
            .decode(text)
            .map_err(|_| ApiError::serialization(format!("{name} is not valid base64")))?;
        check_len(name, bytes.len(), 1, max)?;
        Ok(Some(bytes))
    }

    /// A required base64 blob of 1..=`max` bytes.
    ///
    /// # Errors
    /// As [`Input::opt_blob`], and ValidationException when absent.
    pub fn blob(&self, name: &str, max: usize) -> Result<Vec<u8>, ApiError> {
        self.opt_blob(name, max)?.ok_or_else(|| Self::missing(name))
    }

    /// A required blob that is secret (plaintext): it zeroizes.
    ///
    /// # Errors
    /// As [`Input::blob`].
    pub fn secret_blob(&self, name: &str, max: usize) -> Result<SecretBytes, ApiError> {
        let text = self.opt_str(name)?.ok_or_else(|| Self::missing(name))?;
        let bytes = SecretBytes::new(
            STANDARD
                .decode(text)
                .map_err(|_| ApiError::serialization(format!("{name} is not valid base64")))?,
        );
        check_len(name, bytes.len(), 1, max)?;
        Ok(bytes)
    }

    /// An optional integer within `min..=max`.
    ///
    /// # Errors
    /// SerializationException for a non-integer; ValidationException out of range.
    pub fn opt_u32(&self, name: &str, min: u32, max: u32) -> Result<Option<u32>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let number = value.as_i64().ok_or_else(|| Self::wrong_type(name, "an integer"))?;
        if number < i64::from(min) || number > i64::from(max) {
            return Err(ApiError::validation(format!(
                "1 validation error detected: Value '{number}' at '{}' failed to satisfy \
                 constraint: Member must have value between {min} and {max}",
                lower_first(name)
            )));
        }
        Ok(Some(u32::try_from(number).unwrap_or(max)))
    }

    /// An optional boolean.
    ///
    /// # Errors
    /// SerializationException for a non-boolean.
    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(Self::wrong_type(name, "a boolean")),
        }
    }

    /// An optional timestamp (epoch seconds, fractions allowed), as whole seconds.
    ///
    /// # Errors
    /// SerializationException for a non-number.
    pub fn opt_timestamp(&self, name: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64))
                .map(Some)
                .ok_or_else(|| Self::wrong_type(name, "a timestamp")),
            Some(_) => Err(Self::wrong_type(name, "a timestamp in epoch seconds")),
        }
    }

    /// An optional enum member, parsed by `parse`; `allowed` names the values for the error.
    ///
    /// # Errors
    /// SerializationException for a non-string; ValidationException for another value.
    pub fn opt_enum<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Option<T>,
        allowed: &[&str],
    ) -> Result<Option<T>, ApiError> {
        let Some(text) = self.opt_str(name)? else { return Ok(None) };
        parse(text).map(Some).ok_or_else(|| {
            ApiError::validation(format!(
                "1 validation error detected: Value '{text}' at '{}' failed to satisfy \
                 constraint: Member must satisfy enum value set: [{}]",
                lower_first(name),
                allowed.join(", ")
            ))
        })
    }

    /// An optional list of strings, at most `max` long.
    ///
    /// # Errors
    /// SerializationException for a wrong type; ValidationException when too long.
    pub fn opt_strings(&self, name: &str, max: usize) -> Result<Vec<String>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(Vec::new()) };
        let list = value.as_array().ok_or_else(|| Self::wrong_type(name, "a list of strings"))?;
        if list.len() > max {
            return Err(ApiError::validation(format!("{name} holds at most {max} items")));
        }
        list.iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Self::wrong_type(name, "a list of strings"))
    }

    /// An optional encryption context (a map of strings).
    ///
    /// # Errors
    /// SerializationException for a wrong type.
    pub fn context(&self, name: &str) -> Result<EncryptionContext, ApiError> {
        let Some(value) = self.get(name) else { return Ok(EncryptionContext::new()) };
        let map = value.as_object().ok_or_else(|| Self::wrong_type(name, "a map of strings"))?;
        map.iter()
            .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect::<Option<BTreeMap<_, _>>>()
            .ok_or_else(|| Self::wrong_type(name, "a map of strings"))
    }

    /// An optional structure member, as members of its own.
    ///
    /// # Errors
    /// SerializationException when it is not an object.
    pub fn opt_struct(&self, name: &str) -> Result<Option<Self>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Self(map.clone()))),
            Some(_) => Err(Self::wrong_type(name, "a structure")),
        }
    }

    /// Optional tags: `[{"TagKey": …, "TagValue": …}]`.
    ///
    /// # Errors
    /// SerializationException for a wrong shape.
    pub fn tags(&self, name: &str) -> Result<BTreeMap<String, String>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(BTreeMap::new()) };
        let bad = || Self::wrong_type(name, "a list of {TagKey, TagValue}");
        let list = value.as_array().ok_or_else(bad)?;
        let mut tags = BTreeMap::new();
        for tag in list {
            let key = tag.get("TagKey").and_then(Value::as_str).ok_or_else(bad)?;
            let value = tag.get("TagValue").and_then(Value::as_str).ok_or_else(bad)?;
            tags.insert(key.to_owned(), value.to_owned());
        }
        Ok(tags)
    }
}

fn check_len(name: &str, len: usize, min: usize, max: usize) -> Result<(), ApiError> {
    if len < min || len > max {
        return Err(ApiError::validation(format!(
            "1 validation error detected: Value at '{}' failed to satisfy constraint: Member \
             must have length between {min} and {max}",
            lower_first(name)
        )));
    }
    Ok(())
}

/// `KeyId` → `keyId`, as AWS names members in validation messages.
fn lower_first(name: &str) -> String {
    let mut chars = name.chars();
    chars.next().map(|c| c.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
}

/// Base64 of a blob.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// KeyMetadata in the AWS shape.
pub fn metadata_json(metadata: &KeyMetadata) -> Value {
    let r = &metadata.record;
    let mut document = json!({
        "KeyId": r.id,
        "Arn": metadata.arn,
        "AWSAccountId": metadata.account,
        "CreationDate": r.created,
        "Enabled": r.state == KeyState::Enabled,
        "Description": r.description,
        "KeyUsage": r.usage.kms_name(),
        "KeyState": r.state.kms_name(),
        "Origin": r.origin.kms_name(),
        "KeyManager": "CUSTOMER",
        "KeySpec": r.spec.kms_name(),
        "CustomerMasterKeySpec": r.spec.kms_name(),
        "MultiRegion": false,
    });
    if let Some(date) = r.deletion_date {
        document["DeletionDate"] = json!(date);
        document["PendingDeletionWindowInDays"] = json!(r.pending_window_days);
    }
    if let Some(id) = &metadata.current_material_id {
        document["CurrentKeyMaterialId"] = json!(id);
    }
    if r.origin == Origin::External {
        document["ExpirationModel"] = json!(if metadata.valid_to.is_some() {
            "KEY_MATERIAL_EXPIRES"
        } else {
            "KEY_MATERIAL_DOES_NOT_EXPIRE"
        });
        if let Some(valid_to) = metadata.valid_to {
            document["ValidTo"] = json!(valid_to);
        }
    }
    let (field, algorithms) = algorithms(r.spec, r.usage);
    document[field] = json!(algorithms);
    document
}

/// The member naming the algorithms a key of `spec` and `usage` offers, and their names.
pub fn algorithms(
    spec: crate::keystore::KeySpec,
    usage: KeyUsage,
) -> (&'static str, Vec<&'static str>) {
    match (spec.key_pair_spec(), usage) {
        (Some(pair), KeyUsage::SignVerify) => {
            ("SigningAlgorithms", pair.signing_algorithms().iter().map(|a| a.kms_name()).collect())
        }
        (_, KeyUsage::KeyAgreement) => ("KeyAgreementAlgorithms", vec!["ECDH"]),
        (_, KeyUsage::GenerateVerifyMac) => {
            ("MacAlgorithms", spec.mac_algorithm().map(|a| vec![a.kms_name()]).unwrap_or_default())
        }
        _ => (
            "EncryptionAlgorithms",
            EncryptionAlgorithm::for_key(spec, usage).iter().map(|a| a.kms_name()).collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_typed() {
        let input = Input::parse(
            br#"{"KeyId":"k","N":5,"B":true,"Blob":"aGk=","Ctx":{"a":"b"},"Bad":"%%","Null":null}"#,
        )
        .unwrap();
        assert_eq!(input.key_id("KeyId").unwrap(), "k");
        assert_eq!(input.opt_u32("N", 1, 10).unwrap(), Some(5));
        assert_eq!(input.opt_bool("B").unwrap(), Some(true));
        assert_eq!(input.blob("Blob", 10).unwrap(), b"hi");
        assert_eq!(input.context("Ctx").unwrap()["a"], "b");
        assert_eq!(input.opt_str("Null").unwrap(), None);
        let code = |r: Result<(), ApiError>| r.unwrap_err().code;
        assert_eq!(code(input.opt_u32("N", 6, 10).map(drop)), "ValidationException");
        assert_eq!(code(input.opt_u32("KeyId", 1, 10).map(drop)), "SerializationException");
        assert_eq!(code(input.blob("Bad", 10).map(drop)), "SerializationException");
        assert_eq!(code(input.blob("Blob", 1).map(drop)), "ValidationException");
        assert_eq!(code(input.key_id("Missing").map(drop)), "ValidationException");
        assert_eq!(code(input.context("N").map(drop)), "SerializationException");
        assert_eq!(code(input.opt_bool("KeyId").map(drop)), "SerializationException");
        for body in [&b"[]"[..], b"{", b"\"x\"", b"{\"a\":1}x"] {
            assert_eq!(Input::parse(body).unwrap_err().code, "SerializationException");
        }
        assert!(Input::parse(b"").is_ok() && Input::parse(b" \n").is_ok());
    }
}
