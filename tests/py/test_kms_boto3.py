"""boto3 against a running `kagi serve`: every KMS operation kagi offers, every key type, the
state errors, access control, authentication and the raw wire protocol.

Signatures, public keys, RSA ciphertexts, ECDH secrets and wrapped key material are checked
against Python's `cryptography`, independently of kagi. Run by tests/it/api.rs, which starts the
server and passes its address and the principals' credentials (see kagi_env.py).
"""

import base64
import json
import os
import socket
import uuid

import botocore.session
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.httpsession import URLLib3Session
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from kagi_env import (
    ACCOUNT,
    CA_BUNDLE,
    ENDPOINT,
    REGION,
    KmsTestCase,
    credentials,
    kms_client,
    main,
    user_arn,
)

CURVES = {
    "ECC_NIST_P256": ec.SECP256R1,
    "ECC_NIST_P384": ec.SECP384R1,
    "ECC_NIST_P521": ec.SECP521R1,
    "ECC_SECG_P256K1": ec.SECP256K1,
}
RSA_BITS = {"RSA_2048": 2048, "RSA_3072": 3072, "RSA_4096": 4096}
HASHES = {"SHA_256": hashes.SHA256, "SHA_384": hashes.SHA384, "SHA_512": hashes.SHA512}
HMAC_ALGORITHMS = {
    "HMAC_224": "HMAC_SHA_224",
    "HMAC_256": "HMAC_SHA_256",
    "HMAC_384": "HMAC_SHA_384",
    "HMAC_512": "HMAC_SHA_512",
}
RSA_SIGNING = [
    f"RSASSA_{scheme}_{digest}"
    for scheme in ("PSS", "PKCS1_V1_5")
    for digest in ("SHA_256", "SHA_384", "SHA_512")
]
ECC_SIGNING = {
    "ECC_NIST_P256": "ECDSA_SHA_256",
    "ECC_NIST_P384": "ECDSA_SHA_384",
    "ECC_NIST_P521": "ECDSA_SHA_512",
    "ECC_SECG_P256K1": "ECDSA_SHA_256",
}


def hash_of(algorithm):
    """The `cryptography` hash a KMS signing algorithm name ends with."""
    return HASHES[algorithm[-7:]]()


def digest(algorithm, message):
    h = hashes.Hash(hash_of(algorithm))
    h.update(message)
    return h.finalize()


def verify_locally(public_key_der, algorithm, message, signature, message_type="RAW"):
    """Verifies a KMS signature with `cryptography` (raises InvalidSignature when wrong)."""
    public_key = serialization.load_der_public_key(public_key_der)
    h = hash_of(algorithm)
    data_hash = h if message_type == "RAW" else utils.Prehashed(h)
    if algorithm.startswith("ECDSA"):
        public_key.verify(signature, message, ec.ECDSA(data_hash))
    elif algorithm.startswith("RSASSA_PSS"):
        pss = padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
        public_key.verify(signature, message, pss, data_hash)
    else:
        public_key.verify(signature, message, padding.PKCS1v15(), data_hash)


def oaep(hash_name):
    h = hashes.SHA256() if hash_name == "SHA_256" else hashes.SHA1()
    return padding.OAEP(mgf=padding.MGF1(h), algorithm=h, label=None)


def walk(call, field, **kwargs):
    """Every item of a List operation, one page (Limit=1) at a time; checks the paging members."""
    items, marker, pages = [], None, 0
    while True:
        page = call(Limit=1, **({"Marker": marker} if marker else {}), **kwargs)
        pages += 1
        assert len(page[field]) <= 1, f"{call.__name__}: Limit=1 gave {len(page[field])} items"
        items.extend(page[field])
        if not page["Truncated"]:
            assert "NextMarker" not in page, f"{call.__name__}: NextMarker on the last page"
            return items, pages
        marker = page["NextMarker"]
        assert marker, f"{call.__name__}: Truncated without NextMarker"
        assert pages < 10_000, f"{call.__name__}: pagination does not end"


class KeyTypes(KmsTestCase):
    """CreateKey/DescribeKey for every key spec and usage; GetPublicKey checked locally."""

    def check_public_key(self, key_id, spec, usage):
        answer = self.kms.get_public_key(KeyId=key_id)
        self.assertEqual(answer["KeySpec"], spec, "GetPublicKey: KeySpec")
        self.assertEqual(answer["KeyUsage"], usage, "GetPublicKey: KeyUsage")
        self.assertTrue(answer["KeyId"].startswith("arn:aws:kms:"), "GetPublicKey: KeyId is the ARN")
        public_key = serialization.load_der_public_key(answer["PublicKey"])
        if spec in RSA_BITS:
            self.assertIsInstance(public_key, rsa.RSAPublicKey, f"{spec}: an RSA key")
            self.assertEqual(public_key.key_size, RSA_BITS[spec], f"{spec}: modulus size")
        else:
            self.assertIsInstance(public_key, ec.EllipticCurvePublicKey, f"{spec}: an EC key")
            self.assertIsInstance(public_key.curve, CURVES[spec], f"{spec}: curve")
        return answer

    def test_every_key_spec_and_usage(self):
        cases = [("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "EncryptionAlgorithms", ["SYMMETRIC_DEFAULT"])]
        for spec in RSA_BITS:
            cases.append((spec, "ENCRYPT_DECRYPT", "EncryptionAlgorithms",
                          ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]))
            cases.append((spec, "SIGN_VERIFY", "SigningAlgorithms", RSA_SIGNING))
        for spec in CURVES:
            cases.append((spec, "SIGN_VERIFY", "SigningAlgorithms", [ECC_SIGNING[spec]]))
        for spec in ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521"):
            cases.append((spec, "KEY_AGREEMENT", "KeyAgreementAlgorithms", ["ECDH"]))
        for spec, algorithm in HMAC_ALGORITHMS.items():
            cases.append((spec, "GENERATE_VERIFY_MAC", "MacAlgorithms", [algorithm]))
        for spec, usage, field, algorithms in cases:
            with self.subTest(spec=spec, usage=usage):
                created = self.create_key(spec, usage, Description=f"{spec} {usage}")
                described = self.kms.describe_key(KeyId=created["KeyId"])["KeyMetadata"]
                self.assertEqual(described["Arn"], created["Arn"], "DescribeKey: same key")
                self.assertEqual(
                    described["Arn"],
                    f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{created['KeyId']}",
                    "the key ARN",
                )
                self.assertEqual(described["KeyState"], "Enabled", "a new key is Enabled")
                self.assertTrue(described["Enabled"], "Enabled flag")
                self.assertEqual(described["Origin"], "AWS_KMS", "Origin")
                self.assertEqual(described["KeyManager"], "CUSTOMER", "KeyManager")
                self.assertEqual(described["Description"], f"{spec} {usage}", "Description")
                self.assertEqual(sorted(described[field]), sorted(algorithms), f"{spec}: {field}")
                if spec in RSA_BITS or spec in CURVES:
                    answer = self.check_public_key(created["KeyId"], spec, usage)
                    self.assertEqual(sorted(answer[field]), sorted(algorithms),
                                     f"GetPublicKey: {field}")
                else:
                    self.expect_error("UnsupportedOperationException",
                                      self.kms.get_public_key, KeyId=created["KeyId"])

    def test_a_key_spec_kagi_does_not_offer_is_refused(self):
        self.expect_error("ValidationException", self.raw_kms.create_key,
                          KeySpec="RSA_1024", status=400)
        self.expect_error("ValidationException", self.raw_kms.create_key,
                          KeyUsage="ENCRYPT_EVERYTHING", status=400)


class SymmetricEncryption(KmsTestCase):
    """Encrypt/Decrypt with and without context, ReEncrypt, data keys and data key pairs."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.key = cls.kms.create_key()["KeyMetadata"]
        cls.other = cls.kms.create_key()["KeyMetadata"]

    def test_round_trip_without_context(self):
        out = self.kms.encrypt(KeyId=self.key["KeyId"], Plaintext=b"no context")
        self.assertEqual(out["KeyId"], self.key["Arn"], "Encrypt answers the key ARN")
        self.assertEqual(out["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT")
        back = self.kms.decrypt(CiphertextBlob=out["CiphertextBlob"])
        self.assertEqual(back["Plaintext"], b"no context", "Decrypt without KeyId")
        self.assertEqual(back["KeyId"], self.key["Arn"], "Decrypt names the key")
        back = self.kms.decrypt(CiphertextBlob=out["CiphertextBlob"], KeyId=self.key["Arn"])
        self.assertEqual(back["Plaintext"], b"no context", "Decrypt with the KeyId")
        self.expect_error("InvalidCiphertextException", self.kms.decrypt,
                          CiphertextBlob=out["CiphertextBlob"], EncryptionContext={"a": "b"},
                          status=400)

    def test_round_trip_with_context(self):
        context = {"tenant": "acme", "purpose": "test", "ünïcode": "välue"}
        blob = self.kms.encrypt(KeyId=self.key["KeyId"], Plaintext=b"with context",
                                EncryptionContext=context)["CiphertextBlob"]
        reordered = dict(reversed(list(context.items())))
        back = self.kms.decrypt(CiphertextBlob=blob, EncryptionContext=reordered)
        self.assertEqual(back["Plaintext"], b"with context", "the same context in another order")
        for wrong in ({}, {"tenant": "acme"}, {**context, "tenant": "ACME"},
                      {**context, "extra": "x"}):
            with self.subTest(context=wrong):
                self.expect_error("InvalidCiphertextException", self.kms.decrypt,
                                  CiphertextBlob=blob, EncryptionContext=wrong, status=400)

    def test_damaged_ciphertext_and_wrong_key(self):
        blob = self.kms.encrypt(KeyId=self.key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        for position in (0, len(blob) // 2, len(blob) - 1):
            damaged = bytearray(blob)
            damaged[position] ^= 0x01
            with self.subTest(position=position):
                with self.assertRaises(ClientError, msg=f"damaged at byte {position}") as cm:
                    self.kms.decrypt(CiphertextBlob=bytes(damaged))
                # Damaging the key id may name an unknown key: both refuse, neither leaks.
                self.assertIn(cm.exception.response["Error"]["Code"],
                              ("InvalidCiphertextException", "NotFoundException"),
                              f"damaged at byte {position}")
        self.expect_error("IncorrectKeyException", self.kms.decrypt, CiphertextBlob=blob,
                          KeyId=self.other["KeyId"], status=400)
        self.expect_error("InvalidCiphertextException", self.kms.decrypt,
                          CiphertextBlob=b"not a ciphertext at all", status=400)

    def test_plaintext_size_limits(self):
        self.kms.encrypt(KeyId=self.key["KeyId"], Plaintext=b"\x00" * 4096)
        self.expect_error("ValidationException", self.raw_kms.encrypt, KeyId=self.key["KeyId"],
                          Plaintext=b"\x00" * 4097, status=400)

    def test_re_encrypt(self):
        blob = self.kms.encrypt(KeyId=self.key["KeyId"], Plaintext=b"moving",
                                EncryptionContext={"from": "a"})["CiphertextBlob"]
        out = self.kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"from": "a"},
                                  DestinationKeyId=self.other["Arn"],
                                  DestinationEncryptionContext={"to": "b"})
        self.assertEqual(out["SourceKeyId"], self.key["Arn"], "ReEncrypt: SourceKeyId")
        self.assertEqual(out["KeyId"], self.other["Arn"], "ReEncrypt: KeyId is the destination")
        back = self.kms.decrypt(CiphertextBlob=out["CiphertextBlob"],
                                EncryptionContext={"to": "b"})
        self.assertEqual(back["Plaintext"], b"moving", "the re-encrypted ciphertext decrypts")
        self.assertEqual(back["KeyId"], self.other["Arn"], "under the destination key")
        self.expect_error("InvalidCiphertextException", self.kms.re_encrypt, CiphertextBlob=blob,
                          SourceEncryptionContext={"from": "b"},
                          DestinationKeyId=self.other["KeyId"])
        self.expect_error("IncorrectKeyException", self.kms.re_encrypt, CiphertextBlob=blob,
                          SourceKeyId=self.other["KeyId"], SourceEncryptionContext={"from": "a"},
                          DestinationKeyId=self.other["KeyId"])

    def test_generate_data_key(self):
        for spec, size in (("AES_256", 32), ("AES_128", 16)):
            out = self.kms.generate_data_key(KeyId=self.key["KeyId"], KeySpec=spec,
                                             EncryptionContext={"k": "v"})
            self.assertEqual(len(out["Plaintext"]), size, f"{spec} data key length")
            back = self.kms.decrypt(CiphertextBlob=out["CiphertextBlob"],
                                    EncryptionContext={"k": "v"})
            self.assertEqual(back["Plaintext"], out["Plaintext"], "the data key decrypts")
        out = self.kms.generate_data_key(KeyId=self.key["KeyId"], NumberOfBytes=64)
        self.assertEqual(len(out["Plaintext"]), 64, "NumberOfBytes=64")
        out = self.kms.generate_data_key_without_plaintext(KeyId=self.key["KeyId"],
                                                           KeySpec="AES_256")
        self.assertNotIn("Plaintext", out, "WithoutPlaintext has no Plaintext")
        back = self.kms.decrypt(CiphertextBlob=out["CiphertextBlob"])
        self.assertEqual(len(back["Plaintext"]), 32, "the data key decrypts to 32 bytes")
        self.expect_error("ValidationException", self.kms.generate_data_key,
                          KeyId=self.key["KeyId"], KeySpec="AES_256", NumberOfBytes=32)
        self.expect_error("ValidationException", self.kms.generate_data_key,
                          KeyId=self.key["KeyId"])
        self.expect_error("ValidationException", self.raw_kms.generate_data_key,
                          KeyId=self.key["KeyId"], NumberOfBytes=1025)

    def test_generate_data_key_pair(self):
        for spec in list(RSA_BITS) + list(CURVES):
            with self.subTest(spec=spec):
                out = self.kms.generate_data_key_pair(KeyId=self.key["KeyId"], KeyPairSpec=spec,
                                                      EncryptionContext={"pair": spec})
                self.assertEqual(out["KeyPairSpec"], spec, "KeyPairSpec")
                private_key = serialization.load_der_private_key(out["PrivateKeyPlaintext"], None)
                public_der = private_key.public_key().public_bytes(
                    serialization.Encoding.DER,
                    serialization.PublicFormat.SubjectPublicKeyInfo)
                self.assertEqual(public_der, out["PublicKey"], "the public key is the pair's")
                back = self.kms.decrypt(CiphertextBlob=out["PrivateKeyCiphertextBlob"],
                                        EncryptionContext={"pair": spec})
                self.assertEqual(back["Plaintext"], out["PrivateKeyPlaintext"],
                                 "the encrypted private key decrypts to the plaintext one")
        out = self.kms.generate_data_key_pair_without_plaintext(
            KeyId=self.key["KeyId"], KeyPairSpec="ECC_NIST_P256")
        self.assertNotIn("PrivateKeyPlaintext", out, "WithoutPlaintext has no private key")
        private_der = self.kms.decrypt(CiphertextBlob=out["PrivateKeyCiphertextBlob"])["Plaintext"]
        private_key = serialization.load_der_private_key(private_der, None)
        self.assertIsInstance(private_key.curve, ec.SECP256R1, "a P-256 private key")
        public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertEqual(public_der, out["PublicKey"], "the pair matches")

    def test_generate_random(self):
        for size in (1, 32, 1024):
            self.assertEqual(len(self.kms.generate_random(NumberOfBytes=size)["Plaintext"]), size,
                             f"GenerateRandom {size}")
        a = self.kms.generate_random(NumberOfBytes=32)["Plaintext"]
        b = self.kms.generate_random(NumberOfBytes=32)["Plaintext"]
        self.assertNotEqual(a, b, "two random draws differ")
        self.expect_error("ValidationException", self.raw_kms.generate_random, NumberOfBytes=0)
        self.expect_error("ValidationException", self.raw_kms.generate_random, NumberOfBytes=1025)


class RsaEncryption(KmsTestCase):
    """RSA OAEP: kagi encrypts and decrypts; `cryptography` encrypts, kagi decrypts."""

    def test_oaep_round_trips(self):
        for spec in RSA_BITS:
            key = self.create_key(spec, "ENCRYPT_DECRYPT")
            public_key = serialization.load_der_public_key(
                self.kms.get_public_key(KeyId=key["KeyId"])["PublicKey"])
            for hash_name in ("SHA_1", "SHA_256"):
                algorithm = f"RSAES_OAEP_{hash_name}"
                with self.subTest(spec=spec, algorithm=algorithm):
                    out = self.kms.encrypt(KeyId=key["KeyId"], Plaintext=b"rsa secret",
                                           EncryptionAlgorithm=algorithm)
                    self.assertEqual(len(out["CiphertextBlob"]), RSA_BITS[spec] // 8,
                                     "an RSA ciphertext is one modulus long")
                    back = self.kms.decrypt(CiphertextBlob=out["CiphertextBlob"],
                                            KeyId=key["KeyId"], EncryptionAlgorithm=algorithm)
                    self.assertEqual(back["Plaintext"], b"rsa secret", "kagi → kagi")
                    local = public_key.encrypt(b"from python", oaep(hash_name))
                    back = self.kms.decrypt(CiphertextBlob=local, KeyId=key["KeyId"],
                                            EncryptionAlgorithm=algorithm)
                    self.assertEqual(back["Plaintext"], b"from python", "cryptography → kagi")
                    other = "RSAES_OAEP_SHA_1" if hash_name == "SHA_256" else "RSAES_OAEP_SHA_256"
                    self.expect_error("InvalidCiphertextException", self.kms.decrypt,
                                      CiphertextBlob=local, KeyId=key["KeyId"],
                                      EncryptionAlgorithm=other)
        self.expect_error("InvalidKeyUsageException", self.kms.encrypt, KeyId=key["KeyId"],
                          Plaintext=b"x", EncryptionAlgorithm="SYMMETRIC_DEFAULT")


class Signing(KmsTestCase):
    """Sign/Verify RAW and DIGEST for RSA (PSS, PKCS#1 v1.5) and ECC, checked locally."""

    def sign_and_check(self, key_id, public_der, algorithm):
        message = f"message for {algorithm}".encode()
        for message_type, payload in (("RAW", message), ("DIGEST", digest(algorithm, message))):
            with self.subTest(algorithm=algorithm, message_type=message_type):
                out = self.kms.sign(KeyId=key_id, Message=payload, MessageType=message_type,
                                    SigningAlgorithm=algorithm)
                self.assertEqual(out["SigningAlgorithm"], algorithm)
                signature = out["Signature"]
                verify_locally(public_der, algorithm, payload, signature, message_type)
                if message_type == "DIGEST":
                    # A digest signature is the signature of the message it digests.
                    verify_locally(public_der, algorithm, message, signature, "RAW")
                ok = self.kms.verify(KeyId=key_id, Message=payload, MessageType=message_type,
                                     Signature=signature, SigningAlgorithm=algorithm)
                self.assertTrue(ok["SignatureValid"], "kagi verifies its signature")
                self.expect_error("KMSInvalidSignatureException", self.kms.verify, KeyId=key_id,
                                  Message=payload[:-1] + bytes([payload[-1] ^ 1]),
                                  MessageType=message_type, Signature=signature,
                                  SigningAlgorithm=algorithm, status=400)

    def test_rsa(self):
        for spec in RSA_BITS:
            key = self.create_key(spec, "SIGN_VERIFY")
            public_der = self.kms.get_public_key(KeyId=key["KeyId"])["PublicKey"]
            algorithms = RSA_SIGNING if spec == "RSA_2048" else [RSA_SIGNING[0], RSA_SIGNING[3]]
            for algorithm in algorithms:
                self.sign_and_check(key["KeyId"], public_der, algorithm)
        self.expect_error("InvalidKeyUsageException", self.kms.sign, KeyId=key["KeyId"],
                          Message=b"m", SigningAlgorithm="ECDSA_SHA_256")

    def test_ecc(self):
        for spec, algorithm in ECC_SIGNING.items():
            key = self.create_key(spec, "SIGN_VERIFY")
            public_der = self.kms.get_public_key(KeyId=key["KeyId"])["PublicKey"]
            self.sign_and_check(key["KeyId"], public_der, algorithm)
            if spec == "ECC_NIST_P256":
                self.expect_error("InvalidKeyUsageException", self.kms.sign, KeyId=key["KeyId"],
                                  Message=b"m", SigningAlgorithm="ECDSA_SHA_384")
                self.expect_error("ValidationException", self.kms.sign, KeyId=key["KeyId"],
                                  Message=b"too short for a digest", MessageType="DIGEST",
                                  SigningAlgorithm=algorithm)
                self.expect_error("ValidationException", self.raw_kms.sign, KeyId=key["KeyId"],
                                  Message=b"x" * 4097, SigningAlgorithm=algorithm)


class Mac(KmsTestCase):
    """GenerateMac/VerifyMac for every HMAC key spec."""

    def test_generate_and_verify(self):
        for spec, algorithm in HMAC_ALGORITHMS.items():
            with self.subTest(spec=spec):
                key = self.create_key(spec)
                out = self.kms.generate_mac(KeyId=key["KeyId"], Message=b"mac me",
                                            MacAlgorithm=algorithm)
                self.assertEqual(len(out["Mac"]), int(spec[-3:]) // 8, "the MAC's length")
                again = self.kms.generate_mac(KeyId=key["KeyId"], Message=b"mac me",
                                              MacAlgorithm=algorithm)
                self.assertEqual(out["Mac"], again["Mac"], "HMAC is deterministic")
                ok = self.kms.verify_mac(KeyId=key["KeyId"], Message=b"mac me", Mac=out["Mac"],
                                         MacAlgorithm=algorithm)
                self.assertTrue(ok["MacValid"], "VerifyMac accepts the MAC")
                wrong = bytes([out["Mac"][0] ^ 1]) + out["Mac"][1:]
                self.expect_error("KMSInvalidMacException", self.kms.verify_mac,
                                  KeyId=key["KeyId"], Message=b"mac me", Mac=wrong,
                                  MacAlgorithm=algorithm, status=400)
                self.expect_error("KMSInvalidMacException", self.kms.verify_mac,
                                  KeyId=key["KeyId"], Message=b"mac me!", Mac=out["Mac"],
                                  MacAlgorithm=algorithm)
        other = "HMAC_SHA_256" if algorithm != "HMAC_SHA_256" else "HMAC_SHA_384"
        self.expect_error("InvalidKeyUsageException", self.kms.generate_mac, KeyId=key["KeyId"],
                          Message=b"m", MacAlgorithm=other)
        symmetric = self.create_key()
        self.expect_error("InvalidKeyUsageException", self.kms.generate_mac,
                          KeyId=symmetric["KeyId"], Message=b"m", MacAlgorithm="HMAC_SHA_256")


class KeyAgreement(KmsTestCase):
    """DeriveSharedSecret equals a local ECDH with `cryptography`."""

    def test_derive_shared_secret(self):
        for spec in ("ECC_NIST_P256", "ECC_NIST_P384", "ECC_NIST_P521"):
            with self.subTest(spec=spec):
                key = self.create_key(spec, "KEY_AGREEMENT")
                kms_public = serialization.load_der_public_key(
                    self.kms.get_public_key(KeyId=key["KeyId"])["PublicKey"])
                mine = ec.generate_private_key(CURVES[spec]())
                my_public = mine.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                out = self.kms.derive_shared_secret(KeyId=key["KeyId"],
                                                    KeyAgreementAlgorithm="ECDH",
                                                    PublicKey=my_public)
                self.assertEqual(out["KeyAgreementAlgorithm"], "ECDH")
                self.assertEqual(out["SharedSecret"], mine.exchange(ec.ECDH(), kms_public),
                                 "kagi's secret is the local ECDH secret")
        signing = self.create_key("ECC_NIST_P256", "SIGN_VERIFY")
        self.expect_error("InvalidKeyUsageException", self.kms.derive_shared_secret,
                          KeyId=signing["KeyId"], KeyAgreementAlgorithm="ECDH",
                          PublicKey=my_public)


class Rotation(KmsTestCase):
    """Automatic and on-demand rotation; older ciphertexts still decrypt."""

    def test_rotation_keeps_old_material(self):
        key = self.create_key()
        status = self.kms.get_key_rotation_status(KeyId=key["KeyId"])
        self.assertFalse(status["KeyRotationEnabled"], "rotation is off by default")
        self.kms.enable_key_rotation(KeyId=key["KeyId"], RotationPeriodInDays=90)
        status = self.kms.get_key_rotation_status(KeyId=key["KeyId"])
        self.assertTrue(status["KeyRotationEnabled"], "EnableKeyRotation")
        self.assertEqual(status["RotationPeriodInDays"], 90, "the period")
        self.assertIn("NextRotationDate", status, "NextRotationDate")
        self.assertEqual(self.kms.list_key_rotations(KeyId=key["KeyId"])["Rotations"], [],
                         "no rotation yet")
        blobs = []
        for i in range(3):
            # (Encrypt's output has no KeyMaterialId in the KMS model; DescribeKey has it.)
            material = self.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"][
                "CurrentKeyMaterialId"]
            out = self.kms.encrypt(KeyId=key["KeyId"], Plaintext=f"generation {i}".encode(),
                                   EncryptionContext={"gen": str(i)})
            blobs.append((i, out["CiphertextBlob"], material))
            if i < 2:
                self.assertEqual(self.kms.rotate_key_on_demand(KeyId=key["KeyId"])["KeyId"],
                                 key["Arn"], "RotateKeyOnDemand answers the ARN")
        materials = {material for _, _, material in blobs}
        self.assertEqual(len(materials), 3, "each rotation brings new material")
        for i, blob, material in blobs:
            back = self.kms.decrypt(CiphertextBlob=blob, EncryptionContext={"gen": str(i)})
            self.assertEqual(back["Plaintext"], f"generation {i}".encode(),
                             f"generation {i} still decrypts")
            self.assertEqual(back["KeyMaterialId"], material, "with the material it used")
        rotations = self.kms.list_key_rotations(KeyId=key["KeyId"])["Rotations"]
        self.assertEqual(len(rotations), 2, "two completed rotations")
        for rotation in rotations:
            self.assertEqual(rotation["RotationType"], "ON_DEMAND", "ON_DEMAND rotations")
            self.assertIn("RotationDate", rotation)
        everything = self.kms.list_key_rotations(KeyId=key["KeyId"],
                                                 IncludeKeyMaterial="ALL_KEY_MATERIAL")
        self.assertEqual(len(everything["Rotations"]), 3, "ALL_KEY_MATERIAL adds the first")
        current = [r for r in everything["Rotations"] if r["KeyMaterialState"] == "CURRENT"]
        self.assertEqual([r["KeyMaterialId"] for r in current], [blobs[2][2]],
                         "the newest material is CURRENT")
        self.kms.disable_key_rotation(KeyId=key["KeyId"])
        status = self.kms.get_key_rotation_status(KeyId=key["KeyId"])
        self.assertFalse(status["KeyRotationEnabled"], "DisableKeyRotation")

    def test_rotation_limits(self):
        key = self.create_key()
        self.expect_error("ValidationException", self.raw_kms.enable_key_rotation,
                          KeyId=key["KeyId"], RotationPeriodInDays=89)
        self.expect_error("ValidationException", self.raw_kms.enable_key_rotation,
                          KeyId=key["KeyId"], RotationPeriodInDays=2561)
        for _ in range(25):
            self.kms.rotate_key_on_demand(KeyId=key["KeyId"])
        self.expect_error("LimitExceededException", self.kms.rotate_key_on_demand,
                          KeyId=key["KeyId"], status=400)
        rsa_key = self.create_key("RSA_2048", "SIGN_VERIFY")
        self.expect_error("UnsupportedOperationException", self.kms.enable_key_rotation,
                          KeyId=rsa_key["KeyId"])
        self.expect_error("UnsupportedOperationException", self.kms.rotate_key_on_demand,
                          KeyId=rsa_key["KeyId"])


class Aliases(KmsTestCase):
    """CreateAlias/UpdateAlias/DeleteAlias/ListAliases; keys named by alias name and ARN."""

    def test_alias_life(self):
        a, b = self.create_key(), self.create_key()
        name = f"alias/test-{uuid.uuid4()}"
        alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:{name}"
        self.kms.create_alias(AliasName=name, TargetKeyId=a["KeyId"])
        for ref in (name, alias_arn):
            with self.subTest(ref=ref):
                self.assertEqual(self.kms.describe_key(KeyId=ref)["KeyMetadata"]["Arn"],
                                 a["Arn"], "DescribeKey by alias")
                out = self.kms.encrypt(KeyId=ref, Plaintext=b"by alias")
                self.assertEqual(out["KeyId"], a["Arn"], "Encrypt by alias answers the key ARN")
                back = self.kms.decrypt(CiphertextBlob=out["CiphertextBlob"], KeyId=ref)
                self.assertEqual(back["Plaintext"], b"by alias", "Decrypt with KeyId=alias")
        listed = self.kms.list_aliases(KeyId=a["KeyId"])["Aliases"]
        self.assertEqual([x["AliasName"] for x in listed], [name], "ListAliases by key")
        self.assertEqual(listed[0]["AliasArn"], alias_arn, "AliasArn")
        self.assertEqual(listed[0]["TargetKeyId"], a["KeyId"], "TargetKeyId is the key id")
        every = [alias["AliasName"] for page in self.kms.get_paginator("list_aliases").paginate()
                 for alias in page["Aliases"]]
        self.assertIn(name, every, "ListAliases lists it")
        self.expect_error("AlreadyExistsException", self.kms.create_alias, AliasName=name,
                          TargetKeyId=b["KeyId"], status=409)
        self.kms.update_alias(AliasName=name, TargetKeyId=b["KeyId"])
        self.assertEqual(self.kms.describe_key(KeyId=name)["KeyMetadata"]["Arn"], b["Arn"],
                         "UpdateAlias moved it")
        self.assertEqual(self.kms.list_aliases(KeyId=a["KeyId"])["Aliases"], [],
                         "the old key has no alias")
        self.kms.delete_alias(AliasName=name)
        self.expect_error("NotFoundException", self.kms.describe_key, KeyId=name, status=404)
        self.expect_error("NotFoundException", self.kms.delete_alias, AliasName=name)

    def test_alias_name_rules(self):
        key = self.create_key()
        for name in ("no-prefix", "alias/aws/reserved"):
            with self.subTest(name=name):
                self.expect_error("InvalidAliasNameException", self.kms.create_alias,
                                  AliasName=name, TargetKeyId=key["KeyId"], status=400)
        self.expect_error("NotFoundException", self.kms.create_alias,
                          AliasName=f"alias/nokey-{uuid.uuid4()}", TargetKeyId=str(uuid.uuid4()))

    def test_fifty_aliases_per_key(self):
        key = self.create_key()
        prefix = f"alias/many-{uuid.uuid4()}"
        for i in range(50):
            self.kms.create_alias(AliasName=f"{prefix}-{i}", TargetKeyId=key["KeyId"])
        self.expect_error("LimitExceededException", self.kms.create_alias,
                          AliasName=f"{prefix}-50", TargetKeyId=key["KeyId"], status=400)


class Tags(KmsTestCase):
    def test_tag_untag_list(self):
        key = self.create_key(Tags=[{"TagKey": "team", "TagValue": "crypto"}])
        tags = self.kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]
        self.assertEqual(tags, [{"TagKey": "team", "TagValue": "crypto"}], "CreateKey Tags")
        self.kms.tag_resource(KeyId=key["KeyId"], Tags=[
            {"TagKey": "env", "TagValue": "test"},
            {"TagKey": "team", "TagValue": "platform"},
        ])
        tags = {t["TagKey"]: t["TagValue"] for t in
                self.kms.list_resource_tags(KeyId=key["Arn"])["Tags"]}
        self.assertEqual(tags, {"env": "test", "team": "platform"}, "TagResource adds/overwrites")
        self.kms.untag_resource(KeyId=key["KeyId"], TagKeys=["team"])
        tags = self.kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]
        self.assertEqual(tags, [{"TagKey": "env", "TagValue": "test"}], "UntagResource")


class Deletion(KmsTestCase):
    def test_schedule_and_cancel(self):
        key = self.create_key()
        blob = self.kms.encrypt(KeyId=key["KeyId"], Plaintext=b"keep me")["CiphertextBlob"]
        out = self.kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
        self.assertEqual(out["KeyId"], key["Arn"], "ScheduleKeyDeletion: KeyId")
        self.assertEqual(out["KeyState"], "PendingDeletion")
        self.assertEqual(out["PendingWindowInDays"], 7)
        described = self.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        self.assertEqual(described["KeyState"], "PendingDeletion", "DescribeKey state")
        self.assertIn("DeletionDate", described, "DeletionDate")
        self.assertEqual(described["PendingDeletionWindowInDays"], 7)
        self.expect_error("KMSInvalidStateException", self.kms.encrypt, KeyId=key["KeyId"],
                          Plaintext=b"x", status=409)
        self.expect_error("KMSInvalidStateException", self.kms.decrypt, CiphertextBlob=blob,
                          status=409)
        self.expect_error("KMSInvalidStateException", self.kms.enable_key, KeyId=key["KeyId"])
        self.expect_error("KMSInvalidStateException", self.kms.schedule_key_deletion,
                          KeyId=key["KeyId"])
        self.assertEqual(self.kms.cancel_key_deletion(KeyId=key["KeyId"])["KeyId"], key["Arn"])
        self.assertEqual(self.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"],
                         "Disabled", "a cancelled key is Disabled")
        self.expect_error("KMSInvalidStateException", self.kms.cancel_key_deletion,
                          KeyId=key["KeyId"])
        self.kms.enable_key(KeyId=key["KeyId"])
        self.assertEqual(self.kms.decrypt(CiphertextBlob=blob)["Plaintext"], b"keep me",
                         "the key works again")

    def test_window_bounds(self):
        key = self.create_key()
        for days in (6, 31):
            self.expect_error("ValidationException", self.raw_kms.schedule_key_deletion,
                              KeyId=key["KeyId"], PendingWindowInDays=days)
        out = self.kms.schedule_key_deletion(KeyId=key["KeyId"])
        self.assertEqual(out["PendingWindowInDays"], 30, "the default window is 30 days")


class Import(KmsTestCase):
    """Origin=EXTERNAL keys with material wrapped locally by `cryptography`."""

    def parameters(self, key_id, algorithm, spec="RSA_2048"):
        out = self.kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm,
                                                 WrappingKeySpec=spec)
        self.assertIn("ParametersValidTo", out, "ParametersValidTo")
        public_key = serialization.load_der_public_key(out["PublicKey"])
        self.assertEqual(public_key.key_size, RSA_BITS[spec], "the wrapping key's size")
        return public_key, out["ImportToken"]

    @staticmethod
    def wrap(public_key, algorithm, material):
        if algorithm == "RSAES_OAEP_SHA_256":
            return public_key.encrypt(material, oaep("SHA_256"))
        assert algorithm == "RSA_AES_KEY_WRAP_SHA_256", algorithm
        aes_key = os.urandom(32)
        return public_key.encrypt(aes_key, oaep("SHA_256")) + aes_key_wrap_with_padding(
            aes_key, material)

    def import_material(self, key_id, algorithm, material, **kwargs):
        public_key, token = self.parameters(key_id, algorithm)
        self.kms.import_key_material(KeyId=key_id, ImportToken=token,
                                     EncryptedKeyMaterial=self.wrap(public_key, algorithm,
                                                                    material),
                                     ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE", **kwargs)

    def test_symmetric_material(self):
        for algorithm in ("RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_256"):
            with self.subTest(algorithm=algorithm):
                key = self.create_key(Origin="EXTERNAL")
                self.assertEqual(key["Origin"], "EXTERNAL")
                self.assertEqual(key["KeyState"], "PendingImport", "waits for material")
                self.expect_error("KMSInvalidStateException", self.kms.encrypt,
                                  KeyId=key["KeyId"], Plaintext=b"x", status=409)
                material = os.urandom(32)
                self.import_material(key["KeyId"], algorithm, material)
                described = self.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
                self.assertEqual(described["KeyState"], "Enabled", "imported → Enabled")
                self.assertEqual(described["ExpirationModel"], "KEY_MATERIAL_DOES_NOT_EXPIRE")
                blob = self.kms.encrypt(KeyId=key["KeyId"], Plaintext=b"imported")[
                    "CiphertextBlob"]
                self.assertEqual(self.kms.decrypt(CiphertextBlob=blob)["Plaintext"], b"imported")
                # Deleted material comes back only as the same material.
                self.kms.delete_imported_key_material(KeyId=key["KeyId"])
                self.assertEqual(
                    self.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"],
                    "PendingImport", "DeleteImportedKeyMaterial → PendingImport")
                public_key, token = self.parameters(key["KeyId"], algorithm)
                self.expect_error("IncorrectKeyMaterialException", self.kms.import_key_material,
                                  KeyId=key["KeyId"], ImportToken=token,
                                  EncryptedKeyMaterial=self.wrap(public_key, algorithm,
                                                                 os.urandom(32)),
                                  ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE", status=400)
                self.import_material(key["KeyId"], algorithm, material)
                self.assertEqual(self.kms.decrypt(CiphertextBlob=blob)["Plaintext"], b"imported",
                                 "the re-imported material decrypts the old ciphertext")

    def test_bad_import_token(self):
        key = self.create_key(Origin="EXTERNAL")
        public_key, token = self.parameters(key["KeyId"], "RSAES_OAEP_SHA_256")
        other = self.create_key(Origin="EXTERNAL")
        self.expect_error("InvalidImportTokenException", self.kms.import_key_material,
                          KeyId=other["KeyId"], ImportToken=token,
                          EncryptedKeyMaterial=self.wrap(public_key, "RSAES_OAEP_SHA_256",
                                                         os.urandom(32)),
                          ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")

    def test_ecc_private_key(self):
        key = self.create_key("ECC_NIST_P256", "SIGN_VERIFY", Origin="EXTERNAL")
        private_key = ec.generate_private_key(ec.SECP256R1())
        pkcs8 = private_key.private_bytes(serialization.Encoding.DER,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        self.import_material(key["KeyId"], "RSA_AES_KEY_WRAP_SHA_256", pkcs8)
        public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.assertEqual(self.kms.get_public_key(KeyId=key["KeyId"])["PublicKey"], public_der,
                         "GetPublicKey answers the imported key's public half")
        signature = self.kms.sign(KeyId=key["KeyId"], Message=b"signed by an imported key",
                                  SigningAlgorithm="ECDSA_SHA_256")["Signature"]
        private_key.public_key().verify(signature, b"signed by an imported key",
                                        ec.ECDSA(hashes.SHA256()))


class Policies(KmsTestCase):
    def test_get_put_list(self):
        key = self.create_key()
        out = self.kms.get_key_policy(KeyId=key["KeyId"])
        policy = json.loads(out["Policy"])
        self.assertEqual(policy["Version"], "2012-10-17", "the default policy is a policy")
        self.assertEqual(self.kms.get_key_policy(KeyId=key["KeyId"], PolicyName="default")[
            "Policy"], out["Policy"], "PolicyName=default")
        listed = self.kms.list_key_policies(KeyId=key["KeyId"])
        self.assertEqual(listed["PolicyNames"], ["default"], "ListKeyPolicies")
        self.assertFalse(listed["Truncated"])
        new_policy = {
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "admin", "Effect": "Allow",
                "Principal": {"AWS": user_arn("admin")}, "Action": "kms:*", "Resource": "*",
            }],
        }
        self.kms.put_key_policy(KeyId=key["KeyId"], PolicyName="default",
                                Policy=json.dumps(new_policy))
        self.assertEqual(json.loads(self.kms.get_key_policy(KeyId=key["KeyId"])["Policy"]),
                         new_policy, "PutKeyPolicy stored it")
        self.expect_error("NotFoundException", self.kms.get_key_policy, KeyId=key["KeyId"],
                          PolicyName="other")
        self.expect_error("MalformedPolicyDocumentException", self.kms.put_key_policy,
                          KeyId=key["KeyId"], Policy="{not a policy", status=400)
        lockout = {**new_policy, "Statement": [{**new_policy["Statement"][0],
                                                "Action": "kms:Encrypt"}]}
        self.expect_error("MalformedPolicyDocumentException", self.kms.put_key_policy,
                          KeyId=key["KeyId"], Policy=json.dumps(lockout))


class LastUsage(KmsTestCase):
    def test_get_key_last_usage(self):
        key = self.create_key()
        out = self.kms.get_key_last_usage(KeyId=key["KeyId"])
        self.assertEqual(out["KeyId"], key["Arn"])
        self.assertIn("KeyCreationDate", out)
        self.assertIn("TrackingStartDate", out)
        self.assertNotIn("Operation", out["KeyLastUsage"], "a new key was never used")
        self.kms.describe_key(KeyId=key["KeyId"])
        self.assertNotIn("Operation", self.kms.get_key_last_usage(KeyId=key["KeyId"])[
            "KeyLastUsage"], "DescribeKey is not a use")
        encrypt = self.kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")
        usage = self.kms.get_key_last_usage(KeyId=key["KeyId"])["KeyLastUsage"]
        self.assertEqual(usage["Operation"], "Encrypt", "the last use")
        self.assertEqual(usage["KmsRequestId"], encrypt["ResponseMetadata"]["RequestId"],
                         "the request id of that use")
        self.assertIn("Timestamp", usage)


class Pagination(KmsTestCase):
    """Limit=1 walked with NextMarker over every List operation."""

    def test_list_keys(self):
        mine = {self.create_key()["KeyId"] for _ in range(3)}
        keys, pages = walk(self.kms.list_keys, "Keys")
        ids = [k["KeyId"] for k in keys]
        self.assertEqual(len(ids), len(set(ids)), "no key twice")
        self.assertTrue(mine <= set(ids), "every key found")
        self.assertGreaterEqual(pages, len(ids), "one key per page")
        self.assertEqual(len(self.kms.list_keys(Limit=1000)["Keys"]), len(ids), "same as one page")
        self.expect_error("ValidationException", self.raw_kms.list_keys, Limit=0)
        self.expect_error("ValidationException", self.raw_kms.list_keys, Limit=1001)

    def test_list_aliases_and_tags(self):
        key = self.create_key(Tags=[{"TagKey": f"t{i}", "TagValue": str(i)} for i in range(4)])
        names = {f"alias/page-{uuid.uuid4()}" for _ in range(3)}
        for name in names:
            self.kms.create_alias(AliasName=name, TargetKeyId=key["KeyId"])
        aliases, _ = walk(self.kms.list_aliases, "Aliases", KeyId=key["KeyId"])
        self.assertEqual({a["AliasName"] for a in aliases}, names, "every alias of the key")
        aliases, _ = walk(self.kms.list_aliases, "Aliases")
        self.assertTrue(names <= {a["AliasName"] for a in aliases}, "every alias")
        tags, _ = walk(self.kms.list_resource_tags, "Tags", KeyId=key["KeyId"])
        self.assertEqual({t["TagKey"] for t in tags}, {f"t{i}" for i in range(4)}, "every tag")

    def test_list_key_rotations(self):
        key = self.create_key()
        for _ in range(3):
            self.kms.rotate_key_on_demand(KeyId=key["KeyId"])
        rotations, _ = walk(self.kms.list_key_rotations, "Rotations", KeyId=key["KeyId"])
        self.assertEqual(len({r["KeyMaterialId"] for r in rotations}), 3, "three rotations")

    def test_boto3_paginators(self):
        # boto3's own paginators speak the same Marker/NextMarker.
        mine = {self.create_key()["KeyId"] for _ in range(2)}
        seen = set()
        for page in self.kms.get_paginator("list_keys").paginate(PaginationConfig={"PageSize": 1}):
            seen.update(k["KeyId"] for k in page["Keys"])
        self.assertTrue(mine <= seen, "the paginator finds every key")

    def test_bad_marker(self):
        self.expect_error("InvalidMarkerException", self.kms.list_keys, Marker="bogus-marker")


class StateErrors(KmsTestCase):
    """The AWS error for each state and misuse, with its HTTP status."""

    def test_disabled_key(self):
        key = self.create_key()
        blob = self.kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        self.kms.disable_key(KeyId=key["KeyId"])
        described = self.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        self.assertEqual(described["KeyState"], "Disabled")
        self.assertFalse(described["Enabled"])
        self.expect_error("DisabledException", self.kms.encrypt, KeyId=key["KeyId"],
                          Plaintext=b"x", status=409)
        self.expect_error("DisabledException", self.kms.decrypt, CiphertextBlob=blob, status=409)
        self.expect_error("DisabledException", self.kms.generate_data_key, KeyId=key["KeyId"],
                          KeySpec="AES_256", status=409)
        self.kms.enable_key(KeyId=key["KeyId"])
        self.assertEqual(self.kms.decrypt(CiphertextBlob=blob)["Plaintext"], b"x", "re-enabled")

    def test_not_found(self):
        for ref in (str(uuid.uuid4()), f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{uuid.uuid4()}",
                    "alias/does-not-exist"):
            with self.subTest(ref=ref):
                self.expect_error("NotFoundException", self.kms.describe_key, KeyId=ref,
                                  status=404)
                self.expect_error("NotFoundException", self.kms.encrypt, KeyId=ref,
                                  Plaintext=b"x", status=404)

    def test_invalid_key_usage(self):
        encrypt_key = self.create_key()
        sign_key = self.create_key("ECC_NIST_P256", "SIGN_VERIFY")
        self.expect_error("InvalidKeyUsageException", self.kms.sign, KeyId=encrypt_key["KeyId"],
                          Message=b"m", SigningAlgorithm="ECDSA_SHA_256", status=400)
        self.expect_error("InvalidKeyUsageException", self.kms.encrypt, KeyId=sign_key["KeyId"],
                          Plaintext=b"x", status=400)
        self.expect_error("InvalidKeyUsageException", self.kms.generate_data_key,
                          KeyId=sign_key["KeyId"], KeySpec="AES_256")

    def test_validation(self):
        self.expect_error("ValidationException", self.raw_kms.encrypt, KeyId="",
                          Plaintext=b"x", status=400)
        self.expect_error("ValidationException", self.raw_kms.encrypt, Plaintext=b"x")
        self.expect_error("ValidationException", self.raw_kms.create_key,
                          Description="d" * 8193)

    def test_dry_run(self):
        key = self.create_key()
        self.expect_error("DryRunOperationException", self.kms.encrypt, KeyId=key["KeyId"],
                          Plaintext=b"x", DryRun=True, status=412)
        blob = self.kms.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        self.expect_error("DryRunOperationException", self.kms.decrypt, CiphertextBlob=blob,
                          DryRun=True, status=412)
        # A dry run that would fail gives the failure, not DryRunOperationException.
        self.kms.disable_key(KeyId=key["KeyId"])
        self.expect_error("DisabledException", self.kms.encrypt, KeyId=key["KeyId"],
                          Plaintext=b"x", DryRun=True)


class AccessControl(KmsTestCase):
    """Key policies for a non-administrator principal `app`: least privilege, Deny, conditions."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.app = kms_client("APP")

    def policy(self, *statements):
        admin = {"Sid": "admin", "Effect": "Allow", "Principal": {"AWS": user_arn("admin")},
                 "Action": "kms:*", "Resource": "*"}
        return json.dumps({"Version": "2012-10-17", "Statement": [admin, *statements]})

    def test_least_privilege(self):
        key = self.create_key(Policy=self.policy({
            "Sid": "app encrypts", "Effect": "Allow", "Principal": {"AWS": user_arn("app")},
            "Action": "kms:Encrypt", "Resource": "*",
        }))
        other = self.create_key()
        blob = self.app.encrypt(KeyId=key["KeyId"], Plaintext=b"allowed")["CiphertextBlob"]
        self.assertEqual(self.kms.decrypt(CiphertextBlob=blob)["Plaintext"], b"allowed",
                         "what app encrypted decrypts for the admin")
        denied = [
            (self.app.decrypt, {"CiphertextBlob": blob}),
            (self.app.describe_key, {"KeyId": key["KeyId"]}),
            (self.app.generate_data_key, {"KeyId": key["KeyId"], "KeySpec": "AES_256"}),
            (self.app.encrypt, {"KeyId": other["KeyId"], "Plaintext": b"x"}),
            (self.app.describe_key, {"KeyId": other["KeyId"]}),
            (self.app.disable_key, {"KeyId": key["KeyId"]}),
            (self.app.put_key_policy, {"KeyId": key["KeyId"], "Policy": self.policy()}),
            (self.app.create_key, {}),
            (self.app.list_keys, {}),
            (self.app.generate_random, {"NumberOfBytes": 8}),
        ]
        for call, kwargs in denied:
            with self.subTest(call=call.__name__):
                self.expect_error("AccessDeniedException", call, status=400, **kwargs)
        self.assertEqual(self.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]["KeyState"],
                         "Enabled", "the denied DisableKey did nothing")

    def test_explicit_deny_wins(self):
        key = self.create_key(Policy=self.policy(
            {"Sid": "app all", "Effect": "Allow", "Principal": {"AWS": user_arn("app")},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "but never decrypt", "Effect": "Deny", "Principal": {"AWS": user_arn("app")},
             "Action": "kms:Decrypt", "Resource": "*"},
        ))
        blob = self.app.encrypt(KeyId=key["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        self.app.describe_key(KeyId=key["KeyId"])
        self.expect_error("AccessDeniedException", self.app.decrypt, CiphertextBlob=blob)

    def test_encryption_context_condition(self):
        key = self.create_key(Policy=self.policy({
            "Sid": "tenant acme only", "Effect": "Allow", "Principal": {"AWS": user_arn("app")},
            "Action": ["kms:Encrypt", "kms:Decrypt"], "Resource": "*",
            "Condition": {"StringEquals": {"kms:EncryptionContext:tenant": "acme"}},
        }))
        blob = self.app.encrypt(KeyId=key["KeyId"], Plaintext=b"acme data",
                                EncryptionContext={"tenant": "acme"})["CiphertextBlob"]
        back = self.app.decrypt(CiphertextBlob=blob, EncryptionContext={"tenant": "acme"})
        self.assertEqual(back["Plaintext"], b"acme data", "the matching context is allowed")
        for context in ({"tenant": "globex"}, {}, {"Tenant": "acme"}):
            with self.subTest(context=context):
                self.expect_error("AccessDeniedException", self.app.encrypt, KeyId=key["KeyId"],
                                  Plaintext=b"x", EncryptionContext=context)

    def test_account_actions_are_not_key_actions(self):
        # The admin may; `app` has no account-level actions configured.
        self.kms.list_aliases()
        self.expect_error("AccessDeniedException", self.app.list_aliases)


class Grants(KmsTestCase):
    """Grants give `app` operations on one key, optionally for one encryption context; retiring
    or revoking one takes effect on the next call."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.app = kms_client("APP")

    def test_grant_life(self):
        key = self.create_key()["KeyId"]
        self.expect_error("AccessDeniedException", self.app.encrypt, KeyId=key, Plaintext=b"x")
        grant = self.kms.create_grant(
            KeyId=key, GranteePrincipal=user_arn("app"), RetiringPrincipal=user_arn("admin"),
            Operations=["Encrypt", "Decrypt"], Name="app-tenant-acme",
            Constraints={"EncryptionContextSubset": {"tenant": "acme"}},
        )
        self.assertEqual(len(grant["GrantId"]), 64, "a 64-hex-digit grant id")
        again = self.kms.create_grant(
            KeyId=key, GranteePrincipal=user_arn("app"), RetiringPrincipal=user_arn("admin"),
            Operations=["Encrypt", "Decrypt"], Name="app-tenant-acme",
            Constraints={"EncryptionContextSubset": {"tenant": "acme"}},
        )
        self.assertEqual(again["GrantId"], grant["GrantId"], "the same named grant is reused")
        context = {"tenant": "acme", "purpose": "test"}
        blob = self.app.encrypt(KeyId=key, Plaintext=b"granted", EncryptionContext=context,
                                GrantTokens=[grant["GrantToken"]])["CiphertextBlob"]
        back = self.app.decrypt(CiphertextBlob=blob, EncryptionContext=context)
        self.assertEqual(back["Plaintext"], b"granted", "the grantee decrypts under the grant")
        self.expect_error("AccessDeniedException", self.app.encrypt, KeyId=key, Plaintext=b"x",
                          EncryptionContext={"tenant": "globex"})
        self.expect_error("AccessDeniedException", self.app.describe_key, KeyId=key)
        listed = self.kms.list_grants(KeyId=key)["Grants"]
        self.assertEqual([g["GrantId"] for g in listed], [grant["GrantId"]])
        self.assertEqual(listed[0]["GranteePrincipal"], user_arn("app"))
        self.assertEqual(sorted(listed[0]["Operations"]), ["Decrypt", "Encrypt"])
        retirable = self.kms.list_retirable_grants(RetiringPrincipal=user_arn("admin"))["Grants"]
        self.assertIn(grant["GrantId"], [g["GrantId"] for g in retirable])
        self.kms.retire_grant(GrantToken=grant["GrantToken"])
        self.expect_error("AccessDeniedException", self.app.encrypt, KeyId=key, Plaintext=b"x",
                          EncryptionContext=context)
        second = self.kms.create_grant(KeyId=key, GranteePrincipal=user_arn("app"),
                                       Operations=["Encrypt"])
        self.app.encrypt(KeyId=key, Plaintext=b"x")
        self.kms.revoke_grant(KeyId=key, GrantId=second["GrantId"])
        self.expect_error("AccessDeniedException", self.app.encrypt, KeyId=key, Plaintext=b"x")
        self.expect_error("InvalidGrantIdException", self.kms.revoke_grant, KeyId=key,
                          GrantId="0" * 64)
        self.expect_error("InvalidGrantTokenException", self.kms.encrypt, KeyId=key,
                          Plaintext=b"x", GrantTokens=["not-a-token"])


class Authentication(KmsTestCase):
    """SigV4 failures, each with its AWS error."""

    def test_wrong_secret(self):
        bad = kms_client("APP", secret="not-the-secret-of-app")
        self.expect_error("InvalidSignatureException", bad.list_keys, status=400)

    def test_unknown_access_key(self):
        import boto3
        from botocore.config import Config

        stranger = boto3.client("kms", endpoint_url=ENDPOINT, region_name=REGION,
                                verify=CA_BUNDLE, aws_access_key_id="AKIAUNKNOWNPRINCIPAL",
                                aws_secret_access_key="whatever-secret-1234567890",
                                config=Config(retries={"total_max_attempts": 1}))
        self.expect_error("UnrecognizedClientException", stranger.list_keys, status=400)

    def test_wrong_region(self):
        akid, secret = credentials("ADMIN")
        import boto3
        from botocore.config import Config

        other = boto3.client("kms", endpoint_url=ENDPOINT, region_name="eu-west-3",
                             verify=CA_BUNDLE, aws_access_key_id=akid,
                             aws_secret_access_key=secret,
                             config=Config(retries={"total_max_attempts": 1}))
        self.expect_error("InvalidSignatureException", other.list_keys)


class RawProtocol(KmsTestCase):
    """Requests boto3 would never send, signed with botocore's SigV4Auth and sent as they are."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # As boto3 clients do: without TCP_NODELAY, a body sent apart from its headers waits for
        # the server's delayed ACK (about 40 ms a request).
        cls.http = URLLib3Session(verify=CA_BUNDLE, socket_options=[
            (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        cls.credentials = Credentials(*credentials("ADMIN"))

    def send(self, target, body, content_type="application/x-amz-json-1.1", sign=True):
        request = AWSRequest(method="POST", url=ENDPOINT + "/", data=body, headers={
            "Content-Type": content_type,
            **({"X-Amz-Target": target} if target else {}),
        })
        if sign:
            SigV4Auth(self.credentials, "kms", REGION).add_auth(request)
        response = self.http.send(request.prepare())
        headers = {k.lower(): v for k, v in response.headers.items()}
        self.assertTrue(headers.get("x-amzn-requestid"), f"{target}: x-amzn-RequestId")
        return response.status_code, headers, response.content

    def expect_raw(self, code, status, target, body, **kwargs):
        got_status, headers, content = self.send(target, body, **kwargs)
        self.assertEqual(got_status, status, f"{target} {body!r}: status ({content!r})")
        self.assertEqual(headers.get("x-amzn-errortype"), code, f"{target}: X-Amzn-ErrorType")
        self.assertEqual(json.loads(content)["__type"], code, f"{target}: __type")
        self.assertEqual(headers.get("content-type"), "application/x-amz-json-1.1")

    def test_a_good_raw_request(self):
        status, headers, content = self.send("TrentService.ListKeys", b"{}")
        self.assertEqual(status, 200, content)
        self.assertIn("Keys", json.loads(content))
        status, _, content = self.send("TrentService.ListKeys", b"", )
        self.assertEqual(status, 200, f"an empty body counts as {{}}: {content!r}")
        status, _, content = self.send("TrentService.ListKeys", b"{}",
                                       content_type="application/json")
        self.assertEqual(status, 200, f"application/json is accepted too: {content!r}")

    def test_unknown_operation(self):
        self.expect_raw("UnknownOperationException", 400, "TrentService.MakeCoffee", b"{}")
        self.expect_raw("UnknownOperationException", 400, "OtherService.ListKeys", b"{}")
        self.expect_raw("UnknownOperationException", 400, None, b"{}")

    def test_malformed_json(self):
        for body in (b"{not json", b"[1, 2]", b'"a string"', b'{"KeyId": "k"} trailing', b"\xff"):
            with self.subTest(body=body):
                self.expect_raw("SerializationException", 400, "TrentService.Encrypt", body)

    def test_wrong_member_types(self):
        key = self.kms.create_key()["KeyMetadata"]["KeyId"]
        for body in ({"KeyId": 5, "Plaintext": "eA=="},
                     {"KeyId": key, "Plaintext": "%%% not base64"},
                     {"KeyId": key, "Plaintext": "eA==", "EncryptionContext": ["a"]},
                     {"KeyId": key, "Plaintext": "eA==", "EncryptionContext": {"a": 1}},
                     {"KeyId": key, "Plaintext": "eA==", "DryRun": "yes"}):
            with self.subTest(body=body):
                self.expect_raw("SerializationException", 400, "TrentService.Encrypt",
                                json.dumps(body).encode())
        self.expect_raw("SerializationException", 400, "TrentService.GenerateRandom",
                        b'{"NumberOfBytes": "32"}')

    def test_unsigned_and_tampered(self):
        self.expect_raw("MissingAuthenticationTokenException", 403, "TrentService.ListKeys",
                        b"{}", sign=False)
        request = AWSRequest(method="POST", url=ENDPOINT + "/", data=b"{}", headers={
            "Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys",
        })
        SigV4Auth(self.credentials, "kms", REGION).add_auth(request)
        request.data = b'{"Limit": 1}'  # the body changed after signing
        response = self.http.send(request.prepare())
        self.assertEqual(response.status_code, 400)
        self.assertEqual(json.loads(response.content)["__type"], "InvalidSignatureException",
                         "a body changed after signing is refused")

    def test_never_a_server_error(self):
        bodies = [b"", b"{}", b"null", b"{" * 10_000, b'{"KeyId": null}',
                  b'{"Limit": 1e400}', b'{"Limit": -1}', b'{"Limit": 1.5}',
                  b'{"KeyId": "' + b"x" * 5000 + b'"}', b'{"Plaintext": ""}']
        operations = botocore.session.get_session().get_service_model("kms").operation_names
        for operation in operations:
            for body in bodies:
                status, _, content = self.send(f"TrentService.{operation}", body)
                self.assertLess(status, 500, f"{operation} {body[:40]!r}: {content!r}")


if __name__ == "__main__":
    main()
