//! Unit tests of the backend-independent parts of the crypto layer. Vectors, cross-backend and
//! property tests live in `tests/it`.

use super::*;

#[test]
fn backend_names_round_trip() {
    for kind in BackendKind::ALL {
        assert_eq!(BackendKind::from_name(kind.name()), Some(kind));
        assert_eq!(kind.backend().kind(), kind);
    }
    assert_eq!(BackendKind::from_name("openssl"), None);
    assert_eq!(BackendKind::default(), BackendKind::AwsLc);
}

#[test]
fn kms_names_round_trip() {
    for spec in KeyPairSpec::ALL {
        assert_eq!(KeyPairSpec::from_kms_name(spec.kms_name()), Some(spec));
        for algorithm in spec.signing_algorithms() {
            assert!(algorithm.fits(spec));
        }
    }
    for algorithm in SigningAlgorithm::ALL {
        assert_eq!(SigningAlgorithm::from_kms_name(algorithm.kms_name()), Some(algorithm));
    }
    for algorithm in MacAlgorithm::ALL {
        assert_eq!(MacAlgorithm::from_kms_name(algorithm.kms_name()), Some(algorithm));
    }
}

#[test]
fn oaep_limits_match_aws() {
    // KMS-PROTOCOL.md §2.3.
    assert_eq!(KeyPairSpec::Rsa2048.max_oaep_plaintext(OaepHash::Sha1), Some(214));
    assert_eq!(KeyPairSpec::Rsa2048.max_oaep_plaintext(OaepHash::Sha256), Some(190));
    assert_eq!(KeyPairSpec::Rsa3072.max_oaep_plaintext(OaepHash::Sha256), Some(318));
    assert_eq!(KeyPairSpec::Rsa4096.max_oaep_plaintext(OaepHash::Sha1), Some(470));
    assert_eq!(KeyPairSpec::EccNistP256.max_oaep_plaintext(OaepHash::Sha1), None);
}

#[test]
fn digest_length_is_checked() {
    let short = [0u8; 31];
    assert_eq!(
        check_digest_len(SigningAlgorithm::EcdsaSha256, SignInput::Digest(&short)),
        Err(Error::InvalidInput("digest length does not match the signing algorithm"))
    );
    assert!(check_digest_len(SigningAlgorithm::EcdsaSha256, SignInput::Digest(&[0; 32])).is_ok());
    assert!(check_digest_len(SigningAlgorithm::EcdsaSha256, SignInput::Message(&short)).is_ok());
}

#[test]
fn aws_lc_private_key_debug_hides_key() {
    let backend = BackendKind::AwsLc.backend();
    let pkcs8 = backend.generate_key_pair(KeyPairSpec::EccNistP256).expect("generate");
    let key =
        backend.load_private_key(KeyPairSpec::EccNistP256, pkcs8.expose_secret()).expect("load");
    let shown = format!("{key:?}");
    let hex = hex::encode(pkcs8.expose_secret());
    for window in hex.as_bytes().chunks(16) {
        assert!(!shown.contains(std::str::from_utf8(window).expect("hex")), "{shown}");
    }
    assert!(shown.contains("EccNistP256"));
}
