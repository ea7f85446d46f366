//! Shamir's secret sharing over GF(2⁸), byte by byte: [`split`] a secret into `n` shares of
//! which any `k` give it back with [`combine`], and `k - 1` tell nothing about it.
//!
//! The field is AES's: polynomials over GF(2) modulo x⁸ + x⁴ + x³ + x + 1 (0x11b), the field of
//! FIPS-197 §4 and of Vault's unseal keys. Each byte of the secret is the constant term of its
//! own random polynomial of degree `k - 1`; share `x` (1..=255) holds that polynomial's value at
//! `x` for every byte. [`combine`] interpolates at zero (Lagrange).
//!
//! Field arithmetic is written without tables or branches on the operands, so its timing does
//! not depend on the secret (table lookups would leak it through the cache).
//!
//! This module does no I/O and knows nothing of text forms, checksums or which secret is split:
//! `keystore::shares` writes and reads shares, and checks a combination against the root key's
//! check value, since [`combine`] of the wrong shares returns a wrong secret, not an error.

use std::borrow::Borrow;
use std::fmt;

use super::{CryptoBackend, SecretBytes};

/// The most shares a secret splits into: the nonzero elements of GF(2⁸).
pub const MAX_SHARES: u8 = 255;

/// One share: its x coordinate and the polynomials' values there, one byte per secret byte.
///
/// # Security
/// `value` is secret (k of them give the secret): zeroized on drop, never printed.
pub struct Share {
    x: u8,
    value: SecretBytes,
}

impl Share {
    /// A share read back: `x` (1..=255) and its value.
    ///
    /// # Errors
    /// [`Error::ZeroX`] when `x` is 0 (the secret's own coordinate, never a share's).
    pub fn new(x: u8, value: SecretBytes) -> Result<Self, Error> {
        if x == 0 {
            return Err(Error::ZeroX);
        }
        Ok(Self { x, value })
    }

    /// The x coordinate, 1..=255. Public: it names the share.
    pub fn x(&self) -> u8 {
        self.x
    }

    /// The share's value.
    ///
    /// # Security
    /// Secret: only the code writing the share out for its holder reads it.
    pub fn expose_secret(&self) -> &[u8] {
        self.value.expose_secret()
    }
}

impl fmt::Debug for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Share").field("x", &self.x).finish_non_exhaustive()
    }
}

/// Why shares could not be made or combined.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum Error {
    /// The threshold is below 2 (one share would be the secret itself) or above the number of
    /// shares, or there are no shares.
    #[error("the threshold must be at least 2 and at most the number of shares")]
    BadThreshold,
    /// Two shares have the same x coordinate.
    #[error("share {0} is given twice")]
    DuplicateX(u8),
    /// The secret is empty.
    #[error("the secret is empty")]
    EmptySecret,
    /// Shares of different lengths: they come from different secrets.
    #[error("the shares have different lengths")]
    LengthMismatch,
    /// No shares to combine.
    #[error("no shares given")]
    NoShares,
    /// A share has x coordinate 0.
    #[error("a share's index is 1 to 255, not 0")]
    ZeroX,
    /// The random generator failed.
    #[error("random generator failed")]
    Random,
}

/// Splits `secret` into `n` shares (x = 1..=n), any `k` of which recombine it.
///
/// The polynomials' coefficients come from `backend`'s random generator and are wiped once the
/// shares are computed.
///
/// # Errors
/// [`Error::BadThreshold`] unless 2 ≤ k ≤ n (n ≤ 255 by its type); [`Error::EmptySecret`];
/// [`Error::Random`].
pub fn split(
    backend: &dyn CryptoBackend,
    secret: &[u8],
    n: u8,
    k: u8,
) -> Result<Vec<Share>, Error> {
    if k < 2 || k > n {
        return Err(Error::BadThreshold);
    }
    if secret.is_empty() {
        return Err(Error::EmptySecret);
    }
    // Coefficients 1..k of every byte's polynomial, byte after byte; coefficient 0 is the byte.
    // Each is uniform over all 256 values, 0 included: excluding 0 (as `sharks` does,
    // RUSTSEC-2024-0398) lets k - 1 shares rule out values of the secret.
    let mut coefficients = SecretBytes::zeroed(secret.len() * usize::from(k - 1));
    backend.fill_random(coefficients.expose_secret_mut()).map_err(|_| Error::Random)?;
    Ok(split_with(secret, n, k, &coefficients))
}

/// [`split`] with the coefficients given (`secret.len() × (k - 1)` bytes, byte after byte).
fn split_with(secret: &[u8], n: u8, k: u8, coefficients: &SecretBytes) -> Vec<Share> {
    let degree = usize::from(k - 1);
    (1..=n)
        .map(|x| {
            let mut value = SecretBytes::zeroed(secret.len());
            for (index, (out, byte)) in value.expose_secret_mut().iter_mut().zip(secret).enumerate()
            {
                let higher = &coefficients.expose_secret()[index * degree..(index + 1) * degree];
                *out = evaluate(*byte, higher, x);
            }
            Share { x, value }
        })
        .collect()
}

/// Interpolates `shares` at zero: the secret when they are at least `k` shares of one split.
///
/// # Security
/// Fewer than `k` shares, or shares of different splits, give a wrong secret, not an error:
/// the caller must check the result (kagi checks it against `root.check`).
///
/// # Errors
/// [`Error::NoShares`], [`Error::DuplicateX`], [`Error::LengthMismatch`].
pub fn combine<S: Borrow<Share>>(shares: &[S]) -> Result<SecretBytes, Error> {
    let shares: Vec<&Share> = shares.iter().map(Borrow::borrow).collect();
    let first = shares.first().ok_or(Error::NoShares)?;
    let len = first.value.len();
    for (index, share) in shares.iter().enumerate() {
        if share.value.len() != len {
            return Err(Error::LengthMismatch);
        }
        if shares[..index].iter().any(|other| other.x == share.x) {
            return Err(Error::DuplicateX(share.x));
        }
    }
    let mut secret = SecretBytes::zeroed(len);
    for share in &shares {
        // The Lagrange basis polynomial of this share at zero: Π x_j / (x_j - x_i), j ≠ i
        // (subtraction is XOR in characteristic 2). The x coordinates are public.
        let mut numerator = 1u8;
        let mut denominator = 1u8;
        for other in shares.iter().filter(|other| other.x != share.x) {
            numerator = mul(numerator, other.x);
            denominator = mul(denominator, other.x ^ share.x);
        }
        let basis = mul(numerator, inverse(denominator));
        for (out, y) in secret.expose_secret_mut().iter_mut().zip(share.value.expose_secret()) {
            *out ^= mul(*y, basis);
        }
    }
    Ok(secret)
}

/// The polynomial `constant + higher[0]·x + higher[1]·x² + …` at `x` (Horner).
fn evaluate(constant: u8, higher: &[u8], x: u8) -> u8 {
    let mut accumulator = 0u8;
    for coefficient in higher.iter().rev() {
        accumulator = mul(accumulator, x) ^ coefficient;
    }
    mul(accumulator, x) ^ constant
}

/// Multiplication in GF(2⁸) modulo 0x11b, in constant time (shift and add, with masks).
pub(crate) fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut product = 0u8;
    for _ in 0..8 {
        // All ones when the low bit of b is set, else zero.
        product ^= a & 0u8.wrapping_sub(b & 1);
        // Multiply a by x, reducing by x⁸ = x⁴ + x³ + x + 1 (0x1b) when its top bit falls off.
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// The multiplicative inverse: a²⁵⁴ (a²⁵⁵ = 1 for a ≠ 0), in constant time. Maps 0 to 0, as
/// AES's S-box does.
pub(crate) fn inverse(a: u8) -> u8 {
    // 254 = 0b1111_1110: square and multiply along its bits, a fixed sequence.
    let mut result = 1u8;
    for bit in (0..8).rev() {
        result = mul(result, result);
        if (254u8 >> bit) & 1 == 1 {
            result = mul(result, a);
        }
    }
    result
}

#[cfg(test)]
mod tests;
