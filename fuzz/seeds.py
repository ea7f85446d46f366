#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets that are made rather than copied (README.md):

- sigv4: requests signed with SigV4 here, independently of kagi (hashlib and hmac), with the
  fuzz targets' credentials: a boto3-like KMS call, one with a content hash and a query, the
  AWS test suite's get-vanilla, and a few broken ones;
- kms_blob: kagi ciphertext blobs sealed with AES-256-GCM (`cryptography`) under the
  target's fixed key and context, and encryption-context encodings;
- envelope_decrypt: the golden messages of tests/data/envelope behind a mode byte;
- kms_request: one KMS call per operation, on the fixture keys of the target.

Run from the repository: python3 fuzz/seeds.py. Needs `cryptography`.
"""

import hashlib
import hmac
import json
import os
import shutil
import struct
from datetime import datetime, timezone

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
GOLDEN = os.path.join(HERE, "..", "tests", "data", "envelope")

ACCESS_KEY_ID = "AKIAFUZZ000000000000"  # kagi_fuzz::sigv4
SECRET = b"fuzz-secret-0123456789"
NOW = 1_800_000_000


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


# --- sigv4 -----------------------------------------------------------------------------------


def sign(method, path, query, headers, body, service="kms", region="us-east-1", now=NOW):
    amz_date = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = dict(headers, **{"x-amz-date": amz_date})
    names = sorted(headers)
    canonical_query = "&".join(sorted(query.split("&"))) if query else ""
    canonical = "\n".join([
        method, path, canonical_query,
        *[f"{n}:{' '.join(headers[n].split())}" for n in names], "",
        ";".join(names), hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = b"AWS4" + SECRET
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    uri = path + (f"?{query}" if query else "")
    lines = [f"{method} {uri}"] + [f"{n}: {v}" for n, v in headers.items()]
    return ("\n".join(lines) + "\n\n").encode() + body


def sigv4():
    body = b'{"KeyId":"alias/app","Plaintext":"aGk="}'
    kms = {"host": "kms.us-east-1.amazonaws.com", "content-type": "application/x-amz-json-1.1",
           "x-amz-target": "TrentService.Encrypt"}
    write("sigv4", "boto3-encrypt", sign("POST", "/", "", kms, body))
    hashed = dict(kms, **{"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    write("sigv4", "content-sha256", sign("POST", "/", "", hashed, body))
    write("sigv4", "query", sign("GET", "/a/b", "z=1&a=%2F&b=", {"host": "127.0.0.1:8443"}, b""))
    write("sigv4", "aws-suite-get-vanilla",
          sign("GET", "/", "", {"host": "example.amazonaws.com"}, b"", service="service"))
    write("sigv4", "unsigned-payload",
          sign("POST", "/", "", dict(kms, **{"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}), body))
    write("sigv4", "no-authorization",
          b"POST /\nhost: kms.us-east-1.amazonaws.com\nx-amz-date: 20270115T080000Z\n\n{}")


# --- kms_blob --------------------------------------------------------------------------------


def encode_context(context):
    if not context:
        return b""
    out = struct.pack(">H", len(context))
    for k, v in sorted((k.encode(), v.encode()) for k, v in context.items()):
        out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out


def kms_blob():
    key = bytes([0x4B]) * 32  # kagi_fuzz::kms_blob::KEY
    context = {"purpose": "fuzz"}
    for version, plaintext in [(1, b"hello"), (7, bytes(range(64))), (2, b"")]:
        header = bytes([1]) + bytes(range(16)) + struct.pack(">I", version) + bytes([9]) * 12
        sealed = AESGCM(key).encrypt(header[21:33], plaintext, header + encode_context(context))
        write("kms_blob", f"blob-v{version}-{len(plaintext)}", header + sealed)
    write("kms_blob", "context-two-pairs", encode_context({"tenant": "acme", "purpose": "golden"}))
    write("kms_blob", "context-empty-value", encode_context({"k": ""}))


# --- envelope_decrypt ------------------------------------------------------------------------


def envelope():
    for name in sorted(os.listdir(GOLDEN)):
        if not name.endswith(".bin") or name.startswith("plaintext"):
            continue
        message = open(os.path.join(GOLDEN, name), "rb").read()
        stem = name[:-4]
        write("envelope_decrypt", f"{stem}-whole", bytes([0x00]) + message)
        write("envelope_decrypt", f"{stem}-chunks", bytes([0x83]) + message)


# --- kms_request -----------------------------------------------------------------------------


def kms_request():
    blob = "AQIDBAUGBwgJCgsMDQ4PEAAAAAEJCQkJCQkJCQkJCQkAAAAAAAAAAAAAAAAAAAAA"
    calls = {
        "CreateKey": {"Description": "fuzz", "KeySpec": "SYMMETRIC_DEFAULT", "Tags": [
            {"TagKey": "team", "TagValue": "a"}]},
        "DescribeKey": {"KeyId": "alias/fuzz-sym"},
        "ListKeys": {"Limit": 5},
        "ListAliases": {"KeyId": "alias/fuzz-sym"},
        "Encrypt": {"KeyId": "alias/fuzz-sym", "Plaintext": "aGVsbG8=",
                    "EncryptionContext": {"tenant": "acme"}},
        "Decrypt": {"CiphertextBlob": blob, "EncryptionContext": {"tenant": "acme"}},
        "ReEncrypt": {"CiphertextBlob": blob, "DestinationKeyId": "alias/fuzz-rsa",
                      "DestinationEncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
        "GenerateDataKey": {"KeyId": "alias/fuzz-sym", "KeySpec": "AES_256"},
        "GenerateDataKeyWithoutPlaintext": {"KeyId": "alias/fuzz-sym", "NumberOfBytes": 16},
        "GenerateDataKeyPair": {"KeyId": "alias/fuzz-sym", "KeyPairSpec": "ECC_NIST_P256"},
        "GenerateRandom": {"NumberOfBytes": 32},
        "GenerateMac": {"KeyId": "alias/fuzz-hmac", "Message": "aGk=", "MacAlgorithm": "HMAC_SHA_256"},
        "VerifyMac": {"KeyId": "alias/fuzz-hmac", "Message": "aGk=", "MacAlgorithm": "HMAC_SHA_256",
                      "Mac": "AAAA"},
        "Sign": {"KeyId": "alias/fuzz-sign", "Message": "aGk=", "MessageType": "RAW",
                 "SigningAlgorithm": "ECDSA_SHA_256"},
        "Verify": {"KeyId": "alias/fuzz-sign", "Message": "aGk=", "Signature": "MEUCIQ==",
                   "SigningAlgorithm": "ECDSA_SHA_256"},
        "GetPublicKey": {"KeyId": "alias/fuzz-rsa"},
        "DeriveSharedSecret": {"KeyId": "alias/fuzz-ecdh", "KeyAgreementAlgorithm": "ECDH",
                               "PublicKey": "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE"},
        "GetParametersForImport": {"KeyId": "alias/fuzz-external",
                                   "WrappingAlgorithm": "RSAES_OAEP_SHA_256",
                                   "WrappingKeySpec": "RSA_2048"},
        "ImportKeyMaterial": {"KeyId": "alias/fuzz-external", "ImportToken": "AAAA",
                              "EncryptedKeyMaterial": "AAAA",
                              "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"},
        "PutKeyPolicy": {"KeyId": "alias/fuzz-sym", "PolicyName": "default", "Policy":
                         '{"Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},'
                         '"Action":"kms:*","Resource":"*"}]}'},
        "GetKeyPolicy": {"KeyId": "alias/fuzz-sym"},
        "CreateGrant": {"KeyId": "alias/fuzz-sym", "GranteePrincipal":
                        "arn:aws:iam::111122223333:user/alice", "Operations": ["Encrypt"],
                        "Constraints": {"EncryptionContextSubset": {"tenant": "acme"}}},
        "ListGrants": {"KeyId": "alias/fuzz-sym"},
        "TagResource": {"KeyId": "alias/fuzz-sym", "Tags": [{"TagKey": "k", "TagValue": "v"}]},
        "UpdateKeyDescription": {"KeyId": "alias/fuzz-sym", "Description": "d"},
        "ScheduleKeyDeletion": {"KeyId": "alias/fuzz-sym", "PendingWindowInDays": 7,
                                "DryRun": True},
        "EnableKeyRotation": {"KeyId": "alias/fuzz-sym", "RotationPeriodInDays": 90},
        "ListKeyRotations": {"KeyId": "alias/fuzz-sym"},
        "CreateAlias": {"AliasName": "alias/fuzz-new", "TargetKeyId": "alias/fuzz-sym"},
    }
    for operation, body in calls.items():
        write("kms_request", operation, f"{operation}\n{json.dumps(body)}")
    write("kms_request", "alice-Encrypt", 'alice Encrypt\n{"KeyId":"alias/fuzz-sym","Plaintext":"aGk="}')


def main():
    for target in ("sigv4", "kms_blob", "envelope_decrypt", "kms_request"):
        shutil.rmtree(os.path.join(CORPUS, target), ignore_errors=True)
    sigv4()
    kms_blob()
    envelope()
    kms_request()


if __name__ == "__main__":
    main()
