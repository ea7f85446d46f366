"""The golden envelope messages of tests/data/envelope, and the check that the official AWS
Encryption SDK for Python reads kagi's.

    python make_envelope_goldens.py generate   # rewrites the python-*.{json,bin} goldens
    python make_envelope_goldens.py check      # the SDK decrypts kagi-0478.bin (and each golden)

The SDK's KMS master key is replaced by one that returns a *fixed* data key with the provider
id `aws-kms`, a fake key ARN as provider info and a fake blob as the encrypted data key, so the
messages can be decrypted without any KMS. The Rust unit tests (src/envelope/tests.rs) only read
the files: python-*.bin must decrypt with kagi, and kagi must write kagi-0478.bin byte for byte
(regenerate that one with `KAGI_REGENERATE_GOLDENS=1 cargo test --lib envelope::tests::kagi`).
The SDK picks the message id at random, so `generate` writes different (equally valid) bytes
every time.
"""

import json
import pathlib
import sys

import aws_encryption_sdk
from aws_encryption_sdk.identifiers import Algorithm, CommitmentPolicy
from aws_encryption_sdk.key_providers.base import MasterKey, MasterKeyConfig
from aws_encryption_sdk.structures import DataKey

DIR = pathlib.Path(__file__).resolve().parent.parent / "data" / "envelope"
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/6f1e5a0c-27c3-4bb9-9a3a-5a8c1d2e3f40"
DATA_KEY = bytes(range(0x20, 0x40))
BLOB = b"kagi golden: a fake KMS ciphertext blob"
CONTEXT = {"purpose": "golden", "tenant": "acme"}
SOURCE = "aws-encryption-sdk==4.0.7 (Python), tests/py/make_envelope_goldens.py"


def golden_plaintext(length):
    return bytes((i * 31 + 7) % 251 for i in range(length))


class FixedKeyConfig(MasterKeyConfig):
    provider_id = "aws-kms"


class FixedKey(MasterKey):
    """A master key named like a KMS key that always hands out DATA_KEY wrapped as BLOB."""

    provider_id = "aws-kms"
    _config_class = FixedKeyConfig

    def _generate_data_key(self, algorithm, encryption_context):
        return DataKey(key_provider=self.key_provider, data_key=DATA_KEY, encrypted_data_key=BLOB)

    def _encrypt_data_key(self, data_key, algorithm, encryption_context):
        raise NotImplementedError("one data key per message")

    def _decrypt_data_key(self, encrypted_data_key, algorithm, encryption_context):
        if encrypted_data_key.encrypted_data_key != BLOB:
            raise ValueError("not the golden blob")
        return DataKey(key_provider=self.key_provider, data_key=DATA_KEY, encrypted_data_key=BLOB)


def client():
    return aws_encryption_sdk.EncryptionSDKClient(
        commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)


def key():
    return FixedKey(config=FixedKeyConfig(key_id=KEY_ARN))


def describe(name, suite, frame_length, plaintext_file, source):
    return {
        "source": source,
        "suite": suite,
        "data_key_hex": DATA_KEY.hex(),
        "key_arn": KEY_ARN,
        "blob_hex": BLOB.hex(),
        "context": CONTEXT,
        "frame_length": frame_length,
        "plaintext_file": plaintext_file,
        "message_file": name + ".bin",
    }


def generate():
    DIR.mkdir(parents=True, exist_ok=True)
    for name, algorithm, frame_length, length in [
        ("python-0478", Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY, 256, 1000),
        ("python-0578", Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384, 256, 1000),
        ("python-0578-exact-frames", Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384,
         256, 512),
    ]:
        plaintext = golden_plaintext(length)
        plaintext_file = "plaintext-%d.bin" % length
        (DIR / plaintext_file).write_bytes(plaintext)
        message, header = client().encrypt(source=plaintext, key_provider=key(),
                                           encryption_context=CONTEXT, algorithm=algorithm,
                                           frame_length=frame_length)
        assert header.algorithm == algorithm
        (DIR / (name + ".bin")).write_bytes(message)
        suite = "%04x" % algorithm.algorithm_id
        text = json.dumps(describe(name, suite, frame_length, plaintext_file, SOURCE), indent=2)
        (DIR / (name + ".json")).write_text(text + "\n")
        print("wrote", name, len(message), "bytes")
    # kagi's own golden: its description here, its bytes from the Rust test.
    plaintext_file = "plaintext-1000.bin"
    text = json.dumps(describe("kagi-0478", "0478", 256, plaintext_file,
                               "kagi's encoder, message id 1d×32 (src/envelope/tests.rs)"),
                      indent=2)
    (DIR / "kagi-0478.json").write_text(text + "\n")


def check():
    """The SDK decrypts every golden message, kagi's included."""
    for description in sorted(DIR.glob("*.json")):
        golden = json.loads(description.read_text())
        message = (DIR / golden["message_file"]).read_bytes()
        plaintext = (DIR / golden["plaintext_file"]).read_bytes()
        decrypted, header = client().decrypt(source=message, key_provider=key())
        assert decrypted == plaintext, description.name
        assert "%04x" % header.algorithm.algorithm_id == golden["suite"], description.name
        for name, value in CONTEXT.items():
            assert header.encryption_context[name] == value, description.name
        print("the SDK decrypts", description.name)


if __name__ == "__main__":
    {"generate": generate, "check": check}[sys.argv[1]]()
