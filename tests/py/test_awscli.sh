#!/usr/bin/env bash
# The AWS CLI (v1, from the test virtualenv) against `kagi serve`: create-key, encrypt, decrypt,
# sign, verify, with fileb:// inputs, --endpoint-url and --ca-bundle. The credentials and region
# come from the standard AWS_* variables that tests/it/api.rs sets.
set -euo pipefail

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kms() {
    aws kms --endpoint-url "$KAGI_ENDPOINT" --ca-bundle "$KAGI_CA_BUNDLE" "$@"
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
check() {
    echo "ok: $*"
}

aws --version

# create-key, describe-key
key=$(kms create-key --description "aws cli test" --query KeyMetadata.KeyId --output text)
[ -n "$key" ] || fail "create-key gave no KeyId"
state=$(kms describe-key --key-id "$key" --query KeyMetadata.KeyState --output text)
[ "$state" = Enabled ] || fail "describe-key: state $state"
check "create-key $key"

# encrypt → decrypt, with an encryption context, through fileb://
printf 'secret from the aws cli\n' >"$work/plain.txt"
kms encrypt --key-id "$key" --plaintext "fileb://$work/plain.txt" \
    --encryption-context tenant=acme --query CiphertextBlob --output text |
    base64 -d >"$work/cipher.bin"
[ -s "$work/cipher.bin" ] || fail "encrypt gave no ciphertext"
kms decrypt --ciphertext-blob "fileb://$work/cipher.bin" --encryption-context tenant=acme \
    --query Plaintext --output text | base64 -d >"$work/back.txt"
cmp "$work/plain.txt" "$work/back.txt" || fail "decrypt did not give the plaintext back"
check "encrypt/decrypt"

# The wrong context is refused with the AWS error (exit code 254 or 255, message on stderr).
if kms decrypt --ciphertext-blob "fileb://$work/cipher.bin" --encryption-context tenant=globex \
    >/dev/null 2>"$work/err.txt"; then
    fail "decrypt with the wrong context succeeded"
fi
grep -q InvalidCiphertextException "$work/err.txt" || fail "wrong context: $(cat "$work/err.txt")"
check "decrypt with the wrong context fails with InvalidCiphertextException"

# sign → verify (RAW message, ECDSA P-256), and a changed message fails to verify
sign_key=$(kms create-key --key-spec ECC_NIST_P256 --key-usage SIGN_VERIFY \
    --query KeyMetadata.KeyId --output text)
printf 'message to sign' >"$work/message.txt"
kms sign --key-id "$sign_key" --message "fileb://$work/message.txt" --message-type RAW \
    --signing-algorithm ECDSA_SHA_256 --query Signature --output text |
    base64 -d >"$work/signature.bin"
[ -s "$work/signature.bin" ] || fail "sign gave no signature"
valid=$(kms verify --key-id "$sign_key" --message "fileb://$work/message.txt" --message-type RAW \
    --signing-algorithm ECDSA_SHA_256 --signature "fileb://$work/signature.bin" \
    --query SignatureValid --output text)
[ "$valid" = True ] || fail "verify: SignatureValid=$valid"
check "sign/verify"

printf 'another message' >"$work/other.txt"
if kms verify --key-id "$sign_key" --message "fileb://$work/other.txt" --message-type RAW \
    --signing-algorithm ECDSA_SHA_256 --signature "fileb://$work/signature.bin" \
    >/dev/null 2>"$work/err.txt"; then
    fail "verify accepted a signature of another message"
fi
grep -q KMSInvalidSignatureException "$work/err.txt" || fail "verify: $(cat "$work/err.txt")"
check "verify of another message fails with KMSInvalidSignatureException"

# The same through AWS_ENDPOINT_URL_KMS and AWS_CA_BUNDLE alone (no flags).
aws kms describe-key --key-id "$sign_key" --query KeyMetadata.KeySpec --output text |
    grep -qx ECC_NIST_P256 || fail "describe-key through AWS_ENDPOINT_URL_KMS"
check "AWS_ENDPOINT_URL_KMS and AWS_CA_BUNDLE"

echo "aws cli: all checks passed"
