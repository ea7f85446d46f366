//! The keystore's side of docs/FIPS.md, one test per entry, in a build with the `fips` feature:
//! what FIPS mode refuses answers UnsupportedOperationException, and what it does differently
//! still works.

use super::*;

#[tokio::test]
async fn secp256k1_keys_are_refused() {
    let h = harness();
    let request = CreateKeyRequest {
        spec: KeySpec::EccSecgP256k1,
        usage: Some(KeyUsage::SignVerify),
        ..CreateKeyRequest::default()
    };
    assert_err(h.ks.create_key(&ctx(), request).await, ErrorKind::UnsupportedOperation);
    let sym = h.symmetric().await;
    for with_plaintext in [true, false] {
        assert_err(
            h.ks.generate_data_key_pair(
                &ctx(),
                &sym,
                KeyPairSpec::EccSecgP256k1,
                &no_context(),
                with_plaintext,
            )
            .await,
            ErrorKind::UnsupportedOperation,
        );
    }
}

#[tokio::test]
async fn signing_or_verifying_a_digest_is_refused_and_a_message_still_signs() {
    let h = harness();
    for (spec, algorithm) in [
        (KeySpec::EccNistP256, SigningAlgorithm::EcdsaSha256),
        (KeySpec::EccNistP384, SigningAlgorithm::EcdsaSha384),
        (KeySpec::Rsa2048, SigningAlgorithm::RsassaPssSha256),
        (KeySpec::Rsa2048, SigningAlgorithm::RsassaPkcs1V15Sha256),
    ] {
        let id = h.create(spec, KeyUsage::SignVerify).await.record.id;
        let digest = digest(algorithm, b"message");
        assert_err(
            h.ks.sign(&ctx(), &id, &digest, MessageType::Digest, algorithm).await,
            ErrorKind::UnsupportedOperation,
        );
        let (signature, _) =
            h.ks.sign(&ctx(), &id, b"message", MessageType::Raw, algorithm).await.expect("sign");
        h.ks.verify(&ctx(), &id, b"message", MessageType::Raw, algorithm, &signature)
            .await
            .expect("verify");
        assert_err(
            h.ks.verify(&ctx(), &id, &digest, MessageType::Digest, algorithm, &signature).await,
            ErrorKind::UnsupportedOperation,
        );
    }
}

#[tokio::test]
async fn rsa_encryption_and_key_import_are_refused() {
    let h = harness();
    let rsa = h.create(KeySpec::Rsa2048, KeyUsage::EncryptDecrypt).await.record.id;
    for algorithm in [EncryptionAlgorithm::RsaesOaepSha1, EncryptionAlgorithm::RsaesOaepSha256] {
        assert_err(
            h.ks.encrypt(&ctx(), &rsa, b"secret", &no_context(), algorithm).await,
            ErrorKind::UnsupportedOperation,
        );
    }
    let external = h.external().await;
    for algorithm in [
        WrappingAlgorithm::RsaesOaepSha1,
        WrappingAlgorithm::RsaesOaepSha256,
        WrappingAlgorithm::RsaAesKeyWrapSha1,
        WrappingAlgorithm::RsaAesKeyWrapSha256,
    ] {
        assert_err(
            h.ks.get_parameters_for_import(&ctx(), &external, algorithm, KeyPairSpec::Rsa2048)
                .await,
            ErrorKind::UnsupportedOperation,
        );
    }
}

#[tokio::test]
async fn encrypt_writes_version_2_blobs_under_a_nonce_the_module_draws() {
    let h = harness();
    let id = h.symmetric().await;
    let with_context = context(&[("purpose", "fips")]);
    let blob = h.encrypt(&id, b"k", &with_context).await;
    assert_eq!(blob[0], ciphertext::BLOB_VERSION_2);
    assert_eq!(h.decrypt(&blob, &with_context).await.expect("decrypt"), b"k");
    check_blob_tamper(&h, &blob, &with_context).await;
    let other = h.encrypt(&id, b"k", &with_context).await;
    assert_ne!(blob[21..33], other[21..33], "a fresh nonce each time");
    // GenerateDataKey seals the same way.
    let data_key =
        h.ks.generate_data_key(&ctx(), &id, DataKeySize::Aes256, &no_context(), true)
            .await
            .expect("generate data key");
    assert_eq!(data_key.ciphertext_blob[0], ciphertext::BLOB_VERSION_2);
}

#[tokio::test]
async fn approved_operations_work_as_before() {
    // HMAC, ECDH on P-256, ECDSA on a message, AES-GCM, random bytes, RSA and EC key generation
    // (CryptoKeys makes one of each), and the root key's sealing of every key made here.
    let h = harness();
    let keys = CryptoKeys::new(&h).await;
    let blob = h.encrypt(&keys.sym, b"lifecycle", &no_context()).await;
    check_crypto_works(&h, &keys, &blob).await;
    for spec in [KeySpec::Rsa3072, KeySpec::EccNistP384, KeySpec::EccNistP521] {
        h.create(spec, KeyUsage::SignVerify).await;
    }
    assert_eq!(h.ks.generate_random(&ctx(), 32).await.expect("random").len(), 32);
}
