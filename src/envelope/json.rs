//! JSON field encryption: the values at some JSON pointers (RFC 6901, `/card/number`) of a
//! document, each replaced by a base64 string holding one message that encrypts the value's
//! JSON serialization; and the reverse.
//!
//! Pointers that name nothing in the document are left alone, as is everything the pointers
//! do not name. Each field is its own message with its own data key (no caching here).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use super::keys::KeyService;
use super::stream::{DecryptOptions, EncryptOptions, decrypt, encrypt};
use super::{EncryptionContext, Error};

/// Encrypts the value at each of `pointers` in `document` under `key` with `context`; returns
/// how many fields were encrypted.
///
/// # Errors
/// [`Error::InvalidPointer`] for a pointer that is neither empty nor starts with `/` (checked
/// before anything is encrypted); then as [`super::encrypt`]. On error the document may have
/// some fields encrypted already.
pub async fn encrypt_fields(
    keys: &dyn KeyService,
    principal: &str,
    key: &str,
    context: &EncryptionContext,
    options: EncryptOptions,
    document: &mut Value,
    pointers: &[&str],
) -> Result<usize, Error> {
    check_pointers(pointers)?;
    let mut count = 0;
    for pointer in pointers {
        let Some(field) = document.pointer_mut(pointer) else { continue };
        let plaintext = zeroize::Zeroizing::new(
            serde_json::to_vec(field).map_err(|_| Error::Internal("JSON serialization failed"))?,
        );
        let message = encrypt(keys, principal, key, context.clone(), options, &plaintext).await?;
        *field = Value::String(BASE64.encode(message));
        count += 1;
    }
    Ok(count)
}

/// Decrypts the value at each of `pointers` in `document` (a base64 string holding a message
/// that meets `expected`) back into the JSON value it encrypts; returns how many fields were
/// decrypted.
///
/// # Errors
/// [`Error::InvalidPointer`]; [`Error::NotAnEncryptedField`] for a value that is not a base64
/// string or does not decrypt to JSON; then as [`super::decrypt`].
pub async fn decrypt_fields(
    keys: &dyn KeyService,
    principal: &str,
    expected: &DecryptOptions,
    document: &mut Value,
    pointers: &[&str],
) -> Result<usize, Error> {
    check_pointers(pointers)?;
    let mut count = 0;
    for pointer in pointers {
        let Some(field) = document.pointer_mut(pointer) else { continue };
        let not_encrypted = || Error::NotAnEncryptedField((*pointer).to_owned());
        let message =
            field.as_str().and_then(|text| BASE64.decode(text).ok()).ok_or_else(not_encrypted)?;
        let plaintext = decrypt(keys, principal, expected.clone(), &message).await?;
        *field = serde_json::from_slice(plaintext.expose_secret()).map_err(|_| not_encrypted())?;
        count += 1;
    }
    Ok(count)
}

/// RFC 6901: a pointer is empty (the whole document) or a sequence of `/`-prefixed tokens.
fn check_pointers(pointers: &[&str]) -> Result<(), Error> {
    match pointers.iter().find(|p| !(p.is_empty() || p.starts_with('/'))) {
        Some(bad) => Err(Error::InvalidPointer((*bad).to_owned())),
        None => Ok(()),
    }
}
