"""What every Python end-to-end test shares: where kagi listens, who calls, and small helpers.

The Rust harness (tests/it/api.rs) starts `kagi serve` and passes, in the environment:
KAGI_ENDPOINT (https://127.0.0.1:PORT), KAGI_CA_BUNDLE, KAGI_REGION, KAGI_ACCOUNT, and for each
configured principal NAME (ADMIN, APP, ...) KAGI_<NAME>_ACCESS_KEY_ID and KAGI_<NAME>_SECRET.
"""

import os
import unittest

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["KAGI_ENDPOINT"]
CA_BUNDLE = os.environ["KAGI_CA_BUNDLE"]
REGION = os.environ["KAGI_REGION"]
ACCOUNT = os.environ["KAGI_ACCOUNT"]


def credentials(name):
    """(access key id, secret) of the configured principal `name` (ADMIN, APP, ...)."""
    return (
        os.environ[f"KAGI_{name}_ACCESS_KEY_ID"],
        os.environ[f"KAGI_{name}_SECRET"],
    )


def user_arn(principal):
    return f"arn:aws:iam::{ACCOUNT}:user/{principal}"


def kms_client(principal="ADMIN", secret=None, validate=True):
    """A boto3 KMS client for `principal`, never retrying (so an expected error is seen once;
    `total_max_attempts`, as botocore reads `max_attempts` as the number of retries).

    `secret` overrides the principal's secret; `validate=False` turns off botocore's
    client-side parameter checks, so the server's own validation is what answers.
    """
    access_key_id, real_secret = credentials(principal)
    return boto3.client(
        "kms",
        endpoint_url=ENDPOINT,
        region_name=REGION,
        verify=CA_BUNDLE,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret if secret is not None else real_secret,
        config=Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            parameter_validation=validate,
        ),
    )


class KmsTestCase(unittest.TestCase):
    """A test case with an administrator's client and helpers for expected errors."""

    maxDiff = None

    @classmethod
    def setUpClass(cls):
        cls.kms = kms_client()
        # The same principal without client-side validation, to reach the server's.
        cls.raw_kms = kms_client(validate=False)

    def expect_error(self, code, call, *args, status=None, **kwargs):
        """Runs `call` and asserts it fails with the AWS error `code` (and HTTP `status`)."""
        with self.assertRaises(ClientError, msg=f"{call.__name__} should fail with {code}") as cm:
            call(*args, **kwargs)
        error = cm.exception.response
        self.assertEqual(
            error["Error"]["Code"],
            code,
            f"{call.__name__}: expected {code}, got {error['Error']}",
        )
        if status is not None:
            self.assertEqual(
                error["ResponseMetadata"]["HTTPStatusCode"],
                status,
                f"{call.__name__}: HTTP status of {code}",
            )
        headers = error["ResponseMetadata"]["HTTPHeaders"]
        self.assertEqual(headers.get("x-amzn-errortype"), code, "X-Amzn-ErrorType header")
        self.assertTrue(headers.get("x-amzn-requestid"), "x-amzn-RequestId header")
        return error

    def create_key(self, spec="SYMMETRIC_DEFAULT", usage=None, client=None, **kwargs):
        """Creates a key, returns its KeyMetadata."""
        if usage is None:
            usage = {
                "SYMMETRIC_DEFAULT": "ENCRYPT_DECRYPT",
            }.get(spec, "GENERATE_VERIFY_MAC" if spec.startswith("HMAC") else "SIGN_VERIFY")
        client = client or self.kms
        metadata = client.create_key(KeySpec=spec, KeyUsage=usage, **kwargs)["KeyMetadata"]
        self.assertEqual(metadata["KeySpec"], spec, "CreateKey: KeySpec")
        self.assertEqual(metadata["KeyUsage"], usage, "CreateKey: KeyUsage")
        return metadata


def main():
    unittest.main(verbosity=2)
