"""The AWS Encryption SDK for Python as a command, for tests/it/envelope.rs: it encrypts and
decrypts files with a kagi key, its KMS calls going to `kagi serve` (AWS_ENDPOINT_URL_KMS,
AWS_CA_BUNDLE and the credentials come from the harness).

    python esdk_envelope.py encrypt KEY_ARN SUITE CONTEXT_JSON FRAME_LENGTH IN OUT
    python esdk_envelope.py decrypt KEY_ARN CONTEXT_JSON IN OUT

SUITE is 0478 or 0578. `decrypt` also checks that the message's encryption context holds
CONTEXT_JSON, and exits 1 with the SDK's error when the message is refused.
"""

import json
import logging
import pathlib
import sys

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy

logging.getLogger("aws_encryption_sdk").setLevel(logging.CRITICAL)

SUITES = {
    "0478": Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY,
    "0578": Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384,
}


def client():
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


def provider(key_arn):
    return aws_encryption_sdk.StrictAwsKmsMasterKeyProvider(key_ids=[key_arn])


def encrypt(key_arn, suite, context, frame_length, source, target):
    message, header = client().encrypt(
        source=pathlib.Path(source).read_bytes(), key_provider=provider(key_arn),
        encryption_context=json.loads(context), algorithm=SUITES[suite],
        frame_length=int(frame_length))
    assert header.algorithm == SUITES[suite], header.algorithm
    pathlib.Path(target).write_bytes(message)


def decrypt(key_arn, context, source, target):
    plaintext, header = client().decrypt(source=pathlib.Path(source).read_bytes(),
                                         key_provider=provider(key_arn))
    for name, value in json.loads(context).items():
        assert header.encryption_context.get(name) == value, f"context {name}"
    keys = [key.key_provider.key_info.decode() for key in header.encrypted_data_keys]
    assert keys == [key_arn], f"one data key, under {key_arn}: {keys}"
    pathlib.Path(target).write_bytes(plaintext)


if __name__ == "__main__":
    {"encrypt": encrypt, "decrypt": decrypt}[sys.argv[1]](*sys.argv[2:])
