//! GF(2⁸) known answers (FIPS-197, Vault's field tests), an exhaustive check against a
//! long-division reference, and property tests of split and combine.

use proptest::prelude::*;
use proptest::sample::subsequence;

use super::*;
use crate::crypto::BackendKind;

fn backend() -> &'static dyn CryptoBackend {
    BackendKind::AwsLc.backend()
}

// === field ===

#[test]
fn fips_197_multiplication_vectors() {
    // FIPS-197 §4.2: {57} • {83} = {c1}.
    assert_eq!(mul(0x57, 0x83), 0xc1);
    // FIPS-197 §4.2.1: xtime of {57} and {57} • {13} = {fe}.
    assert_eq!(mul(0x57, 0x02), 0xae);
    assert_eq!(mul(0x57, 0x04), 0x47);
    assert_eq!(mul(0x57, 0x08), 0x8e);
    assert_eq!(mul(0x57, 0x10), 0x07);
    assert_eq!(mul(0x57, 0x13), 0xfe);
}

#[test]
fn vault_field_vectors() {
    // hashicorp/vault shamir/shamir_test.go, TestField_Mult and TestField_Divide (a / b is
    // a • b⁻¹ here).
    assert_eq!(mul(3, 7), 9);
    assert_eq!(mul(3, 0), 0);
    assert_eq!(mul(0, 3), 0);
    assert_eq!(mul(0, inverse(7)), 0);
    assert_eq!(mul(3, inverse(3)), 1);
    assert_eq!(mul(6, inverse(3)), 2);
}

#[test]
fn inverse_of_53_is_ca() {
    // The inverse FIPS-197 §5.1.1's S-box example starts from: {53}⁻¹ = {ca}.
    assert_eq!(inverse(0x53), 0xca);
    assert_eq!(mul(0x53, 0xca), 0x01);
    assert_eq!(inverse(0), 0);
    assert_eq!(inverse(1), 1);
}

/// AES's S-box from `inverse`: the affine map of FIPS-197 §5.1.1 (equation 5.1).
fn sbox(byte: u8) -> u8 {
    let b = inverse(byte);
    b ^ b.rotate_left(1) ^ b.rotate_left(2) ^ b.rotate_left(3) ^ b.rotate_left(4) ^ 0x63
}

#[test]
fn fips_197_sbox_rows_from_the_inverse() {
    // FIPS-197 Figure 7, rows 0, 1 and f, and §5.1.1's example S({53}) = {ed}.
    let rows: [(u8, [u8; 16]); 3] = [
        (
            0x00,
            [
                0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7,
                0xab, 0x76,
            ],
        ),
        (
            0x10,
            [
                0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4,
                0x72, 0xc0,
            ],
        ),
        (
            0xf0,
            [
                0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54,
                0xbb, 0x16,
            ],
        ),
    ];
    for (start, row) in rows {
        for (offset, expected) in (0u8..).zip(row) {
            assert_eq!(sbox(start + offset), expected, "S({:02x})", start + offset);
        }
    }
    assert_eq!(sbox(0x53), 0xed);
}

/// Carry-less multiplication, then reduction by 0x11b with long division: a second,
/// independent way to multiply.
fn reference_mul(a: u8, b: u8) -> u8 {
    let mut product = 0u16;
    for bit in 0..8 {
        if (b >> bit) & 1 == 1 {
            product ^= u16::from(a) << bit;
        }
    }
    for bit in (8..16).rev() {
        if (product >> bit) & 1 == 1 {
            product ^= 0x11b << (bit - 8);
        }
    }
    u8::try_from(product).expect("reduced below 2⁸")
}

#[test]
fn mul_matches_the_reference_everywhere() {
    for a in 0..=255u8 {
        for b in 0..=255u8 {
            assert_eq!(mul(a, b), reference_mul(a, b), "{a:02x} • {b:02x}");
        }
    }
}

#[test]
fn every_nonzero_element_has_its_inverse() {
    for a in 1..=255u8 {
        assert_eq!(mul(a, inverse(a)), 1, "{a:02x}");
    }
}

// === split and combine ===

fn pick<'a>(shares: &'a [Share], xs: &[u8]) -> Vec<Share> {
    xs.iter()
        .map(|x| {
            let share: &'a Share = shares.iter().find(|s| s.x() == *x).expect("share x");
            Share::new(share.x(), SecretBytes::from_slice(share.expose_secret())).expect("x")
        })
        .collect()
}

/// A split (n, k) and a shuffled choice of `take(k)` of its x coordinates.
fn split_and_choice(take: fn(u8) -> usize) -> impl Strategy<Value = (u8, u8, Vec<u8>)> {
    (2..=12u8).prop_flat_map(|n| (Just(n), 2..=n)).prop_flat_map(move |(n, k)| {
        (Just(n), Just(k), subsequence((1..=n).collect::<Vec<u8>>(), take(k)).prop_shuffle())
    })
}

proptest! {
    #[test]
    fn any_k_shares_recover_the_secret(
        (n, k, xs) in split_and_choice(usize::from),
        secret in proptest::collection::vec(any::<u8>(), 1..64),
    ) {
        let shares = split(backend(), &secret, n, k).expect("split");
        prop_assert_eq!(shares.len(), usize::from(n));
        let recovered = combine(&pick(&shares, &xs)).expect("combine");
        prop_assert_eq!(recovered.expose_secret(), &secret[..]);
        // More than k (all n) recover it too.
        let recovered = combine(&shares).expect("combine");
        prop_assert_eq!(recovered.expose_secret(), &secret[..]);
    }

    #[test]
    fn k_minus_one_shares_do_not(
        (n, k, xs) in split_and_choice(|k| usize::from(k) - 1),
        secret in proptest::collection::vec(any::<u8>(), 32),
    ) {
        // Equal only with probability 2⁻²⁵⁶ (the k-1 shares and a wrong secret fit a polynomial).
        let shares = split(backend(), &secret, n, k).expect("split");
        let recovered = combine(&pick(&shares, &xs)).expect("combine");
        prop_assert_ne!(recovered.expose_secret(), &secret[..]);
    }

    #[test]
    fn shares_of_two_splits_do_not_mix(
        secret in proptest::collection::vec(any::<u8>(), 32),
    ) {
        let first = split(backend(), &secret, 3, 2).expect("split");
        let second = split(backend(), &secret, 3, 2).expect("split");
        let mut mixed = pick(&first, &[1]);
        mixed.extend(pick(&second, &[2]));
        let recovered = combine(&mixed).expect("combine");
        prop_assert_ne!(recovered.expose_secret(), &secret[..]);
    }

    #[test]
    fn field_laws(a in any::<u8>(), b in any::<u8>(), c in any::<u8>()) {
        prop_assert_eq!(mul(a, b), mul(b, a));
        prop_assert_eq!(mul(mul(a, b), c), mul(a, mul(b, c)));
        prop_assert_eq!(mul(a, b ^ c), mul(a, b) ^ mul(a, c));
    }
}

#[test]
fn a_hand_computed_split() {
    // Secret {53}, k = 2, coefficient {ca}: f(x) = {53} + {ca}•x. With FIPS-197's xtime,
    // {ca}•{02} = {94} ⊕ {1b} = {8f} and {ca}•{03} = {8f} ⊕ {ca} = {45}, so the shares are
    // f(1) = {99}, f(2) = {dc}, f(3) = {16}.
    let shares = split_with(&[0x53], 3, 2, &SecretBytes::from_slice(&[0xca]));
    let values: Vec<(u8, u8)> = shares.iter().map(|s| (s.x(), s.expose_secret()[0])).collect();
    assert_eq!(values, [(1, 0x99), (2, 0xdc), (3, 0x16)]);
    for pair in [[1, 2], [2, 3], [3, 1]] {
        assert_eq!(combine(&pick(&shares, &pair)).expect("combine").expose_secret(), &[0x53]);
    }
}

#[test]
fn zero_coefficients_are_used_as_drawn() {
    // RUSTSEC-2024-0398 (`sharks`): coefficients must range over all of GF(2⁸), 0 included. A
    // polynomial whose coefficients are all 0 makes every share the secret itself.
    let secret = [1u8, 2, 3, 4];
    let shares = split_with(&secret, 4, 3, &SecretBytes::zeroed(secret.len() * 2));
    assert!(shares.iter().all(|share| share.expose_secret() == secret));
}

#[test]
fn drawn_coefficients_include_zero() {
    // With k = 2, share 1's byte is the secret's byte plus its coefficient, so a zero
    // coefficient shows as an equal byte. Over 8192 bytes a generator that never draws 0 (the
    // flaw above) is caught, and an unbiased one draws none with probability (255/256)⁸¹⁹² ≈
    // 1e-14.
    let secret = vec![0x5au8; 8192];
    let shares = split(backend(), &secret, 2, 2).expect("split");
    let zeros = shares[0].expose_secret().iter().zip(&secret).filter(|(y, s)| y == s).count();
    assert!(zeros > 0, "no zero coefficient in 8192 draws");
}

#[test]
fn the_largest_split_recovers() {
    let secret = [0x42u8; 32];
    let shares = split(backend(), &secret, MAX_SHARES, MAX_SHARES).expect("split");
    assert_eq!(shares.last().map(Share::x), Some(255));
    assert_eq!(combine(&shares).expect("combine").expose_secret(), &secret);
    assert_ne!(combine(&shares[1..]).expect("combine").expose_secret(), &secret);
}

#[test]
fn split_refuses_bad_thresholds_and_empty_secrets() {
    let secret = [7u8; 32];
    assert_eq!(split(backend(), &secret, 3, 1).map(|_| ()), Err(Error::BadThreshold));
    assert_eq!(split(backend(), &secret, 3, 0).map(|_| ()), Err(Error::BadThreshold));
    assert_eq!(split(backend(), &secret, 2, 3).map(|_| ()), Err(Error::BadThreshold));
    assert_eq!(split(backend(), &secret, 0, 0).map(|_| ()), Err(Error::BadThreshold));
    assert_eq!(split(backend(), &[], 3, 2).map(|_| ()), Err(Error::EmptySecret));
}

#[test]
fn combine_refuses_malformed_sets() {
    let shares = split(backend(), &[1, 2, 3], 3, 2).expect("split");
    assert_eq!(combine::<Share>(&[]).map(|_| ()), Err(Error::NoShares));
    assert_eq!(combine(&pick(&shares, &[2, 2])).map(|_| ()), Err(Error::DuplicateX(2)));
    let short = Share::new(3, SecretBytes::from_slice(&[0, 0])).expect("x");
    let mut mixed = pick(&shares, &[1]);
    mixed.push(short);
    assert_eq!(combine(&mixed).map(|_| ()), Err(Error::LengthMismatch));
    assert_eq!(Share::new(0, SecretBytes::from_slice(&[1])).map(|_| ()), Err(Error::ZeroX));
}

#[test]
fn shares_do_not_print_their_value() {
    let share = Share::new(9, SecretBytes::from_slice(&[0xA5; 32])).expect("x");
    let shown = format!("{share:?} {share:#?}");
    assert!(shown.contains('9'), "{shown}");
    assert!(!shown.contains("165") && !shown.to_lowercase().contains("a5"), "{shown}");
}
