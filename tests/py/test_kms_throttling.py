"""Quotas: a principal over its request rate gets ThrottlingException, which boto3 retries.

tests/it/api.rs starts this server with a management quota of 0.001 requests per second (a
bucket of one request): a principal's first management call succeeds and the next one, made
right after, is throttled. Other operation classes and other principals have buckets of their
own. Each test uses a principal of its own (slow, admin, patient), so their order does not
matter.
"""

import boto3
from botocore.config import Config

from kagi_env import CA_BUNDLE, ENDPOINT, REGION, KmsTestCase, credentials, kms_client, main


class Throttling(KmsTestCase):
    def test_second_management_call_is_throttled(self):
        slow = kms_client("SLOW")
        slow.list_keys()
        error = self.expect_error("ThrottlingException", slow.list_keys, status=400)
        self.assertIn("exceeded the rate", error["Error"]["Message"], "AWS's throttling message")
        self.expect_error("ThrottlingException", slow.describe_key, KeyId="alias/anything")
        # Symmetric cryptographic operations have a bucket of their own.
        self.assertEqual(len(slow.generate_random(NumberOfBytes=8)["Plaintext"]), 8,
                         "GenerateRandom is not a management call")

    def test_each_principal_has_its_own_bucket(self):
        admin = kms_client("ADMIN")
        admin.list_aliases()
        self.expect_error("ThrottlingException", admin.list_aliases)

    def test_boto3_retries_a_throttled_call(self):
        access_key_id, secret = credentials("PATIENT")
        retrying = boto3.client(
            "kms", endpoint_url=ENDPOINT, region_name=REGION, verify=CA_BUNDLE,
            aws_access_key_id=access_key_id, aws_secret_access_key=secret,
            config=Config(retries={"total_max_attempts": 2, "mode": "standard"}))
        with self.assertRaises(retrying.exceptions.ClientError) as cm:
            retrying.list_keys()
            retrying.list_keys()
        response = cm.exception.response
        self.assertEqual(response["Error"]["Code"], "ThrottlingException")
        self.assertEqual(response["ResponseMetadata"]["RetryAttempts"], 1,
                         "boto3 recognised ThrottlingException as retryable")


if __name__ == "__main__":
    main()
