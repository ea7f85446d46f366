"""The AWS Encryption SDK for Python against `kagi serve`, found through AWS_ENDPOINT_URL_KMS
and trusted through AWS_CA_BUNDLE (both set by tests/it/api.rs): a message encrypted under a
kagi key with the default committing suite decrypts again, and a tampered one does not.
"""

import logging

import aws_encryption_sdk
from aws_encryption_sdk.exceptions import AWSEncryptionSDKClientError
from aws_encryption_sdk.identifiers import CommitmentPolicy
from cryptography.exceptions import InvalidSignature, InvalidTag

from kagi_env import KmsTestCase, main

PLAINTEXT = b"an envelope-encrypted message, " * 100
CONTEXT = {"purpose": "esdk test", "tenant": "acme"}
# How the SDK refuses a message: its own errors, or `cryptography`'s for a bad tag or signature.
REFUSED = (AWSEncryptionSDKClientError, InvalidTag, InvalidSignature)

# The SDK logs every refused message at length; the assertions say what matters.
logging.getLogger("aws_encryption_sdk").setLevel(logging.CRITICAL)


class EncryptionSdk(KmsTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.key_arn = cls.kms.create_key(Description="ESDK")["KeyMetadata"]["Arn"]
        cls.esdk = aws_encryption_sdk.EncryptionSDKClient(
            commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
        cls.provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(key_ids=[cls.key_arn])

    def encrypt(self):
        return self.esdk.encrypt(source=PLAINTEXT, key_provider=self.provider,
                                 encryption_context=CONTEXT)

    def test_round_trip_with_the_committing_suite(self):
        ciphertext, header = self.encrypt()
        self.assertTrue(header.algorithm.is_committing(), f"a committing suite: {header.algorithm}")
        self.assertEqual(len(header.encrypted_data_keys), 1, "one data key, from kagi")
        data_key = next(iter(header.encrypted_data_keys))
        self.assertEqual(data_key.key_provider.provider_id, "aws-kms")
        self.assertEqual(data_key.key_provider.key_info.decode(), self.key_arn,
                         "the data key is encrypted under the kagi key")
        plaintext, decrypted_header = self.esdk.decrypt(source=ciphertext,
                                                        key_provider=self.provider)
        self.assertEqual(plaintext, PLAINTEXT, "the message decrypts")
        for name, value in CONTEXT.items():
            self.assertEqual(decrypted_header.encryption_context.get(name), value,
                             f"encryption context {name}")
        # kagi saw the data key's decryption (GenerateDataKey, then Decrypt).
        usage = self.kms.get_key_last_usage(KeyId=self.key_arn)["KeyLastUsage"]
        self.assertEqual(usage.get("Operation"), "Decrypt", "kagi decrypted the data key")

    def test_tampered_message_fails(self):
        ciphertext, _ = self.encrypt()
        # A byte of the body, one of the header, and the last (in the footer's signature).
        for position in (len(ciphertext) // 2, 60, len(ciphertext) - 1):
            with self.subTest(position=position):
                tampered = bytearray(ciphertext)
                tampered[position] ^= 0x01
                with self.assertRaises(REFUSED,
                                       msg=f"a message changed at byte {position} decrypted"):
                    self.esdk.decrypt(source=bytes(tampered), key_provider=self.provider)

    def test_another_key_cannot_decrypt(self):
        ciphertext, _ = self.encrypt()
        other = self.kms.create_key()["KeyMetadata"]["Arn"]
        provider = aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(key_ids=[other])
        with self.assertRaises(REFUSED, msg="decrypted with the wrong key"):
            self.esdk.decrypt(source=ciphertext, key_provider=provider)


if __name__ == "__main__":
    main()
